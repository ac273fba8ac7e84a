"""nnU-Net's training augmentations as small functions on one sample.

Each transform takes data (C, Z, Y, X) float32, seg (Z, Y, X) and a numpy Generator, draws its
random parameters, records them and applies them: it returns (data, seg, params), params None when
the transform was not applied. The pipeline, its probabilities and ranges are nnU-Net v2.8.1's
`nnUNetTrainer.get_training_transforms` and each transform computes what batchgeneratorsv2 0.3.6
computes with those settings (tests/test_augment_nnunet.py compares them with bgv2's own
transforms, and the drawn parameters' distributions with bgv2's): spatial (rotation, scaling,
bilinear image, one-hot-bilinear-argmax labels), Gaussian noise, blur, brightness, contrast,
low-resolution simulation, inverted gamma, gamma, mirroring, in that order. Flat patches (largest
edge > 3x the slice axis) get nnU-Net's "dummy 2D" treatment: the spatial transform rotates
(±180°) and scales in-plane only, slice by slice, and the low-resolution simulation leaves the
slice axis alone.

Label -1 (outside the image, and outside the nonzero mask for masked normalisation) is kept as a
label of its own through every transform; zeroing masked channels where seg < 0 and mapping -1 to
0 are nnU-Net's last steps and belong to the sampler, after augmentation.

The only deviation: the random numbers come from the job's numpy Generator instead of numpy's
and torch's global generators, so the draws follow nnU-Net's distributions, not its sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ablate.augment.geometry import (
    Params,
    enlarged_patch_size,
    is_dummy_2d,
    mirror,
    spatial,
)
from ablate.augment.intensity import (
    brightness,
    contrast,
    gamma,
    gaussian_blur,
    gaussian_noise,
    low_resolution,
)
from ablate.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "INTENSITY",
    "augment_sample",
    "brightness",
    "contrast",
    "enlarged_patch_size",
    "gamma",
    "gaussian_blur",
    "gaussian_noise",
    "is_dummy_2d",
    "low_resolution",
    "mirror",
    "sample_size_for",
    "spatial",
]

AUGMENTATIONS = ("nnunet", "mirror", "none")
# nnU-Net's order and probabilities after the spatial transform (each called with data, seg, rng)
INTENSITY = (
    ("gaussian_noise", gaussian_noise, {"p": 0.1}),
    ("gaussian_blur", gaussian_blur, {"p": 0.2, "p_per_channel": 0.5}),
    ("brightness", brightness, {"p": 0.15}),
    ("contrast", contrast, {"p": 0.15}),
    ("low_resolution", low_resolution, {"p": 0.25, "p_per_channel": 0.5}),
    ("gamma_inverted", gamma, {"p": 0.1, "invert": True}),
    ("gamma", gamma, {"p": 0.3, "invert": False}),
)


def augment_sample(
    data: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    mode: str,
    patch_size: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Params]]]:
    """Apply the `mode` pipeline (nnunet | mirror | none) to a sample of `sample_size_for(mode,
    patch_size)`; returns the `patch_size` data and seg (-1 kept) and each transform's params."""
    if mode not in AUGMENTATIONS:
        raise ConfigError(
            f"train.augmentation: unknown {mode!r}; valid: {', '.join(AUGMENTATIONS)}"
        )
    record: list[tuple[str, Params]] = []
    p_spatial = (0.2, 0.2) if mode == "nnunet" else (0.0, 0.0)
    data, seg, params = spatial(data, seg, rng, patch_size, *p_spatial)
    record.append(("spatial", params))
    if mode == "nnunet":
        ignore_axes = (0,) if is_dummy_2d(patch_size) else ()
        for name, transform, kwargs in INTENSITY:
            extra = {"ignore_axes": ignore_axes} if transform is low_resolution else {}
            data, seg, params = transform(data, seg, rng, **kwargs, **extra)
            record.append((name, params))
    if mode != "none":
        data, seg, params = mirror(data, seg, rng)
        record.append(("mirror", params))
    return data.astype(np.float32, copy=False), seg, record


def sample_size_for(mode: str, patch_size: Sequence[int]) -> tuple[int, ...]:
    """The size to crop before augmenting: enlarged for rotation/scaling, else the patch."""
    return enlarged_patch_size(patch_size) if mode == "nnunet" else tuple(patch_size)
