"""Patch sampling with nnU-Net's foreground oversampling, and a background batch loader.

Every batch is drawn from its own numpy Generator seeded by (seed, epoch, split, batch index), so
the batches are the same whatever the number of workers and after a resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]  # data (B, C, Z, Y, X) float32, seg (B, 1, Z, Y, X) int16
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class CaseSource(Protocol):
    """The part of PreprocessedData the sampler reads."""

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, object]: ...

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]: ...


def is_forced_foreground(index: int, batch_size: int, oversample: float) -> bool:
    """nnU-Net's rule: sample i is forced iff i >= round(bs * (1 - p)); at least one when p > 0."""
    if oversample <= 0:
        return False
    first_forced = min(round(batch_size * (1 - oversample)), batch_size - 1)
    return index >= first_forced


def batch_rng(seed: int, epoch: int, split: int, index: int) -> np.random.Generator:
    """The generator of one batch; split 0 = train, 1 = validation."""
    return np.random.default_rng([seed, epoch, split, index])


def choose_patch_start(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    locations: dict[int, np.ndarray] | None,
) -> tuple[int, ...]:
    """Start corner of a patch; may be negative or run past the end (the crop pads there).

    With `locations` (forced foreground) a class is drawn uniformly among the foreground classes
    present, then one of its voxels, and the patch is centred on it and clamped to the valid range.
    Otherwise the start is uniform over the valid range. When the image is smaller than the patch,
    the valid range centres it (padding split as nnU-Net does).
    """
    need_pad = [max(p - s, 0) for s, p in zip(shape, patch_size, strict=True)]
    low = [-n // 2 for n in need_pad]
    high = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, need_pad, patch_size, strict=True)]
    classes = sorted(c for c, v in (locations or {}).items() if c > 0 and len(v) > 0)
    if not classes:
        return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True))
    voxels = locations[classes[int(rng.integers(len(classes)))]]
    voxel = voxels[int(rng.integers(len(voxels)))]
    return tuple(
        int(np.clip(v - p // 2, lo, hi))
        for v, p, lo, hi in zip(voxel, patch_size, low, high, strict=True)
    )


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
    patch_size: Sequence[int],
    force_fg: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One (data (C, *patch), seg (*patch)) pair; data padded with 0, seg with -1, then -1 -> 0."""
    data, seg, _ = source.load_case(case_id)
    locations = source.class_locations(case_id) if force_fg else None
    start = choose_patch_start(seg.shape, patch_size, rng, locations)
    data_patch = crop_padded(data, start, patch_size, 0.0).astype(np.float32, copy=False)
    seg_patch = crop_padded(seg, start, patch_size, -1).astype(np.int16)
    seg_patch[seg_patch < 0] = 0
    return data_patch, seg_patch


def sample_batch(
    source: CaseSource,
    case_ids: Sequence[str],
    batch_size: int,
    sample_size: Sequence[int],
    oversample: float,
    rng: np.random.Generator,
    augment: Augment | None = None,
) -> Batch:
    """Cases drawn uniformly with replacement; positions >= round(bs * (1 - p)) forced to fg.

    `sample_size` may exceed the final patch size when `augment` crops (nnU-Net's enlarged patch).
    """
    datas, segs = [], []
    for i in range(batch_size):
        case_id = case_ids[int(rng.integers(len(case_ids)))]
        data, seg = sample_patch(
            source, case_id, sample_size, is_forced_foreground(i, batch_size, oversample), rng
        )
        if augment is not None:
            data, seg = augment(data, seg, rng)
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
