# The synthetic cohort, generated when no bids_dir is configured.
if SYNTHETIC:

    rule synth_dataset:
        output:
            f"{BIDS}/dataset_description.json",
            f"{BIDS}/participants.tsv",
            head_model=f"{OUT}/synth/head_model.npz",
        params:
            cfg=json.dumps(config.get("synth") or {}),
        conda:
            "../../envs/base.yaml"
        log:
            "logs/synth/dataset.log",
        shell:
            "deepmir synth {BIDS} --config-json {params.cfg:q} --dataset-files "
            "--annotations {ANNOTATIONS} --head-model-cache {output.head_model} > {log} 2>&1"

    rule synth_participant:
        input:
            rules.synth_dataset.output.head_model,
        output:
            [f"{BIDS}/{f}" for f in _synth_write.participant_files("{pid}", N_ECHOES, ANNOTATIONS)],
        params:
            cfg=json.dumps(config.get("synth") or {}),
        conda:
            "../../envs/base.yaml"
        log:
            log_path("synth", "{pid}"),
        benchmark:
            bench_path("synth", "{pid}")
        resources:
            mem_mb=lambda wc, attempt: 6000 * attempt,
            runtime=20,
        shell:
            "deepmir synth {BIDS} --config-json {params.cfg:q} --participant {wildcards.pid} "
            "--annotations {ANNOTATIONS} --head-model-cache {input} > {log} 2>&1"
