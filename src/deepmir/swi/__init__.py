"""SWI stage (rule swi in workflow/rules/qsm.smk, method.md §4): the susceptibility-weighted
image of the shortest echo and its minimum-intensity projection (:mod:`.weighting`); the
command is :mod:`.cli`."""
