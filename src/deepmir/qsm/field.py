"""An external local field as ``deepmir qsm`` reads it: the field in ppm (from ppm, Hz or
radians over an echo time), the brain mask, the data weights (from a magnitude or a noise map)
and a CSF mask, all on the field's grid. Each problem is one InputError naming the file."""
from __future__ import annotations

import numpy as np

from deepmir import niio
from deepmir.errors import InputError
from deepmir.qsm.megre import load_mask


def read_field(path, unit: str, sign: int, mask_path, b0: float, te: float, magnitude=None,
               noise_std=None, csf_mask=None) -> dict:
    """{field (ppm, 0 outside the mask, times ``sign``), mask, affine, magnitude, noise, csf,
    weights (uniform, magnitude or noise map)}; the optional inputs None when not given."""
    from deepmir.qsm.pipeline import hz_per_ppm
    from deepmir.qsm.weights import noise_from_magnitude

    field, aff = niio.load_image(path, "field")
    mask = load_mask(mask_path, field.shape, aff)
    bad = ~np.isfinite(field) & mask
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} non-finite values inside the mask")
    scale = {"ppm": 1.0, "hz": hz_per_ppm(b0)}.get(unit) or 2 * np.pi * hz_per_ppm(b0) * te
    f_ppm = field if unit == "ppm" else field / scale
    out = {"field": np.where(mask, np.nan_to_num(f_ppm) * sign, 0).astype(np.float32), "mask": mask,
           "affine": aff, "magnitude": None, "noise": None, "csf": None, "weights": "uniform"}
    if magnitude:
        mag, maff = niio.load_image(magnitude, "magnitude", ndim=(3, 4))
        niio.check_grid(magnitude, mag.shape, maff, field.shape, aff, "magnitude")
        mag = np.nan_to_num(np.sqrt((mag ** 2).sum(-1)) if mag.ndim == 4 else np.abs(mag))
        out.update(magnitude=mag, noise=noise_from_magnitude(mag, mask), weights="magnitude")
    if noise_std:
        noise, naff = niio.load_image(noise_std, "noise map")
        niio.check_grid(noise_std, noise.shape, naff, field.shape, aff, "noise map")
        bad = mask & ~(np.isfinite(noise) & (noise > 0))
        if bad.any():
            raise InputError(noise_std, f"{int(bad.sum())} voxels of the mask have no positive finite noise")
        out.update(noise=noise, weights="noise map")
    if csf_mask:
        out["csf"] = load_mask(csf_mask, field.shape, aff) & mask
    return out
