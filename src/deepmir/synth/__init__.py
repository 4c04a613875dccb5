"""Synthetic cohort with known truth: a digital head phantom per participant, written as BIDS."""
