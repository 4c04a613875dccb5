"""Learning stage (rules in workflow/rules/learn.smk, method.md §5): stacks of 2D slices
(:mod:`.stack`, :mod:`.dataset`), leave-one-out folds (:mod:`.folds`), the U-Net (:mod:`.unet`)
and its two learners (:mod:`.learner`, the default patch learner; :mod:`.train`, the study's
full-slice protocol, with :mod:`.augment`), prediction (:mod:`.predict`, :mod:`.patches`),
lesions from probabilities (:mod:`.postprocess`), the model card (:mod:`.modelcard`) and the
nnU-Net export (:mod:`.nnunet`); the commands are :mod:`.cli`."""
