# The first job of every participant: check its files against the data contract (voxel-level;
# the header-level checks ran when the workflow was parsed) and write the MEGRE series as
# 4D magnitude and 4D phase in radians with a JSON description.
import shlex


rule inputs:
    input:
        lambda wc: raw_inputs(wc.pid),
    output:
        mag=out("inputs", "{pid}", "part-mag_MEGRE.nii.gz"),
        phase=out("inputs", "{pid}", "part-phase_MEGRE.nii.gz"),
        json=out("inputs", "{pid}", "MEGRE.json"),
    params:
        bids_dir=BIDS,
        annotations=ANNOTATIONS,
        phase_sign=config["phase_sign"],
        phase_unit=config["phase_unit"],
        min_echoes=config["min_echoes"],
        filters=json.dumps(config["bids_filters"]),
    conda:
        "../envs/base.yaml"
    log:
        log_path("inputs", "{pid}"),
    benchmark:
        bench_path("inputs", "{pid}")
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=10,
    shell:
        "deepmir inputs --bids-dir {params.bids_dir:q} --pid {wildcards.pid:q} "
        "--annotations {params.annotations:q} "
        "--phase-sign {params.phase_sign} --phase-unit {params.phase_unit} "
        "--min-echoes {params.min_echoes} --bids-filters {params.filters:q} --mag {output.mag:q} --phase {output.phase:q} "
        "--json {output.json:q} > {log:q} 2>&1"


rule montage:
    """A look at the raw data of one participant through its largest lesion."""
    input:
        mag=rules.inputs.output.mag,
        phase=rules.inputs.output.phase,
        info=rules.inputs.output.json,
    output:
        report(f"{OUT}/report/inputs/{{pid}}_montage.png", caption="../report/montage.rst",
               category="Inputs", subcategory="{pid}"),
    params:
        # only the optional files the participant has (an empty argument would swallow the
        # next option)
        optional=lambda wc: " ".join(f"--{k} {shlex.quote(v)}" for k, v in (
            ("t2w", anat_path(wc.pid, "T2w")), ("labels", annotation_path(wc.pid)),
            ("xfm", truth_path(wc.pid, "from-T2w_to-MEGRE_xfm.txt") if SYNTHETIC else None)) if v),
    conda:
        "../envs/ants.yaml"
    log:
        log_path("montage", "{pid}"),
    shell:
        "deepmir montage --mag {input.mag:q} --phase {input.phase:q} --info {input.info:q} "
        "{params.optional} --output {output:q} > {log:q} 2>&1"


PARTICIPANT_TARGETS += expand(rules.montage.output[0], pid=PIDS)
