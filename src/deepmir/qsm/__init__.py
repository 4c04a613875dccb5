"""Quantitative susceptibility mapping from multi-echo GRE, in torch (CPU or GPU).

- :mod:`.fit` — multi-echo complex field fit with noise map (MEDI ``Fit_ppm_complex``,
  true echo times), R2*;
- :mod:`.unwrap` — Laplacian and quality-guided region-growing unwrapping;
- :mod:`.background` — PDF and V-SHARP background field removal;
- :mod:`.weights` — data weights and the brain-edge treatment (edge ramp, missing data);
- :mod:`.inversion` — MEDI-L1 (``smv``, ``merit``, MEDI+0, preconditioned CG) and TKD,
  CSF mask from R2*;
- :mod:`.cfl2` — closed-form L2 inversion at its L-curve corner (the challenge baseline);
- :mod:`.lambda_rule` — MEDI's λ from the CFL2 L-curve, in units free of TE and B0;
- :mod:`.pipeline` — the whole chain (``reconstruct``) and the inversion stage on its own
  (``invert``, shared with ``deepmir qsm --field``), with the workflow defaults.

Fields are relative (ppm) with the sign of ``deepmir.dipole`` (paramagnetic χ > 0).
"""
# submodules are imported where used: importing this package must not import torch
