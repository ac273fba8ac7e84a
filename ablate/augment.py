"""nnU-Net's training augmentations as small functions on one sample.

Each transform takes data (C, Z, Y, X) float32, seg (Z, Y, X) and a numpy Generator, draws its
random parameters, records them and applies them: it returns (data, seg, params), params None when
the transform was not applied. Probabilities and ranges are nnU-Net v2's
(`nnUNetTrainer.get_training_transforms`); mirroring comes first here, which does not change the
distribution. Flat patches (largest edge > 3x the slice axis) get nnU-Net's "dummy 2D" spatial
augmentation: rotation (±180°) and scaling in-plane only, the slice axis untouched. Deviation:
linear (not cubic/B-spline) interpolation of the image in the spatial transform and low-resolution
simulation, to keep CPU cost down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ablate.errors import ConfigError

Params = dict[str, Any] | None
MAX_ROTATION_DEG = 30.0
MAX_ROTATION_DUMMY_2D_DEG = 180.0
SCALE_RANGE = (0.7, 1.4)
ANISO_THRESHOLD = 3.0


def is_dummy_2d(patch_size: Sequence[int]) -> bool:
    """nnU-Net augments flat patches slice by slice: max(patch) / patch[0] > 3."""
    return max(patch_size) / patch_size[0] > ANISO_THRESHOLD


def mirror(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    axes: Sequence[int] = (0, 1, 2),
    p: float = 0.5,
):
    flipped = tuple(a for a in axes if rng.uniform() < p)
    if not flipped:
        return data, seg, None
    data = np.ascontiguousarray(np.flip(data, axis=tuple(a + 1 for a in flipped)))
    seg = np.ascontiguousarray(np.flip(seg, axis=flipped))
    return data, seg, {"axes": flipped}


def _rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation about the z, y and x axes in turn, in (z, y, x) coordinates."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        matrix = matrix @ rot
    return matrix


def enlarged_patch_size(
    patch_size: Sequence[int], max_rotation_deg: float = MAX_ROTATION_DEG
) -> tuple[int, ...]:
    """nnU-Net's get_patch_size: the patch rotated by the maximum angle (clamped to 90°) about
    each axis, / 0.85; a dummy-2D patch rotates by up to 180° and keeps its slice axis."""
    dummy_2d = is_dummy_2d(patch_size)
    corner = np.asarray(patch_size, dtype=float)
    extent = corner.copy()
    angle = np.deg2rad(min(90.0, MAX_ROTATION_DUMMY_2D_DEG if dummy_2d else max_rotation_deg))
    for axis in range(3):
        for signed in (angle, -angle):  # nnU-Net's matrices differ in sign per axis; cover both
            angles = [0.0, 0.0, 0.0]
            angles[axis] = signed
            extent = np.maximum(extent, np.abs(_rotation_matrix(angles) @ corner))
    size = [int(e) for e in extent / 0.85]
    if dummy_2d:
        size[0] = int(patch_size[0])
    return tuple(size)


def spatial(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    patch_size: Sequence[int],
    p_rotation: float = 0.2,
    p_scaling: float = 0.2,
):
    """Rotation (±30° per axis) and scaling (one factor, 0.7-1.4) about the centre; for a
    dummy-2D patch, rotation (±180°) about the slice axis and scaling in-plane only.

    Always returns a centred `patch_size` crop of the (possibly larger) input sample.
    """
    dummy_2d = is_dummy_2d(patch_size)
    rotate, scale_it = rng.uniform() < p_rotation, rng.uniform() < p_scaling
    angles = np.zeros(3)
    if rotate and dummy_2d:
        angles[0] = rng.uniform(-1, 1) * np.deg2rad(MAX_ROTATION_DUMMY_2D_DEG)
    elif rotate:
        angles = rng.uniform(-1, 1, 3) * np.deg2rad(MAX_ROTATION_DEG)
    scale = float(rng.uniform(*SCALE_RANGE)) if scale_it else 1.0
    scales = np.array([1.0 if dummy_2d else scale, scale, scale])
    in_centre = (np.asarray(seg.shape) - 1) / 2
    if not (rotate or scale_it):
        start = [int(round(c - (p - 1) / 2)) for c, p in zip(in_centre, patch_size, strict=True)]
        crop = tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
        return data[(slice(None), *crop)], seg[crop], None
    out_centre = (np.asarray(patch_size) - 1) / 2
    grid = np.indices(patch_size, dtype=np.float64).reshape(3, -1) - out_centre[:, None]  # (3, N)
    coords = (_rotation_matrix(angles) * scales) @ grid + in_centre[:, None]
    data_out = np.stack(
        [
            ndimage.map_coordinates(channel, coords, order=1, mode="constant", cval=0.0).reshape(
                patch_size
            )
            for channel in data
        ]
    ).astype(np.float32)
    seg_out = ndimage.map_coordinates(seg, coords, order=0, mode="constant", cval=0).reshape(
        patch_size
    )
    return (
        data_out,
        seg_out.astype(seg.dtype),
        {"angles_deg": np.rad2deg(angles).tolist(), "scale": scale},
    )


def gaussian_noise(data, seg, rng: np.random.Generator, p: float = 0.1):
    if rng.uniform() >= p:
        return data, seg, None
    variance = float(rng.uniform(0, 0.1))
    noisy = data + rng.normal(0.0, np.sqrt(variance), data.shape).astype(np.float32)
    return noisy, seg, {"variance": variance}


def gaussian_blur(data, seg, rng: np.random.Generator, p: float = 0.2, p_per_channel: float = 0.5):
    if rng.uniform() >= p:
        return data, seg, None
    data, sigmas = data.copy(), {}
    for c in range(data.shape[0]):
        if rng.uniform() < p_per_channel:
            sigma = rng.uniform(0.5, 1.0, 3)  # per axis, as nnU-Net (synchronize_axes=False)
            data[c] = ndimage.gaussian_filter(data[c], sigma)
            sigmas[c] = sigma.tolist()
    return data, seg, {"sigma": sigmas}


def brightness(data, seg, rng: np.random.Generator, p: float = 0.15):
    if rng.uniform() >= p:
        return data, seg, None
    factors = rng.uniform(0.75, 1.25, data.shape[0]).astype(np.float32)
    return data * factors[:, None, None, None], seg, {"factors": factors.tolist()}


def contrast(data, seg, rng: np.random.Generator, p: float = 0.15):
    """Scale around each channel's mean; the original value range is preserved (clipped)."""
    if rng.uniform() >= p:
        return data, seg, None
    factors = rng.uniform(0.75, 1.25, data.shape[0])
    out = np.empty_like(data)
    for c, f in enumerate(factors):
        mean, lo, hi = data[c].mean(), data[c].min(), data[c].max()
        out[c] = np.clip((data[c] - mean) * f + mean, lo, hi)
    return out, seg, {"factors": factors.tolist()}


def _resize(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    axes = [np.linspace(0, s - 1, n) for s, n in zip(volume.shape, shape, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return ndimage.map_coordinates(volume, coords, order=order, mode="nearest")


def low_resolution(
    data, seg, rng: np.random.Generator, p: float = 0.25, p_per_channel: float = 0.5
):
    """Downsample (nearest) by a zoom in (0.5, 1), same for all axes, and upsample back (linear)."""
    if rng.uniform() >= p:
        return data, seg, None
    data, zooms = data.copy(), {}
    for c in range(data.shape[0]):
        if rng.uniform() < p_per_channel:
            zoom = float(rng.uniform(0.5, 1.0))
            small = [max(1, round(s * zoom)) for s in data.shape[1:]]
            data[c] = _resize(_resize(data[c], small, order=0), data.shape[1:], order=1)
            zooms[c] = zoom
    return data, seg, {"zoom": zooms}


def _draw_gamma(rng: np.random.Generator) -> float:
    """batchgenerators' rule: half the time below 1, else above 1, within (0.7, 1.5)."""
    return float(rng.uniform(0.7, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, 1.5))


def gamma(data, seg, rng: np.random.Generator, p: float = 0.3, invert: bool = False):
    """x -> range-normalised x ** gamma, mean and sd retained; `invert` applies it to -x."""
    if rng.uniform() >= p:
        return data, seg, None
    out, gammas = np.empty_like(data), []
    for c in range(data.shape[0]):
        x = -data[c] if invert else data[c]
        g = _draw_gamma(rng)
        mean, sd, lo = x.mean(), x.std(), x.min()
        span = x.max() - lo + 1e-7
        y = ((x - lo) / span) ** g * span + lo
        y = (y - y.mean()) / (y.std() + 1e-8) * sd + mean
        out[c] = -y if invert else y
        gammas.append(g)
    return out, seg, {"gamma": gammas, "invert": invert}


def augment_sample(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    mode: str,
    patch_size: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Params]]]:
    """Apply the `mode` pipeline (nnunet | mirror | none); returns each transform's params."""
    if mode not in AUGMENTATIONS:
        raise ConfigError(
            f"train.augmentation: unknown {mode!r}; valid: {', '.join(AUGMENTATIONS)}"
        )
    record: list[tuple[str, Params]] = []
    data, seg, params = mirror(data, seg, rng) if mode != "none" else (data, seg, None)
    record.append(("mirror", params))
    data, seg, params = spatial(
        data, seg, rng, patch_size, *((0.2, 0.2) if mode == "nnunet" else (0.0, 0.0))
    )
    record.append(("spatial", params))
    if mode == "nnunet":
        for name, transform in INTENSITY:
            data, seg, params = transform(data, seg, rng)
            record.append((name, params))
    return data.astype(np.float32, copy=False), seg, record


INTENSITY = (
    ("gaussian_noise", gaussian_noise),
    ("gaussian_blur", gaussian_blur),
    ("brightness", brightness),
    ("contrast", contrast),
    ("low_resolution", low_resolution),
    ("gamma_inverted", lambda d, s, r: gamma(d, s, r, p=0.1, invert=True)),
    ("gamma", gamma),
)
AUGMENTATIONS = ("nnunet", "mirror", "none")


def sample_size_for(mode: str, patch_size: Sequence[int]) -> tuple[int, ...]:
    """The size to crop before augmenting: enlarged for rotation/scaling, else the patch."""
    return enlarged_patch_size(patch_size) if mode == "nnunet" else tuple(patch_size)
