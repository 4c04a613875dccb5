# QSM and SWI from the multi-echo GRE (method.md §3–4): thin rules around `deepmir qsm-run`
# and `deepmir swi`; numerics in deepmir.qsm and deepmir.swi.weighting (torch, GPU when configured).

import json

validate(config, "../schemas/qsm.schema.yaml")

QSM = config["qsm"]
SWI = config["swi"]


rule qsm:
    """χ (ppm, paramagnetic positive) with its JSON sidecar (λ and how it was chosen), R2*,
    the local field, and the TKD and closed-form L2 χ of the same local field (the baselines
    of the QSM accuracy table) on the MEGRE grid."""
    input:
        mag=out("inputs", "{pid}", "part-mag_MEGRE.nii.gz"),
        phase=out("inputs", "{pid}", "part-phase_MEGRE.nii.gz"),
        json=out("inputs", "{pid}", "MEGRE.json"),
        mask=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.nii.gz"),
    output:
        chi=out("qsm", "{pid}", "space-MEGRE_Chimap.nii.gz"),
        r2s=out("qsm", "{pid}", "space-MEGRE_R2starmap.nii.gz"),
        field=out("qsm", "{pid}", "space-MEGRE_desc-local_fieldmap.nii.gz"),
        chi_json=out("qsm", "{pid}", "space-MEGRE_Chimap.json"),
        chi_tkd=out("qsm", "{pid}", "space-MEGRE_desc-tkd_Chimap.nii.gz"),
        chi_cfl2=out("qsm", "{pid}", "space-MEGRE_desc-cfl2_Chimap.nii.gz"),
        qc=report(f"{OUT}/report/qsm/{{pid}}_qsm.png", caption="../report/qsm_qc.rst",
                  category="QSM", subcategory="{pid}"),
    params:
        cfg=json.dumps({k: v for k, v in QSM.items() if k not in ("mem_mb", "runtime", "gpu")}, sort_keys=True),
    conda:
        "../envs/torch.yaml"
    log:
        log_path("qsm", "{pid}"),
    benchmark:
        bench_path("qsm", "{pid}")
    threads: QSM["threads"]
    resources:
        mem_mb=lambda wc, attempt: QSM["mem_mb"] * attempt,
        runtime=QSM["runtime"],
        **({"gpu": 1} if QSM["gpu"] else {}),
    shell:
        "deepmir qsm-run --mag {input.mag:q} --phase {input.phase:q} --json {input.json:q} "
        "--mask {input.mask:q} --chi {output.chi:q} --r2s {output.r2s:q} --field {output.field:q} "
        "--chi-tkd {output.chi_tkd:q} --chi-cfl2 {output.chi_cfl2:q} "
        "--qc {output.qc:q} --config-json {params.cfg:q} > {log:q} 2>&1"


rule swi:
    """SWI (shortest echo, homodyne high-pass, phase mask^power) and its minIP."""
    input:
        mag=out("inputs", "{pid}", "part-mag_MEGRE.nii.gz"),
        phase=out("inputs", "{pid}", "part-phase_MEGRE.nii.gz"),
        json=out("inputs", "{pid}", "MEGRE.json"),
    output:
        swi=out("swi", "{pid}", "space-MEGRE_swi.nii.gz"),
        minip=out("swi", "{pid}", "space-MEGRE_desc-minip_swi.nii.gz"),
        qc=report(f"{OUT}/report/swi/{{pid}}_swi.png", caption="../report/qsm_swi.rst",
                  category="SWI", subcategory="{pid}"),
    params:
        cfg=settings_json(SWI, "window", "power", "minip_slices"),
    conda:
        "../envs/torch.yaml"
    log:
        log_path("swi", "{pid}"),
    benchmark:
        bench_path("swi", "{pid}")
    resources:
        mem_mb=lambda wc, attempt: SWI["mem_mb"] * attempt,
        runtime=10,
    shell:
        "deepmir swi --mag {input.mag:q} --phase {input.phase:q} --json {input.json:q} "
        "--output {output.swi:q} --minip {output.minip:q} --qc {output.qc:q} "
        "--config-json {params.cfg:q} --device cpu > {log:q} 2>&1"


PARTICIPANT_TARGETS += expand(rules.qsm.output.chi, pid=PIDS) + expand(rules.swi.output.swi, pid=PIDS)
