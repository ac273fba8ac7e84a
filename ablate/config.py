"""Typed settings of each stage. A study combines them; axes vary them by dotted key path.

All models are frozen and reject unknown keys, so a typo in a study is an error, never a silent
default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def omit_defaults(dumped, defaults: dict):
    """Drop fields that still hold their default: job and cache keys hash dumped configs, so a
    field added later must not change the keys of studies that leave it alone."""
    if isinstance(dumped, dict):
        for name, default in defaults.items():
            if name in dumped and dumped[name] == default:
                del dumped[name]
    return dumped


# nnU-Net's planners and their default GPU memory targets (nnUNetPlannerResEncM/L/XL); the
# planners' rules are in ablate.topology.PLANNER_PRESETS
PRESET_GPU_MEMORY_GB = {"nnunet": 8.0, "resenc_m": 8.0, "resenc_l": 24.0, "resenc_xl": 40.0}


class CTWindow(Frozen):
    """Clip CT intensities to [level - width/2, level + width/2] before normalisation, as Liang
    did for INSTANCE 2022."""

    level: float
    width: float = Field(gt=0)


class PlanConfig(Frozen):
    """Planner inputs. `preset` is the nnU-Net planner: "nnunet" (nnUNetPlans, PlainConvUNet) or
    "resenc_m" / "resenc_l" / "resenc_xl" (nnUNetResEncUNet{M,L,XL}Plans, ResidualEncoderUNet).
    `gpu_memory_gb` is its memory target; left out, the preset's (8, 8, 24, 40 GB)."""

    preset: Literal["nnunet", "resenc_m", "resenc_l", "resenc_xl"] = "nnunet"
    gpu_memory_gb: float = Field(8.0, gt=0)
    base_features: int = Field(32, ge=1)
    max_features: int = Field(320, ge=1)
    # both overrides in the image's (z, y, x) order, as nnU-Net's overwrite_target_spacing; the
    # plan holds them in its transposed frame (coarsest axis first)
    target_spacing_mm: tuple[float, float, float] | None = None  # None = planned
    patch_size: tuple[int, int, int] | None = None  # None = planned
    ct_window: CTWindow | None = None
    clip_percentiles: tuple[float, float] | None = None  # None = nnU-Net's (0.5, 99.5)
    # nnU-Net samples 1e8 foreground voxels in all for its intensity statistics; fewer is faster
    intensity_samples: int = Field(100_000_000, ge=1000)
    # the loss's batch Dice; None = nnU-Net's rule (2d: on; 3d_lowres: off; 3d_fullres and the
    # cascade: on exactly when nnU-Net creates 3d_lowres)
    batch_dice: bool | None = None
    # nnU-Net's configurations: "2d" (slices of the 3d_fullres data at the cases' own slice
    # spacing), "3d_fullres", "3d_lowres" (its coarser spacing) and "3d_cascade_fullres" (the
    # 3d_fullres plan fed the 3d_lowres predictions as one-hot input channels). 3d_lowres and the
    # cascade exist only where nnU-Net would create 3d_lowres; elsewhere they are refused.
    configuration: Literal["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"] = "3d_fullres"
    max_features_2d: int = Field(512, ge=1)  # nnU-Net's UNet_max_features_2d

    @model_validator(mode="before")
    @classmethod
    def _preset_memory_target(cls, data):
        touched = isinstance(data, dict) and ("preset" in data or "gpu_memory_gb" in data)
        if touched and data.get("gpu_memory_gb") is None:
            target = PRESET_GPU_MEMORY_GB.get(data.get("preset", "nnunet"), 8.0)
            data = {**data, "gpu_memory_gb": target}
        return data

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        return omit_defaults(
            handler(self),
            {
                "preset": "nnunet",
                "batch_dice": None,
                "configuration": "3d_fullres",
                "max_features_2d": 512,
            },
        )


class TrainConfig(Frozen):
    """One training. Defaults are nnU-Net v2's; a study shortens epochs for CPU runs."""

    arch: str = "plain"  # key of ablate.nets.ARCHITECTURES
    # None = the plan's features; Isensee 2019 (KiTS19) used 24 / 30
    base_features: int | None = None
    blocks_per_stage: tuple[int, ...] | None = None  # residual encoders; None = ResEnc 1,3,4,6,6,..
    # every block's nonlinearity: nnU-Net's LeakyReLU(0.01), or ReLU (Isensee 2019's residual nets)
    nonlin: Literal["leaky_relu", "relu"] = "leaky_relu"
    loss: str = "dice_ce"  # key of ablate.losses.LOSSES
    # region-based training (sigmoid per region, loss dice_bce) as nnU-Net for nested labels,
    # e.g. {kidney: [1, 2], tumor: [2]}; None = softmax over the labels
    regions: dict[str, tuple[int, ...]] | None = None
    # the label each region paints in exports (nnU-Net's regions_class_order); None = the
    # dataset's order for its own regions, else ablate.regions.default_region_order
    region_order: tuple[int, ...] | None = None
    deep_supervision: str = "nnunet"  # nnunet | last3 | none
    epochs: int = Field(1000, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    val_iterations: int = Field(50, ge=0)
    # poly schedule length; None = epochs (Zhou 2021, FLARE21: 1000)
    lr_schedule_epochs: int | None = None
    initial_lr: float = Field(1e-2, gt=0)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    batch_size: int | None = None  # None = the plan's
    oversample_foreground: float = Field(0.33, ge=0, le=1)
    augmentation: Literal["nnunet", "mirror", "none"] = "nnunet"
    data_workers: int = Field(2, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        return omit_defaults(handler(self), {"nonlin": "leaky_relu", "region_order": None})


class InferConfig(Frozen):
    """Inference. TTA k takes the first k mirror combinations, identity first."""

    tta: Literal[1, 2, 4, 8] = 8
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    # the order of the mirror combinations, which TTA k takes the first k of: nnU-Net v2's
    # (identity, z, y, x, zy, zx, yx, zyx) or v1's (identity, x, y, yx, z, zx, zy, zyx: TTA 2
    # flips the last, left-right axis, as Zhou 2021 ran it on FLARE21)
    mirror_order: Literal["nnunet_v2", "nnunet_v1"] = "nnunet_v2"
    step_size: float = Field(0.5, gt=0, le=1)
    # windows per forward; None = ablate.infer.auto_window_batch (nnU-Net runs one)
    window_batch: int | None = Field(None, ge=1)
    # with a held-out test set (dataset.test): also predict it with the mean of every fold
    # model's output; cross-validation cases are always scored by the one model not trained on them
    ensemble_folds: bool = False
    # what the ensemble averages: "probabilities" (Isensee 2019, KiTS19; nnUNetv2_ensemble) or
    # "logits" (nnU-Net v2's predictor given several folds)
    ensemble_average: Literal["probabilities", "logits"] = "probabilities"
    # "largest_component" always keeps the largest foreground component; "auto" decides per
    # class on all cross-validation folds of the variant, as nnU-Net's determine_postprocessing
    postprocess: Literal["none", "largest_component", "auto"] = "none"
    device: str = "auto"
    # the weights inference loads: "final" (nnU-Net's default) or "best", the epoch with the
    # highest EMA pseudo Dice (nnU-Net's checkpoint_best); see ablate.checkpoint.checkpoint_for
    checkpoint: Literal["final", "best"] = "final"

    @model_serializer(mode="wrap")
    def _omit_default_checkpoint(self, handler):
        # job keys hash the dumped config: the default is left out so that adding this field
        # does not change the keys of studies run before it existed
        return omit_defaults(handler(self), {"checkpoint": "final", "mirror_order": "nnunet_v2"})


class EvalConfig(Frozen):
    """Evaluation targets (name -> label values) and NSD tolerances in mm (one, or per target)."""

    targets: dict[str, tuple[int, ...]] | None = None  # None = the dataset's regions or labels
    nsd_tolerance_mm: float | dict[str, float] = 2.0

    def tolerance_mm(self, target: str) -> float:
        if isinstance(self.nsd_tolerance_mm, dict):
            return self.nsd_tolerance_mm.get(target, 2.0)
        return self.nsd_tolerance_mm
