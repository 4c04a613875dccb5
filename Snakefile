# deepmir: cerebral microbleed and iron deposit detection from SWI, QSM and T2w (DEEPMIR).
# Only wiring here: the config, the rule files of each stage, and the default target.
# Usage: see README.md; every config key is documented in config/README.md.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/anat.smk"
include: "workflow/rules/qsm.smk"
include: "workflow/rules/learn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/census.smk"
include: "workflow/rules/provenance.smk"


rule all:
    """Default target: everything the configured stages produce."""
    default_target: True
    input:
        ALL_TARGETS + PARTICIPANT_TARGETS,


rule participant:
    """Every participant's own outputs: inputs and montage, anatomy, QSM and SWI (the BIDS-App
    participant level; `deepmir run BIDS OUT participant`)."""
    input:
        PARTICIPANT_TARGETS,
