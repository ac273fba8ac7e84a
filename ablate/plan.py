"""Fingerprint a dataset and plan the network, patch and preprocessing as nnU-Net v2 does.

CONTRACT (shared with preprocess, nets, train, infer): the fields of `Fingerprint` and `Plan`
below. Add fields freely; do not rename or remove.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    All spatial tuples are (z, y, x). `pool_kernel_sizes[0]` is (1, 1, 1): stage 0 does not
    downsample; stage s downsamples by pool_kernel_sizes[s].
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
    median_shape: tuple[int, int, int]  # after resampling to target spacing
    anisotropic: bool  # resample the coarse axis separately (order_z 0)
    cascade_recommended: bool = False
    memory_budget_gb: float = 8.0

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        d = dict(d)
        for k in ("target_spacing_mm", "patch_size", "median_shape"):
            d[k] = tuple(d[k])
        d["pool_kernel_sizes"] = [tuple(p) for p in d["pool_kernel_sizes"]]
        d["conv_kernel_sizes"] = [tuple(p) for p in d["conv_kernel_sizes"]]
        d["normalization"] = [ChannelNormalization(**n) for n in d["normalization"]]
        return cls(**d)
