"""The QC montage of one participant's inputs (rule montage): echo-1 and last-echo magnitude,
echo-1 phase and the T2w resampled onto the MEGRE grid, through the slice with the most
lesion voxels (:mod:`deepmir.qc` draws it)."""
from __future__ import annotations

import numpy as np

from deepmir import niio, qc


def montage(mag_path, phase_path, info_path, t2w_path="", labels_path="", xfm_path=""):
    """The montage figure of the inputs stage's files (T2w, its transform and the labels optional)."""
    from deepmir.anat import resample_to

    mag, aff = niio.load(mag_path)
    phase, _ = niio.load(phase_path)
    info = niio.read_json(info_path)
    labels = niio.load(labels_path)[0].astype(np.uint8) if labels_path else None
    axis = int(np.argmax(np.abs(info["B0_dir"])))
    index = qc.lesion_slice(labels if labels is not None else mag[..., 0], axis)
    te = info["EchoTime"]
    panels = [(f"magnitude TE {1000 * te[0]:g} ms", mag[..., 0], None, "gray"),
              (f"magnitude TE {1000 * te[-1]:g} ms", mag[..., -1], None, "gray"),
              (f"phase TE {1000 * te[0]:g} ms (rad)", phase[..., 0], (-np.pi, np.pi), "twilight")]
    if t2w_path:
        t2, t2_aff = niio.load(t2w_path)
        xfm = niio.read_matrix(xfm_path) if xfm_path else None
        panels.append(("T2w on the MEGRE grid", resample_to(t2, t2_aff, xfm, mag.shape[:3], aff), None, "gray"))
    return qc.montage_figure(panels, labels, axis, index,
                             f"{info.get('participant', '')} — slice {index} of axis {axis}")
