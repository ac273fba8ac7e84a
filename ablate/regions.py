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
from dataclasses import dataclass

import numpy as np
import torch

from ablate.config import TrainConfig
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
                f"(candidates {own}); order the regions outermost first or set train.region_order"
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


def paint_order(regions: Regions, order: Sequence[int] | None = None) -> tuple[int, ...]:
    """The label each region paints: `order` (a dataset's regions_class_order, checked) or,
    without one, `default_region_order`."""
    regions = check_regions(regions)
    if order is None:
        return default_region_order(regions)
    order = tuple(int(v) for v in order)
    if len(order) != len(regions) or any(v <= 0 for v in order):
        raise ConfigError(
            f"train.region_order: {list(order)} must give one foreground label (> 0) per region "
            f"({len(regions)}: {', '.join(regions)})"
        )
    return order


@dataclass(frozen=True)
class DatasetRegions:
    """The regions a dataset.json declares (nnU-Net's labels with lists), in declared order, and
    its regions_class_order: what nnU-Net trains such a dataset on and paints its exports by."""

    regions: dict[str, tuple[int, ...]]
    order: tuple[int, ...]


def dataset_regions(dataset) -> DatasetRegions | None:
    """A region-based dataset's declared regions (without `ablate_regions`' evaluation-only
    targets, which follow them) and paint order; None for a label dataset. None too with an
    ignore label: ablate's region losses refuse one, so such a dataset trains label-based."""
    if not dataset.region_based or dataset.regions_class_order is None:
        return None
    if dataset.ignore_label is not None:
        return None
    order = tuple(dataset.regions_class_order)
    declared = dict(list(dataset.regions.items())[: len(order)])
    return DatasetRegions(check_regions(declared), paint_order(declared, order))


def with_dataset_regions(cfg: TrainConfig, declared: DatasetRegions | None) -> TrainConfig:
    """`cfg` with the dataset's regions as its default, as nnU-Net's LabelManager (has_regions):
    a region dataset trains one sigmoid output per declared region, loss Dice + BCE (nnU-Net's
    DC_and_BCE where labels take DC_and_CE, so the default "dice_ce" becomes "dice_bce"), painted
    in regions_class_order. `train.regions` set by the study wins; when it names exactly the
    dataset's regions the dataset's order paints them unless `train.region_order` is set."""
    from ablate.losses import REGION_LOSSES

    if declared is not None and cfg.regions is None:
        loss = "dice_bce" if cfg.loss == "dice_ce" else cfg.loss
        if loss not in REGION_LOSSES:
            raise ConfigError(
                f"train.loss: {cfg.loss!r} takes a label map, but the dataset declares regions "
                f"({', '.join(declared.regions)}), which nnU-Net trains region-based; use one of "
                f"{', '.join(sorted(REGION_LOSSES))} (dice_ce becomes dice_bce on its own)"
            )
        order = paint_order(declared.regions, cfg.region_order or declared.order)
        update = {"regions": declared.regions, "region_order": order, "loss": loss}
        return cfg.model_copy(update=update)
    if cfg.regions is None:
        if cfg.region_order is not None:
            raise ConfigError("train.region_order: needs train.regions (the regions it paints)")
        return cfg
    regions = check_regions(cfg.regions)
    if declared is not None and cfg.region_order is None:
        if list(regions.items()) == list(declared.regions.items()):
            cfg = cfg.model_copy(update={"region_order": declared.order})
    paint_order(regions, cfg.region_order)  # checked here, so `validate` names a bad one
    return cfg


def describe_training_targets(cfg: TrainConfig) -> str:
    """One line for `ablate validate` / `--dry-run`: what a training predicts."""
    if not cfg.regions:
        return f"training: softmax over the labels (loss {cfg.loss})"
    regions = ", ".join(f"{name} {list(values)}" for name, values in cfg.regions.items())
    order = list(paint_order(cfg.regions, cfg.region_order))
    return (
        f"training: region-based, one sigmoid output per region (loss {cfg.loss}): {regions}; "
        f"exports paint labels {order}"
    )


def regions_to_json(regions: Regions | None, order: Sequence[int] | None = None) -> str:
    """An order-preserving JSON string ("" for None), storable in a weights_only checkpoint:
    [name, values, painted label] per region (the label left out without an `order`)."""
    if not regions:
        return ""
    labels = paint_order(regions, order) if order is not None else (None,) * len(regions)
    return json.dumps(
        [
            [name, list(values), *([label] if label is not None else [])]
            for (name, values), label in zip(regions.items(), labels, strict=True)
        ]
    )


def regions_from_json(text: str) -> dict[str, tuple[int, ...]] | None:
    return {entry[0]: tuple(entry[1]) for entry in json.loads(text)} if text else None


def region_order_from_json(text: str) -> tuple[int, ...] | None:
    """The painted label of each stored region; checkpoints written before the order was stored
    keep `default_region_order`. None for a label (softmax) model."""
    if not text:
        return None
    entries = json.loads(text)
    if all(len(entry) == 3 for entry in entries):
        return tuple(int(entry[2]) for entry in entries)
    return default_region_order(regions_from_json(text))
