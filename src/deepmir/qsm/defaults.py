"""Defaults of the QSM chain (torch-free so that the command line starts fast)."""

DEFAULTS = {
    "unwrap": "laplacian",          # laplacian | region_growing
    "background": "pdf",            # pdf | vsharp
    "inversion": "medi",            # medi | tkd
    "lambda": 1000.0,
    "smv": False,
    "smv_radius_mm": 5.0,
    "merit": True,                  # tuned on a separate seed (see the schema)
    "csf": True,                    # MEDI+0
    "lambda_csf": 100.0,
    "csf_r2s_threshold": 5.0,
    "pdf_tol": 0.1,
    "pdf_max_iter": 30,
    "vsharp_max_radius_mm": 12.0,
    "tkd_threshold": 0.19,
    "medi_max_iter": 10,
    "medi_cg_max_iter": 100,
    "residual_weighting": True,     # inflate N_std where the echo fit fails (model error)
    "mask_erode_mm": 4.5,           # erode the brain mask for PDF and MEDI/TKD (tuned, seed 99)
}
