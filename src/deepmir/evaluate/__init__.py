"""Evaluation stage (rules in workflow/rules/evaluate.smk, method.md §6): lesion-wise metrics
of each prediction (:mod:`.metrics`, on :mod:`deepmir.lesions`), their inputs (:mod:`.inputs`),
the statistics (:mod:`.stats`), Table 3 / S3.1 and the other group outputs (:mod:`.summary`,
:mod:`.tables`, :mod:`.figures`), the report's summary page (:mod:`.report`) and timing tables
(:mod:`.benchtable`); the commands are :mod:`.cli`."""
