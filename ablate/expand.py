"""A study's grid expanded into jobs with stable keys.

Training axes define a TrainJob per (training variant, fold, seed); inference axes only add
EvalJobs that reuse those weights. A held-out test set adds a TestJob per cell and seed, each
`ensembles` entry an EnsembleJob per fold and seed, and each `external` folder an ExternalJob per
set it predicts. `expand_study` gives all of them: the jobs `ablate run` runs and `ablate status`
lists. A key hashes everything that changes a job's
result, so a rerun skips finished jobs and an edited axis re-runs only what it touches.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ablate.config import EvalConfig, InferConfig, PlanConfig, TrainConfig
from ablate.data.dataset import Case
from ablate.errors import ConfigError
from ablate.folds import Fold
from ablate.regions import DatasetRegions, describe_training_targets, with_dataset_regions
from ablate.study import (
    Study,
    baseline_variant,
    ensemble_members,
    grid_cells,
    is_training_axis,
    resolve_variant,
    value_label,
    variant_label,
)

KEY_VERSION = 1  # bump when the meaning of a job key changes (invalidates every finished run)
# options that change speed or placement but not the numbers a job produces
NON_RESULT_FIELDS = {"train": {"data_workers", "device"}, "infer": {"window_batch", "device"}}
# settings of the held-out test phase only: cross-validation scores each case with one fold model
TEST_ONLY_FIELDS = {"ensemble_folds", "ensemble_average"}


@dataclass(frozen=True)
class TrainJob:
    key: str
    name: str
    variant: dict[str, Any]  # training-axis values only
    fold: int
    seed: int
    train: TrainConfig
    plan: PlanConfig
    # the trainings whose output this one reads, which must finish first: for nnU-Net's
    # 3d_cascade_fullres, every fold of the same cell's 3d_lowres stage (fold order), whose
    # cross-validation predictions are its extra input (ablate.cascade)
    needs: tuple[str, ...] = ()
    previous_stage_plan: PlanConfig | None = None  # that 3d_lowres stage's plan


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


def job_key(payload: dict[str, Any]) -> str:
    """First 16 hex digits of sha256 over canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
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


def expand(
    study: Study, data_key: str, declared: DatasetRegions | None = None
) -> tuple[list[TrainJob], list[EvalJob]]:
    """All jobs of a study, deterministic. Train keys hash data_key, plan, train, folds, fold, seed;
    eval keys hash the train key, infer and evaluation settings. `declared`: the regions of a
    region dataset, which its trainings default to (ablate.regions.with_dataset_regions; the
    job's TrainConfig and key carry them)."""
    folds = study.folds.run if study.folds.run is not None else list(range(study.folds.k))
    folds_id = _folds_identity(study)
    train_jobs: dict[tuple[str, int, int], TrainJob] = {}
    eval_jobs: list[EvalJob] = []
    cells = [(cell, *resolve_variant(study, cell)) for cell in grid_cells(study)]
    for cell, plan, train, _ in cells:
        train = with_dataset_regions(train, declared)
        train_variant = {a: v for a, v in cell.items() if is_training_axis(a)}
        variant_id = json.dumps(train_variant, sort_keys=True, default=str)
        for seed, fold in itertools.product(study.seeds, folds):
            ident = (variant_id, fold, seed)
            if ident not in train_jobs:
                payload = {
                    "v": KEY_VERSION,
                    "kind": "train",
                    "data_key": data_key,
                    "plan": _result_fields(plan, "plan"),
                    "train": _result_fields(train, "train"),
                    "folds": folds_id,
                    "fold": fold,
                    "seed": seed,
                }
                name = variant_label(train_variant) + _suffix(fold, seed, study)
                train_jobs[ident] = TrainJob(
                    job_key(payload), name, train_variant, fold, seed, train, plan
                )
    _link_cascades(study, train_jobs, folds)
    for cell, plan, _, infer in cells:
        train_variant = {a: v for a, v in cell.items() if is_training_axis(a)}
        variant_id = json.dumps(train_variant, sort_keys=True, default=str)
        for seed, fold in itertools.product(study.seeds, folds):
            train_key = train_jobs[(variant_id, fold, seed)].key
            key = job_key(
                {
                    "v": KEY_VERSION,
                    "kind": "eval",
                    "train_key": train_key,
                    "infer": _result_fields(infer, "infer", TEST_ONLY_FIELDS),
                    "evaluation": study.evaluation.model_dump(mode="json"),
                }
            )
            name = variant_label(cell) + _suffix(fold, seed, study)
            eval_jobs.append(
                EvalJob(key, name, train_key, dict(cell), fold, seed, infer, plan, study.evaluation)
            )
    return list(train_jobs.values()), eval_jobs


CONFIGURATION_AXIS = "plan.configuration"


def _link_cascades(study: Study, train_jobs: dict, folds: list[int]) -> None:
    """Each 3d_cascade_fullres training needs every fold of the same cell's 3d_lowres training
    (its variant with plan.configuration 3d_lowres, same seed): their keys become its `needs`
    and part of its own key (its input is their predictions). Refused when that cell is not
    in the study."""
    by_ident = dict(train_jobs)
    for ident, job in by_ident.items():
        if job.plan.configuration != "3d_cascade_fullres":
            continue
        lowres_variant = {**job.variant, CONFIGURATION_AXIS: "3d_lowres"}
        lowres_id = json.dumps(lowres_variant, sort_keys=True, default=str)
        stages = [by_ident.get((lowres_id, fold, job.seed)) for fold in folds]
        if CONFIGURATION_AXIS not in job.variant or any(s is None for s in stages):
            raise ConfigError(
                f"{CONFIGURATION_AXIS}: 3d_cascade_fullres trains on the 3d_lowres stage's "
                f"cross-validation predictions; add 3d_lowres to the axis {CONFIGURATION_AXIS} "
                f"(missing: {variant_label(lowres_variant)})"
            )
        needs = tuple(s.key for s in stages)
        key = job_key({"cascade_of": job.key, "previous_stage": list(needs)})
        train_jobs[ident] = replace(job, key=key, needs=needs, previous_stage_plan=stages[0].plan)


def expand_tests(study: Study, eval_jobs: list[EvalJob], test_key: str) -> list[TestJob]:
    """One held-out test job per grid cell and seed: every fold model, plus their ensemble with
    `infer.ensemble_folds`. Keys hash the weights, infer and evaluation settings and `test_key`
    (the identity of the test cases' files)."""
    if study.dataset.test is None:
        return []
    cells: dict[str, list[EvalJob]] = {}
    for job in eval_jobs:
        cells.setdefault(
            json.dumps([sorted(job.variant.items()), job.seed], default=str), []
        ).append(job)
    jobs = []
    for members in cells.values():
        members = sorted(members, key=lambda j: j.fold)
        first = members[0]
        ensemble = first.infer.ensemble_folds
        train_keys = tuple(j.train_key for j in members)
        key = job_key(
            {
                "v": KEY_VERSION,
                "kind": "test",
                "train_keys": list(train_keys),
                "infer": _result_fields(
                    first.infer, "infer", set() if ensemble else TEST_ONLY_FIELDS
                ),
                "evaluation": study.evaluation.model_dump(mode="json"),
                "test": test_key,
            }
        )
        models = f"{len(members)} fold models" + (" + ensemble" if ensemble else "")
        seed = f" · seed {first.seed}" if len(study.seeds) > 1 else ""
        jobs.append(
            TestJob(
                key,
                f"{variant_label(first.variant)} · test · {models}{seed}",
                dict(first.variant),
                first.seed,
                tuple(j.fold for j in members),
                train_keys,
                first.key,
                first.infer,
                first.plan,
                first.evaluation,
            )
        )
    return jobs


def expand_ensembles(study: Study, eval_jobs: list[EvalJob]) -> list[EnsembleJob]:
    """One job per ensemble, fold and seed; keys hash the members' evaluation keys and the
    averaging."""
    by_cell = {
        (json.dumps(sorted(j.variant.items()), default=str), j.fold, j.seed): j for j in eval_jobs
    }
    jobs = []
    for name in study.ensembles:
        cells = [json.dumps(sorted(c.items()), default=str) for c in ensemble_members(study, name)]
        for fold, seed in sorted({(j.fold, j.seed) for j in eval_jobs}):
            members = tuple(by_cell[(cell, fold, seed)] for cell in cells)
            key = job_key(
                {
                    "v": KEY_VERSION,
                    "kind": "ensemble",
                    "average": study.infer.ensemble_average,
                    "members": [m.key for m in members],
                }
            )
            jobs.append(
                EnsembleJob(
                    key, f"{name} · ensemble{_suffix(fold, seed, study)}", name, fold, seed, members
                )
            )
    return jobs


@dataclass(frozen=True)
class ExternalJob:
    """Scoring an external prediction folder (an extra variant) on one fold's validation cases,
    or on the held-out test cases (`fold` -1)."""

    key: str
    name: str
    label: str
    folder: Path
    fold: int
    case_ids: tuple[str, ...]
    seed: int = 0
    variant: dict = field(default_factory=dict)

    @property
    def on_test_set(self) -> bool:
        return self.fold == -1


def expand_externals(
    study: Study,
    data_key: str,
    folds: list[Fold],
    file_ending: str,
    test_cases: tuple[Case, ...] = (),
) -> list[ExternalJob]:
    """Per external folder: one job per fold's validation cases when it predicts the
    cross-validation cases, one for the held-out test cases when it predicts those. A folder
    must predict all of a set or none of it (a DataError names the first missing file). Keys
    hash the folder, its files' names, sizes and modification times, the data, fold and
    evaluation settings."""
    ending = file_ending
    cv_ids = [c for split in folds for c in split.val]
    test_ids = tuple(c.case_id for c in test_cases)
    jobs = []
    for label, folder in study.external.items():
        splits = []
        if _predicts(label, folder, cv_ids, ending, "cross-validation"):
            splits += [(fold, f" · fold {fold}", split.val) for fold, split in enumerate(folds)]
        if _predicts(label, folder, test_ids, ending, "held-out test"):
            splits.append((-1, " · test", test_ids))
        if not splits:
            _refuse(label, folder, cv_ids, ending, "cross-validation")
        for fold, suffix, case_ids in splits:
            files = [folder / f"{c}{ending}" for c in case_ids]
            stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
            key = job_key(
                {
                    "external": label,
                    "folder": str(folder),
                    "files": stamp,
                    "data": data_key,
                    "fold": fold,
                    "evaluation": study.evaluation.model_dump(mode="json"),
                }
            )
            jobs.append(
                ExternalJob(
                    key, f"{label} · external{suffix}", label, folder, fold, tuple(case_ids)
                )
            )
    return jobs


def _predicts(label: str, folder: Path, case_ids, ending: str, what: str) -> bool:
    """True when the folder has a prediction for every case, False for none; refuses a part."""
    present = sum((folder / f"{c}{ending}").is_file() for c in case_ids)
    if 0 < present < len(case_ids):
        _refuse(label, folder, case_ids, ending, what)
    return bool(case_ids) and present == len(case_ids)


def _refuse(label: str, folder: Path, case_ids, ending: str, what: str) -> None:
    from ablate.errors import DataError

    missing = [c for c in case_ids if not (folder / f"{c}{ending}").is_file()]
    present = len(case_ids) - len(missing)
    raise DataError(
        f"external.{label}: {folder} predicts {present} of the {len(case_ids)} {what} "
        f"cases ({missing[0]}{ending} is missing); add every case's label map, or "
        "none of that set"
    )


@dataclass(frozen=True)
class StudyJobs:
    """Every job of a study, by kind."""

    train: list[TrainJob]
    eval: list[EvalJob]
    ensemble: list[EnsembleJob]
    test: list[TestJob]
    external: list[ExternalJob]

    def all(self) -> list[TrainJob | EvalJob | EnsembleJob | TestJob | ExternalJob]:
        """In the order `ablate run` runs them."""
        return [*self.train, *self.eval, *self.ensemble, *self.test, *self.external]


def expand_study(
    study: Study,
    data_key: str,
    folds: list[Fold],
    file_ending: str,
    test_cases: tuple[Case, ...] = (),
    declared: DatasetRegions | None = None,
) -> StudyJobs:
    """All jobs of a study: its grid (`expand`), held-out test jobs when there are test cases,
    ensembles and external folders. `folds` are the cross-validation splits of the data with
    key `data_key`; external folders are scored on their validation cases. `declared`: a region
    dataset's regions (ablate.regions.dataset_regions), its trainings' default."""
    from ablate.data.testset import held_out_key

    train_jobs, eval_jobs = expand(study, data_key, declared)
    test_jobs = expand_tests(study, eval_jobs, held_out_key(test_cases)) if test_cases else []
    return StudyJobs(
        train_jobs,
        eval_jobs,
        expand_ensembles(study, eval_jobs),
        test_jobs,
        expand_externals(study, data_key, folds, file_ending, test_cases),
    )


def describe(study: Study, jobs: tuple[list[TrainJob], list[EvalJob]]) -> str:
    """Text for `ablate validate` / `--dry-run`: resolved config, job counts, rough cost."""
    train_jobs, eval_jobs = jobs
    iterations = sum(j.train.epochs * j.train.iterations_per_epoch for j in train_jobs)
    kinds = {a: ("training" if is_training_axis(a) else "inference") for a in study.axes}
    lines = [
        f"study {study.name}: {study.description}".rstrip(": "),
        "resolved config:",
        yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False).rstrip(),
    ]
    for axis, values in study.axes.items():
        lines.append(f"axis {axis} ({kinds[axis]}): {', '.join(map(value_label, values))}")
    lines.append(f"baseline: {variant_label(baseline_variant(study))}")
    lines.append(f"trainings: {len(train_jobs)}; evaluations: {len(eval_jobs)}")
    lines += sorted({describe_training_targets(j.train) for j in train_jobs})
    waiting = [j for j in train_jobs if j.needs]
    if waiting:
        lines.append(
            f"{len(waiting)} 3d_cascade_fullres trainings start after the {len(waiting[0].needs)} "
            "3d_lowres folds they need (whose cross-validation predictions are their inputs)"
        )
    for name in study.ensembles:
        members = ", ".join(variant_label(c) for c in ensemble_members(study, name))
        lines.append(f"ensemble {name}: {members} (one evaluation per fold and seed)")
    test = study.dataset.test
    if test is not None:
        where = f"{test.holdout} cases held out" if test.holdout else str(test.path)
        models = "every fold model" + (" and their ensemble" if study.infer.ensemble_folds else "")
        lines.append(
            f"held-out test set ({where}): {len(expand_tests(study, eval_jobs, ''))} "
            f"test-set evaluations, one per cell and seed ({models})"
        )
    per = {j.train.epochs * j.train.iterations_per_epoch for j in train_jobs}
    passes = sum(j.infer.tta for j in eval_jobs)
    lines.append(
        f"cost: {iterations:,} training iterations in all "
        f"({' / '.join(f'{p:,}' for p in sorted(per))} per training: epochs x "
        f"iterations per epoch); {passes} mirror passes per validation window over all "
        "evaluations"
    )
    return "\n".join(lines)
