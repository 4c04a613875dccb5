"""Census stage (rules in workflow/rules/census.smk, method.md §8): the final model applied to
every participant and each lesion counted with its position, size, confidence, χ, SWI contrast
and region (:mod:`.count`), then one row per participant and a cohort summary; the commands are
:mod:`.cli`."""
