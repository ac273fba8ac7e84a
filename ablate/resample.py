"""Resampling as nnU-Net's default_resampling does it, with scipy instead of skimage: images cubic
in-plane (slice by slice) and nearest along a coarse axis, labels by their linearly resized
indicators, logits linearly for the export."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from ablate.plan import ANISO_THRESHOLD


def _separate_axis(current_spacing, new_spacing) -> int | None:
    """The coarse axis to resample separately, when either spacing is anisotropic (> 3)."""
    for spacing in (current_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=float)
        if spacing.max() / spacing.min() > ANISO_THRESHOLD:
            coarse = np.flatnonzero(spacing == spacing.max())
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def _resize(array: np.ndarray, new_shape, order: int, slice_axis: int | None = None) -> np.ndarray:
    """skimage.resize(mode='edge', anti_aliasing=False, clip=True) equivalent: pixel-centre
    aligned, and clipped to the input's range (per slice along `slice_axis`, which nnU-Net
    resizes slice by slice), so cubic overshoot never leaves the range."""
    if tuple(array.shape) == tuple(new_shape):
        return array
    factors = [n / o for n, o in zip(new_shape, array.shape, strict=True)]
    if slice_axis is not None and factors[slice_axis] == 1 and order >= 1:
        # slice by slice, as nnU-Net resizes: a 3-D spline also prefilters and interpolates
        # along the unchanged axis, several times the work for the same values (bit-identical
        # for linear and cubic, tested)
        out = np.empty(tuple(new_shape), dtype=array.dtype)
        plane = [f for a, f in enumerate(factors) if a != slice_axis]
        for i in range(array.shape[slice_axis]):
            index = (slice(None),) * slice_axis + (i,)
            out[index] = zoom(array[index], plane, order=order, mode="nearest", grid_mode=True)
    else:
        out = zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(new_shape), (out.shape, new_shape)
    if order > 1:  # linear and nearest interpolation cannot leave the input's range
        if slice_axis is None:
            np.clip(out, array.min(), array.max(), out=out)
        else:
            other = tuple(a for a in range(array.ndim) if a != slice_axis)
            shape = [1] * array.ndim
            shape[slice_axis] = array.shape[slice_axis]
            low = array.min(axis=other).reshape(shape)
            high = array.max(axis=other).reshape(shape)
            np.clip(out, low, high, out=out)
    return out


def _resize_separate(array, new_shape, order: int, order_z: int, axis: int | None):
    """In-plane with `order` (slice by slice); the coarse axis (if any) afterwards with
    `order_z`."""
    if axis is None:
        return _resize(array, new_shape, order)
    in_plane = list(new_shape)
    in_plane[axis] = array.shape[axis]  # zoom factor 1 along the coarse axis = slice-wise
    return _resize(_resize(array, in_plane, order, slice_axis=axis), new_shape, order_z)


def resample_data(
    data: np.ndarray, new_shape, current_spacing, new_spacing, order: int = 3, order_z: int = 0
) -> np.ndarray:
    """(C, Z, Y, X) float images to new_shape (cubic; coarse axis nearest when anisotropic)."""
    axis = _separate_axis(current_spacing, new_spacing)
    # filled channel by channel: stacking the resized channels and then astype copied the whole
    # (C, Z, Y, X) result twice (1.3 GB at export of 3 classes at 512x512x200)
    out = np.empty((len(data), *(int(s) for s in new_shape)), dtype=np.float32)
    for c, channel in enumerate(data):
        channel = channel.astype(np.float32, copy=False)
        out[c] = _resize_separate(channel, new_shape, order, order_z, axis)
    return out


def resample_seg(seg: np.ndarray, new_shape, current_spacing, new_spacing) -> np.ndarray:
    """(Z, Y, X) labels: each label's indicator resized linearly, the per-voxel winner kept
    (batchgenerators' resize_segmentation, which nnU-Net calls); the coarse axis by nearest
    neighbour when anisotropic."""
    if tuple(seg.shape) == tuple(new_shape):
        return seg
    axis = _separate_axis(current_spacing, new_spacing)
    in_plane = list(new_shape)
    if axis is not None:
        in_plane[axis] = seg.shape[axis]
    out = _resize_labels(seg, in_plane, slice_axis=axis)
    return _resize(out, new_shape, 0) if axis is not None else out


def _resize_labels(seg: np.ndarray, new_shape, slice_axis: int | None = None) -> np.ndarray:
    """The label whose linearly resized indicator scores highest; an exact tie goes to the
    nearest-neighbour label when it is among the tied, else to the lowest tied label
    (batchgenerators 0.25.5's seg_tiebreak='nearest')."""
    labels = np.unique(seg)
    if len(labels) == 1 or tuple(seg.shape) == tuple(new_shape):
        return np.full(new_shape, labels[0], dtype=seg.dtype) if len(labels) == 1 else seg
    nearest = _resize(seg.astype(np.float64), new_shape, 0).astype(seg.dtype)
    best = winner = nearest_score = None
    for index, label in enumerate(labels):
        score = _resize((seg == label).astype(np.float64), new_shape, 1, slice_axis)
        if best is None:
            best, winner, nearest_score = score, np.zeros(new_shape, np.int32), np.zeros(new_shape)
        else:
            better = score > best
            winner[better] = index
            np.maximum(best, score, out=best)
        here = nearest == label
        nearest_score[here] = score[here]
    keep_nearest = (nearest_score == best) & (nearest_score > 0)
    return np.where(keep_nearest, nearest, labels[winner]).astype(seg.dtype)


def new_shape_for(shape, spacing, target_spacing) -> tuple[int, int, int]:
    return tuple(
        int(v) for v in np.round(np.array(spacing) / np.array(target_spacing) * np.array(shape))
    )


# ---- normalisation ---------------------------------------------------------------------------
