"""nnU-Net's cascade: the 3d_lowres stage's predictions as one-hot input channels of the
3d_cascade_fullres stage (nnU-Net v2.8.1's `previous_stage_name`).

How nnU-Net builds them, and how this module does:

- the lowres stage's cross-validation predicts each training case once (by the fold that held it
  out); its logits are resampled to the case's 3d_fullres preprocessed shape (linear, nearest
  along a separate axis, the lowres spacing deciding anisotropy: `resample_and_save` passes the
  lowres spacing as both spacings) and turned into labels (`previous_stage_segmentation`);
  they are stored per case in the lowres stage's `predicted_next_stage/` folder;
- training: the stored labels are cropped with the same box as the case's patch (padded -1),
  follow the patch through the spatial augmentation and mirroring as a second label channel,
  -1 becomes 0, then they become one-hot channels of the foreground labels appended to the image
  (MoveSegAsOneHotToDataTransform), which a random binary operator (p 0.4) and the removal of a
  random connected component (p 0.2) then disturb (`CascadeSource`, `cascade_augment`);
- validation and inference: one-hot channels of the labels, undisturbed (`with_previous_stage`);
  a test case's lowres prediction is its exported label map, preprocessed as a label at 3d_fullres.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import label as label_components
from scipy.signal import fftconvolve

from ablate.errors import DataError
from ablate.storage import open_array, save_array

PREVIOUS_STAGE_DIR = "predicted_next_stage"
P_BINARY_OPERATOR = 0.4
P_REMOVE_COMPONENT = 0.2
P_PER_LABEL = 0.5
STREL_RADIUS = (1.0, 8.0)
MAX_COMPONENT_SHARE = 0.15  # dont_do_if_covers_more_than_x_percent
OPERATORS = ("dilation", "erosion", "closing", "opening")


def one_hot(seg: np.ndarray, labels: Sequence[int], dtype=np.float32) -> np.ndarray:
    """(L, *seg.shape) masks of `labels` (nnU-Net's convert_labelmap_to_one_hot); -1 and other
    values are in none."""
    out = np.zeros((len(labels), *seg.shape), dtype=dtype)
    for i, value in enumerate(labels):
        out[i][seg == value] = 1
    return out


def with_previous_stage(data: np.ndarray, seg_prev: np.ndarray, labels: Sequence[int]):
    """(C, ...) image channels followed by the previous stage's one-hot (C + L, ...)."""
    return np.concatenate([np.asarray(data), one_hot(np.asarray(seg_prev), labels, data.dtype)])


def previous_stage_segmentation(
    logits,
    target_shape: Sequence[int],
    lowres_spacing_mm: Sequence[float],
    regions=None,
    order=None,
) -> np.ndarray:
    """The lowres stage's (K, Z, Y, X) logits as labels on the 3d_fullres grid (nnU-Net's
    resample_and_save: resample the logits, then argmax or the regions' thresholds, painted in
    `order`)."""
    import torch

    from ablate.infer import logits_to_labels
    from ablate.resample import resample_data

    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    resampled = resample_data(
        np.asarray(logits, dtype=np.float32),
        tuple(target_shape),
        lowres_spacing_mm,
        lowres_spacing_mm,
        order=1,
        order_z=0,
    )
    return logits_to_labels(resampled, regions, order).astype(np.int16)


def save_previous_stage(folder: Path, case_id: str, seg: np.ndarray, patch_size) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_array(folder, case_id, seg.astype(np.int16), patch_size)


def load_previous_stage(folder: Path, case_id: str):
    try:
        return open_array(folder, case_id)
    except FileNotFoundError as missing:
        raise DataError(
            f"{folder}: no 3d_lowres prediction of case {case_id}; the cascade's full-resolution "
            "stage needs every 3d_lowres fold's cross-validation predictions first"
        ) from missing


def write_previous_stage(
    checkpoints: Mapping[int, Path], lowres, fullres, folder: Path, infer
) -> list[str]:
    """nnU-Net's predicted_next_stage: every case of `lowres` (PreprocessedData of 3d_lowres)
    predicted by the fold model that held it out (`checkpoints`: fold -> its checkpoint), as
    labels on the case's `fullres` (3d_fullres) grid, written to `folder` (atomically; cases
    already there are kept, so a resumed caller redoes nothing and parallel callers at worst
    predict a case twice). Returns the cases written now."""
    import os

    from ablate.checkpoint import checkpoint_region_order, checkpoint_regions, load_model
    from ablate.device import select_device
    from ablate.infer import model_logits

    if [tuple(f.val) for f in lowres.folds] != [tuple(f.val) for f in fullres.folds]:
        raise DataError(
            "the 3d_lowres and 3d_cascade_fullres stages were split into different folds; "
            "both need the study's one split"
        )
    device, written = select_device(infer.device), []
    folder.mkdir(parents=True, exist_ok=True)
    for fold, checkpoint in sorted(checkpoints.items()):
        todo = [c for c in lowres.folds[fold].val if not (folder / f"{c}.b2nd").is_file()]
        if not todo:
            continue
        model, _, plan = load_model(checkpoint, device)
        regions, order = checkpoint_regions(checkpoint), checkpoint_region_order(checkpoint)
        for case_id in todo:
            image, _, _ = lowres.load_case(case_id)
            logits = model_logits(model, np.asarray(image), plan, infer, device)
            target_shape = fullres.load_case(case_id)[0].shape[1:]
            spacing = plan.target_spacing_mm
            seg = previous_stage_segmentation(logits, target_shape, spacing, regions, order)
            tmp = f"{case_id}.tmp{os.getpid()}"
            save_array(folder, tmp, seg, fullres.plan.patch_size)
            os.replace(folder / f"{tmp}.b2nd", folder / f"{case_id}.b2nd")
            written.append(case_id)
    return written


@dataclass(frozen=True)
class PreviousStage:
    """Where a 3d_cascade_fullres training finds its 3d_lowres stage: that stage's fold
    checkpoints, its preprocessed data, the shared folder of its cross-validation predictions
    and the inference settings that make them (nnU-Net's validation: all mirror axes, step
    0.5). Picklable: executors ship it with the job."""

    checkpoints: dict[int, Path]
    data: Any  # PreprocessedData of 3d_lowres
    folder: Path
    infer: Any  # InferConfig

    def ensure(self, fullres) -> Path:
        """The predictions folder, complete for every case of `fullres` (written once)."""
        write_previous_stage(self.checkpoints, self.data, fullres, self.folder, self.infer)
        return self.folder


class CascadeInput:
    """PreprocessedData of a 3d_cascade_fullres stage whose cases carry the 3d_lowres
    prediction as one-hot channels after the image (what its network reads: cross-validation
    prediction of a case by its own lowres fold model, as nnU-Net's validation does)."""

    def __init__(self, data, folder: Path):
        self.inner, self.folder = data, Path(folder)
        self.plan = data.plan

    def load_case(self, case_id: str):
        data, seg, props = self.inner.load_case(case_id)
        seg_prev = np.asarray(load_previous_stage(self.folder, case_id)[...])
        image = np.asarray(data[...], dtype=np.float32)
        return with_previous_stage(image, seg_prev, self.plan.previous_stage_labels), seg, props

    def __getattr__(self, name):  # folds, case_ids, key, ...
        if name.startswith("__") or name == "inner":  # unpickling: no inner yet
            raise AttributeError(name)
        return getattr(self.inner, name)


def predict_previous_stage_for_image(
    images: list[np.ndarray],
    geometry,
    models: list,
    plan,
    infer,
    device,
    regions=None,
    order=None,
) -> np.ndarray:
    """An unseen case's 3d_lowres prediction as nnU-Net makes it before the cascade: every
    lowres fold model's logits averaged (nnUNetPredictor given all folds), exported to a
    label map in the image's geometry."""
    from ablate.infer import export_labels, model_logits
    from ablate.preprocess import preprocess_images

    data, props = preprocess_images(images, geometry, plan)
    total = None
    for model in models:
        logits = model_logits(model, data, plan, infer, device)
        total = logits if total is None else total + logits
    return export_labels(total / len(models), props, plan, regions, order)


def cascade_input_for_image(images: list[np.ndarray], seg_prev: np.ndarray, geometry, plan):
    """An unseen case preprocessed for the cascade's full-resolution stage with its 3d_lowres
    label map (nnU-Net's preprocessor run with the previous stage's segmentation, then the
    one-hot channels appended); returns data (C + L, Z, Y, X) and the case's properties."""
    from ablate.preprocess import preprocess_images_and_labels

    data, seg, props = preprocess_images_and_labels(images, seg_prev, geometry, plan)
    return with_previous_stage(data, seg, plan.previous_stage_labels), props


# ---- training input --------------------------------------------------------------------------


class _WithPrevious:
    """A case's data with the previous stage's labels as one more (float) channel, sliced
    lazily, so the sampler crops both with one box."""

    def __init__(self, data, seg_prev):
        if tuple(data.shape[1:]) != tuple(seg_prev.shape):
            raise DataError(
                f"previous-stage labels of shape {tuple(seg_prev.shape)} do not match the "
                f"3d_fullres data {tuple(data.shape[1:])}; re-run the 3d_lowres evaluation"
            )
        self.data, self.seg_prev = data, seg_prev
        self.shape = (data.shape[0] + 1, *data.shape[1:])
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, key):
        spatial = key[1:] if key and key[0] is Ellipsis else key
        image = np.asarray(self.data[(slice(None), *spatial)], dtype=np.float32)
        prev = np.asarray(self.seg_prev[tuple(spatial)], dtype=np.float32)
        return np.concatenate([image, prev[None]])

    def __array__(self, dtype=None, copy=None):
        return self[(Ellipsis,) + (slice(None),) * (self.ndim - 1)].astype(dtype or np.float32)


class CascadeSource:
    """PreprocessedData whose cases carry the previous stage's labels as their last channel
    (see `cascade_augment`, which turns it into one-hot input)."""

    def __init__(self, data, previous_stage: Path):
        self.inner, self.folder = data, Path(previous_stage)
        self.plan, self.ignore_label = data.plan, data.ignore_label

    def load_case(self, case_id: str):
        data, seg, props = self.inner.load_case(case_id)
        return _WithPrevious(data, load_previous_stage(self.folder, case_id)), seg, props

    def __getattr__(self, name):  # class_locations, region_locations, folds, ...
        if name.startswith("__") or name == "inner":  # unpickling: no inner yet
            raise AttributeError(name)
        return getattr(self.inner, name)


Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def cascade_augment(labels: Sequence[int], mode: str | None, patch_size: Sequence[int]) -> Augment:
    """The sampler's augmentation for a cascade sample (image channels, then the previous
    stage's labels): nnU-Net's pipeline on the image and target, the same spatial transform and
    mirroring on the previous stage's labels, -1 to 0, one-hot, and with mode "nnunet" the
    random binary operator and component removal. mode None: no augmentation (validation)."""
    from ablate.augment import augment_sample
    from ablate.augment.geometry import apply_mirror, apply_spatial

    def augment(data, seg, rng):
        image, prev = data[:-1], np.rint(data[-1]).astype(np.int16)
        if mode is not None:
            image, seg, record = augment_sample(image, seg, rng, mode, patch_size)
            steps = dict(record)
            probe = np.zeros((1, *prev.shape), np.float32)  # the labels' grid, no image
            _, prev = apply_spatial(probe, prev, steps.get("spatial"), patch_size)
            _, prev = apply_mirror(probe[:, :0], prev, steps.get("mirror"))
        prev = np.where(prev < 0, 0, prev)
        hot = one_hot(prev, labels)
        if mode == "nnunet":
            hot = apply_binary_operator(hot, draw_binary_operator(rng, len(labels)))
            hot = remove_component(hot, draw_remove_component(rng, len(labels)), rng)
        return np.concatenate([image, hot]).astype(np.float32, copy=False), seg

    return augment


# ---- bgv2's ApplyRandomBinaryOperatorTransform and RemoveRandomConnectedComponent... --------


def _channels(rng: np.random.Generator, n: int) -> list[int]:
    """bgv2's choice: the channels in shuffled order, each kept with p 0.5."""
    order = rng.permutation(n)
    return [int(c) for c in order if rng.uniform() < P_PER_LABEL]


def draw_binary_operator(rng: np.random.Generator, n: int):
    if rng.uniform() >= P_BINARY_OPERATOR:
        return None
    chosen = _channels(rng, n)
    return [
        (c, OPERATORS[int(rng.integers(len(OPERATORS)))], float(rng.uniform(*STREL_RADIUS)))
        for c in chosen
    ]


def structuring_element(radius: float, ndim: int) -> np.ndarray:
    """skimage's ball(radius) / disk(radius) for a float radius, as bgv2 calls them."""
    if ndim == 3:
        n = 2 * radius + 1
        z, y, x = np.mgrid[
            -radius : radius : n * 1j, -radius : radius : n * 1j, -radius : radius : n * 1j
        ]
        return (x**2 + y**2 + z**2) <= radius * radius
    axis = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(axis, axis)
    return (x**2 + y**2) <= radius**2


def _dilate(mask: np.ndarray, strel: np.ndarray) -> np.ndarray:
    """bgv2's binary_dilation_torch: an fft correlation with zero padding floor((k-1)/2) before
    and ceil after, rounded, > 0 (a disk of a fractional radius is not symmetric, so the
    correlation is a convolution with the flipped element)."""
    flipped = strel[tuple(slice(None, None, -1) for _ in range(strel.ndim))]
    full = fftconvolve(mask.astype(np.float64), flipped.astype(np.float64), mode="full")
    start = [k - 1 - (k - 1) // 2 for k in strel.shape]
    crop = tuple(slice(s, s + n) for s, n in zip(start, mask.shape, strict=True))
    return np.round(full[crop]) > 0


def _operate(mask: np.ndarray, operator: str, strel: np.ndarray) -> np.ndarray:
    def erode(m):
        return ~_dilate(~m, strel)

    if operator == "dilation":
        return _dilate(mask, strel)
    if operator == "erosion":
        return erode(mask)
    if operator == "opening":
        return _dilate(erode(mask), strel)
    return erode(_dilate(mask, strel))  # closing


def apply_binary_operator(hot: np.ndarray, params) -> np.ndarray:
    """Each chosen channel dilated/eroded/opened/closed by a ball (a disk on one slice); voxels
    it gains leave every other channel."""
    if not params:
        return hot
    hot = hot.copy()
    flat = hot.shape[1] == 1  # a 2d sample: bgv2 sees (Y, X) and uses a disk
    for channel, operator, radius in params:
        mask = hot[channel, 0] if flat else hot[channel]
        mask = mask.astype(bool)
        result = _operate(mask, operator, structuring_element(radius, mask.ndim))
        added = result & ~mask
        for other in range(hot.shape[0]):
            if other != channel:
                (hot[other, 0] if flat else hot[other])[added] = 0
        if flat:
            hot[channel, 0] = result
        else:
            hot[channel] = result
    return hot


def draw_remove_component(rng: np.random.Generator, n: int):
    if rng.uniform() >= P_REMOVE_COMPONENT:
        return None
    return _channels(rng, n)


def remove_component(hot: np.ndarray, channels, rng: np.random.Generator) -> np.ndarray:
    """In each chosen channel, one random connected component (full connectivity) covering
    < 15 % of the patch is removed (never filled with another class: nnU-Net's p 0)."""
    if not channels:
        return hot
    hot = hot.copy()
    for channel in channels:
        mask = hot[channel].astype(bool)
        if not mask.any():
            continue
        components, count = label_components(mask, structure=np.ones((3,) * mask.ndim))
        sizes = np.bincount(components.ravel())[1:]
        valid = [i + 1 for i, size in enumerate(sizes) if size < mask.size * MAX_COMPONENT_SHARE]
        if valid:
            hot[channel][components == valid[int(rng.integers(len(valid)))]] = 0
    return hot
