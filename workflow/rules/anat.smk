# Anatomical stage (method.md §2): thin rules around `deepmir n4`, `deepmir register` and
# `deepmir brainmask`; numerics in deepmir.anat (antspyx underneath).
#   anat_n4        raw T1w/T2w          -> desc-n4_{contrast} (+ its bias field)
#   anat_register  N4 image + MEGRE     -> from-{contrast}_to-MEGRE_xfm.txt, space-MEGRE_{contrast}
#   anat_brainmask MEGRE (+ N4 T1w, xfm) -> space-MEGRE_desc-brain_mask (+ .json with `method`)
# A participant without a T1w gets the magnitude-only mask; without a T2w, no space-MEGRE_T2w.

import json
import shlex

validate(config, "../schemas/anat.schema.yaml")

ANAT = config["anat"]
ANAT_CONTRASTS = ("T1w", "T2w")


def _anat_raw(wc):
    """The raw image of this contrast; [] when the participant has none (the rule is then
    never requested: targets and the mask rule only ask for contrasts that exist)."""
    return anat_path(wc.pid, wc.contrast) or []


def _anat_mask_inputs(wc):
    files = {"mag": out("inputs", wc.pid, "part-mag_MEGRE.nii.gz"),
             "info": out("inputs", wc.pid, "MEGRE.json")}
    if _anat_mask_uses_t1w(wc.pid):
        files["t1w"] = out("anat", wc.pid, "desc-n4_T1w.nii.gz")
        files["xfm"] = out("anat", wc.pid, "from-T1w_to-MEGRE_xfm.txt")
    return files


def _anat_mask_options(wc, input):
    if "t1w" in input.keys():
        return f"--t1w {shlex.quote(input.t1w)} --xfm {shlex.quote(input.xfm)}"
    return ""


def anat_outputs(pid):
    """Everything the anatomical stage makes for one participant (targets of rule all)."""
    files = [out("anat", pid, "space-MEGRE_desc-brain_mask.nii.gz"),
             f"{OUT}/report/anat/{pid}_brain-mask.png"]
    for c in ANAT_CONTRASTS:
        if has_anat(pid, c):
            files += [out("anat", pid, f"space-MEGRE_{c}.nii.gz"),
                      f"{OUT}/report/anat/{pid}_{c}-to-MEGRE.png"]
    return files


rule anat_n4:
    """N4 bias-field correction of the raw T1w or T2w (native grid)."""
    input:
        _anat_raw,
    output:
        image=out("anat", "{pid}", "desc-n4_{contrast}.nii.gz"),
        bias=out("anat", "{pid}", "desc-n4bias_{contrast}.nii.gz"),
    wildcard_constraints:
        contrast="T1w|T2w",
    params:
        cfg=settings_json(ANAT, "n4"),
    conda:
        "../envs/ants.yaml"
    log:
        log_path("anat/n4_{contrast}", "{pid}"),
    benchmark:
        bench_path("anat/n4_{contrast}", "{pid}")
    threads: ANAT["threads"]
    resources:
        mem_mb=lambda wc, attempt: ANAT["mem_mb"] * attempt,
        runtime=ANAT["runtime"],
    shell:
        "deepmir n4 --input {input:q} --output {output.image:q} --bias {output.bias:q} "
        "--config-json {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule anat_register:
    """Rigid MI registration of the N4-corrected T1w or T2w onto the MEGRE grid: the 4×4
    transform (x_MEGRE = M @ x_anat, RAS mm), the image on the MEGRE grid, a QC figure."""
    input:
        image=rules.anat_n4.output.image,
        mag=out("inputs", "{pid}", "part-mag_MEGRE.nii.gz"),
        info=out("inputs", "{pid}", "MEGRE.json"),
    output:
        xfm=out("anat", "{pid}", "from-{contrast}_to-MEGRE_xfm.txt"),
        image=out("anat", "{pid}", "space-MEGRE_{contrast}.nii.gz"),
        qc=report(f"{OUT}/report/anat/{{pid}}_{{contrast}}-to-MEGRE.png",
                  caption="../report/anat_registration.rst", category="Anatomy",
                  subcategory="{pid}"),
    wildcard_constraints:
        contrast="T1w|T2w",
    params:
        cfg=settings_json(ANAT, "registration"),
    conda:
        "../envs/ants.yaml"
    log:
        log_path("anat/register_{contrast}", "{pid}"),
    benchmark:
        bench_path("anat/register_{contrast}", "{pid}")
    threads: ANAT["threads"]
    resources:
        mem_mb=lambda wc, attempt: ANAT["mem_mb"] * attempt,
        runtime=ANAT["runtime"],
    shell:
        "deepmir register --moving {input.image:q} --mag {input.mag:q} --info {input.info:q} "
        "--xfm {output.xfm:q} --output {output.image:q} --qc {output.qc:q} "
        "--title '{wildcards.pid} {wildcards.contrast} on MEGRE' "
        "--config-json {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule anat_brainmask:
    """Brain mask on the MEGRE grid: MNI152 template through the T1w (when there is one),
    refined on the GRE magnitude; magnitude-only otherwise. The JSON records the method."""
    input:
        unpack(_anat_mask_inputs),
    output:
        mask=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.nii.gz"),
        json=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.json"),
        qc=report(f"{OUT}/report/anat/{{pid}}_brain-mask.png",
                  caption="../report/anat_brainmask.rst", category="Anatomy",
                  subcategory="{pid}"),
    params:
        options=_anat_mask_options,
        cfg=json.dumps({"brain_mask": ANAT["brain_mask"], "registration": {"seed": ANAT["registration"]["seed"]}},
                       sort_keys=True),
    conda:
        "../envs/ants.yaml"
    log:
        log_path("anat/brainmask", "{pid}"),
    benchmark:
        bench_path("anat/brainmask", "{pid}")
    threads: ANAT["threads"]
    resources:
        mem_mb=lambda wc, attempt: ANAT["mem_mb"] * attempt,
        runtime=ANAT["runtime"],
    shell:
        "deepmir brainmask --mag {input.mag:q} --info {input.info:q} {params.options} "
        "--output {output.mask:q} --json {output.json:q} --qc {output.qc:q} "
        "--title '{wildcards.pid} brain mask' --config-json {params.cfg:q} --threads {threads} "
        "> {log:q} 2>&1"


PARTICIPANT_TARGETS += [f for pid in PIDS for f in anat_outputs(pid)]
