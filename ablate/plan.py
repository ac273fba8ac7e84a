"""Fingerprint a dataset and plan the network, patch and preprocessing as nnU-Net v2 does.

CONTRACT (shared with preprocess, nets, train, infer): the fields of `Fingerprint` and `Plan`
below. Add fields freely; do not rename or remove.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.ndimage import binary_fill_holes

from ablate.configurations import plan_2d, plan_3d
from ablate.errors import ConfigError, DataError
from ablate.imageio import Geometry, read_image
from ablate.topology import (
    determine_transpose,
)


@dataclass(frozen=True)
class ChannelNormalization:
    scheme: str  # "ct" | "zscore" | "noNorm"
    use_mask: bool = False  # zscore only: statistics inside the nonzero mask
    mean: float = 0.0  # ct: dataset foreground mean
    std: float = 1.0  # ct: dataset foreground sd
    lower: float = 0.0  # ct: clip low (percentile 0.5 or window)
    upper: float = 0.0  # ct: clip high (percentile 99.5 or window)


@dataclass(frozen=True)
class Fingerprint:
    spacings_mm: list[tuple[float, float, float]]  # per case, (z, y, x)
    shapes_after_crop: list[tuple[int, int, int]]
    intensity_properties: list[dict[str, float]]  # per channel: mean median std min max p00_5 p99_5
    class_voxel_counts: dict[int, int]
    median_relative_size_after_cropping: float
    case_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["class_voxel_counts"] = {str(k): v for k, v in self.class_voxel_counts.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> Fingerprint:
        d = dict(d)
        d["spacings_mm"] = [tuple(s) for s in d["spacings_mm"]]
        d["shapes_after_crop"] = [tuple(s) for s in d["shapes_after_crop"]]
        d["class_voxel_counts"] = {int(k): v for k, v in d["class_voxel_counts"].items()}
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """Everything downstream needs; saved as plan.json in the cache and logged to MLflow.

    All spatial tuples are in the plan's (transposed) frame, as nnU-Net's: axis a of the plan is
    axis `transpose_forward[a]` of the image's (z, y, x) arrays, so the coarsest axis comes first.
    Preprocessing moves a (C, Z, Y, X) array into that frame with
    `array.transpose((0, *(a + 1 for a in transpose_forward)))` and export moves a plan-frame
    (Z', Y', X') array back with `array.transpose(transpose_backward)`.
    `pool_kernel_sizes[0]` is (1, 1, 1): stage 0 does not downsample; stage s downsamples by
    pool_kernel_sizes[s].
    """

    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    pool_kernel_sizes: list[tuple[int, int, int]]
    conv_kernel_sizes: list[tuple[int, int, int]]
    features_per_stage: list[int]
    num_input_channels: int
    num_classes: int  # softmax outputs, background included
    normalization: list[ChannelNormalization]
    median_shape: tuple[int, int, int]  # after resampling to target spacing, rounded
    # spacing ratio > 3 at the target or median spacing (informational: preprocessing decides
    # separate-z resampling per case, as nnU-Net's force_separate_z=None)
    anisotropic: bool
    # nnU-Net would also plan a 3d_lowres stage (it survives the drop rule): cascade territory
    cascade_recommended: bool = False
    memory_budget_gb: float = 8.0
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    transpose_backward: tuple[int, int, int] = (0, 1, 2)
    batch_dice: bool = False  # nnU-Net's 3d_fullres: True exactly when 3d_lowres survives
    preset: str = "nnunet"  # the planner (ablate.topology.PLANNER_PRESETS)
    # nnU-Net's configuration. A "2d" plan is held as a flat 3D plan: patch (1, Y, X), pooling
    # and kernels (1, ...) on plan axis 0, which is nnU-Net's slice axis; its data keep each
    # case's own slice spacing (target_spacing_mm[0] is 3d_fullres's, for reference only)
    configuration: str = "3d_fullres"
    # the cascade's full-resolution stage: the labels whose one-hot masks of the 3d_lowres
    # prediction follow the image channels (nnU-Net's foreground labels)
    previous_stage_labels: tuple[int, ...] = ()

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def is_2d(self) -> bool:
        return self.configuration == "2d"

    @property
    def network_input_channels(self) -> int:
        """Image channels plus the cascade's one-hot previous-stage channels."""
        return self.num_input_channels + len(self.previous_stage_labels)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        d = dict(d)
        for k in (
            "target_spacing_mm",
            "patch_size",
            "median_shape",
            "transpose_forward",
            "transpose_backward",
            "previous_stage_labels",
        ):
            if k in d:
                d[k] = tuple(d[k])
        d["pool_kernel_sizes"] = [tuple(p) for p in d["pool_kernel_sizes"]]
        d["conv_kernel_sizes"] = [tuple(p) for p in d["conv_kernel_sizes"]]
        d["normalization"] = [ChannelNormalization(**n) for n in d["normalization"]]
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Fingerprint and planner (nnU-Net v2's rules; see docs/ARCHITECTURE.md and reference/nnunet.md)
# ----------------------------------------------------------------------------------------------

ANISO_THRESHOLD = 3.0
FOREGROUND_SAMPLES_TOTAL = 10e7  # nnU-Net samples 1e8 foreground voxels over the whole dataset
NORMALIZATION_BY_CHANNEL = {
    "ct": "ct",
    "nonorm": "noNorm",
    "zscore": "zscore",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
}


def read_case_arrays(case) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Channels stacked as float32 (C, Z, Y, X), label as int16 (Z, Y, X) or None, geometry."""
    arrays, geometry = [], None
    for path in case.images:
        array, geo = read_image(path)
        if geometry is not None and array.shape != arrays[0].shape:
            raise DataError(
                f"{path}: shape {array.shape} differs from channel 0 "
                f"{arrays[0].shape}; all channels of a case must share one grid"
            )
        geometry = geometry or geo
        arrays.append(array.astype(np.float32, copy=False))
    seg = None
    if case.label is not None:
        seg, _ = read_image(case.label)
        if seg.shape != arrays[0].shape:
            raise DataError(
                f"{case.label}: label shape {seg.shape} differs from image "
                f"{arrays[0].shape}; resample the label onto the image grid"
            )
        seg = seg.astype(np.int16, copy=False)
    return np.stack(arrays), seg, geometry


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None):
    """nnU-Net's crop: union of channels != 0, holes filled, bounding box. Label 0 outside the
    mask becomes -1. Returns (data (C, ...), seg (...), bbox ((start, stop) per axis))."""
    mask = binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():  # an all-zero image: keep everything
        mask = np.ones(data.shape[1:], dtype=bool)
    bbox = tuple((int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))
    slicer = tuple(slice(a, b) for a, b in bbox)
    mask = mask[slicer]
    data = data[(slice(None), *slicer)]
    if seg is None:
        seg = np.where(mask, 0, -1).astype(np.int16)
    else:
        seg = seg[slicer].astype(np.int16, copy=True)
        seg[(seg == 0) & ~mask] = -1
    return data, seg, bbox


def _analyze_case(case, num_samples: int) -> dict:
    images, seg, geometry = read_case_arrays(case)
    if seg is None:
        raise DataError(f"case {case.case_id}: no label file; every training case needs one")
    labels, counts = np.unique(seg, return_counts=True)
    cropped, seg_c, _ = crop_to_nonzero(images, seg)
    rs = np.random.RandomState(1234)  # per case, as nnU-Net
    foreground = seg_c > 0
    samples = []
    for channel in cropped:
        pixels = channel[foreground]
        samples.append(
            rs.choice(pixels, num_samples, replace=True) if pixels.size else np.zeros(0)
        )  # nnU-Net's [] (float64 once pooled)
    return {
        "spacing": tuple(float(s) for s in geometry.spacing_mm),
        "shape": tuple(int(s) for s in cropped.shape[1:]),
        "samples": samples,
        "counts": dict(zip(labels.tolist(), counts.tolist(), strict=True)),
        "relative_size": float(np.prod(cropped.shape[1:]) / np.prod(images.shape[1:])),
    }


def _analyze_all(dataset, workers: int, total_samples: float) -> list[dict]:
    if not dataset.cases:
        raise DataError(f"{dataset.root}: no training cases found")
    n = int(total_samples // len(dataset.cases))
    if workers <= 1:
        return [_analyze_case(c, n) for c in dataset.cases]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_analyze_case, dataset.cases, [n] * len(dataset.cases)))


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {
            k: float("nan")
            for k in ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")
        }
    p00_5, median, p99_5 = np.percentile(samples, (0.5, 50.0, 99.5))
    return {
        "mean": float(np.mean(samples)),
        "median": float(median),
        "std": float(np.std(samples)),
        "min": float(np.min(samples)),
        "max": float(np.max(samples)),
        "percentile_00_5": float(p00_5),
        "percentile_99_5": float(p99_5),
    }


def foreground_samples(
    dataset, workers: int = 2, total_samples: float = FOREGROUND_SAMPLES_TOTAL
) -> list[np.ndarray]:
    """The pooled foreground intensity samples per channel (nnU-Net's seeded sampling)."""
    results = _analyze_all(dataset, workers, total_samples)
    return [
        np.concatenate([r["samples"][c] for r in results]) for c in range(len(dataset.channels))
    ]


def fingerprint(
    dataset, workers: int = 2, total_samples: float = FOREGROUND_SAMPLES_TOTAL
) -> Fingerprint:
    """Spacings, shapes after crop, foreground intensity statistics, class voxel counts."""
    results = _analyze_all(dataset, workers, total_samples)
    counts: dict[int, int] = {}
    for r in results:
        for label, count in r["counts"].items():
            counts[int(label)] = counts.get(int(label), 0) + int(count)
    stats = [
        intensity_statistics(np.concatenate([r["samples"][c] for r in results]))
        for c in range(len(dataset.channels))
    ]
    return Fingerprint(
        spacings_mm=[r["spacing"] for r in results],
        shapes_after_crop=[r["shape"] for r in results],
        intensity_properties=stats,
        class_voxel_counts=dict(sorted(counts.items())),
        median_relative_size_after_cropping=float(np.median([r["relative_size"] for r in results])),
        case_ids=[c.case_id for c in dataset.cases],
    )


def target_spacing(fp: Fingerprint) -> tuple[float, float, float]:
    """Median spacing; for a coarse axis (> 3x the others, < 1/3 their voxels) the 10th
    percentile of that axis, kept just above the finest other spacing."""
    spacings = np.array(fp.spacings_mm, dtype=float)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(np.array(fp.shapes_after_crop, dtype=float), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[others])
    aniso_voxels = sizes[worst] * ANISO_THRESHOLD < min(sizes[others])
    if aniso_spacing and aniso_voxels:
        tenth = float(np.percentile(spacings[:, worst], 10))
        if tenth < max(target[others]):
            tenth = max(max(target[others]), tenth) + 1e-5
        target[worst] = tenth
    return tuple(float(t) for t in target)


def is_anisotropic(spacing) -> bool:
    return max(spacing) / min(spacing) > ANISO_THRESHOLD


CT_CLIP_PERCENTILES = (0.5, 99.5)  # nnU-Net's CTNormalization bounds


def _normalizations(fp: Fingerprint, dataset, cfg, workers: int) -> list[ChannelNormalization]:
    """Scheme from the channel name (nnU-Net); CT clip bounds from percentiles, of the windowed
    foreground when a window is set. Samples drawn here honour `cfg.intensity_samples`."""
    needs_samples = cfg.ct_window is not None or cfg.clip_percentiles is not None
    out, samples = [], None
    for c, name in enumerate(dataset.channels):
        scheme = NORMALIZATION_BY_CHANNEL.get(name.casefold(), "zscore")
        if scheme != "ct":
            use_mask = scheme == "zscore" and fp.median_relative_size_after_cropping < 0.75
            out.append(ChannelNormalization(scheme=scheme, use_mask=use_mask))
            continue
        props = fp.intensity_properties[c]
        lower, upper = props["percentile_00_5"], props["percentile_99_5"]
        mean, std = props["mean"], props["std"]
        if needs_samples and samples is None:
            samples = foreground_samples(dataset, workers, cfg.intensity_samples)
        if cfg.ct_window is not None:
            # windowing first, then nnU-Net on the windowed images (Liang, INSTANCE 2022):
            # statistics and the 0.5 / 99.5 percentile clip of the windowed foreground
            window_low = cfg.ct_window.level - cfg.ct_window.width / 2
            window_high = cfg.ct_window.level + cfg.ct_window.width / 2
            windowed = np.clip(samples[c], window_low, window_high)
            mean, std = float(np.mean(windowed)), float(np.std(windowed))
            lower, upper = np.percentile(windowed, cfg.clip_percentiles or CT_CLIP_PERCENTILES)
        elif cfg.clip_percentiles is not None:
            lower, upper = (float(v) for v in np.percentile(samples[c], cfg.clip_percentiles))
        out.append(
            ChannelNormalization("ct", False, float(mean), float(std), float(lower), float(upper))
        )
    return out


def make_plan(fp: Fingerprint, dataset, cfg, workers: int = 2) -> Plan:
    """nnU-Net v2's plan of cfg.configuration by cfg's planner preset, under its memory budget
    and overrides (nnU-Net's ExperimentPlanner.plan_experiment, one configuration of it).

    `cfg.target_spacing_mm` and `cfg.patch_size` are in the image's (z, y, x) order (nnU-Net's
    overwrite_target_spacing is too); the plan holds them in its transposed frame. A patch
    override applies to the configuration planned (for 2d it needs 1 on the slice axis).
    Raises ConfigError for 3d_lowres and the cascade where nnU-Net would not create 3d_lowres.
    """
    spacing = np.array(cfg.target_spacing_mm or target_spacing(fp), dtype=float)
    forward, backward = determine_transpose(spacing)
    new_shapes = [
        np.round(np.array(sp) / spacing * np.array(sh))
        for sp, sh in zip(fp.spacings_mm, fp.shapes_after_crop, strict=True)
    ]
    median_shape = np.median(np.array(new_shapes), axis=0)[list(forward)]
    spacing = spacing[list(forward)]
    n_cases = len(fp.spacings_mm)
    override = None if cfg.patch_size is None else [cfg.patch_size[a] for a in forward]
    configuration = cfg.configuration
    fullres, lowres, why_not = plan_3d(
        spacing, median_shape, n_cases, dataset, cfg, override, configuration
    )
    if configuration == "2d":
        chosen = plan_2d(spacing, median_shape, n_cases, dataset, cfg, override)
    elif configuration == "3d_lowres":
        chosen = lowres
    elif configuration == "3d_cascade_fullres":
        chosen = fullres if lowres is not None else None
    else:
        chosen = fullres
    if chosen is None:
        raise ConfigError(f"plan.configuration: {configuration}: {why_not}")
    topo = chosen.topology
    flat = configuration == "2d"
    lift = (lambda t: (1, *t)) if flat else tuple
    target = (float(spacing[0]), *chosen.spacing) if flat else chosen.spacing
    median = median_shape if flat else chosen.median_shape
    median_spacing = np.median(np.array(fp.spacings_mm, dtype=float), axis=0)
    return Plan(
        target_spacing_mm=tuple(float(s) for s in target),
        patch_size=tuple(int(p) for p in lift(topo.patch_size)),
        batch_size=chosen.batch_size,
        pool_kernel_sizes=[tuple(int(v) for v in lift(p)) for p in topo.pool_kernel_sizes],
        conv_kernel_sizes=[tuple(int(v) for v in lift(k)) for k in topo.conv_kernel_sizes],
        features_per_stage=chosen.features,
        num_input_channels=len(dataset.channels),
        num_classes=dataset.num_classes,
        normalization=_normalizations(fp, dataset, cfg, workers),
        median_shape=tuple(int(round(m)) for m in median),
        anisotropic=bool(is_anisotropic(target) or is_anisotropic(median_spacing)),
        cascade_recommended=lowres is not None,
        batch_dice=chosen.batch_dice if cfg.batch_dice is None else cfg.batch_dice,
        memory_budget_gb=float(cfg.gpu_memory_gb),
        preset=cfg.preset,
        transpose_forward=forward,
        transpose_backward=backward,
        configuration=configuration,
        previous_stage_labels=(
            foreground_labels(dataset) if configuration == "3d_cascade_fullres" else ()
        ),
    )


def data_spacing_mm(plan: Plan, case_spacing_mm) -> tuple[float, float, float]:
    """The spacing a case is preprocessed to, in the plan's frame, from the case's own spacing
    in that frame: the plan's, except that a 2d plan keeps the case's slice spacing (nnU-Net
    resamples 2d data in-plane only)."""
    if plan.is_2d:
        return (float(case_spacing_mm[0]), *plan.target_spacing_mm[1:])
    return tuple(plan.target_spacing_mm)


def foreground_labels(dataset) -> tuple[int, ...]:
    """nnU-Net's label_manager.foreground_labels: every label but background and ignore."""
    labels = dataset.labels
    if not labels:
        return tuple(range(1, dataset.num_classes))
    values = set()
    for value in labels.values():
        values.update(value if isinstance(value, (list, tuple)) else [value])
    ignore = dataset.ignore_label
    return tuple(sorted(int(v) for v in values if v != 0 and v != ignore))
