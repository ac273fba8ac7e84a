"""A study's results read back from its MLflow store into tidy tables (`Results`): one run
per job, its latest finished one, so a job finished twice is counted once. Creates nothing."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ablate.errors import ConfigError
from ablate.report.collect import COST_COLUMNS, CURVE_COLUMNS, Results
from ablate.run.outcome import JobState
from ablate.run.store import (
    CURVE_METRICS,
    EVAL_COST,
    TRAIN_COST,
    decode_value,
    quiet_mlflow,
    run_state,
    search_all,
    store_missing,
)


def _first_metric(metrics: dict[str, float], names: tuple[str, ...]) -> float:
    return next((metrics[n] for n in names if n in metrics), float("nan"))


def _identity(run, axes: list[str]) -> dict[str, Any]:
    params = run.data.params
    row = {"variant": run.data.tags.get("ablate.variant", run.info.run_name)}
    for axis in axes:
        row[axis] = decode_value(params[f"axis.{axis}"]) if f"axis.{axis}" in params else None
    row["fold"] = int(params.get("fold", -1))
    row["seed"] = int(params.get("seed", 0))
    return row


def _download_csv(client: MlflowClient, run_id: str, name: str, tmp: str) -> pd.DataFrame | None:
    try:
        path = client.download_artifacts(run_id, name, tmp)
    except (MlflowException, OSError):
        return None
    return pd.read_csv(path)


def _curves(client: MlflowClient, run, identity: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for metric in CURVE_METRICS:
        if metric not in run.data.metrics:
            continue
        for point in client.get_metric_history(run.info.run_id, metric):
            rows.append(
                {
                    "variant": identity["variant"],
                    "fold": identity["fold"],
                    "seed": identity["seed"],
                    "epoch": point.step,
                    "metric": metric,
                    "value": point.value,
                }
            )
    return rows


def _planned(client: MlflowClient, parent, tmp: str) -> list[dict] | None:
    """The jobs of the study's latest run (`Tracker.log_planned_jobs`), None when not recorded."""
    if parent is None:
        return None
    try:
        return json.loads(
            Path(client.download_artifacts(parent.info.run_id, "jobs.json", tmp)).read_text()
        )
    except (MlflowException, OSError, ValueError):
        return None


def _missing(planned: list[dict] | None, runs: list) -> list[str]:
    """Readable labels ("train plain · fold 1: failed") of planned or started jobs that have no
    FINISHED run."""
    jobs: dict[str, dict[str, str]] = {job["job_key"]: job for job in planned or []}
    states: dict[str, JobState] = {key: JobState.PENDING for key in jobs}
    for run in runs:
        key = run.data.tags.get("ablate.job_key")
        if not key:
            continue
        jobs.setdefault(
            key, {"name": run.info.run_name, "kind": run.data.tags.get("ablate.kind", "")}
        )
        state = run_state(run)
        if state.better_than(states.get(key)):
            states[key] = state
    shown = {JobState.PENDING: "not started"}
    return [
        f"{jobs[key]['kind']} {jobs[key]['name']}: {shown.get(state, state.value)}"
        for key, state in states.items()
        if state is not JobState.DONE
    ]


def fetch_results(tracking_uri: str, study_name: str) -> Results:
    """Read every FINISHED train/eval run of a study back into tidy tables: one run per job
    (its latest finished run), so a job finished twice is counted once. Creates nothing."""
    missing_store = store_missing(tracking_uri)
    if missing_store:
        raise ConfigError(
            f"{missing_store}: study {study_name!r} has not run yet (ablate run it first, or "
            "point tracking_uri at its store); nothing was created"
        )
    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise ConfigError(
            f"{tracking_uri}: no MLflow experiment {study_name!r}; run the study "
            "first or point --tracking-uri at its store"
        )
    runs = search_all(client, experiment.experiment_id, "")
    parent = next((r for r in runs if r.data.tags.get("ablate.kind") == "study"), None)
    with tempfile.TemporaryDirectory() as tmp:
        planned = _planned(client, parent, tmp)
    if planned is not None:  # runs of jobs the study no longer has (an edited grid) stay out
        keys = {job["job_key"] for job in planned}
        runs = [r for r in runs if r is parent or r.data.tags.get("ablate.job_key") in keys]
    finished = _latest_per_job([r for r in runs if r.info.status == "FINISHED"])
    axes = _axes(parent, runs)
    train_runs = {
        r.data.tags["ablate.job_key"]: r
        for r in finished
        if r.data.tags.get("ablate.kind") == "train"
    }
    tidy, cost, curves, test, test_cost = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in finished:
            kind = run.data.tags.get("ablate.kind")
            identity = _identity(run, axes)
            if kind == "train":
                curves.extend(_curves(client, run, identity))
            if kind == "test":
                table = _download_csv(client, run.info.run_id, "per_case.csv", tmp)
                if table is not None:
                    test.append(_test_table(table, identity))
                test_cost += _test_costs(run.data.metrics, identity)
            if kind != "eval":
                continue
            table = _download_csv(client, run.info.run_id, "per_case.csv", tmp)
            if table is not None:
                tidy.append(table.assign(**identity))
            trained = train_runs.get(run.data.tags.get("ablate.train_key", ""))
            train_metrics = trained.data.metrics if trained is not None else {}
            cost.append(
                {
                    **identity,
                    **{c: _first_metric(train_metrics, n) for c, n in TRAIN_COST.items()},
                    **{c: _first_metric(run.data.metrics, n) for c, n in EVAL_COST.items()},
                }
            )
    missing = _missing(planned, runs)
    ids = ["variant", *axes, "fold", "seed"]
    tidy_df = (
        pd.concat(tidy, ignore_index=True)
        if tidy
        else pd.DataFrame(columns=["case", "target", "metric", "value"])
    )
    tidy_df = tidy_df.reindex(columns=[*ids, "case", "target", "metric", "value"])
    cost_df = pd.DataFrame(cost, columns=[*ids, *COST_COLUMNS[3:]])  # after variant, fold, seed
    curves_df = pd.DataFrame(curves, columns=list(CURVE_COLUMNS))
    test_ids = ["variant", *axes, "model", "fold", "seed"]
    test_df = pd.concat(test, ignore_index=True) if test else pd.DataFrame()
    test_df = test_df.reindex(columns=[*test_ids, "case", "target", "metric", "value"])
    test_cost_df = pd.DataFrame(test_cost, columns=[*test_ids, *EVAL_COST])
    return Results(tidy_df, cost_df, curves_df, axes, missing, test_df, test_cost_df)


@dataclass(frozen=True)
class EvalPredictions:
    """A finished cross-validation evaluation run and the folder its job wrote predictions to."""

    variant: str
    fold: int
    seed: int
    run_id: str
    folder: Path


def eval_predictions(tracking_uri: str, study_name: str, jobs_dir: Path) -> list[EvalPredictions]:
    """Every finished evaluation run (its latest per job) whose prediction folder
    (<jobs_dir>/<job key>/predictions) exists, seeds in ascending order; [] without a store."""
    if store_missing(tracking_uri):
        return []
    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return []
    runs = search_all(client, experiment.experiment_id, "tags.`ablate.kind` = 'eval'")
    out = []
    for run in _latest_per_job([r for r in runs if r.info.status == "FINISHED"]):
        folder = Path(jobs_dir) / run.data.tags.get("ablate.job_key", "?") / "predictions"
        if folder.is_dir():
            identity = _identity(run, [])
            out.append(
                EvalPredictions(
                    identity["variant"], identity["fold"], identity["seed"], run.info.run_id, folder
                )
            )
    return sorted(out, key=lambda e: (e.seed, e.variant, e.fold))


def _latest_per_job(finished: list) -> list:
    """The latest finished run of each job (runs come oldest first); the study's own run kept."""
    latest: dict[str, Any] = {}
    for run in finished:
        latest[run.data.tags.get("ablate.job_key") or run.info.run_id] = run
    return list(latest.values())


def _test_table(table: pd.DataFrame, identity: dict[str, Any]) -> pd.DataFrame:
    """A test run's per_case.csv with the run's identity; `fold` is the column the job wrote
    (the model's fold, -1 for the ensemble and external folders), not the run's fold -1."""
    if "fold" not in table:  # written before the column existed: "fold <n>" models only
        fold = table["model"].str.removeprefix("fold ")
        table = table.assign(fold=pd.to_numeric(fold, errors="coerce").fillna(-1).astype(int))
    return table.assign(**{k: v for k, v in identity.items() if k != "fold"})


def _test_costs(metrics: dict[str, float], identity: dict[str, Any]) -> list[dict[str, Any]]:
    """A test run's cost rows: the fold models' mean ("single") and the ensemble's; none for an
    external folder, which has no inference cost here."""
    if "infer_seconds_per_case" not in metrics:
        return []
    rows = [
        {
            **identity,
            "model": "single",
            **{c: _first_metric(metrics, n) for c, n in EVAL_COST.items()},
        }
    ]
    if "ensemble_infer_seconds_per_case" in metrics:
        rows.append(
            {
                **identity,
                "model": "ensemble",
                **{
                    c: _first_metric(metrics, tuple(f"ensemble_{m}" for m in n))
                    for c, n in EVAL_COST.items()
                },
            }
        )
    return rows


def _axes(parent, runs: list) -> list[str]:
    if parent is not None and "ablate.axes" in parent.data.tags:
        return list(json.loads(parent.data.tags["ablate.axes"]))
    names = {p[len("axis.") :] for r in runs for p in r.data.params if p.startswith("axis.")}
    return sorted(names)
