"""nnU-Net v2's network-topology rules, the U-Net feature-map-size memory proxies, the planner
presets, and the planner's patch fitting, transpose and 3d_lowres rule that build on them.

Pure functions. `pool_and_conv_props` follows
nnunetv2/experiment_planning/experiment_planners/network_topology.py::get_pool_and_conv_props;
`plain_unet_feature_map_size` and `residual_unet_feature_map_size` follow
dynamic_network_architectures' PlainConvUNet / ResidualEncoderUNet
`compute_conv_feature_map_size`. `PLANNER_PRESETS` holds what nnU-Net's ExperimentPlanner and its
ResEnc planners (residual_unets/residual_encoder_unet_planners.py: nnUNetPlannerResEncM/L/XL)
set differently: the proxy network, its memory reference and the batch cap. nnU-Net's planner
builds its network through
`get_network_from_plans` without a `deep_supervision` argument, so PlainConvUNet's default
(False) applies and only the top segmentation head is counted: hence the default below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Topology:
    num_pool_per_axis: tuple[int, ...]
    pool_kernel_sizes: list[tuple[int, ...]]  # [0] is all ones (stage 0 does not downsample)
    conv_kernel_sizes: list[tuple[int, ...]]  # one per stage; the bottleneck is all 3
    patch_size: tuple[int, ...]  # padded to be divisible by `divisible_by`
    divisible_by: tuple[int, ...]  # 2 ** num_pool per axis


def pad_to_divisible(shape, divisible_by) -> tuple[int, ...]:
    """Round each axis up to the next multiple of its divisor (unchanged when already one)."""
    return tuple(int(-(-s // d) * d) for s, d in zip(shape, divisible_by, strict=True))


def pool_and_conv_props(
    spacing, patch_size, min_feature_map_size: int = 4, max_numpool: int = 999
) -> Topology:
    """Pool every axis that stays >= 2 * min_feature_map_size voxels and whose spacing is within
    2x of the finest pooled-able axis; a lone pooling axis needs >= 3 * min_feature_map_size.
    An axis gets kernel 3 once its spacing is within 2x of the finest, else 1. The patch is
    padded so it divides by 2 ** pools per axis."""
    dim = len(spacing)
    spacing_now = [float(s) for s in spacing]
    size_now = [float(s) for s in patch_size]
    num_pool = [0] * dim
    kernel = [1] * dim
    pools: list[tuple[int, ...]] = [(1,) * dim]
    convs: list[tuple[int, ...]] = []
    while True:
        axes = [a for a in range(dim) if size_now[a] >= 2 * min_feature_map_size]
        if not axes:
            break
        finest = min(spacing_now[a] for a in axes)
        axes = [a for a in axes if spacing_now[a] / finest < 2 and num_pool[a] < max_numpool]
        if not axes or (len(axes) == 1 and size_now[axes[0]] < 3 * min_feature_map_size):
            break
        # nnU-Net compares against the finest spacing over all axes here, not only the poolable
        kernel = [
            3 if k == 3 or spacing_now[a] / min(spacing_now) < 2 else 1
            for a, k in enumerate(kernel)
        ]
        step = [1] * dim
        for a in axes:
            step[a] = 2
            num_pool[a] += 1
            spacing_now[a] *= 2
            size_now[a] = -(-size_now[a] // 2)
        pools.append(tuple(step))
        convs.append(tuple(kernel))
    convs.append((3,) * dim)
    divisible_by = tuple(2**n for n in num_pool)
    return Topology(
        tuple(num_pool), pools, convs, pad_to_divisible(patch_size, divisible_by), divisible_by
    )


def features_per_stage(
    num_stages: int, base_features: int = 32, max_features: int = 320
) -> list[int]:
    return [min(base_features * 2**s, max_features) for s in range(num_stages)]


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def plain_unet_feature_map_size(
    patch_size,
    pool_kernel_sizes,
    features: list[int],
    num_classes: int,
    convs_per_stage: int = 2,
    convs_per_decoder_stage: int = 2,
    deep_supervision: bool = False,
) -> int:
    """Summed element count of every conv / transposed-conv / seg-head output of a PlainConvUNet
    for one sample (nnU-Net's VRAM proxy; norms and nonlinearities are not counted). With
    `deep_supervision` every decoder stage's head counts, else only the full-resolution one."""
    sizes, size = [], list(patch_size)
    for stride in pool_kernel_sizes:  # encoder stage s outputs at size // prod(strides[:s+1])
        size = [z // s for z, s in zip(size, stride, strict=True)]
        sizes.append(size)
    total = sum(convs_per_stage * f * _prod(sz) for f, sz in zip(features, sizes, strict=True))
    n = len(features)
    for level in range(n - 2, -1, -1):  # decoder stages, deepest first
        voxels = _prod(sizes[level])
        total += convs_per_decoder_stage * features[level] * voxels  # conv blocks
        total += features[level] * voxels  # transposed conv from the level below
        if deep_supervision or level == 0:
            total += num_classes * voxels  # segmentation head
    return total


def residual_unet_feature_map_size(
    patch_size,
    pool_kernel_sizes,
    features: list[int],
    num_classes: int,
    blocks_per_stage,
    convs_per_decoder_stage: int = 1,
    deep_supervision: bool = False,
) -> int:
    """The same sum for DNA's ResidualEncoderUNet (BasicBlockD encoder, plain decoder): the stem
    conv at full resolution, two convs per block, plus the 1x1 projection of a block whose
    channels or size change (the first of every stage but stage 0), then the decoder as above."""
    size = list(patch_size)
    total = features[0] * _prod(size)  # stem
    sizes, in_channels = [], features[0]
    for f, stride, blocks in zip(features, pool_kernel_sizes, blocks_per_stage, strict=False):
        after = [z // s for z, s in zip(size, stride, strict=True)]
        projects = in_channels != f or after != size
        total += (2 * blocks + projects) * f * _prod(after)
        sizes.append(after)
        size, in_channels = after, f
    n = len(features)
    for level in range(n - 2, -1, -1):
        voxels = _prod(sizes[level])
        total += (convs_per_decoder_stage + 1) * features[level] * voxels  # convs, transposed conv
        if deep_supervision or level == 0:
            total += num_classes * voxels
    return total


# ----------------------------------------------------------------------------------------------
# planner presets: nnU-Net v2's nnUNetPlans and nnUNetResEncUNet{M,L,XL}Plans
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerPreset:
    """What one of nnU-Net's 3D planners sets. The memory budget is `reference_3d` scaled by
    (gpu_memory_gb / reference_gb); `reference_gb` is also the planner's default target."""

    plans_name: str  # nnU-Net's plans identifier
    network: str  # the proxy (and planned) network: "plain" PlainConvUNet, "residual" ResEnc
    reference_3d: float  # feature-map-size budget at reference_gb and batch 2
    reference_gb: float
    max_dataset_covered: float  # the batch covers at most this share of the dataset's voxels
    encoder_blocks: tuple[int, ...]  # convs (plain) or residual blocks per stage, cut to depth
    decoder_convs: int  # convs per decoder stage
    reference_2d: float  # the 2D budget at reference_gb and batch 12
    # nnUNetPlans shrinks the patch while estimate / ref_batch * 2 > budget (the same as
    # estimate > budget in 3D, where ref_batch is 2, but 6x the budget in 2D); ResEnc's
    # planners compare the estimate with the budget directly
    fit_scales_by_batch: bool = True


RESENC_ENCODER_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
PLANNER_PRESETS: dict[str, PlannerPreset] = {
    "nnunet": PlannerPreset("nnUNetPlans", "plain", 560e6, 8.0, 0.05, (2,) * 14, 2, 85e6),
    # ResEnc M/L/XL: their own references, max_dataset_covered 1 (no 5 % cap; the batch still
    # never covers more than the whole dataset)
    "resenc_m": PlannerPreset(
        "nnUNetResEncUNetMPlans",
        "residual",
        680e6,
        8.0,
        1.0,
        RESENC_ENCODER_BLOCKS,
        1,
        135e6,
        fit_scales_by_batch=False,
    ),
    "resenc_l": PlannerPreset(
        "nnUNetResEncUNetLPlans",
        "residual",
        2100e6,
        24.0,
        1.0,
        RESENC_ENCODER_BLOCKS,
        1,
        380e6,
        fit_scales_by_batch=False,
    ),
    "resenc_xl": PlannerPreset(
        "nnUNetResEncUNetXLPlans",
        "residual",
        3600e6,
        40.0,
        1.0,
        RESENC_ENCODER_BLOCKS,
        1,
        560e6,
        fit_scales_by_batch=False,
    ),
}
NNUNET = PLANNER_PRESETS["nnunet"]


def memory_reference(preset: PlannerPreset, gpu_memory_gb: float, dim: int = 3) -> float:
    """The proxy budget for a memory target (nnU-Net: reference_val * target / corresp_GB)."""
    reference = preset.reference_3d if dim == 3 else preset.reference_2d
    return reference * gpu_memory_gb / preset.reference_gb


def reference_batch(dim: int) -> int:
    """The batch size nnU-Net's budgets were measured at: 2 in 3D, 12 in 2D."""
    return REFERENCE_BATCH_3D if dim == 3 else REFERENCE_BATCH_2D


# ----------------------------------------------------------------------------------------------
# nnU-Net's patch fitting, transpose and 3d_lowres rule (ExperimentPlanner, 3D)
# ----------------------------------------------------------------------------------------------

REFERENCE_BATCH_3D = 2  # the batch size nnU-Net's proxy budget was measured at
REFERENCE_BATCH_2D = 12
MAX_FEATURES_2D = 512  # nnU-Net's UNet_max_features_2d
LOWRES_THRESHOLD = 0.25  # a 3d_lowres stage is tried while the patch covers less
LOWRES_SPACING_STEP = 1.03  # lowres spacing grows by 3 % per try


def planner_estimate(
    topo: Topology,
    num_classes: int,
    base_features: int = 32,
    max_features: int = 320,
    preset: PlannerPreset = NNUNET,
) -> int:
    """nnU-Net's VRAM proxy for a topology: the planner builds the preset's network without deep
    supervision (only the top head counts); input channels do not enter (conv outputs only)."""
    n = len(topo.pool_kernel_sizes)
    feats = features_per_stage(n, base_features, max_features)
    if preset.network == "plain":
        return plain_unet_feature_map_size(
            topo.patch_size, topo.pool_kernel_sizes, feats, num_classes
        )
    blocks = [preset.encoder_blocks[min(s, len(preset.encoder_blocks) - 1)] for s in range(n)]
    return residual_unet_feature_map_size(
        topo.patch_size, topo.pool_kernel_sizes, feats, num_classes, blocks, preset.decoder_convs
    )


def _initial_patch(spacing, median_shape) -> list[float]:
    """The 256^3-volume (2D: 2048^2-area) patch with the spacing's aspect ratio, clipped to the
    (float) median shape; nnU-Net keeps a fractional median (e.g. 40.5) here and pads it up
    later."""
    inv = 1 / np.array(spacing, dtype=float)
    if len(spacing) == 3:
        patch = [round(v) for v in inv * (256**3 / np.prod(inv)) ** (1 / 3)]
    else:
        patch = [round(v) for v in inv * (2048**2 / np.prod(inv)) ** (1 / 2)]
    return [min(p, float(m)) for p, m in zip(patch, median_shape, strict=True)]


def fit_patch(
    spacing,
    median_shape,
    reference: float,
    num_classes: int,
    base_features: int = 32,
    max_features: int = 320,
    preset: PlannerPreset = NNUNET,
) -> tuple[Topology, int]:
    """Start from the 256^3-volume (2D: 2048^2) patch clipped to the median shape; shrink the
    axis with the largest patch/median ratio (the last one on ties) by one divisibility step
    until the proxy fits `reference` (the preset's rule). The dimension is len(spacing).
    Returns the topology and its proxy estimate."""

    def estimate(t: Topology) -> int:
        return planner_estimate(t, num_classes, base_features, max_features, preset)

    ref_batch = reference_batch(len(spacing)) if preset.fit_scales_by_batch else 2
    topo = pool_and_conv_props(spacing, _initial_patch(spacing, median_shape))
    current = estimate(topo)
    while current / ref_batch * 2 > reference:
        patch = list(topo.patch_size)
        ratios = [p / float(m) for p, m in zip(patch, median_shape, strict=True)]
        axis = int(np.argsort(ratios)[-1])
        probe = list(patch)
        probe[axis] -= topo.divisible_by[axis]
        if probe[axis] < 1:
            break  # nothing left to shrink on the worst axis; keep the smallest valid patch
        # re-derive the divisor for the smaller patch so no valid size is skipped (nnU-Net)
        patch[axis] -= pool_and_conv_props(spacing, probe).divisible_by[axis]
        if patch[axis] < 1:
            break
        topo = pool_and_conv_props(spacing, patch)
        current = estimate(topo)
    return topo, current


def determine_transpose(spacing) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """nnU-Net's transpose: the coarsest axis (the first on ties) first, the others in order.
    Returns (forward, backward): plan axis a is image axis forward[a]; image axis a is plan
    axis backward[a]."""
    spacing = [float(s) for s in spacing]
    coarse = spacing.index(max(spacing))
    forward = (coarse, *(a for a in range(3) if a != coarse))
    return forward, tuple(forward.index(a) for a in range(3))


@dataclass(frozen=True)
class LowresStage:
    """nnU-Net's 3d_lowres configuration before its batch size (in the plan's frame)."""

    spacing: tuple[float, ...]
    median_shape: tuple[int, ...]  # the fullres median scaled to this spacing, rounded
    median_voxels: float  # the same unrounded, multiplied out (the dataset-size estimate)
    topology: Topology
    estimate: int


def lowres_stage(
    spacing,
    median_shape,
    fullres_patch,
    reference: float,
    num_classes: int,
    base_features: int = 32,
    max_features: int = 320,
    preset: PlannerPreset = NNUNET,
) -> tuple[LowresStage | None, str]:
    """nnU-Net's 3d_lowres stage (inputs in the plan's frame), or None and why it has none.

    While the patch covers < 25 % of the median shape's voxels, the lowres spacing grows by 3 %
    (only the axes more than 2x finer than the coarsest, else all) and a patch is fitted to the
    shrunken, rounded median. The stage is kept only if it was created and the fullres median
    has at least twice its voxels. nnU-Net's 3d_fullres uses batch Dice exactly then.
    """
    fullres_spacing = np.array(spacing, dtype=float)
    median = np.array(median_shape, dtype=float)
    median_voxels = np.prod(median, dtype=np.float64)
    patch_voxels = np.prod(fullres_patch, dtype=np.float64)
    coverage = patch_voxels / median_voxels
    lowres_spacing, stage = fullres_spacing.copy(), None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        finer = lowres_spacing.max() / lowres_spacing > 2
        if np.any(finer):
            lowres_spacing[finer] *= LOWRES_SPACING_STEP
        else:
            lowres_spacing *= LOWRES_SPACING_STEP
        lowres_median = fullres_spacing / lowres_spacing * median
        median_voxels = np.prod(lowres_median, dtype=np.float64)
        rounded = tuple(round(v) for v in lowres_median)
        topo, estimate = fit_patch(
            lowres_spacing, rounded, reference, num_classes, base_features, max_features, preset
        )
        patch_voxels = np.prod(topo.patch_size, dtype=np.int64)
        stage = LowresStage(
            tuple(float(v) for v in lowres_spacing), rounded, float(median_voxels), topo, estimate
        )
    if stage is None:
        return None, (
            f"the 3d_fullres patch already covers {coverage:.0%} of the median image "
            f"(nnU-Net plans 3d_lowres only below {LOWRES_THRESHOLD:.0%})"
        )
    shrink = float(np.prod(median, dtype=np.float64) / median_voxels)
    if shrink < 2:
        return None, (
            f"3d_lowres would keep {1 / shrink:.0%} of the 3d_fullres voxels "
            "(nnU-Net drops it unless it halves them)"
        )
    return stage, ""


def lowres_survives(
    spacing,
    median_shape,
    fullres_patch,
    reference: float,
    num_classes: int,
    base_features: int = 32,
    max_features: int = 320,
    preset: PlannerPreset = NNUNET,
) -> bool:
    """Whether nnU-Net's planner keeps a 3d_lowres configuration (see `lowres_stage`)."""
    args = (fullres_patch, reference, num_classes, base_features, max_features, preset)
    return lowres_stage(spacing, median_shape, *args)[0] is not None
