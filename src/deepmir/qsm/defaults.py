"""Defaults of the QSM chain (torch-free so that the command line starts fast)."""

DEFAULTS = {
    "unwrap": "laplacian",          # laplacian | laplacian_weighted | region_growing
    "background": "pdf",            # pdf | vsharp
    "inversion": "medi",            # medi | tkd | cfl2
    "lambda": "auto",               # MEDI λ (toolbox units) or auto: the L-curve rule
    "lambda_factor": 0.35,          # κ of the L-curve rule (tuned on synth seed 99)
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
    "medi_precondition": True,      # k-space preconditioned CG
    "residual_weighting": True,     # inflate N_std where the echo fit fails (model error)
    "mask_erode_mm": 0.0,           # erode the brain mask (0: keep the cortex)
    "edge_mm": 4.5,                 # data weight × (distance to the mask edge / edge_mm)²
    "missing_weight": 0.1,          # normalised data weight below which a voxel has no data
    "missing_min_mm3": 500.0,       # ... in a region at the edge or at least this large
}
