"""Region-based targets (nnU-Net's `regions`): label maps <-> one binary mask per region.

A region unites label values, e.g. KiTS' ``{"kidney": (1, 2), "tumor": (2,)}``; regions may
nest. Training predicts one sigmoid channel per region (losses "dice_bce"); inference thresholds
each channel at 0.5 and paints the regions in `order` (nnU-Net's ``regions_class_order``), so a
nested region painted later overwrites the one it lies in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ablate.errors import ConfigError
from ablate.plan import Plan

Regions = Mapping[str, Sequence[int]]


def check_regions(regions: Regions) -> dict[str, tuple[int, ...]]:
    """The regions as a plain ordered dict of int tuples; ConfigError if one is empty or bg."""
    if not regions:
        raise ConfigError("train.regions: no regions given; name at least one, or use null")
    checked = {}
    for name, values in regions.items():
        values = tuple(int(v) for v in values)
        if not values or any(v <= 0 for v in values):
            raise ConfigError(
                f"train.regions.{name}: {values} must list one or more foreground labels (> 0)"
            )
        checked[name] = values
    return checked


def labels_to_regions(seg, regions: Regions):
    """Binary float masks, one per region, from a label map (numpy or torch).

    (B, 1, Z, Y, X) -> (B, R, Z, Y, X); (Z, Y, X) -> (R, Z, Y, X). Values not in any region
    (background, nnU-Net's -1 outside the nonzero mask) are 0 in every mask.
    """
    regions = check_regions(regions)
    batched = seg.ndim == 5
    if batched and seg.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, Z, Y, X) label map, got shape {tuple(seg.shape)}")
    labels = seg[:, 0] if batched else seg  # (B, Z, Y, X) or (Z, Y, X)
    channel_axis = 1 if batched else 0
    if isinstance(seg, torch.Tensor):
        masks = [
            torch.isin(labels, torch.tensor(v, dtype=labels.dtype, device=seg.device))
            for v in regions.values()
        ]
        return torch.stack(masks, dim=channel_axis).float()
    masks = [np.isin(labels, v) for v in regions.values()]
    return np.stack(masks, axis=channel_axis).astype(np.float32)


def default_region_order(regions: Regions) -> tuple[int, ...]:
    """The label each region paints: the one label of the region in no later region.

    Gives nnU-Net's regions_class_order for nested regions: kidney (1, 2), tumor (2,) -> (1, 2);
    KiTS23's kidney (1, 2, 3), masses (2, 3), tumor (2,) -> (1, 3, 2).
    """
    regions = check_regions(regions)
    names = list(regions)
    order = []
    for i, name in enumerate(names):
        later = {v for other in names[i + 1 :] for v in regions[other]}
        own = sorted(set(regions[name]) - later)
        if len(own) != 1:
            raise ConfigError(
                f"train.regions: cannot infer which label region {name!r} {regions[name]} paints "
                f"(candidates {own}); order the regions outermost first or pass an explicit order"
            )
        order.append(own[0])
    return tuple(order)


def regions_to_labels(
    probabilities: np.ndarray, regions: Regions, order: Sequence[int] | None = None
) -> np.ndarray:
    """(R, Z, Y, X) region probabilities -> (Z, Y, X) uint8 label map (nnU-Net's rule).

    Each region whose probability is > 0.5 is painted with its label from `order` (one label per
    region, default `default_region_order`), in region order, later regions overwriting.
    """
    regions = check_regions(regions)
    order = tuple(order) if order is not None else default_region_order(regions)
    if len(order) != len(regions) or probabilities.shape[0] != len(regions):
        raise ConfigError(
            f"regions: {len(regions)} regions, {len(order)} order entries and "
            f"{probabilities.shape[0]} probability channels must be equal"
        )
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)  # (Z, Y, X)
    for channel, label in zip(probabilities, order, strict=True):
        labels[channel > 0.5] = label
    return labels


# --- training and checkpoints ---------------------------------------------------------------


def training_regions(regions: Regions | None, loss: str) -> dict[str, tuple[int, ...]] | None:
    """Checked regions (None: softmax over labels), and a check that `loss` fits them: region
    losses (ablate.losses.REGION_LOSSES) need regions, label-map losses must not get them."""
    from ablate.losses import REGION_LOSSES

    regions = check_regions(regions) if regions is not None else None
    if regions and loss not in REGION_LOSSES:
        raise ConfigError(
            f"train.loss: {loss!r} takes a label map; region-based training (train.regions) "
            f"needs one of: {', '.join(sorted(REGION_LOSSES))}"
        )
    if not regions and loss in REGION_LOSSES:
        raise ConfigError(
            f"train.loss: {loss!r} needs train.regions (e.g. kidney: [1, 2], tumor: [2])"
        )
    return regions


def network_plan(plan: Plan, regions: Regions | None) -> Plan:
    """The plan a network is built from: one output channel per region when region-based."""
    return dataclasses.replace(plan, num_classes=len(regions)) if regions else plan


def regions_to_json(regions: Regions | None) -> str:
    """An order-preserving JSON string ("" for None), storable in a weights_only checkpoint."""
    return json.dumps([[name, list(values)] for name, values in regions.items()]) if regions else ""


def regions_from_json(text: str) -> dict[str, tuple[int, ...]] | None:
    return {name: tuple(values) for name, values in json.loads(text)} if text else None
