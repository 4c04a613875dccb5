"""Quantitative susceptibility mapping from multi-echo GRE, in torch (CPU or GPU).

- :mod:`.fit` — multi-echo complex field fit with noise map (MEDI ``Fit_ppm_complex``,
  true echo times), R2*;
- :mod:`.unwrap` — Laplacian and quality-guided region-growing unwrapping;
- :mod:`.background` — PDF and V-SHARP background field removal;
- :mod:`.inversion` — MEDI-L1 (``smv``, ``merit``, MEDI+0) and TKD, CSF mask from R2*;
- :mod:`.pipeline` — the whole chain (``reconstruct``) with the workflow defaults.

Fields are relative (ppm) with the sign of ``deepmir.dipole`` (paramagnetic χ > 0).
"""
# submodules are imported where used: importing this package must not import torch
