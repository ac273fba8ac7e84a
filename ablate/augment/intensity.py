"""nnU-Net's intensity augmentations, as bgv2 0.3.6 computes them with nnU-Net's settings.

Each transform is a `draw_*` (its random parameters from a numpy Generator, None when it is not
applied), an `apply_*` (the parameters applied to data (C, Z, Y, X) float32, in torch float32 like
bgv2, the input left untouched) and the two together. Factors drawn "BGContrast-style" come from
bgv2's rule: with probability 0.5 from (low, 1), else from (1, high).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.functional import conv3d, interpolate, pad

Params = dict[str, Any] | None
NOISE_SD = (0.0, 0.1)
BLUR_SIGMA = (0.5, 1.0)
BLUR_TRUNCATE = 6.0  # bgv2's blur_dimension default
MULTIPLIER_RANGE = (0.75, 1.25)  # brightness and contrast
LOW_RESOLUTION_SCALE = (0.5, 1.0)
GAMMA_RANGE = (0.7, 1.5)
EPS = 1e-7


def bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
    """bgv2's BGContrast: half the draws below 1, half above (when low < 1)."""
    if rng.uniform() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def _tensor(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: bgv2 works in place


def draw_gaussian_noise(rng: np.random.Generator, p: float = 0.1) -> Params:
    """bgv2's GaussianNoiseTransform(noise_variance=(0, 0.1), synchronize_channels=True): the
    drawn value is the noise's standard deviation, one for all channels, despite the name."""
    if rng.uniform() >= p:
        return None
    return {"sd": float(rng.uniform(*NOISE_SD))}


def apply_gaussian_noise(data: np.ndarray, params: Params, rng: np.random.Generator) -> np.ndarray:
    if params is None:
        return data
    noise = rng.standard_normal(data.shape, dtype=np.float32) * np.float32(params["sd"])
    return (data + noise).astype(np.float32, copy=False)


def gaussian_noise(data, seg, rng: np.random.Generator, p: float = 0.1):
    params = draw_gaussian_noise(rng, p)
    return apply_gaussian_noise(data, params, rng), seg, params


def _blur_kernel(sigma: float) -> torch.Tensor:
    """bgv2's _build_kernel: odd size round(6 sigma + 0.5) to the nearest odd, normalised."""
    n = sigma * BLUR_TRUNCATE + 0.5
    size = round(n)
    if size % 2 == 0:
        size = size + 1 if n - size >= 0 else size - 1
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def _blur_axis(volume: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """(1, Z, Y, X) blurred along spatial `axis`, reflect-padded (bgv2's blur_dimension)."""
    kernel = _blur_kernel(sigma)
    k = kernel.shape[0] // 2
    shape = [1, 1, 1, 1, 1]
    shape[axis + 2] = kernel.shape[0]
    widths = [0] * 6
    widths[2 * (2 - axis)] = widths[2 * (2 - axis) + 1] = k
    if k >= volume.shape[axis + 1]:  # torch cannot reflect that far (bgv2 would fail); numpy can
        np_widths = [(0, 0)] * 4
        np_widths[axis + 1] = (k, k)
        padded = torch.from_numpy(np.pad(volume.numpy(), np_widths, mode="reflect"))
    else:
        padded = pad(volume, widths, mode="reflect")
    return conv3d(padded[None], kernel.reshape(shape))[0]


def draw_gaussian_blur(
    rng: np.random.Generator, n_channels: int, p: float = 0.2, p_per_channel: float = 0.5
) -> Params:
    """Per channel with p 0.5, a sigma per axis in (0.5, 1) (nnU-Net: synchronize_axes=False)."""
    if rng.uniform() >= p:
        return None
    chosen = [c for c in range(n_channels) if rng.uniform() < p_per_channel]
    return {"sigma": {c: rng.uniform(*BLUR_SIGMA, 3).tolist() for c in chosen}}


def apply_gaussian_blur(data: np.ndarray, params: Params) -> np.ndarray:
    if params is None or not params["sigma"]:
        return data
    image = _tensor(data)
    for c, sigmas in params["sigma"].items():
        channel = image[c : c + 1]
        for axis, sigma in enumerate(sigmas):
            channel = _blur_axis(channel, sigma, axis)
        image[c : c + 1] = channel
    return image.numpy()


def gaussian_blur(data, seg, rng: np.random.Generator, p: float = 0.2, p_per_channel: float = 0.5):
    params = draw_gaussian_blur(rng, data.shape[0], p, p_per_channel)
    return apply_gaussian_blur(data, params), seg, params


def draw_multipliers(rng: np.random.Generator, n_channels: int, p: float) -> Params:
    """One BGContrast factor in (0.75, 1.25) per channel (synchronize_channels=False)."""
    if rng.uniform() >= p:
        return None
    return {"factors": [bg_contrast(rng, *MULTIPLIER_RANGE) for _ in range(n_channels)]}


def apply_brightness(data: np.ndarray, params: Params) -> np.ndarray:
    if params is None:
        return data
    factors = np.asarray(params["factors"], dtype=np.float32)
    return data * factors[:, None, None, None]


def brightness(data, seg, rng: np.random.Generator, p: float = 0.15):
    params = draw_multipliers(rng, data.shape[0], p)
    return apply_brightness(data, params), seg, params


def apply_contrast(data: np.ndarray, params: Params) -> np.ndarray:
    """Scale about each channel's mean, then clip to its former range (preserve_range=True)."""
    if params is None:
        return data
    image = _tensor(data)
    for c, factor in enumerate(params["factors"]):
        x = image[c]
        mean = x.mean()
        low, high = torch.aminmax(x)
        x.sub_(mean).mul_(torch.tensor(factor, dtype=torch.float32)).add_(mean)
        x.clamp_(low, high)
    return image.numpy()


def contrast(data, seg, rng: np.random.Generator, p: float = 0.15):
    params = draw_multipliers(rng, data.shape[0], p)
    return apply_contrast(data, params), seg, params


def draw_low_resolution(
    rng: np.random.Generator,
    n_channels: int,
    p: float = 0.25,
    p_per_channel: float = 0.5,
    ignore_axes: Sequence[int] = (),
) -> Params:
    """Per channel with p 0.5, one zoom in (0.5, 1) for all axes but `ignore_axes` (the slice
    axis of a dummy-2D patch), which keep 1."""
    if rng.uniform() >= p:
        return None
    chosen = [c for c in range(n_channels) if rng.uniform() < p_per_channel]
    zooms = {}
    for c in chosen:
        zoom = float(rng.uniform(*LOW_RESOLUTION_SCALE))
        zooms[c] = [1.0 if a in ignore_axes else zoom for a in range(3)]
    return {"zoom": zooms}


def apply_low_resolution(data: np.ndarray, params: Params) -> np.ndarray:
    """Nearest-exact down to round(edge x zoom), trilinear back up (bgv2's interpolate calls)."""
    if params is None or not params["zoom"]:
        return data
    image = _tensor(data)
    shape = tuple(image.shape[1:])
    for c, zooms in params["zoom"].items():
        # bgv2 holds the zoom in a float32 tensor; python's round() on the product, as there
        small = [max(1, round(s * float(np.float32(z)))) for s, z in zip(shape, zooms, strict=True)]
        down = interpolate(image[c][None, None], small, mode="nearest-exact")
        image[c] = interpolate(down, shape, mode="trilinear")[0, 0]
    return image.numpy()


def low_resolution(
    data,
    seg,
    rng: np.random.Generator,
    p: float = 0.25,
    p_per_channel: float = 0.5,
    ignore_axes: Sequence[int] = (),
):
    params = draw_low_resolution(rng, data.shape[0], p, p_per_channel, ignore_axes)
    return apply_low_resolution(data, params), seg, params


def draw_gamma(rng: np.random.Generator, n_channels: int, p: float, invert: bool) -> Params:
    if rng.uniform() >= p:
        return None
    return {"gamma": [bg_contrast(rng, *GAMMA_RANGE) for _ in range(n_channels)], "invert": invert}


def apply_gamma(data: np.ndarray, params: Params) -> np.ndarray:
    """x -> range-normalised x ** gamma, mean and sd retained (p_retain_stats=1); `invert`
    applies it to -x (bgv2's GammaTransform)."""
    if params is None:
        return data
    image = _tensor(data)
    for c, g in enumerate(params["gamma"]):
        x = image[c]
        if params["invert"]:
            x.mul_(-1)
        mean, sd = x.mean(), x.std()
        low, high = torch.aminmax(x)
        span = high - low
        x.sub_(low).div_(torch.clamp(span, min=EPS)).pow_(torch.tensor(g, dtype=torch.float32))
        x.mul_(span).add_(low)
        mean_here, sd_here = x.mean(), x.std()
        x.sub_(mean_here).mul_(sd / torch.clamp(sd_here, min=EPS)).add_(mean)
        if params["invert"]:
            x.mul_(-1)
    return image.numpy()


def gamma(data, seg, rng: np.random.Generator, p: float = 0.3, invert: bool = False):
    params = draw_gamma(rng, data.shape[0], p, invert)
    return apply_gamma(data, params), seg, params
