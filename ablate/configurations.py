"""nnU-Net v2's configurations of one dataset, planned as ExperimentPlanner.plan_experiment
does: 3d_fullres, the 3d_lowres search that starts from its patch, and 2d (the in-plane axes of
3d_fullres's spacing and median, the 2D budget). Each is returned in the plan's frame (2D: its
in-plane axes); ablate.plan.make_plan turns the chosen one into a Plan."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ablate.errors import ConfigError
from ablate.topology import (
    PLANNER_PRESETS,
    Topology,
    features_per_stage,
    fit_patch,
    lowres_stage,
    memory_reference,
    planner_estimate,
    pool_and_conv_props,
    reference_batch,
)

MIN_BATCH = 2


def batch_size_for(
    estimate: int,
    reference: float,
    patch,
    n_voxels_dataset: float,
    max_covered: float,
    ref_batch: int = 2,
) -> int:
    """Budget headroom scales the batch; at most `max_covered` of the dataset per step (5 % for
    nnUNetPlans, all of it for ResEnc M/L/XL); at least 2."""
    batch = round(reference / estimate * ref_batch)
    cap = round(n_voxels_dataset * max_covered / np.prod(patch, dtype=np.float64))
    return int(max(min(batch, cap), MIN_BATCH))


@dataclass(frozen=True)
class Configured:
    """One configuration's planner outputs, in the plan's frame (2D: the in-plane axes)."""

    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    topology: Topology
    batch_size: int
    features: list[int]
    batch_dice: bool


CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def plan_3d(spacing, median_shape, n_cases, dataset, cfg, override, configuration):
    """3d_fullres, then nnU-Net's 3d_lowres search from its patch: (fullres, lowres or None,
    why there is no lowres). A patch override replaces the patch of the configuration planned;
    the lowres search starts from the fullres patch nnU-Net would use (the override, when the
    configuration planned is a full-resolution one)."""
    preset = PLANNER_PRESETS[cfg.preset]
    reference = memory_reference(preset, cfg.gpu_memory_gb)
    widths = (cfg.base_features, cfg.max_features)
    num_classes = dataset.num_classes
    fullres_override = override if configuration in ("3d_fullres", "3d_cascade_fullres") else None
    if fullres_override is not None:
        topo = pool_and_conv_props(spacing, fullres_override)
        estimate = planner_estimate(topo, num_classes, *widths, preset)
    else:
        topo, estimate = fit_patch(spacing, median_shape, reference, num_classes, *widths, preset)
    stage, why_not = lowres_stage(
        spacing, median_shape, topo.patch_size, reference, num_classes, *widths, preset
    )
    n_voxels_dataset = float(np.prod(median_shape, dtype=np.float64) * n_cases)
    batch = batch_size_for(
        estimate, reference, topo.patch_size, n_voxels_dataset, preset.max_dataset_covered
    )
    features = features_per_stage(len(topo.pool_kernel_sizes), *widths)
    fullres = Configured(tuple(spacing), tuple(median_shape), topo, batch, features, True)
    if stage is None:
        return replace(fullres, batch_dice=False), None, why_not
    lowres_topo, lowres_estimate = stage.topology, stage.estimate
    if configuration == "3d_lowres" and override is not None:
        lowres_topo = pool_and_conv_props(stage.spacing, override)
        lowres_estimate = planner_estimate(lowres_topo, num_classes, *widths, preset)
    lowres_batch = batch_size_for(
        lowres_estimate,
        reference,
        lowres_topo.patch_size,
        float(stage.median_voxels * n_cases),
        preset.max_dataset_covered,
    )
    lowres_features = features_per_stage(len(lowres_topo.pool_kernel_sizes), *widths)
    lowres = Configured(
        stage.spacing, stage.median_shape, lowres_topo, lowres_batch, lowres_features, False
    )
    return fullres, lowres, ""


def plan_2d(spacing, median_shape, n_cases, dataset, cfg, override) -> Configured:
    """nnU-Net's 2d configuration: the in-plane axes of the 3d_fullres spacing and median, the
    2D budget (batch 12 reference, max 512 features), the dataset cap on 3D voxels, batch Dice."""
    preset = PLANNER_PRESETS[cfg.preset]
    reference = memory_reference(preset, cfg.gpu_memory_gb, dim=2)
    widths = (cfg.base_features, cfg.max_features_2d)
    spacing2, median2 = spacing[1:], median_shape[1:]
    if override is not None:
        if override[0] != 1:
            raise ConfigError(
                "plan.patch_size: a 2d patch has 1 voxel on the slice axis (the coarsest); "
                f"got {override[0]} there"
            )
        topo = pool_and_conv_props(spacing2, override[1:])
        estimate = planner_estimate(topo, dataset.num_classes, *widths, preset)
    else:
        topo, estimate = fit_patch(
            spacing2, median2, reference, dataset.num_classes, *widths, preset
        )
    n_voxels_dataset = float(np.prod(median_shape, dtype=np.float64) * n_cases)
    batch = batch_size_for(
        estimate,
        reference,
        topo.patch_size,
        n_voxels_dataset,
        preset.max_dataset_covered,
        reference_batch(2),
    )
    features = features_per_stage(len(topo.pool_kernel_sizes), *widths)
    return Configured(tuple(spacing2), tuple(median2), topo, batch, features, True)
