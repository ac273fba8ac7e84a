"""Sliding-window inference with Gaussian weighting, mirror TTA and fold ensembling (nnU-Net v2).

Window placement, the Gaussian importance map and the mirror set follow nnU-Net v2
(`nnunetv2/inference/sliding_window_prediction.py`, `predict_from_raw_data.py`). Two deliberate
differences: the accumulators are float32 (nnU-Net: fp16, on every device), and TTA k takes the
first k mirror combinations in a fixed order so that TTA 1/2/4/8 can be ablated (nnU-Net offers 1
or all, the same order).

Export follows `nnunetv2/inference/export_prediction.py`: the (TTA- and fold-averaged) logits are
resampled to the original spacing first, and only then turned into probabilities and labels
(`export_labels`, `export_probabilities`, `CaseEnsemble`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from ablate.config import InferConfig
from ablate.errors import ConfigError
from ablate.imageio import Geometry, write_image
from ablate.plan import Plan


def mirror_combinations(
    axes: tuple[int, ...], k: int, order: str = "nnunet_v2"
) -> list[tuple[int, ...]]:
    """The first k mirror combinations of the allowed spatial axes (0=z, 1=y, 2=x).

    "nnunet_v2" (nnUNetPredictor): identity, then single axes, then pairs, then all three, each
    group in itertools.combinations order. For axes (0, 1, 2): (), (0,), (1,), (2,), (0, 1),
    (0, 2), (1, 2), (0, 1, 2); so TTA 2 mirrors z only and TTA 4 mirrors each axis once.
    "nnunet_v1" (v1's _internal_maybe_mirror_and_pred_3D): a binary count with x the lowest
    bit, skipping combinations outside `axes`: (), (2,), (1,), (1, 2), (0,), (0, 2), (0, 1),
    (0, 1, 2); so TTA 2 mirrors x (left-right in an axial scan).
    """
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ConfigError(f"infer.mirror_axes: {axes} must be distinct values from (0, 1, 2)")
    axes = tuple(sorted(axes))
    if order == "nnunet_v1":
        counted = (tuple(a for a in (0, 1, 2) if m >> (2 - a) & 1) for m in range(8))
        combos = [c for c in counted if set(c) <= set(axes)]
    elif order == "nnunet_v2":
        combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    else:
        raise ConfigError(f"infer.mirror_order: {order!r}; valid: nnunet_v2, nnunet_v1")
    if not 1 <= k <= len(combos):
        raise ConfigError(
            f"infer.tta: {k} needs {k} mirror combinations but mirror_axes {axes} give "
            f"{len(combos)}; lower infer.tta or allow more mirror_axes"
        )
    return combos[:k]


@lru_cache(maxsize=8)
def _gaussian_cached(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    delta = np.zeros(patch_size, dtype=np.float64)
    delta[tuple(s // 2 for s in patch_size)] = 1.0
    g = gaussian_filter(delta, [s * sigma_scale for s in patch_size], 0, mode="constant", cval=0)
    g /= g.max()
    g[g == 0] = g[g != 0].min()  # every voxel must keep some weight or it is never predicted
    return g.astype(np.float32)


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's window weights: a blurred delta, sigma = patch * sigma_scale per axis.

    Normalised to a peak of 1 (nnU-Net scales to 10; the scale cancels when the accumulated
    logits are divided by the accumulated weights). Zeros are replaced by the smallest nonzero.
    """
    return _gaussian_cached(tuple(int(s) for s in patch_size), float(sigma_scale)).copy()


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Window start positions along one axis (nnU-Net's compute_steps_for_sliding_window).

    ceil((size - patch) / (patch * step)) + 1 windows spread evenly from 0 to size - patch. A
    patch of one voxel (a 2d plan's slice axis) visits every position once, as nnU-Net's 2D
    sliding window predicts slice by slice.
    """
    if size < patch:
        raise ValueError(f"size {size} < patch {patch}: pad the image first")
    if patch == 1:
        return list(range(size))
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    if n == 1:
        return [0]
    stride = (size - patch) / (n - 1)
    return [int(np.round(stride * i)) for i in range(n)]


def _pad_to_patch(data: torch.Tensor, patch_size: Sequence[int]):
    """Pad (C, Z, Y, X) with zeros, centred as nnU-Net's pad_nd_image; returns data and the crop."""
    pads, crop = [], []
    for size, patch in zip(data.shape[1:], patch_size, strict=True):
        total = max(patch - size, 0)
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    if not any(before or after for before, after in pads):
        return data, tuple(crop)  # no copy: at 512x512xN a padded copy is a whole image more
    # F.pad takes (before, after) pairs starting from the last axis
    flat = [p for before_after in reversed(pads) for p in before_after]
    return torch.nn.functional.pad(data, flat), tuple(crop)


@contextmanager
def _eval_without_deep_supervision(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    had_ds = hasattr(model, "deep_supervision")
    old_ds = getattr(model, "deep_supervision", None)
    model.eval()
    if had_ds:
        model.deep_supervision = False
    try:
        yield
    finally:
        model.train(was_training)
        if had_ds:
            model.deep_supervision = old_ds


def _forward_tta(model: nn.Module, x: torch.Tensor, combos: list[tuple[int, ...]]) -> torch.Tensor:
    """Logits averaged over mirror combinations: flip input, predict, flip back."""
    total = None
    for combo in combos:
        dims = [a + 2 for a in combo]  # spatial axis -> (B, C, Z, Y, X) dim
        xin = torch.flip(x, dims) if dims else x
        out = model(xin)
        if isinstance(out, (list, tuple)):  # a model without the deep_supervision switch
            out = out[0]
        out = out.float()
        out = torch.flip(out, dims) if dims else out  # (B, K, Z, Y, X)
        total = out if total is None else total + out
    return total / len(combos)


def sliding_window_logits(
    model: nn.Module,
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    step: float,
    tta_axes: list[tuple[int, ...]],
    window_batch: int,
    device: torch.device,
) -> torch.Tensor:
    """Gaussian-weighted sliding-window logits of one (C, Z, Y, X) image -> (K, Z, Y, X) float32.

    `tta_axes` is a list of mirror combinations (see mirror_combinations); [()] means no TTA.
    The result lives on `device`. The model runs in eval mode without deep supervision; its
    previous mode is restored afterwards.
    """
    patch_size = tuple(int(p) for p in patch_size)
    x = torch.as_tensor(data, dtype=torch.float32).to(device)  # (C, Z, Y, X)
    x, crop = _pad_to_patch(x, patch_size)
    weights = torch.from_numpy(gaussian_importance(patch_size)).to(device)  # (pz, py, px)
    starts = [window_starts(s, p, step) for s, p in zip(x.shape[1:], patch_size, strict=True)]
    slicers = [
        tuple(slice(s, s + p) for s, p in zip(corner, patch_size, strict=True))
        for corner in itertools.product(*starts)
    ]
    logits = None
    weight_sum = torch.zeros(x.shape[1:], dtype=torch.float32, device=device)  # (Z, Y, X)
    with _eval_without_deep_supervision(model), torch.inference_mode():
        for i in range(0, len(slicers), window_batch):
            batch_slicers = slicers[i : i + window_batch]
            batch = torch.stack([x[(slice(None), *s)] for s in batch_slicers])  # (B, C, pz, py, px)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = _forward_tta(model, batch, tta_axes)  # (B, K, pz, py, px)
            if logits is None:
                logits = torch.zeros((out.shape[1], *x.shape[1:]), device=device)  # (K, Z, Y, X)
            out *= weights  # (B, K, pz, py, px)
            for window, s in zip(out, batch_slicers, strict=True):
                logits[(slice(None), *s)] += window
                weight_sum[s] += weights
        logits /= weight_sum
    return logits[(slice(None), *crop)]


ACTIVATIONS = {  # logits (K, Z, Y, X) -> probabilities; sigmoid for region-based models
    "softmax": lambda logits: torch.softmax(logits, dim=0),
    "sigmoid": torch.sigmoid,
}


# torch's CPU conv3d runs a lone window 2-5x slower per window than a batch of two on patches
# below about a million voxels, and a lone one 10-25 % faster above (BENCHMARKS.md, "window batch")
LONE_WINDOW_VOXELS = 1_000_000


def auto_window_batch(patch_size: Sequence[int], device: torch.device) -> int:
    """Windows per forward when infer.window_batch is unset: one (nnU-Net's) for CPU patches of
    LONE_WINDOW_VOXELS or more, else two."""
    large = int(np.prod(patch_size)) >= LONE_WINDOW_VOXELS
    return 1 if device.type == "cpu" and large else 2


def model_logits(
    model: nn.Module, data: np.ndarray, plan: Plan, cfg: InferConfig, device: torch.device
) -> torch.Tensor:
    """One model's sliding-window logits (K, Z, Y, X) on `device`, with cfg's TTA and step.

    A 2d plan mirrors in-plane only (nnU-Net's 2D mirror axes): the slice axis is dropped from
    cfg.mirror_axes and TTA k takes at most the 4 combinations that leaves."""
    axes, k = tuple(cfg.mirror_axes), cfg.tta
    if plan.is_2d:
        axes = tuple(a for a in axes if a != 0)
        k = min(k, 2 ** len(axes))
    combos = mirror_combinations(axes, k, cfg.mirror_order)
    batch = cfg.window_batch or auto_window_batch(plan.patch_size, device)
    return sliding_window_logits(model, data, plan.patch_size, cfg.step_size, combos, batch, device)


def argmax_labels(scores: np.ndarray, slab: int = 8) -> np.ndarray:
    """np.argmax(scores, axis=0) as uint8, `slab` slices of axis 1 at a time: numpy's argmax over
    the first axis copies the whole (K, Z, Y, X) array and returns int64 (at 512x512x200 and 3
    classes 1 GB of temporaries); per slab the temporaries stay a few MB."""
    labels = np.empty(scores.shape[1:], dtype=np.uint8)
    for start in range(0, scores.shape[1], slab):
        labels[start : start + slab] = np.argmax(scores[:, start : start + slab], axis=0)
    return labels


def probabilities_to_labels(
    probabilities: np.ndarray,
    regions: dict[str, tuple[int, ...]] | None = None,
    order: Sequence[int] | None = None,
) -> np.ndarray:
    """(K, Z, Y, X) -> (Z, Y, X) uint8: argmax over classes, or with `regions` nnU-Net's
    threshold-and-paint (ablate.regions.regions_to_labels, `order` = regions_class_order)."""
    if regions is None:
        return argmax_labels(probabilities)
    from ablate.regions import regions_to_labels

    return regions_to_labels(probabilities, regions, order)


def _preprocessed_order(values: Sequence, plan: Plan) -> tuple:
    """Per-axis `values` of the original image in the preprocessed (transposed) axis order."""
    forward = plan.transpose_forward
    return tuple(values[i] for i in forward)


def revert_transpose(array: np.ndarray, plan: Plan, channels: bool = False) -> np.ndarray:
    """TRANSPOSE HOOK: an array in the preprocessed axis order back to the image's axis order
    (nnU-Net: `.transpose(plans_manager.transpose_backward)`), the channel axis first kept.

    Reads `plan.transpose_backward` when the plan has one (identity otherwise). Assumes, as
    nnU-Net's properties do, that `props.original_shape`, `crop_bbox` and `shape_after_crop` are
    in the preprocessed (transposed) order and `props.geometry.spacing_mm` in the image's order.
    """
    backward = tuple(plan.transpose_backward)
    if backward == (0, 1, 2):
        return array
    return array.transpose((0, *(a + 1 for a in backward)) if channels else backward)


def resample_logits(logits: np.ndarray | torch.Tensor, props, plan: Plan) -> np.ndarray:
    """(K, Z, Y, X) logits at the plan's spacing -> (K, *props.shape_after_crop) float32 at the
    original spacing: nnU-Net's `resampling_fn_probabilities` (linear; nearest along the coarse
    axis when a spacing is anisotropic)."""
    from ablate.resample import resample_data

    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    from ablate.plan import data_spacing_mm

    spacing_mm = _preprocessed_order(props.geometry.spacing_mm, plan)
    return resample_data(
        np.asarray(logits, dtype=np.float32),
        props.shape_after_crop,
        data_spacing_mm(plan, spacing_mm),
        spacing_mm,
        order=1,
        order_z=0,
    )


def logits_to_labels(logits: np.ndarray, regions=None, order=None) -> np.ndarray:
    """(K, Z, Y, X) -> (Z, Y, X): argmax of the logits (softmax keeps it), or with `regions`
    sigmoid > 0.5 painted in region order (nnU-Net's convert_logits_to_segmentation)."""
    if regions is None:
        return argmax_labels(logits)
    return probabilities_to_labels(
        ACTIVATIONS["sigmoid"](torch.from_numpy(logits)).numpy(), regions, order
    )


def _uncrop_labels(labels: np.ndarray, props, plan: Plan) -> np.ndarray:
    out = np.zeros(props.original_shape, dtype=labels.dtype)  # outside the crop: background
    out[tuple(slice(a, b) for a, b in props.crop_bbox)] = labels
    return revert_transpose(out, plan)


def _uncrop_probabilities(probabilities: np.ndarray, props, plan: Plan, regions) -> np.ndarray:
    out = np.zeros((probabilities.shape[0], *props.original_shape), dtype=np.float32)
    if regions is None:
        out[0] = 1.0  # softmax: background outside the crop; regions: no region there
    out[(slice(None), *(slice(a, b) for a, b in props.crop_bbox))] = probabilities
    return revert_transpose(out, plan, channels=True)


def export_labels(logits, props, plan: Plan, regions=None, order=None) -> np.ndarray:
    """(K, Z, Y, X) logits at the plan's spacing -> (Z, Y, X) uint8 label map in the original
    geometry: resample the logits, then argmax/threshold, uncrop, transpose back (nnU-Net's
    convert_predicted_logits_to_segmentation_with_correct_shape). Regions paint the labels of
    `order` (the checkpoint's regions_class_order, ablate.checkpoint.checkpoint_region_order)."""
    return _uncrop_labels(
        logits_to_labels(resample_logits(logits, props, plan), regions, order), props, plan
    )


def export_probabilities(logits, props, plan: Plan, regions=None) -> np.ndarray:
    """(K, Z, Y, X) logits -> (K, *original) float32 probabilities in the original geometry:
    resample the logits, then softmax/sigmoid, uncrop (nnU-Net's `save_probabilities` output)."""
    activation = ACTIVATIONS["sigmoid" if regions else "softmax"]
    resampled = torch.from_numpy(resample_logits(logits, props, plan))
    return _uncrop_probabilities(activation(resampled).numpy(), props, plan, regions)


class CaseEnsemble:
    """One case's prediction by one or several fold models, exported as nnU-Net does.

    `add` exports each model's logits to its own label map (so one pass scores every fold model)
    and, unless `average` is None, accumulates the ensemble: "logits" exports the mean logits at
    the plan's spacing (nnU-Net v2's predictor given several folds); "probabilities" averages each
    model's exported probabilities in the original geometry (nnUNetv2_ensemble; Isensee 2019).
    """

    def __init__(
        self,
        props,
        plan: Plan,
        regions=None,
        average: str | None = "probabilities",
        order: Sequence[int] | None = None,
    ):
        if average not in ("probabilities", "logits", None):
            raise ConfigError(
                f"infer.ensemble_average: unknown {average!r}; valid: probabilities, logits"
            )
        self.props, self.plan, self.regions, self.average = props, plan, regions, average
        self.order = order  # the label each region paints (regions_class_order)
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        """One model's (K, Z, Y, X) logits at the plan's spacing -> its (Z, Y, X) label map."""
        resampled = resample_logits(logits, self.props, self.plan)  # (K, *shape_after_crop)
        if self.average == "probabilities":
            activation = ACTIVATIONS["sigmoid" if self.regions else "softmax"]
            probabilities = activation(torch.from_numpy(resampled)).numpy()
            self._accumulate(
                _uncrop_probabilities(probabilities, self.props, self.plan, self.regions)
            )
        elif self.average == "logits":
            self._accumulate(torch.as_tensor(logits).detach().float().cpu().numpy())
        labels = logits_to_labels(resampled, self.regions, self.order)
        return _uncrop_labels(labels, self.props, self.plan)

    def _accumulate(self, part: np.ndarray) -> None:
        if self.total is None:
            self.total = part.copy()
        else:
            self.total += part
        self.count += 1

    def labels(self) -> np.ndarray:
        """The ensemble's (Z, Y, X) label map in the original geometry."""
        if self.total is None:
            raise ConfigError("infer: no models to predict with; train at least one fold")
        if self.average == "probabilities":
            return probabilities_to_labels(self.total / self.count, self.regions, self.order)
        mean = self.total / self.count
        return export_labels(mean, self.props, self.plan, self.regions, self.order)


def predict_case(
    models: list[nn.Module],
    images: list[np.ndarray],
    geometry: Geometry,
    plan: Plan,
    cfg: InferConfig,
    device: torch.device,
    out_path: Path,
    regions: dict[str, tuple[int, ...]] | None = None,
    order: Sequence[int] | None = None,
) -> np.ndarray:
    """Preprocess raw images, predict, export to the original geometry, write the label map.

    With `regions` the models are region-based (sigmoid outputs, painted with `order`); several
    models are averaged as `cfg.ensemble_average` says (CaseEnsemble). Returns the (Z, Y, X)
    label map written to `out_path`.
    """
    # lazy: the sliding-window core stays importable and testable without the preprocessing stage
    from ablate.preprocess import preprocess_images

    if not models:
        raise ConfigError("infer: no models to predict with; train at least one fold")
    data, props = preprocess_images(images, geometry, plan)
    average = cfg.ensemble_average if models[1:] else None
    ensemble = CaseEnsemble(props, plan, regions, average, order)
    for model in models:
        labels = ensemble.add(model_logits(model, data, plan, cfg, device))
    labels = ensemble.labels() if models[1:] else labels
    write_image(labels, geometry, out_path)
    return labels
