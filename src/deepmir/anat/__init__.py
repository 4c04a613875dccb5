"""Anatomical stage (rules in workflow/rules/anat.smk, method.md §2): N4 bias correction
(:mod:`.bias`), rigid registration of T1w/T2w onto the GRE (MEGRE / SWI) grid (:mod:`.register`),
brain masks (:mod:`.mask`, :mod:`.mni`), the MNI template warp (:mod:`.template`), all through
one ANTs bridge (:mod:`.ants`); the command is :mod:`.cli`. QC figures are in :mod:`deepmir.qc`.
This package re-exports the numerics that the other stages use.

Conventions (used by every function of this package and by the files the ``deepmir`` commands write)
-----------------------------------------------------------------------------------------
* An image is a numpy array plus its NIfTI affine ``A`` (4×4): ``A @ (i, j, k, 1)`` is the
  world position of voxel (i, j, k) in **RAS millimetres** (x → Right, y → Anterior,
  z → Superior; nibabel / NIfTI convention). Any orientation is allowed: oblique, LPS- or
  RAS-ordered arrays, slices along any array axis.
* A spatial transform is a 4×4 matrix ``M`` in world RAS mm that maps a point of the
  **moving** image to the **fixed** image, for the same anatomical location::

      x_fixed_world = M @ x_moving_world          (homogeneous column vectors)

  so ``from-T1w_to-MEGRE`` is the ``M`` with the T1w as moving image and the GRE as fixed
  image, ``x_MEGRE = M @ x_T1w``. Composition reads right to left:
  ``M_tpl_to_gre = M_t1_to_gre @ M_tpl_to_t1``.
  To *resample* a moving image onto the fixed grid one needs the opposite direction (pull
  back): fixed voxel v → ``inv(A_moving) @ inv(M) @ A_fixed @ v`` (see ``resample_to``).
* ANTs (ITK) works in **LPS** (x → Left, y → Posterior) and its registration transforms map
  **fixed → moving** points (the pull-back direction). The one conversion point is
  ``to_ants`` / ``from_ants`` for images and ``_ants_to_ras`` / ``_ras_to_ants`` for affine
  transforms: ``T_ras = F @ T_lps @ F`` with ``F = diag(-1, -1, 1, 1)``, and
  ``M = inv(T_ras)``.
* Determinism: every ANTs call here runs with a fixed random seed (``seed``) for its metric
  sampling; set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` for bit-identical results across
  machines with different core counts (multi-threaded sums may differ in the last bits).
"""
from deepmir.anat.ants import from_ants, to_ants
from deepmir.anat.bias import coefficient_of_variation, n4
from deepmir.anat.mask import brain_mask_from_magnitude, dice, fill_holes, largest_component
from deepmir.anat.mni import brain_mask, brain_mask_from_t1, mni_template, template_to_t1
from deepmir.anat.register import (
                                   apply_transform,
                                   downsample,
                                   gre_reference,
                                   mean_displacement,
                                   resample_to,
                                   rigid_matrix,
                                   rigid_register,
                                   world_coords,
)

__all__ = ["apply_transform", "brain_mask", "brain_mask_from_magnitude", "brain_mask_from_t1",
           "coefficient_of_variation", "dice", "downsample", "fill_holes", "from_ants",
           "gre_reference", "largest_component", "mean_displacement", "mni_template", "n4",
           "resample_to", "rigid_matrix", "rigid_register", "template_to_t1", "to_ants",
           "world_coords"]
