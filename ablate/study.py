"""The study: a typed schema, its axes and grid cells (loading: study_load.py; the expansion of
the grid into jobs: expand.py).

Axes are dotted paths into plan/train/infer (`train.loss`, `infer.tta`) or named presets (`arch`).
Training axes (touching `train.` or `plan.`) define trainings; inference axes (`infer.`) only
evaluations that reuse those weights. `include` entries are partial
assignments whose unnamed axes take the baseline value; `exclude` entries drop every grid cell that
matches all of their assignments (include is applied after exclude).
"""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ablate.config import EvalConfig, Frozen, InferConfig, PlanConfig, TrainConfig
from ablate.errors import ConfigError

SECTIONS = {"plan": PlanConfig, "train": TrainConfig, "infer": InferConfig}

# axis -> value -> the dotted-path settings it stands for
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Isensee 2019 (KiTS19): plain U-Net with 30 feature maps at full resolution; the residual and
    # pre-activation residual encoders drop to 24 to fit the same memory
    "arch": {
        "plain": {"train.arch": "plain", "train.base_features": 30},
        "residual": {"train.arch": "residual", "train.base_features": 24},
        "preact": {"train.arch": "preact", "train.base_features": 24},
    },
    # Liang, ICH (team superembrace): CT window 96 / width 59 before nnU-Net's normalisation,
    # or none
    "ct_window": {
        "on": {"plan.ct_window": {"level": 96.0, "width": 59.0}},
        "off": {"plan.ct_window": None},
    },
    # Isensee 2019 (KiTS19) as the paper built its networks: plain U-Net, 30 base features,
    # LeakyReLU; nnU-Net v1's residual and pre-activation residual encoder U-Nets with 24 base
    # features, one block at full resolution and one more after each downsampling
    # (1, 2, 3, 4, 4, ...), one decoder conv per stage, ReLU
    "kits19_net": {
        "plain": {"train.arch": "plain", "train.base_features": 30},
        "residual": {
            "train.arch": "residual_v1",
            "train.base_features": 24,
            "train.blocks_per_stage": [1, 2, 3, 4],
            "train.nonlin": "relu",
        },
        "preact": {
            "train.arch": "preact_v1",
            "train.base_features": 24,
            "train.blocks_per_stage": [1, 2, 3, 4],
            "train.nonlin": "relu",
        },
    },
    # nnU-Net v2's plans with the network each is planned for: nnUNetPlans (PlainConvUNet) and
    # nnUNetResEncUNet{M,L,XL}Plans (ResidualEncoderUNet, ResEnc's 1, 3, 4, 6, 6, 6 blocks)
    "plans": {
        "nnunet": {"plan.preset": "nnunet", "train.arch": "plain"},
        "resenc_m": {"plan.preset": "resenc_m", "train.arch": "residual"},
        "resenc_l": {"plan.preset": "resenc_l", "train.arch": "residual"},
        "resenc_xl": {"plan.preset": "resenc_xl", "train.arch": "residual"},
    },
}

# registry-valued fields: (module, registry); the registry is the only list of valid names
REGISTRIES = {
    "train.arch": ("ablate.nets", "ARCHITECTURES"),
    "train.loss": ("ablate.losses", "LOSSES"),
}

SHORT_NAMES = {
    "train.deep_supervision": "ds",
    "train.base_features": "features",
    "infer.tta": "tta",
    "infer.postprocess": "pp",
    "infer.ensemble_folds": "ensemble",
    "plan.ct_window": "window",
}
BARE_AXES = {"arch", "kits19_net", "plans", "train.arch", "train.loss", "plan.preset"}


class SyntheticSpec(Frozen):
    cases: int = Field(8, ge=2)
    seed: int = 0
    fov_mm: tuple[float, float, float] = (64.0, 64.0, 64.0)  # (z, y, x)


# the readers of ablate.data.formats.READERS (tests/test_layouts.py keeps the two equal)
FORMATS = Literal[
    "nnunet",
    "nnunet_v1",
    "msd",
    "kits19",
    "kits21",
    "kits23",
    "flare21",
    "ct_ich",
    "folder",
    "auto",
]


class TestSetSpec(Frozen):
    """Labelled cases kept out of cross-validation and planning, scored after it by every fold
    model and, with `infer.ensemble_folds`, by their ensemble: either `holdout` cases drawn
    (seeded) from the dataset, or a separate dataset at `path` with the same channels and labels."""

    holdout: int | None = Field(None, ge=1)
    seed: int = 12345  # the holdout draw
    path: Path | None = None
    format: FORMATS = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> TestSetSpec:
        if (self.holdout is None) == (self.path is None):
            raise ValueError("give exactly one of dataset.test.holdout or dataset.test.path")
        return self


class DatasetSpec(Frozen):
    """Either a dataset on disk (`path`, `format`) or a generated one (`synthetic`), and maybe a
    held-out test set (`test`)."""

    path: Path | None = None
    format: FORMATS = "auto"
    labels: dict[str, int] | None = None  # for `folder`: name -> value, background included
    synthetic: SyntheticSpec | None = None
    test: TestSetSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of dataset.path or dataset.synthetic")
        return self


class FoldsSpec(Frozen):
    k: int = Field(5, ge=2)
    seed: int = 12345
    run: list[int] | None = None  # which folds to run; None = all
    splits_file: Path | None = None

    @model_validator(mode="after")
    def _run_in_range(self) -> FoldsSpec:
        bad = [f for f in self.run or [] if not 0 <= f < self.k]
        if bad:
            raise ValueError(f"folds.run {bad} outside 0..{self.k - 1}; use fold numbers below k")
        return self


class SlurmSpec(Frozen):
    """Resources of each SLURM job (submitit); the study's folder must be on a shared filesystem."""

    partition: str | None = None
    time_min: int = Field(24 * 60, ge=1)  # wall-clock limit per job
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(4, ge=1)
    mem_gb: float = Field(32.0, gt=0)
    array_parallelism: int = Field(16, ge=1)  # jobs of one array running at once
    folder: Path | None = None  # submitit logs and pickles; None = <workdir>/slurm
    max_requeues: int = Field(3, ge=0)  # after preemption or time-out, continuing from checkpoint
    extra: dict[str, Any] = Field(default_factory=dict)  # more sbatch options: {account: x, qos: y}


class RaySpec(Frozen):
    """Ray tasks on an existing cluster (`address`, e.g. "auto") or on a local one started here."""

    address: str | None = None
    num_cpus: float = Field(1.0, ge=0)  # per job
    num_gpus: float = Field(0.0, ge=0)  # per job; fractions pack several jobs on one GPU


class ExecutorSpec(Frozen):
    """Where jobs run: in this process (default), local worker processes, SLURM or Ray."""

    kind: Literal["inprocess", "local", "slurm", "ray"] = "inprocess"
    workers: int = Field(1, ge=1)  # jobs in flight (local processes, Ray tasks)
    gpus: list[int] | None = None  # local: one GPU index per worker; None = CPU-only workers
    threads_per_worker: int = Field(1, ge=1)  # torch threads in each worker
    slurm: SlurmSpec = SlurmSpec()
    ray: RaySpec = RaySpec()


class AnalysisSpec(Frozen):
    """What the report concludes beyond the tests it always runs."""

    # per metric, the largest loss a cheaper variant may show and still be called non-inferior,
    # in the metric's units (dsc, nsd, abs_rvd as fractions: 0.01 = 1 point; hd95, assd in mm)
    noninferiority_margin: dict[Literal["dsc", "nsd", "hd95", "assd", "abs_rvd"], float] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _positive_margins(self) -> AnalysisSpec:
        bad = {k: v for k, v in self.noninferiority_margin.items() if not v > 0}
        if bad:
            raise ValueError(f"noninferiority_margin {bad}: margins must be positive")
        return self


class Study(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    dataset: DatasetSpec
    plan: PlanConfig = PlanConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    evaluation: EvalConfig = EvalConfig()
    axes: dict[str, list] = Field(default_factory=dict)
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    folds: FoldsSpec = FoldsSpec()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    baseline: dict[str, Any] | None = None  # None = the first value of every axis
    tracking_uri: str | None = None
    workdir: Path | None = None
    report_dir: Path | None = None
    workers: int = Field(2, ge=1)
    executor: ExecutorSpec = ExecutorSpec()
    # predictions made elsewhere (e.g. nnU-Net's own cross-validation output): name -> folder of
    # <case id><file ending> label maps, scored like ablate's own and compared as extra variants
    external: dict[str, Path] = Field(default_factory=dict)
    # ensembles of grid cells scored on cross-validation, as Isensee 2019 (KiTS19), Table 1
    # "ensemble" row:
    # name -> member cells as partial assignments (unnamed axes take the baseline value); per
    # fold, the members' fold models are averaged (infer.ensemble_average) on its validation cases
    ensembles: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    log_checkpoints: bool = False  # also store each final checkpoint as an MLflow artifact
    analysis: AnalysisSpec = AnalysisSpec()  # report: non-inferiority margins

    def work_dir(self) -> Path:
        """The study's run folder: `workdir` (`load_study` resolves it against the study file's
        folder, and defaults it to runs/<name> there), else runs/<name> under the current
        directory (a Study built in code)."""
        return (self.workdir or Path("runs") / self.name).absolute()

    def report_path(self) -> Path:
        """The report folder: `report_dir` (`load_study` resolves it against the study file's
        folder, default `reports/<name>` beside it); relative to the current directory only for
        a Study built in code."""
        return (self.report_dir or Path("reports") / self.name).absolute()


# ---------------------------------------------------------------- axes and variants


def registry_names(path: str) -> tuple[str, ...]:
    module, registry = REGISTRIES[path]
    return tuple(getattr(importlib.import_module(module), registry))


def axis_paths(axis: str) -> list[str]:
    """The dotted paths an axis sets (a preset may set several)."""
    if axis in PRESETS:
        return sorted({p for bundle in PRESETS[axis].values() for p in bundle})
    return [axis]


def is_training_axis(axis: str) -> bool:
    return any(p.startswith(("train.", "plan.")) for p in axis_paths(axis))


def valid_axis_names() -> list[str]:
    dotted = [f"{s}.{f}" for s, model in SECTIONS.items() for f in model.model_fields]
    return [*PRESETS, *dotted]


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[leaf] = value


def resolve_variant(
    study: Study, variant: dict[str, Any]
) -> tuple[PlanConfig, TrainConfig, InferConfig]:
    """The plan/train/infer configs of one grid cell (raises ValidationError/ConfigError).

    Only the settings the study wrote are carried over, so a preset's defaults (the memory
    target of `plan.preset`) apply unless the study sets them."""
    tree = {s: getattr(study, s).model_dump(exclude_unset=True) for s in SECTIONS}
    for axis, value in variant.items():
        if axis in PRESETS:
            if value not in PRESETS[axis]:
                raise ConfigError(
                    f"unknown value {value!r} for preset axis {axis!r}; valid: "
                    f"{', '.join(PRESETS[axis])}"
                )
            settings = PRESETS[axis][value]
        else:
            settings = {axis: value}
        for dotted, setting in settings.items():
            _set_path(tree, dotted, setting)
    plan, train, infer = (model.model_validate(tree[s]) for s, model in SECTIONS.items())
    _check_registries(train)
    if plan.preset != "nnunet" and train.arch != "residual":
        raise ConfigError(
            f"plan.preset {plan.preset}: nnU-Net plans it for its residual encoder U-Net, not "
            f"train.arch {train.arch}; set train.arch: residual (the `plans` axis sets both)"
        )
    return plan, train, infer


def _check_registries(train: TrainConfig) -> None:
    from ablate.losses import deep_supervision_weights

    for path in REGISTRIES:
        value = getattr(train, path.split(".")[1])
        names = registry_names(path)
        if value not in names:
            raise ConfigError(f"{path}: unknown value {value!r}; valid: {', '.join(names)}")
    deep_supervision_weights(train.deep_supervision, 3)  # an unknown mode: ConfigError, valid ones


def baseline_variant(study: Study) -> dict[str, Any]:
    first = {axis: values[0] for axis, values in study.axes.items()}
    return {**first, **(study.baseline or {})}


def _matches(cell: dict[str, Any], partial: dict[str, Any]) -> bool:
    return all(cell.get(axis) == value for axis, value in partial.items())


def grid_cells(study: Study) -> list[dict[str, Any]]:
    """Every variant (axis -> value) in grid order, after exclude then include."""
    names = list(study.axes)
    combos = itertools.product(*study.axes.values())
    cells = [dict(zip(names, combo, strict=True)) for combo in combos]
    cells = [c for c in cells if not any(_matches(c, ex) for ex in study.exclude)]
    base = baseline_variant(study)
    for partial in study.include:
        cell = {**base, **partial}
        if cell not in cells:
            cells.append(cell)
    return cells


def value_label(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "x".join(value_label(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}{value_label(v)}" for k, v in value.items())
    return str(value)


def variant_label(variant: dict[str, Any]) -> str:
    """Readable label, e.g. "residual · dice_topk · ds=last3 · tta=2"; "default" without axes."""
    if not variant:
        return "default"
    parts = []
    for axis, value in variant.items():
        if axis in BARE_AXES:
            parts.append(value_label(value))
        else:
            parts.append(f"{SHORT_NAMES.get(axis, axis.split('.')[-1])}={value_label(value)}")
    return " · ".join(parts)


def ensemble_members(study: Study, name: str) -> list[dict[str, Any]]:
    """The grid cells of an ensemble (partial assignments completed with the baseline)."""
    base = baseline_variant(study)
    return [{**base, **partial} for partial in study.ensembles[name]]
