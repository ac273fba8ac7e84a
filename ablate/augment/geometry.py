"""nnU-Net's spatial augmentation: enlarged patch size, rotation and scaling, mirroring.

The transform is bgv2's `SpatialTransform` with nnU-Net's settings, re-implemented with the same
grid construction so the output is identical: a centred identity grid over the patch, the affine
`Rz @ Ry @ Rx @ S` applied to it, `grid_sample` (bilinear, zeros padding, align_corners=False),
and labels resampled as one-hot channels (x 1000, argmax in float16, ties to the nearest
neighbour's label), the padding label -1 taking part outside the input. Label -1 (outside the
image or the normalisation mask) is kept as a label of its own throughout; the sampler masks the
image and maps -1 to 0 after augmentation, as nnU-Net does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.functional import grid_sample

Params = dict[str, Any] | None
MAX_ROTATION_DEG = 30.0
MAX_ROTATION_DUMMY_2D_DEG = 180.0
MAX_ROTATION_2D_ELONGATED_DEG = 15.0
SCALE_RANGE = (0.7, 1.4)
ANISO_THRESHOLD = 3.0
P_ROTATION = 0.2
P_SCALING = 0.2
SEG_PADDING = -1  # nnU-Net's padding_value_seg
ONEHOT_SCALE = 1000.0  # bgv2 scales the one-hot channels before comparing them in float16


def is_dummy_2d(patch_size: Sequence[int]) -> bool:
    """nnU-Net augments flat patches slice by slice: max(patch) / patch[0] > 3."""
    return max(patch_size) / patch_size[0] > ANISO_THRESHOLD


def max_rotation_deg_for(patch_size: Sequence[int]) -> float:
    """nnU-Net's rotation range: ±30° in 3D, ±180° for a dummy-2D patch; a 2d configuration's
    patch (one slice: (1, Y, X)) ±180°, or ±15° when its in-plane aspect exceeds 1.5
    (configure_rotation_dummyDA_mirroring_and_inital_patch_size)."""
    if patch_size[0] == 1 and max(patch_size[1:]) / min(patch_size[1:]) > 1.5:
        return MAX_ROTATION_2D_ELONGATED_DEG
    return MAX_ROTATION_DUMMY_2D_DEG if is_dummy_2d(patch_size) else MAX_ROTATION_DEG


def _rad(deg: float) -> float:
    return deg / 360 * 2.0 * np.pi  # nnU-Net's own expression, for identical floats


def _rotation_x(a: float) -> np.ndarray:
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rotation_y(a: float) -> np.ndarray:
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rotation_z(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def enlarged_patch_size(
    patch_size: Sequence[int], max_rotation_deg: float = MAX_ROTATION_DEG
) -> tuple[int, ...]:
    """nnU-Net's `get_patch_size` as its trainer calls it: the patch's corner vector rotated by
    +angle (clamped to 90°) about each axis in turn (batchgenerators' `rotate_coords_3d`), the
    elementwise maximum, / 0.85 and truncated. A dummy-2D patch uses 180° and keeps its slice axis.
    """
    dummy_2d = is_dummy_2d(patch_size)
    if dummy_2d:
        max_rotation_deg = max_rotation_deg_for(patch_size)
    angle = min(_rad(90), _rad(max_rotation_deg))
    coords = np.array(patch_size)
    final_shape = np.copy(coords)
    for rotation in (_rotation_x(angle), _rotation_y(angle), _rotation_z(angle)):
        rotated = np.dot(coords.reshape(len(coords), -1).transpose(), rotation).transpose()
        final_shape = np.max(np.vstack((np.abs(rotated.reshape(coords.shape)), final_shape)), 0)
    final_shape = final_shape / 0.85
    size = [int(s) for s in final_shape.astype(int)]
    if dummy_2d:
        size[0] = int(patch_size[0])
    return tuple(size)


def affine_matrix(angles_rad: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """bgv2's create_affine_matrix_3d / _2d: R @ S, with R = Rz @ Ry @ Rx in 3D."""
    if len(angles_rad) == 1:
        c, s = np.cos(angles_rad[0]), np.sin(angles_rad[0])
        return np.array([[c, -s], [s, c]]) @ np.diag(scales)
    a = angles_rad
    return _rotation_z(a[2]) @ _rotation_y(a[1]) @ _rotation_x(a[0]) @ np.diag(scales)


@functools.lru_cache(maxsize=8)
def _identity_grid(patch_size: tuple[int, ...]) -> torch.Tensor:
    """(*patch, d) voxel offsets from the patch centre (bgv2's _create_centered_identity_grid2);
    cached, never written to."""
    space = [torch.linspace((1 - s) / 2, (s - 1) / 2, s) for s in patch_size]
    return torch.stack(torch.meshgrid(space, indexing="ij"), -1).float().contiguous()


def sampling_grid(
    patch_size: Sequence[int], in_shape: Sequence[int], affine: np.ndarray
) -> torch.Tensor:
    """grid_sample's grid (*patch, d), xyz-last: bgv2's centred identity grid, transformed by
    `affine` about the input's centre and normalised by the input's half edge lengths."""
    grid = torch.matmul(_identity_grid(tuple(patch_size)), torch.from_numpy(affine.T).float())
    for d, s in enumerate(in_shape):
        grid[..., d] /= s / 2
    return torch.flip(grid, (grid.ndim - 1,))


def _may_reach_outside(grid: torch.Tensor, in_shape: Sequence[int]) -> bool:
    """bgv2's cheap test: could the bilinear kernel touch a voxel outside the input?"""
    bound = (1 - 1 / np.array(in_shape[::-1], dtype=float)).min()
    lowest, highest = torch.aminmax(grid)
    return not (-lowest.item() <= bound and highest.item() <= bound)


def resample_image(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """(C, *in) -> (C, *patch), zeros outside."""
    return grid_sample(image[None], grid[None], mode, "zeros", align_corners=False)[0]


def _label_score(channel: torch.Tensor, label, grid: torch.Tensor, padded: bool, buffer):
    """The label's one-hot x 1000, resampled, in float16; the padding label counts as present
    outside the input when the kernel may reach there (`padded`). `buffer`: a float tensor of
    the channel's shape, overwritten."""
    onehot = torch.eq(channel, label, out=buffer)  # (*in) 0. / 1.
    if padded and label == SEG_PADDING:  # sample (onehot - 1) with zeros outside, add 1 back
        out = resample_image(onehot.sub_(1).mul_(ONEHOT_SCALE)[None], grid)[0]
        return out.add_(ONEHOT_SCALE).to(torch.float16)
    return resample_image(onehot.mul_(ONEHOT_SCALE)[None], grid)[0].to(torch.float16)


def _present_labels(channel: torch.Tensor) -> torch.Tensor:
    """The sorted labels in `channel` (a bincount: much faster than a sort on a volume)."""
    low = int(channel.min())
    counts = torch.bincount(channel.reshape(-1).int() - low)
    return (torch.nonzero(counts).flatten() + low).to(channel.dtype)


def resample_labels(seg: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(C, *in) int -> (C, *patch), bgv2 0.3.6's SpatialTransform segmentation path with nnU-Net's
    settings: per channel and label a one-hot x 1000, bilinear, the argmax in float16 (the
    lowest label wins ties, except where the nearest neighbour's label is among the tied ones:
    then it wins), and outside the input the padding label -1 takes part as a label."""
    result = torch.zeros((seg.shape[0], *grid.shape[:-1]), dtype=seg.dtype)
    padded = _may_reach_outside(grid, seg.shape[1:])
    nearest = (resample_image(seg.float() - SEG_PADDING, grid, "nearest") + SEG_PADDING).to(
        seg.dtype
    )  # (C, *patch), -1 outside
    buffer = torch.empty(seg.shape[1:], dtype=torch.float32)
    for c in range(seg.shape[0]):
        labels = _present_labels(seg[c])
        if padded:
            labels = torch.unique(torch.cat((labels, labels.new_tensor([SEG_PADDING]))))
        if len(labels) == 1:
            result[c] = labels[0].item()
            continue
        if len(labels) == 2:  # bgv2's shortcut: the two scores sum to 1000
            high = _label_score(seg[c], labels[1], grid, padded, buffer)
            result[c] = labels[0].item()
            result[c][high > ONEHOT_SCALE / 2] = labels[1]
            tie = high == ONEHOT_SCALE / 2
        else:
            best = None
            nearest_score = torch.full(nearest.shape[1:], float("-inf"), dtype=torch.float16)
            for u in labels:
                score = _label_score(seg[c], u, grid, padded, buffer)
                nearest_score = torch.where(nearest[c] == u, score, nearest_score)
                if best is None:
                    best, result[c] = score, u.item()
                    continue
                result[c][score > best] = u
                best = torch.maximum(best, score)
            tie = nearest_score == best
        result[c] = torch.where(tie, nearest[c], result[c])
    return result


def crop_centre(volume: torch.Tensor, patch: Sequence[int], pad_value: float) -> torch.Tensor:
    """bgv2's crop_tensor about floor(shape / 2), padded with `pad_value` where too small."""
    shape = volume.shape[1:]
    start = [s // 2 - p // 2 for s, p in zip(shape, patch, strict=True)]
    slices = [slice(max(0, b), min(s, b + p)) for b, s, p in zip(start, shape, patch, strict=True)]
    out = volume[(slice(None), *slices)]
    before = [max(0, -b) for b in start]
    after = [p - (sl.stop - sl.start) - pb for p, sl, pb in zip(patch, slices, before, strict=True)]
    pad = [w for pb, pa in zip(before[::-1], after[::-1], strict=True) for w in (pb, pa)]
    if any(pad):
        out = torch.nn.functional.pad(out, pad, mode="constant", value=pad_value)
    return out


def draw_spatial(
    rng: np.random.Generator,
    patch_size: Sequence[int],
    p_rotation: float = P_ROTATION,
    p_scaling: float = P_SCALING,
) -> Params:
    """nnU-Net's draws: rotation with p 0.2 (each axis uniform in ±30°; a dummy-2D patch about
    the slice axis only, ±180°), scaling with p 0.2 (one factor in (0.7, 1.4) for all axes)."""
    dummy_2d = is_dummy_2d(patch_size)
    rotate, scale_it = rng.uniform() < p_rotation, rng.uniform() < p_scaling
    if not (rotate or scale_it):
        return None
    max_rad = _rad(max_rotation_deg_for(patch_size))
    n_angles = 1 if dummy_2d else 3
    angles = rng.uniform(-max_rad, max_rad, n_angles) if rotate else np.zeros(n_angles)
    scale = float(rng.uniform(*SCALE_RANGE)) if scale_it else 1.0
    return {"angles_rad": angles.tolist(), "scale": scale, "dummy_2d": dummy_2d}


def apply_spatial(
    data: np.ndarray, seg: np.ndarray, params: Params, patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample (C, Z, Y, X) data and (Z, Y, X) seg onto the `patch_size` grid about the centre;
    without params, bgv2's integer centre crop (data padded with 0, seg with -1)."""
    image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    labels = torch.from_numpy(np.ascontiguousarray(seg))[None]
    if params is not None and params["dummy_2d"]:
        # nnU-Net's Convert3DTo2DTransform: slices become channels, the slice axis is kept
        # (its sample has the patch's slice count already; crop or pad it if not)
        image = crop_centre(image, (patch_size[0], *image.shape[2:]), 0)
        labels = crop_centre(labels, (patch_size[0], *labels.shape[2:]), SEG_PADDING)
        image = image.reshape(-1, *image.shape[2:])  # (C * Z, Y, X)
        labels = labels.reshape(-1, *labels.shape[2:])  # (Z, Y, X)
        affine = affine_matrix(params["angles_rad"], [params["scale"]] * 2)
        grid = sampling_grid(patch_size[1:], image.shape[1:], affine)
        image_out = resample_image(image, grid).reshape(data.shape[0], *patch_size)
        seg_out = resample_labels(labels, grid).reshape(patch_size)
    elif params is not None:
        affine = affine_matrix(params["angles_rad"], [params["scale"]] * 3)
        grid = sampling_grid(patch_size, image.shape[1:], affine)
        image_out, seg_out = resample_image(image, grid), resample_labels(labels, grid)[0]
    else:
        image_out = crop_centre(image, patch_size, 0)
        seg_out = crop_centre(labels, patch_size, SEG_PADDING)[0]
    return image_out.numpy(), seg_out.numpy()


def spatial(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    patch_size: Sequence[int],
    p_rotation: float = P_ROTATION,
    p_scaling: float = P_SCALING,
):
    """Rotation and scaling about the centre (see `draw_spatial`); always returns a centred
    `patch_size` crop of the (possibly larger) input sample."""
    params = draw_spatial(rng, patch_size, p_rotation, p_scaling)
    data, seg = apply_spatial(data, seg, params, patch_size)
    return data, seg, params


def draw_mirror(rng: np.random.Generator, axes: Sequence[int] = (0, 1, 2), p: float = 0.5):
    flipped = tuple(a for a in axes if rng.uniform() < p)
    return {"axes": flipped} if flipped else None


def apply_mirror(data: np.ndarray, seg: np.ndarray, params: Params):
    if params is None:
        return data, seg
    axes = params["axes"]
    data = np.ascontiguousarray(np.flip(data, axis=tuple(a + 1 for a in axes)))
    return data, np.ascontiguousarray(np.flip(seg, axis=axes))


def mirror(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    axes: Sequence[int] = (0, 1, 2),
    p: float = 0.5,
):
    """Flip each axis with probability 0.5 (bgv2's MirrorTransform, nnU-Net's last transform)."""
    params = draw_mirror(rng, axes, p)
    data, seg = apply_mirror(data, seg, params)
    return data, seg, params
