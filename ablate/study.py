"""The study file: a typed YAML schema, its validation, and the expansion of its grid into jobs.

Axes are dotted paths into plan/train/infer (`train.loss`, `infer.tta`) or named presets (`arch`).
Training axes (touching `train.` or `plan.`) define a TrainJob per (training variant, fold, seed);
inference axes (`infer.`) only add EvalJobs that reuse those weights. `include` entries are partial
assignments whose unnamed axes take the baseline value; `exclude` entries drop every grid cell that
matches all of their assignments (include is applied after exclude).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ablate.config import EvalConfig, Frozen, InferConfig, PlanConfig, TrainConfig
from ablate.errors import ConfigError

KEY_VERSION = 1  # bump when the meaning of a job key changes (invalidates every finished run)
SECTIONS = {"plan": PlanConfig, "train": TrainConfig, "infer": InferConfig}
# options that change speed or placement but not the numbers a job produces
NON_RESULT_FIELDS = {"train": {"data_workers", "device"}, "infer": {"window_batch", "device"}}

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

DATASET_HINTS = {
    "kits19": "clone github.com/neheller/kits19 and run its get_imaging script",
    "flare21": "download FLARE21 from the FLARE21 challenge page (flare.grand-challenge.org)",
    "msd": "download the task from medicaldecathlon.com",
    "nnunet": "point dataset.path at an nnU-Net v2 raw folder (dataset.json, imagesTr/, labelsTr/)",
    "folders": "point dataset.path at your image/label folders",
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


class DatasetSpec(Frozen):
    """Either a dataset on disk (`path`, `format`) or a generated one (`synthetic`)."""

    path: Path | None = None
    format: Literal["nnunet", "msd", "kits19", "flare21", "folders", "auto"] = "auto"
    labels: dict[str, int] | None = None  # for `folders`: name -> value, background included
    synthetic: SyntheticSpec | None = None

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
    ensemble_train_keys: tuple[str, ...] = field(default=())  # every fold's weights, ensembling


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


def _result_fields(cfg: Any, section: str) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in NON_RESULT_FIELDS.get(section, ())}


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
            ensemble = tuple(keys_by_fold[(f, seed)] for f in folds) if infer.ensemble_folds else ()
            key = job_key({"v": KEY_VERSION, "kind": "eval", "train_key": train_key,
                           "infer": _result_fields(infer, "infer"),
                           "evaluation": study.evaluation.model_dump(mode="json"),
                           "ensemble": list(ensemble)})
            name = variant_label(cell) + _suffix(fold, seed, study)
            eval_jobs.append(EvalJob(key, name, train_key, dict(cell), fold, seed, infer, plan,
                                     study.evaluation, ensemble))
    return list(train_jobs.values()), eval_jobs


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
    per = {j.train.epochs * j.train.iterations_per_epoch for j in train_jobs}
    lines.append(f"cost: {iterations:,} training iterations in all "
                 f"({' / '.join(f'{p:,}' for p in sorted(per))} epochs x iterations per training)")
    return "\n".join(lines)


# ---------------------------------------------------------------- loading and validation


def load_study(path: str | Path, check_paths: bool = True) -> Study:
    """Read and validate a study YAML. Every problem is a one-line ConfigError naming the file and
    key. `check_paths=False` skips the dataset/splits existence checks (for `validate` of a study
    whose data lives elsewhere, and for tests)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: study file not found; check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error at {where}: {problem}; fix the YAML") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a study must be a YAML mapping with name, dataset, ...")
    _resolve_relative_paths(raw, path.parent.absolute())
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(source, exc) from None
    check_study(study, source)
    if check_paths:
        _check_paths(study, source)
    return study


def _resolve_relative_paths(raw: dict, folder: Path) -> None:
    def resolve(tree: Any, key: str) -> None:
        if isinstance(tree, dict) and isinstance(tree.get(key), str):
            value = Path(tree[key]).expanduser()
            tree[key] = os.path.normpath(value if value.is_absolute() else folder / value)

    resolve(raw.get("dataset"), "path")
    resolve(raw.get("folds"), "splits_file")
    resolve(raw, "workdir")
    resolve(raw, "report_dir")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _keypath(loc: tuple) -> str:
    parts = ""
    for p in loc:
        if isinstance(p, int):
            parts += f"[{p}]"
        elif "[" in p or p in {"int", "float", "str", "bool", "none", "list", "dict"}:
            continue  # pydantic names union members in the location; users never wrote those
        else:
            parts += f".{p}" if parts else p
    return parts or "<top level>"


def _model_in(annotation: Any) -> Any:
    """The pydantic model class inside an annotation such as `CTWindow | None`."""
    if isinstance(annotation, type) and issubclass(annotation, Frozen):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _valid_keys(loc: tuple) -> list[str]:
    model: Any = Study
    for part in loc:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _validation_error(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = _keypath(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return ConfigError(f"{source}: unknown key {key!r}; {hint}")
    if err["type"] == "missing":
        return ConfigError(f"{source}: missing required key {key!r}; add it")
    message = _one_line(err["msg"]).removeprefix("Value error, ")
    got = _one_line(repr(err.get("input")))[:60]
    return ConfigError(f"{source}: {key}: {message} (got {got}); fix the value")


def _unknown_axis(source: str, axis: str) -> ConfigError:
    close = difflib.get_close_matches(axis, valid_axis_names(), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    section = axis.split(".")[0]
    if section in SECTIONS and not close:
        hint = f"valid {section}.* axes: {', '.join(SECTIONS[section].model_fields)}; "
    return ConfigError(f"{source}: axes.{axis}: unknown axis; {hint}axes are presets "
                       f"({', '.join(PRESETS)}) or dotted paths into plan/train/infer")


def _is_known_axis(axis: str) -> bool:
    if axis in PRESETS:
        return True
    section, _, rest = axis.partition(".")
    return section in SECTIONS and rest.split(".")[0] in SECTIONS[section].model_fields


def check_study(study: Study, source: str = "study") -> None:
    """Axis names, axis values (by resolving each), baseline, include/exclude and registries."""
    try:
        _check_registries(study.train)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}; fix the value") from None
    for axis, values in study.axes.items():
        if not _is_known_axis(axis):
            raise _unknown_axis(source, axis)
        if not values:
            raise ConfigError(f"{source}: axes.{axis}: empty list; give at least one value")
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ConfigError(f"{source}: axes.{axis}[{i}]: duplicate {value!r}; remove it")
            _check_cell(study, {axis: value}, f"{source}: axes.{axis}[{i}]")
    for name in ("include", "exclude", "baseline"):
        value = getattr(study, name)
        partials = value if name != "baseline" else [value] if value else []
        for i, partial in enumerate(partials):
            where = f"{source}: {name}" + (f"[{i}]" if name != "baseline" else "")
            unknown = [a for a in partial if a not in study.axes]
            if unknown:
                raise ConfigError(f"{where}: {unknown[0]!r} is not an axis of this study; use one "
                                  f"of: {', '.join(study.axes) or '(no axes)'}")
            _check_cell(study, partial, where)
    for axis, value in (study.baseline or {}).items():
        if value not in study.axes[axis]:
            raise ConfigError(f"{source}: baseline.{axis}: {value!r} is not among the axis values "
                              f"{study.axes[axis]}; pick one of them")
    if study.axes and not grid_cells(study):
        raise ConfigError(f"{source}: exclude removes every grid cell; loosen exclude")
    if study.infer.ensemble_folds or True in study.axes.get("infer.ensemble_folds", []):
        raise ConfigError(f"{source}: infer.ensemble_folds: a fold ensemble scored on "
                          "cross-validation cases would use models that trained on them; it needs "
                          "a held-out test set, which studies cannot declare yet; set it to false")


def _check_cell(study: Study, variant: dict[str, Any], where: str) -> None:
    try:
        resolve_variant(study, variant)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        message = _one_line(err["msg"]).removeprefix("Value error, ")
        value = next(iter(variant.values()), None) if len(variant) == 1 else variant
        raise ConfigError(f"{where}: invalid value {value!r}: {message}; fix the value") from None


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if "kits" in name:
        return "kits19"
    if "flare" in name:
        return "flare21"
    if name.startswith("task0") or name.startswith("task1"):
        return "msd"
    return "nnunet"


def _check_paths(study: Study, source: str) -> None:
    spec = study.dataset
    if spec.path is not None and not spec.path.exists():
        fmt = spec.format if spec.format != "auto" else guess_format(spec.path)
        raise ConfigError(f"{source}: dataset.path {spec.path} does not exist; "
                          f"{DATASET_HINTS[fmt]}, or fix the path")
    splits = study.folds.splits_file
    if splits is not None and not splits.exists():
        raise ConfigError(f"{source}: folds.splits_file {splits} does not exist; fix the path "
                          "or remove the key to use seeded folds")
