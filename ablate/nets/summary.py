"""Networks of a study without its data: when a study fixes the target spacing and the patch
(as Isensee 2019 did on KiTS19), the topology follows from nnU-Net's rules alone, so `ablate
validate` can show every cell's network and parameter count before anything is downloaded."""

from __future__ import annotations

import numpy as np
import torch

from ablate.config import PlanConfig, TrainConfig
from ablate.nets.cost import count_parameters
from ablate.nets.unet import build_network, stage_features
from ablate.plan import ChannelNormalization, Plan
from ablate.topology import determine_transpose, features_per_stage, pool_and_conv_props


def fixed_plan(cfg: PlanConfig, num_classes: int, num_input_channels: int = 1) -> Plan | None:
    """The network part of the plan when `cfg` fixes target spacing and patch, else None.

    Transpose, pooling, kernels and features are nnU-Net's for that spacing and patch. The
    fields that need the data hold placeholders: batch size 2, the patch as median shape, no
    batch Dice, z-score normalisation; do not preprocess or train with this plan."""
    if cfg.target_spacing_mm is None or cfg.patch_size is None:
        return None
    if cfg.configuration != "3d_fullres":  # 2d and 3d_lowres derive their grid from the data
        return None
    forward, backward = determine_transpose(cfg.target_spacing_mm)
    spacing = [float(cfg.target_spacing_mm[a]) for a in forward]
    topo = pool_and_conv_props(spacing, [cfg.patch_size[a] for a in forward])
    n = len(topo.pool_kernel_sizes)
    return Plan(
        target_spacing_mm=tuple(spacing),
        patch_size=tuple(int(p) for p in topo.patch_size),
        batch_size=2,
        pool_kernel_sizes=[tuple(p) for p in topo.pool_kernel_sizes],
        conv_kernel_sizes=[tuple(k) for k in topo.conv_kernel_sizes],
        features_per_stage=features_per_stage(n, cfg.base_features, cfg.max_features),
        num_input_channels=num_input_channels,
        num_classes=num_classes,
        normalization=[ChannelNormalization("zscore")] * num_input_channels,
        median_shape=tuple(int(p) for p in topo.patch_size),
        anisotropic=bool(max(spacing) / min(spacing) > 3),
        memory_budget_gb=float(cfg.gpu_memory_gb),
        transpose_forward=forward,
        transpose_backward=backward,
        preset=cfg.preset,
    )


def network_parameters(train: TrainConfig, plan: Plan) -> int:
    """Parameter count of the cell's network (built on the meta device: no memory)."""
    outputs = len(train.regions) if train.regions else plan.num_classes
    with torch.device("meta"):
        net = build_network(train, Plan(**{**plan.__dict__, "num_classes": outputs}))
    return count_parameters(net)


def describe_networks(study) -> str:
    """One line per training cell: its topology, features and parameter count where the study
    fixes them, or what is missing (`ablate validate`)."""
    from ablate.study import grid_cells, is_training_axis, resolve_variant, variant_label

    classes, channels, source = _label_count(study)
    lines, seen = [], set()
    for cell in grid_cells(study):
        variant = {a: v for a, v in cell.items() if is_training_axis(a)}
        label = variant_label(variant)
        if label in seen:
            continue
        seen.add(label)
        plan_cfg, train, _ = resolve_variant(study, cell)
        plan = fixed_plan(plan_cfg, classes or 2, channels)
        if plan is None or classes is None:
            why = "the dataset's labels" if plan is not None else "the data's target spacing"
            lines.append(f"network {label}: {train.arch}; topology and parameters need {why}")
            continue
        features = stage_features(train, plan)
        pools = "-".join("x".join(map(str, p)) for p in plan.pool_kernel_sizes[1:])
        lines.append(
            f"network {label}: {train.arch}, patch {'x'.join(map(str, plan.patch_size))} at "
            f"{'x'.join(f'{s:g}' for s in plan.target_spacing_mm)} mm, {plan.num_stages} stages "
            f"(pools {pools}), features {features}, "
            f"{network_parameters(train, plan):,} parameters ({source})"
        )
    return "\n".join(lines)


def _label_count(study) -> tuple[int | None, int, str]:
    """Outputs and input channels without reading the data: from the dataset's declared labels,
    the evaluation targets, or the synthetic generator's labels; one CT channel assumed."""
    spec = study.dataset
    if spec.labels:
        return len(spec.labels), 1, "labels from dataset.labels, 1 input channel"
    if spec.synthetic is not None:
        from ablate.data.synthetic import LABELS

        return len(LABELS), 1, "the synthetic dataset's labels"
    targets = study.evaluation.targets or {}
    values = [v for members in targets.values() for v in members]
    if values:
        top = int(np.max(values))
        return top + 1, 1, f"labels 0..{top} from evaluation.targets, 1 input channel"
    return None, 1, ""
