"""Patch sampling with nnU-Net's foreground oversampling, and a background batch loader.

Every batch is drawn from its own numpy Generator seeded by (seed, epoch, split, batch index), so
the batches are the same whatever the number of workers and after a resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from ablate.preprocess import ANNOTATED

Batch = tuple[np.ndarray, np.ndarray]  # data (B, C, Z, Y, X) float32, seg (B, 1, Z, Y, X) int16
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class CaseSource(Protocol):
    """The part of PreprocessedData the sampler reads."""

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, object]: ...

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]: ...

    def region_locations(
        self, case_id: str, regions: Sequence[Sequence[int]]
    ) -> dict[tuple[int, ...], np.ndarray]: ...

    def annotated_locations(self, case_id: str) -> np.ndarray: ...


def is_forced_foreground(index: int, batch_size: int, oversample: float) -> bool:
    """nnU-Net's rule: sample i is forced iff i >= round(bs * (1 - p)) (Python's round, so with
    batch size 1 and p = 0.33 nothing is forced)."""
    return index >= round(batch_size * (1 - oversample))


def batch_rng(seed: int, epoch: int, split: int, index: int) -> np.random.Generator:
    """The generator of one batch; split 0 = train, 1 = validation."""
    return np.random.default_rng([seed, epoch, split, index])


def crop_bounds(
    shape: Sequence[int], sample_size: Sequence[int], final_size: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The lowest and highest start corner of a `sample_size` crop (nnU-Net's get_bbox bounds).

    The crop may reach past the image by `sample_size - final_size` (more where the image is
    smaller than the crop), split as nnU-Net does, so the final centre crop the spatial
    augmentation takes can sit anywhere in the image, borders included.
    """
    need_pad = [max(p - f, p - s) for s, p, f in zip(shape, sample_size, final_size, strict=True)]
    low = [-n // 2 for n in need_pad]
    high = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, need_pad, sample_size, strict=True)]
    return low, high


def choose_patch_start(
    shape: Sequence[int],
    sample_size: Sequence[int],
    final_size: Sequence[int],
    rng: np.random.Generator,
    locations: Mapping[object, np.ndarray] | None,
) -> tuple[int, ...]:
    """Start corner of a `sample_size` crop; may be negative or run past the end (padded there).

    nnU-Net's get_bbox: without `locations` the start is uniform between `crop_bounds`. With
    `locations` (forced foreground: per label or region, voxel indices (N, 3)) one class or region
    is drawn uniformly among those with voxels in this case, then one of its voxels; the crop is
    centred on it and clamped at the lower bound only, so the voxel is always inside the crop.
    A case without any foreground falls back to a random crop.
    """
    low, high = crop_bounds(shape, sample_size, final_size)
    eligible = [v for k, v in (locations or {}).items() if _is_foreground(k) and len(v) > 0]
    if not eligible:
        return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True))
    voxels = eligible[int(rng.integers(len(eligible)))]
    voxel = voxels[int(rng.integers(len(voxels)))]
    return tuple(max(lo, int(v) - p // 2) for v, p, lo in zip(voxel, sample_size, low, strict=True))


def _is_foreground(key: object) -> bool:
    return key == ANNOTATED or isinstance(key, tuple) or int(key) > 0


def crop_padded(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float
) -> np.ndarray:
    """Crop the last len(start) axes at [start, start + size), padding outside with `fill`."""
    lead = array.shape[: array.ndim - len(start)]
    out = np.full((*lead, *size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[len(lead) :], strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[(..., *dst)] = array[(..., *src)]
    return out


def sample_patch(
    source: CaseSource,
    case_id: str,
    sample_size: Sequence[int],
    force_fg: bool,
    rng: np.random.Generator,
    final_size: Sequence[int] | None = None,
    regions: Sequence[Sequence[int]] | None = None,
    annotated: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One (data (C, *sample_size), seg (*sample_size)) pair, padded with 0 and -1.

    -1 (outside the image, and outside the nonzero mask) stays: augmentation carries it through,
    `sample_batch` masks and maps it to 0 afterwards, as nnU-Net does. `final_size` is the patch
    the network sees (default `sample_size`); forced crops use `regions`' locations when given.
    With `annotated` (the dataset has an ignore label) an unforced crop is centred on an annotated
    voxel, and a forced one too when the case has no foreground (nnU-Net's get_bbox).
    """
    data, seg, _ = source.load_case(case_id)
    locations = None
    if force_fg:
        locations = (
            source.region_locations(case_id, regions)
            if regions
            else source.class_locations(case_id)
        )
    if annotated and not (force_fg and any(len(v) for v in locations.values())):
        locations = {ANNOTATED: source.annotated_locations(case_id)}
    start = choose_patch_start(seg.shape, sample_size, final_size or sample_size, rng, locations)
    data_patch = crop_padded(data, start, sample_size, 0.0).astype(np.float32, copy=False)
    seg_patch = crop_padded(seg, start, sample_size, -1).astype(np.int16)
    return data_patch, seg_patch


def sample_batch(
    source: CaseSource,
    case_ids: Sequence[str],
    batch_size: int,
    sample_size: Sequence[int],
    oversample: float,
    rng: np.random.Generator,
    augment: Augment | None = None,
    final_size: Sequence[int] | None = None,
    mask_channels: Sequence[int] = (),
    regions: Sequence[Sequence[int]] | None = None,
    annotated: bool = False,
) -> Batch:
    """Cases drawn uniformly with replacement; positions >= round(bs * (1 - p)) forced to fg.

    `sample_size` exceeds `final_size` (the network's patch) when `augment` rotates or scales
    and crops the centre (nnU-Net's enlarged patch). After augmentation the `mask_channels`
    (nnU-Net's use_mask_for_norm) are zeroed where the label is -1, then -1 becomes 0
    (nnU-Net's MaskImageTransform and RemoveLabelTansform, in its order).
    """
    datas, segs = [], []
    for i in range(batch_size):
        case_id = case_ids[int(rng.integers(len(case_ids)))]
        force = is_forced_foreground(i, batch_size, oversample)
        data, seg = sample_patch(
            source, case_id, sample_size, force, rng, final_size, regions, annotated
        )
        if augment is not None:
            data, seg = augment(data, seg, rng)
        outside = seg < 0
        if mask_channels and outside.any():
            data = data.copy()
            for c in mask_channels:
                data[c][outside] = 0
        seg = np.where(outside, 0, seg).astype(np.int16)
        datas.append(data)
        segs.append(seg[None])
    return np.stack(datas).astype(np.float32, copy=False), np.stack(segs)


def iterate_batches(
    make_batch: Callable[[int], Batch], count: int, workers: int, prefetch: int = 2
) -> Iterator[Batch]:
    """Yield make_batch(0..count-1) in order; with workers > 0, computed ahead in threads.

    At most workers * prefetch batches are in flight (a bounded queue), so memory stays flat.
    """
    if workers <= 0:
        for i in range(count):
            yield make_batch(i)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ablate-loader") as pool:
        pending: deque = deque()
        submitted = 0
        try:
            while submitted < min(count, workers * prefetch):
                pending.append(pool.submit(make_batch, submitted))
                submitted += 1
            while pending:
                batch = pending.popleft().result()
                if submitted < count:
                    pending.append(pool.submit(make_batch, submitted))
                    submitted += 1
                yield batch
        finally:
            for future in pending:
                future.cancel()
