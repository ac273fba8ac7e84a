"""The study: a typed schema and the expansion of its grid into jobs (loading: study_load.py).

Axes are dotted paths into plan/train/infer (`train.loss`, `infer.tta`) or named presets (`arch`).
Training axes (touching `train.` or `plan.`) define a TrainJob per (training variant, fold, seed);
inference axes (`infer.`) only add EvalJobs that reuse those weights. `include` entries are partial
assignments whose unnamed axes take the baseline value; `exclude` entries drop every grid cell that
matches all of their assignments (include is applied after exclude).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from ablate.config import EvalConfig, Frozen, InferConfig, PlanConfig, TrainConfig
from ablate.errors import ConfigError

KEY_VERSION = 1  # bump when the meaning of a job key changes (invalidates every finished run)
SECTIONS = {"plan": PlanConfig, "train": TrainConfig, "infer": InferConfig}
# options that change speed or placement but not the numbers a job produces
NON_RESULT_FIELDS = {"train": {"data_workers", "device"}, "infer": {"window_batch", "device"}}
# settings of the held-out test phase only: cross-validation scores each case with one fold model
TEST_ONLY_FIELDS = {"ensemble_folds", "ensemble_average"}

# axis -> value -> the dotted-path settings it stands for
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # seed 004 (KiTS19): plain U-Net with 30 feature maps at full resolution; the residual and
    # pre-activation residual encoders drop to 24 to fit the same memory
    "arch": {
        "plain": {"train.arch": "plain", "train.base_features": 30},
        "residual": {"train.arch": "residual", "train.base_features": 24},
        "preact": {"train.arch": "preact", "train.base_features": 24},
    },
    # seed 003 (ICH): CT window level 96 / width 59 before nnU-Net's normalisation, or none
    "ct_window": {
        "on": {"plan.ct_window": {"level": 96.0, "width": 59.0}},
        "off": {"plan.ct_window": None},
    },
}

# registry-valued fields: (module, attribute, names used when the module is not there yet)
REGISTRIES = {
    "train.arch": ("ablate.nets", "ARCHITECTURES", ("plain", "residual", "preact")),
    "train.loss": ("ablate.losses", "LOSSES", ("dice_ce", "dice_topk", "ce_to_dice")),
    "train.deep_supervision": (None, None, ("nnunet", "last3", "none")),
}

SHORT_NAMES = {
    "train.deep_supervision": "ds", "train.base_features": "features", "infer.tta": "tta",
    "infer.postprocess": "pp", "infer.ensemble_folds": "ensemble", "plan.ct_window": "window",
}
BARE_AXES = {"arch", "train.arch", "train.loss"}  # their values read well on their own


class SyntheticSpec(Frozen):
    cases: int = Field(8, ge=2)
    seed: int = 0
    fov_mm: tuple[float, float, float] = (64.0, 64.0, 64.0)  # (z, y, x)


FORMATS = Literal["nnunet", "msd", "kits19", "flare21", "folders", "auto"]


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
    labels: dict[str, int] | None = None  # for `folders`: name -> value, background included
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
    # ensembles of grid cells scored on cross-validation, as seed 004's Table 1 "ensemble" row:
    # name -> member cells as partial assignments (unnamed axes take the baseline value); per
    # fold, the members' fold models are averaged (infer.ensemble_average) on its validation cases
    ensembles: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    log_checkpoints: bool = False  # also store each final checkpoint as an MLflow artifact

    def work_dir(self) -> Path:
        """The study's run folder: `workdir`, else runs/<name> under the current directory."""
        return (self.workdir or Path("runs") / self.name).absolute()

    def report_path(self) -> Path:
        return (self.report_dir or Path("reports") / self.name).absolute()


@dataclass(frozen=True)
class TrainJob:
    key: str
    name: str
    variant: dict[str, Any]  # training-axis values only
    fold: int
    seed: int
    train: TrainConfig
    plan: PlanConfig


@dataclass(frozen=True)
class EvalJob:
    key: str
    name: str
    train_key: str
    variant: dict[str, Any]  # every axis value
    fold: int
    seed: int
    infer: InferConfig
    plan: PlanConfig
    evaluation: EvalConfig


@dataclass(frozen=True)
class TestJob:
    """The held-out test set predicted by every fold model of one cell and seed and, with
    `infer.ensemble_folds`, by their ensemble, in one pass over the cases."""

    key: str
    name: str
    variant: dict[str, Any]  # every axis value
    seed: int
    folds: tuple[int, ...]
    train_keys: tuple[str, ...]  # the fold models' weights, in `folds` order
    eval_key: str  # a cross-validation evaluation of the same cell (`auto` postprocessing)
    infer: InferConfig
    plan: PlanConfig
    evaluation: EvalConfig
    fold: int = -1  # not one fold: every fold model (tracked as fold -1)


@dataclass(frozen=True)
class EnsembleJob:
    """One fold's validation cases predicted by the average of several cells' fold models."""

    key: str
    name: str
    label: str  # the ensemble's name, its variant label in the report
    fold: int
    seed: int
    members: tuple[EvalJob, ...]
    variant: dict[str, Any] = field(default_factory=dict)  # no axis values: not a grid cell


# ---------------------------------------------------------------- axes and variants


def registry_names(path: str) -> tuple[str, ...]:
    module, attribute, fallback = REGISTRIES[path]
    if module is not None:
        try:
            return tuple(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            pass
    return fallback


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


def resolve_variant(study: Study, variant: dict[str, Any]) -> tuple[PlanConfig, TrainConfig,
                                                                       InferConfig]:
    """The plan/train/infer configs of one grid cell (raises ValidationError/ConfigError)."""
    tree = {s: getattr(study, s).model_dump() for s in SECTIONS}
    for axis, value in variant.items():
        if axis in PRESETS:
            if value not in PRESETS[axis]:
                raise ConfigError(f"unknown value {value!r} for preset axis {axis!r}; valid: "
                                  f"{', '.join(PRESETS[axis])}")
            settings = PRESETS[axis][value]
        else:
            settings = {axis: value}
        for dotted, setting in settings.items():
            _set_path(tree, dotted, setting)
    plan, train, infer = (model.model_validate(tree[s]) for s, model in SECTIONS.items())
    _check_registries(train)
    return plan, train, infer


def _check_registries(train: TrainConfig) -> None:
    for path in REGISTRIES:
        value = getattr(train, path.split(".")[1])
        names = registry_names(path)
        if value not in names:
            raise ConfigError(f"{path}: unknown value {value!r}; valid: {', '.join(names)}")


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


def _value_label(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "x".join(_value_label(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}{_value_label(v)}" for k, v in value.items())
    return str(value)


def variant_label(variant: dict[str, Any]) -> str:
    """Readable label, e.g. "residual · dice_topk · ds=last3 · tta=2"; "default" without axes."""
    if not variant:
        return "default"
    parts = []
    for axis, value in variant.items():
        if axis in BARE_AXES:
            parts.append(_value_label(value))
        else:
            parts.append(f"{SHORT_NAMES.get(axis, axis.split('.')[-1])}={_value_label(value)}")
    return " · ".join(parts)


# ---------------------------------------------------------------- expansion


def job_key(payload: dict[str, Any]) -> str:
    """First 16 hex digits of sha256 over canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _result_fields(cfg: Any, section: str, ignore: set[str] = frozenset()) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    skip = NON_RESULT_FIELDS.get(section, set()) | ignore
    return {k: v for k, v in dumped.items() if k not in skip}


def _folds_identity(study: Study) -> dict[str, Any]:
    splits = study.folds.splits_file
    digest = None
    if splits is not None:
        digest = hashlib.sha256(splits.read_bytes()).hexdigest() if splits.exists() else str(splits)
    return {"k": study.folds.k, "seed": study.folds.seed, "splits": digest}


def _suffix(fold: int, seed: int, study: Study) -> str:
    return f" · fold {fold}" + (f" · seed {seed}" if len(study.seeds) > 1 else "")


def expand(study: Study, data_key: str) -> tuple[list[TrainJob], list[EvalJob]]:
    """All jobs of a study, deterministic. Train keys hash data_key, plan, train, folds, fold, seed;
    eval keys hash the train key, infer and evaluation settings."""
    folds = study.folds.run if study.folds.run is not None else list(range(study.folds.k))
    folds_id = _folds_identity(study)
    train_jobs: dict[tuple[str, int, int], TrainJob] = {}
    eval_jobs: list[EvalJob] = []
    for cell in grid_cells(study):
        plan, train, infer = resolve_variant(study, cell)
        train_variant = {a: v for a, v in cell.items() if is_training_axis(a)}
        variant_id = json.dumps(train_variant, sort_keys=True, default=str)
        keys_by_fold: dict[tuple[int, int], str] = {}
        for seed, fold in itertools.product(study.seeds, folds):
            ident = (variant_id, fold, seed)
            if ident not in train_jobs:
                key = job_key({"v": KEY_VERSION, "kind": "train", "data_key": data_key,
                               "plan": _result_fields(plan, "plan"),
                               "train": _result_fields(train, "train"),
                               "folds": folds_id, "fold": fold, "seed": seed})
                name = variant_label(train_variant) + _suffix(fold, seed, study)
                train_jobs[ident] = TrainJob(key, name, train_variant, fold, seed, train, plan)
            keys_by_fold[(fold, seed)] = train_jobs[ident].key
        for seed, fold in itertools.product(study.seeds, folds):
            train_key = keys_by_fold[(fold, seed)]
            key = job_key({"v": KEY_VERSION, "kind": "eval", "train_key": train_key,
                           "infer": _result_fields(infer, "infer", TEST_ONLY_FIELDS),
                           "evaluation": study.evaluation.model_dump(mode="json")})
            name = variant_label(cell) + _suffix(fold, seed, study)
            eval_jobs.append(EvalJob(key, name, train_key, dict(cell), fold, seed, infer, plan,
                                     study.evaluation))
    return list(train_jobs.values()), eval_jobs


def expand_tests(study: Study, eval_jobs: list[EvalJob], test_key: str) -> list[TestJob]:
    """One held-out test job per grid cell and seed: every fold model, plus their ensemble with
    `infer.ensemble_folds`. Keys hash the weights, infer and evaluation settings and `test_key`
    (the identity of the test cases' files)."""
    if study.dataset.test is None:
        return []
    cells: dict[str, list[EvalJob]] = {}
    for job in eval_jobs:
        cells.setdefault(json.dumps([sorted(job.variant.items()), job.seed], default=str),
                         []).append(job)
    jobs = []
    for members in cells.values():
        members = sorted(members, key=lambda j: j.fold)
        first = members[0]
        ensemble = first.infer.ensemble_folds
        train_keys = tuple(j.train_key for j in members)
        key = job_key({"v": KEY_VERSION, "kind": "test", "train_keys": list(train_keys),
                       "infer": _result_fields(first.infer, "infer",
                                               set() if ensemble else TEST_ONLY_FIELDS),
                       "evaluation": study.evaluation.model_dump(mode="json"), "test": test_key})
        models = f"{len(members)} fold models" + (" + ensemble" if ensemble else "")
        seed = f" · seed {first.seed}" if len(study.seeds) > 1 else ""
        jobs.append(TestJob(key, f"{variant_label(first.variant)} · test · {models}{seed}",
                            dict(first.variant), first.seed, tuple(j.fold for j in members),
                            train_keys, first.key, first.infer, first.plan, first.evaluation))
    return jobs


def ensemble_members(study: Study, name: str) -> list[dict[str, Any]]:
    """The grid cells of an ensemble (partial assignments completed with the baseline)."""
    base = baseline_variant(study)
    return [{**base, **partial} for partial in study.ensembles[name]]


def expand_ensembles(study: Study, eval_jobs: list[EvalJob]) -> list[EnsembleJob]:
    """One job per ensemble, fold and seed; keys hash the members' evaluation keys and the
    averaging."""
    by_cell = {(json.dumps(sorted(j.variant.items()), default=str), j.fold, j.seed): j
               for j in eval_jobs}
    jobs = []
    for name in study.ensembles:
        cells = [json.dumps(sorted(c.items()), default=str) for c in ensemble_members(study, name)]
        for fold, seed in sorted({(j.fold, j.seed) for j in eval_jobs}):
            members = tuple(by_cell[(cell, fold, seed)] for cell in cells)
            key = job_key({"v": KEY_VERSION, "kind": "ensemble", "average":
                           study.infer.ensemble_average, "members": [m.key for m in members]})
            jobs.append(EnsembleJob(key, f"{name} · ensemble{_suffix(fold, seed, study)}", name,
                                    fold, seed, members))
    return jobs


def describe(study: Study, jobs: tuple[list[TrainJob], list[EvalJob]]) -> str:
    """Text for `ablate validate` / `--dry-run`: resolved config, job counts, rough cost."""
    train_jobs, eval_jobs = jobs
    iterations = sum(j.train.epochs * j.train.iterations_per_epoch for j in train_jobs)
    kinds = {a: ("training" if is_training_axis(a) else "inference") for a in study.axes}
    lines = [f"study {study.name}: {study.description}".rstrip(": "), "resolved config:",
             yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False).rstrip()]
    for axis, values in study.axes.items():
        lines.append(f"axis {axis} ({kinds[axis]}): {', '.join(map(_value_label, values))}")
    lines.append(f"baseline: {variant_label(baseline_variant(study))}")
    lines.append(f"trainings: {len(train_jobs)}; evaluations: {len(eval_jobs)}")
    for name in study.ensembles:
        members = ", ".join(variant_label(c) for c in ensemble_members(study, name))
        lines.append(f"ensemble {name}: {members} (one evaluation per fold and seed)")
    test = study.dataset.test
    if test is not None:
        where = f"{test.holdout} cases held out" if test.holdout else str(test.path)
        models = "every fold model" + (" and their ensemble" if study.infer.ensemble_folds else "")
        lines.append(f"held-out test set ({where}): {len(expand_tests(study, eval_jobs, ''))} "
                     f"test-set evaluations, one per cell and seed ({models})")
    per = {j.train.epochs * j.train.iterations_per_epoch for j in train_jobs}
    passes = sum(j.infer.tta for j in eval_jobs)
    lines.append(f"cost: {iterations:,} training iterations in all "
                 f"({' / '.join(f'{p:,}' for p in sorted(per))} per training: epochs x "
                 f"iterations per epoch); {passes} mirror passes per validation window over all "
                 "evaluations")
    return "\n".join(lines)

