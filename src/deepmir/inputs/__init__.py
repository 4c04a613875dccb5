"""Inputs stage (rules in workflow/rules/inputs.smk, method.md §1): the BIDS dataset checked
against the data contract and each participant's MEGRE series read into one 4D magnitude, one
4D phase in radians and a JSON description (:mod:`.bids`); the commands are :mod:`.cli`."""
