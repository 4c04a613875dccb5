"""Dipole inversion: MEDI-L1 (Liu et al. 2011/2012, MEDI toolbox ``MEDI_L1.m`` with its
defaults and the ``smv``, ``merit`` and MEDI+0 (CSF) options) and TKD (thresholded k-space
division), plus the CSF mask of MEDI+0 from an R2* map.

Units: the local field comes in ppm (ΔB/B0·1e6, paramagnetic sources give the field of a
positive χ through ``deepmir.dipole``); it is converted to radians per ``delta_te`` exactly as
MEDI works (so that λ = 1000 has the toolbox's meaning), and χ is returned in ppm
(paramagnetic positive).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage

from deepmir import GAMMA_BAR_HZ_PER_T
from deepmir.device import pick_device
from deepmir.dipole import dipole_kernel, kspace_grid

from ._torch import as_float, cg, check_voxel_size, embed, fgrad, padded_grid, sphere_ball, to_numpy, unembed


def ppm_to_rad(delta_te: float, b0_tesla: float) -> float:
    """Radians accumulated over ``delta_te`` per ppm of field."""
    return 2.0 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0_tesla) * float(delta_te) * 1e-6


def dataterm_weight(noise_std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MEDI ``dataterm_mask`` mode 1: W = mask / N_std, normalised to mean 1 in the mask
    (voxels with N_std ≤ 0 or non-finite get 0)."""
    ok = mask & torch.isfinite(noise_std) & (noise_std > 0)
    w = torch.where(ok, 1.0 / torch.where(ok, noise_std, torch.ones_like(noise_std)),
                    torch.zeros_like(noise_std))
    mean = w[mask].mean() if bool(mask.any()) else torch.tensor(1.0)
    return w / (mean if float(mean) > 0 else 1.0)


def gradient_weight(magnitude: torch.Tensor, mask: torch.Tensor, voxel_size,
                    percentage: float = 0.9, mask_edges: bool = True, missing=None):
    """MEDI ``gradient_mask`` mode 1: per-direction binary weights, 1 where the gradient of
    magnitude·mask is small. The threshold is set so that the number of gradient components
    (all three directions together) above it equals ``percentage`` × the number of mask
    voxels (MEDI finds the same level by ±5 % steps; here it is taken exactly).

    ``mask_edges`` False: a difference between a mask voxel and one outside it is not an
    edge (the toolbox counts the mask boundary as one, so nothing regularises χ in the
    outermost voxels). ``missing``: bool voxels whose data are missing; every difference
    that touches one is regularised (weight 1), so χ there is filled in from around."""
    g = fgrad(magnitude * mask, voxel_size)
    if not mask_edges:
        crossing = fgrad(mask, voxel_size)
        g = tuple(torch.where(ci != 0, torch.zeros_like(gi), gi) for gi, ci in zip(g, crossing))
    allg = torch.cat([gi.abs().reshape(-1) for gi in g])
    n_above = int(round(percentage * float(mask.sum())))
    n_above = min(max(n_above, 0), allg.numel() - 1)
    if n_above == 0:
        thr = float(allg.max())
    else:
        thr = float(torch.topk(allg, n_above + 1).values[-1])
    out = []
    for ax, gi in enumerate(g):
        wi = (gi.abs() <= thr).to(magnitude.dtype)
        if missing is not None:
            n = missing.shape[ax]
            touch = missing.clone()
            touch.narrow(ax, 0, n - 1).logical_or_(missing.narrow(ax, 1, n - 1))
            wi = torch.where(touch, torch.ones_like(wi), wi)
        out.append(wi)
    return tuple(out)


def erode_mask(mask, voxel_size, radius_mm: float) -> np.ndarray:
    """Binary erosion of ``mask`` by a ball of ``radius_mm`` (voxel sizes honoured): a voxel
    stays when every voxel within ``radius_mm`` of it is in the mask. 0 returns the mask."""
    m = np.asarray(mask) != 0
    if not radius_mm > 0:
        return m
    vs = np.asarray(check_voxel_size(voxel_size))
    rad = np.maximum(np.floor(radius_mm / vs + 1e-6).astype(int), 0)
    zz = np.ogrid[tuple(slice(-k, k + 1) for k in rad)]
    ball = sum((z * v) ** 2 for z, v in zip(zz, vs)) <= radius_mm ** 2 + 1e-6
    return ndimage.binary_erosion(m, structure=ball, border_value=0)


def extract_csf_mask(r2s, mask, voxel_size, threshold: float = 5.0, erode_mm: float = 5.0,
                     n_regions: int = 3, centre_fraction: float = 0.5) -> np.ndarray:
    """CSF mask for MEDI+0 (after MEDI ``extract_CSF``): voxels of the brain mask, eroded by
    ``erode_mm``, with 0 < R2* < ``threshold`` s⁻¹, keeping the ``n_regions`` largest
    6-connected components whose centroid lies near the brain centre (within
    ``centre_fraction`` of the mask's half-extent along every axis) — the ventricles.
    Returns a bool array (may be empty when no such CSF exists)."""
    m = np.asarray(mask) != 0
    r = np.asarray(r2s, np.float32)
    m_e = erode_mask(m, voxel_size, erode_mm)
    cand = m_e & (r > 0) & (r < threshold)
    lab, n = ndimage.label(cand)
    if n == 0:
        return np.zeros(m.shape, bool)
    idx = np.argwhere(m)
    centre = idx.mean(0)
    half = (idx.max(0) - idx.min(0) + 1) / 2.0
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    cents = np.array(ndimage.center_of_mass(cand, lab, index=np.arange(1, n + 1)))
    near = np.all(np.abs(cents - centre) <= centre_fraction * half, axis=1)
    order = [i for i in np.argsort(-sizes) if near[i]][:n_regions]
    return np.isin(lab, np.asarray(order, int) + 1)


def _crop(mask_np: np.ndarray, margin: int):
    return padded_grid(mask_np, margin, even=True)


class _DipoleConv:
    """Circular convolution with the (real, symmetric) dipole kernel on ``grid``, counting
    FFTs. ``fft="real"`` (default) uses rfftn/irfftn on the half spectrum (χ and the
    kernel are real); ``fft="complex"`` the full complex FFT as MEDI does (the same result
    to rounding; kept as the reference)."""

    def __init__(self, grid, kernel_full: torch.Tensor, fft: str = "real"):
        if fft not in ("real", "complex"):
            raise ValueError(f"fft must be 'real' or 'complex', got {fft!r}")
        self.grid = tuple(grid)
        self.real = fft == "real"
        self.d = self.half(kernel_full)
        self.n_fft = 0

    def __call__(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """x ⊛ kernel (a fresh tensor: torch's FFTs with ``out=`` compute into a temporary
        and copy it, which costs more than the allocation)."""
        k = self.d if k is None else k
        self.n_fft += 2
        if self.real:
            return torch.fft.irfftn(torch.fft.rfftn(x).mul_(k), s=self.grid)
        return torch.fft.ifftn(torch.fft.fftn(x).mul_(k)).real.contiguous()

    def half(self, k_full: torch.Tensor) -> torch.Tensor:
        """A real kernel given on the full grid, in this convolution's layout. For the real
        path it is first made even, (K(k) + K(−k))/2: real(ifftn(K·fftn(x))) equals the
        convolution with that even part, so both paths agree exactly even where K is not
        even itself (the Nyquist planes of an even grid with an oblique B0)."""
        cplx = torch.complex64 if k_full.dtype == torch.float32 else torch.complex128
        if not self.real:
            return k_full.to(cplx)
        flipped = torch.roll(torch.flip(k_full, (0, 1, 2)), (1, 1, 1), (0, 1, 2))
        even = 0.5 * (k_full + flipped)
        # stored complex: multiplying a complex spectrum by a real tensor converts the
        # latter to complex on every call (about 3× slower than this product)
        return even[..., : self.grid[-1] // 2 + 1].to(cplx).contiguous()


def _tv_weights(x: torch.Tensor, wg, voxel_size, eps: float):
    """IRLS coefficients of the weighted anisotropic TV, per axis, with the finite-difference
    scale folded in: c = M_G² / (sqrt(|M_G ∇x|² + ε) · d²) (MEDI's wG·Vr·wG); 0 in the last
    plane along the axis, which has no forward difference (:func:`_tv_apply` relies on it).
    Returns ``(coef, diag)``: the three per-axis tensors and the stencil's centre weight
    Σ_axes (c_i + c_{i−1})."""
    coef = []
    diag = torch.zeros_like(x).reshape(-1)
    for ax, (wgi, gi) in enumerate(zip(wg, fgrad(x, voxel_size))):
        c = (wgi * gi).square_().add_(eps).rsqrt_().mul_(wgi * wgi)
        c.div_(voxel_size[ax] ** 2).narrow(ax, x.shape[ax] - 1, 1).zero_()
        coef.append(c)
        cf, s = c.reshape(-1), x.stride(ax)
        diag.add_(cf)
        diag[s:].add_(cf[: cf.numel() - s])
    return tuple(coef), diag.reshape(x.shape)


def _tv_apply(x: torch.Tensor, tv, out: torch.Tensor) -> torch.Tensor:
    """out += ∇ᵀ(C ∇x) for forward differences with a zero last plane (MEDI's
    div(wG·Vr·wG·grad(x))), ``tv`` = (coef, diag) from :func:`_tv_weights` (voxel-size
    scale included, each axis's coefficient 0 in its last plane), as the 7-point stencil
    diag_i x_i − Σ_axes (c_i x_{i+1} + c_{i−1} x_{i−1}). ``x``, the coefficients and
    ``out`` are contiguous: a neighbour along an axis is then a shift by its stride in the
    flattened arrays (contiguous slices, several times faster than strided ones); where the
    shift wraps into the next row the coefficient is 0."""
    coef, diag = tv
    xf, of = x.reshape(-1), out.reshape(-1)
    of.addcmul_(diag.reshape(-1), xf)
    for ax, c in enumerate(coef):
        s = x.stride(ax)
        n = xf.numel() - s
        cf = c.reshape(-1)[:n]
        of[:n].addcmul_(cf, xf[s:], value=-1.0)
        of[s:].addcmul_(cf, xf[:n], value=-1.0)
    return out


def _circulant_precond(conv, tv, w2l, mf, voxel_size):
    """M ≈ A⁻¹ for MEDI's Gauss–Newton operator A = ∇ᵀC∇ + Dᵀ(2λW²)D: the shift-invariant
    operator with C and 2λW² replaced by their means over the mask (``mf``: the mask as
    0/1 floats), inverted in k-space (two FFTs per application; A's constant null space is
    left alone)."""
    grid = conv.grid
    mflat = mf.reshape(-1)
    n = float(mflat.sum())

    def mean_in_mask(t):
        return float(torch.dot(t.reshape(-1), mflat)) / n

    ks = kspace_grid(grid, voxel_size, rfft=True, device=w2l.device, dtype=w2l.dtype)
    spec = mean_in_mask(w2l) * conv.d.real ** 2
    for k, h, c in zip(ks, voxel_size, tv[0]):
        spec = spec + mean_in_mask(c) * (2.0 - 2.0 * torch.cos(2 * np.pi * k * float(h)))
    inv = torch.where(spec > 0, 1.0 / spec.clamp_min(1e-30), torch.zeros_like(spec))
    inv = inv.to(conv.d.dtype).contiguous()

    def apply(r):
        return conv(r, inv)
    return apply


def medi_l1(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None,
            noise_std=None, b0_tesla: float = 3.0, delta_te: float = 0.0075,
            lam: float = 1000.0, smv: bool = False, smv_radius_mm: float = 5.0,
            merit: bool = False, csf_mask=None, lam_csf: float = 100.0,
            percentage: float = 0.9, max_iter: int = 10, tol_norm_ratio: float = 0.1,
            cg_max_iter: int = 100, cg_tol: float = 0.01, eps: float = 1e-6,
            margin: int = 8, fft: str = "real", dtype=torch.float32, device=None,
            verbose: bool = False, mask_edges: bool = True, missing=None,
            precondition: bool = False) -> dict:
    """MEDI-L1 dipole inversion.

    Minimises ‖M_G ∇χ‖₁ + λ‖W(e^{iDχ} − e^{if})‖²₂ (+ λ_CSF‖M_CSF(χ − mean_CSF χ)‖²₂ for
    MEDI+0) by Gauss–Newton with IRLS for the L1 term, as MEDI_L1.m: each outer step solves
    (∇ᵀM_G V M_G∇ + 2λ DᵀW²D [+ λ_CSF P]) dχ = −(gradient) by CG (tol ``cg_tol``, at most
    ``cg_max_iter``, from dχ = 0), V = 1/sqrt(|M_G∇χ|² + ε); stops when ‖dχ‖/‖χ‖ <
    ``tol_norm_ratio`` (‖χ‖ before the update, as the toolbox) or after ``max_iter`` steps.

    Parameters: ``local_field_ppm`` (X, Y, Z) local field in ppm; ``mask`` brain mask;
    ``voxel_size`` mm; ``b0_dir`` unit B0 direction along the array axes; ``magnitude`` for
    the morphology mask (default: the mask itself, i.e. plain TV inside); ``noise_std`` any
    unit (default uniform); ``b0_tesla`` and ``delta_te`` (s) convert ppm to MEDI's radians.
    ``smv``: erode the mask by ``smv_radius_mm`` and apply the SMV high-pass to the kernel
    and field (MEDI 'smv'); ``merit``: re-weight voxels with large residual after every
    step; ``csf_mask``: MEDI+0 (the result is also referenced to mean χ in the CSF mask).
    The problem is solved on the mask's bounding box plus ``margin`` voxels (circular
    convolution, like MEDI's own FFTs on the acquisition matrix). ``fft``: "real"
    (rfftn, half the work) or "complex" (MEDI's fftn; same result to rounding);
    ``dtype``: torch.float32 (default) or torch.float64.

    Additions to the toolbox (defaults off, i.e. the toolbox's behaviour): ``mask_edges``
    False: the mask boundary is no edge of the morphology mask (:func:`gradient_weight`);
    ``missing``: bool voxels without usable data (see ``.weights.missing_voxels``), filled
    in by the regulariser (the morphology mask is 1 around them); ``precondition``:
    CG preconditioned by the shift-invariant approximation of each Gauss–Newton operator
    (:func:`_circulant_precond`; the same solution in about half the CG iterations).

    Returns ``{"chi": ppm (X, Y, Z) zero outside the (possibly eroded) mask, "mask": that
    mask, "iterations", "cg_iterations" (list), "cg_residuals" (relative residual reached
    in each step), "ratios" (‖dχ‖/‖χ‖ per step), "n_fft" (FFTs done, forward and inverse
    counted one each), "grid", "seconds" (wall), "cpu_seconds" (process CPU time: on a
    shared CPU the figure that waiting for a core does not inflate), "badpoint",
    "misfit_ppm" (weighted rms of Dχ − f over the mask, noise-map weights)}``.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    m_np = np.asarray(mask) != 0
    full_shape = m_np.shape
    sl, grid = _crop(m_np, int(margin))

    def put(a):
        return embed(as_float(a, dev, dtype), sl, grid)

    scale = ppm_to_rad(delta_te, b0_tesla)
    f = put(np.nan_to_num(np.asarray(local_field_ppm, np.float32))) * scale
    msk = put(m_np.astype(np.float32)) > 0
    n_std = put(np.ones(full_shape, np.float32) if noise_std is None
                else np.nan_to_num(np.asarray(noise_std, np.float32)))
    mag = put(m_np.astype(np.float32) if magnitude is None
              else np.nan_to_num(np.asarray(magnitude, np.float32)))
    csf = None
    if csf_mask is not None and np.any(csf_mask):
        csf = put(np.asarray(csf_mask) != 0) > 0

    conv = _DipoleConv(grid, dipole_kernel(grid, vs, b0_dir, device=dev, dtype=dtype), fft)
    d = conv.d
    sk = None
    tempn = n_std
    if smv:
        sk = conv.half(torch.fft.fftn(sphere_ball(grid, vs, smv_radius_mm, dev, dtype)).real)
        msk = (conv(msk.to(dtype), sk) > 0.999) & msk
        d = (1.0 - sk) * d
        f = (f - conv(f, sk)) * msk
        tempn = torch.sqrt(conv(n_std * n_std, sk).clamp_min(0) + n_std * n_std)
        if csf is not None:
            csf = csf & msk
    mf = msk.to(dtype)
    w = w_noise = dataterm_weight(tempn, msk)
    w2l = (2.0 * lam) * w * w          # 2λ W², applied between the two convolutions
    miss = None if missing is None else (put(np.asarray(missing) != 0) > 0) & msk
    wg = gradient_weight(mag, mf, vs, percentage, mask_edges, miss)
    if csf is not None and not bool(csf.any()):
        csf = None
    csf_f = None if csf is None else csf.to(dtype)
    csf_idx = None if csf is None else torch.nonzero(csf.reshape(-1)).reshape(-1)

    def add_p_csf(r, x, alpha):
        """r += alpha · M_CSF (x − mean_CSF x) (a self-adjoint, idempotent projection), on
        the CSF voxels only (a few per cent of the grid; it runs in every CG iteration)."""
        v = x.reshape(-1).index_select(0, csf_idx)
        r.reshape(-1).index_add_(0, csf_idx, v.sub_(v.mean()), alpha=alpha)  # no device sync
        return r

    x = torch.zeros(grid, dtype=dtype, device=dev)
    cg_its, ratios, cg_res = [], [], []
    it = 0
    ratio = np.inf
    n_std_cur = n_std.clone()
    badpoint = torch.zeros(grid, dtype=torch.bool, device=dev)
    while ratio > tol_norm_ratio and it < max_iter:
        it += 1
        tv = _tv_weights(x, wg, vs, eps)

        pc = _circulant_precond(conv, tv, w2l, mf, vs) if precondition else None

        def apply_a(dx, tv=tv, w2l=w2l):
            r = conv(conv(dx, d).mul_(w2l), d)
            _tv_apply(dx, tv, r)
            if csf_f is not None:
                add_p_csf(r, dx, lam_csf)
            return r

        b = conv(torch.sin(conv(x, d).sub_(f)).mul_(w2l), d)
        _tv_apply(x, tv, b)
        if csf_f is not None:
            add_p_csf(b, x, lam_csf)
        dx, n_cg, rel_cg = cg(apply_a, b.neg_(), cg_tol, cg_max_iter, precond=pc)
        cg_res.append(rel_cg)
        cg_its.append(n_cg)
        xn = float(torch.linalg.vector_norm(x))
        ratio = float(torch.linalg.vector_norm(dx)) / xn if xn > 0 else np.inf
        ratios.append(ratio)
        x.add_(dx)
        del dx, b
        if verbose:
            print(f"medi: iter {it} cg {n_cg} (relative residual {rel_cg:.3g}) ratio {ratio:.3g}")
        if merit:
            dxx = conv(x, d)
            wres_c = torch.polar(w, dxx) - torch.polar(w, f)
            wres_c = wres_c - wres_c[msk].mean()
            a = wres_c[msk].abs()
            factor = float(a.std()) * 6.0
            if factor > 0:
                wr = (wres_c.abs() / factor).clamp_min(1.0)
                badpoint |= wr > 1
                n_std_cur = torch.where(msk, n_std_cur * wr * wr, n_std_cur)
                tempn = n_std_cur
                if smv:
                    tempn = torch.sqrt(conv(n_std_cur * n_std_cur, sk).clamp_min(0)
                                       + n_std_cur * n_std_cur)
                w = dataterm_weight(tempn, msk)
                w2l = (2.0 * lam) * w * w

    # the weighted rms misfit of the result (ppm, noise-map weights, small angle): what the
    # discrepancy principle would compare with the noise level
    r2 = (torch.polar(torch.ones_like(f), conv(x, d))
          - torch.polar(torch.ones_like(f), f)).abs().square_()
    misfit = float(torch.sqrt((w_noise * w_noise * r2)[msk].mean())) / scale
    chi = x / scale * mf
    if csf is not None:
        chi = (chi - chi[csf].mean()) * mf
    out_chi = to_numpy(unembed(chi, sl, full_shape))
    out_mask = to_numpy(unembed(msk, sl, full_shape))
    bad = to_numpy(unembed(badpoint, sl, full_shape))
    return {"chi": out_chi.astype(np.float32), "mask": out_mask.astype(bool),
            "iterations": it, "cg_iterations": cg_its, "cg_residuals": cg_res, "ratios": ratios,
            "n_fft": conv.n_fft, "grid": tuple(grid),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "badpoint": bad, "misfit_ppm": misfit}


def tkd(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold: float = 0.19,
        margin: int = 16, device=None) -> np.ndarray:
    """Thresholded k-space division (Shmueli et al. 2009): χ = F⁻¹[F(f)/D_t] with
    D_t = D where |D| > t, else t·sign(D) (t for D = 0 except at DC, which is 0 — the mean
    of χ is undetermined). Units follow the field (ppm in, ppm out); zero outside the mask.
    """
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    m_np = np.asarray(mask) != 0
    sl, grid = padded_grid(m_np, int(margin))
    f = embed(as_float(np.nan_to_num(np.asarray(local_field_ppm, np.float32)) * m_np, dev),
              sl, grid)
    d = dipole_kernel(grid, vs, b0_dir, rfft=True, device=dev)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    dt = torch.where(d.abs() > threshold, d, threshold * sign)
    inv = 1.0 / dt
    inv.reshape(-1)[0] = 0.0
    chi = torch.fft.irfftn(torch.fft.rfftn(f) * inv, s=grid)
    out = to_numpy(unembed(chi, sl, m_np.shape)) * m_np
    return out.astype(np.float32)
