"""MLflow tracking: one parent run per study, one child run per train/eval job, tags for resume.

The only module that imports mlflow. A `Tracker` is used from one process (the driver), so the
SQLite store has a single writer. Results are read back from MLflow, never from local side files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset as MlflowDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ablate.errors import ConfigError
from ablate.expand import EvalJob, TrainJob
from ablate.report.collect import Results
from ablate.run.outcome import JobState
from ablate.study import Study, variant_label

# the experiment tag MLflow 3's UI reads to open an experiment on its runs ("Machine learning")
# instead of the GenAI traces overview
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_VALUE_LIMIT = 5000  # MLflow allows 8000; keep error tags readable
PARAM_VALUE_LIMIT = 6000
CURVE_METRICS = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_seconds")
TRAIN_COST = {
    "train_seconds": ("train_seconds",),
    "seconds_per_epoch": ("seconds_per_epoch",),
    "peak_train_memory_mb": ("peak_train_memory_mb", "peak_memory_mb"),
    "parameters": ("parameters",),
    "flops": ("flops",),
}
EVAL_COST = {
    "infer_seconds_per_case": ("infer_seconds_per_case",),
    "peak_infer_memory_mb": ("peak_infer_memory_mb", "peak_memory_mb"),
}


def _quiet_mlflow() -> None:
    """MLflow's and alembic's info lines (store migrations, ...) are noise in a study's log."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its artifact download bars fill a log file (`make demo > log`) with carriage returns
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _state(run) -> JobState:
    """A job run's state: done once FINISHED, else its `ablate.state` tag."""
    if run.info.status == "FINISHED":
        return JobState.DONE
    return JobState(run.data.tags.get("ablate.state", JobState.RUNNING.value))


@dataclass(frozen=True)
class JobRecord:
    """What the store knows of a job: its best run's state, duration and metrics."""

    state: JobState
    seconds: float | None  # finished runs only
    metrics: dict[str, float]


def default_tracking_uri(study: Study, workdir: Path) -> str:
    """The study's `tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db."""
    if study.tracking_uri:
        return study.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(workdir).absolute() / 'mlflow.db'}"


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset a run used: the raw dataset or the preprocessed cache (MLflow dataset input)."""

    name: str
    digest: str  # content hash (MLflow keeps 36 characters)
    path: Path
    context: str  # "training", "evaluation", ...
    profile: dict[str, Any]


# a saved runs-table view (MLflow's "share view": an experiment tag the UI reads by its key)
VIEW_KEY = "ablate-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def experiment_link(ui_base: str, experiment_id: str) -> str:
    """The experiment's page in `mlflow ui` opening on its runs, with the study's columns
    (`Tracker.set_runs_view`). MLflow 3.17's UI picks its landing view from a browser-wide
    "GenAI / Model training" switch (GenAI by default), not from the experiment kind tag, so
    the link names the view."""
    return (
        f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def runs_view(axes: list[str], metrics: list[str]) -> dict[str, Any]:
    """The runs table as a study wants it: axis values, fold and seed, headline metrics as
    columns; sorted by the first metric (best first), which lists parents and children flat,
    all visible without expanding."""
    columns = ["attributes.`Dataset`", "attributes.`Duration`"]
    columns += [f"params.`axis.{a}`" for a in axes] + ["params.`fold`", "params.`seed`"]
    columns += [f"metrics.`{m}`" for m in metrics]
    view: dict[str, Any] = {"selectedColumns": columns}
    if metrics:
        view.update(orderByKey=f"metrics.`{metrics[0]}`", orderByAsc=False)
    return view


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """How to browse a study's runs: the `mlflow ui` command for a sqlite store, and the link."""
    path = sqlite_file(tracking_uri)
    if path is None:
        return f"MLflow: experiment {experiment_id} on {tracking_uri}"
    serve = f"mlflow ui --backend-store-uri {tracking_uri} --port 5000 --workers 1"
    return f"MLflow: {serve}, then open {experiment_link('http://127.0.0.1:5000', experiment_id)}"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def store_missing(tracking_uri: str) -> str | None:
    """Why there is nothing to read (a sqlite store whose file does not exist), else None.
    Checked before any client touches it: MLflow creates a missing sqlite database on open."""
    path = sqlite_file(tracking_uri)
    if path is not None and not path.is_file():
        return f"no MLflow store at {path}"
    return None


def read_job_records(tracking_uri: str, study_name: str) -> dict[str, JobRecord] | None:
    """job_key -> its best run, read without creating anything; None when the store or the
    study's experiment does not exist."""
    if store_missing(tracking_uri):
        return None
    _quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return None
    return _job_records(client, experiment.experiment_id)


def _job_records(client: MlflowClient, experiment_id: str) -> dict[str, JobRecord]:
    records: dict[str, JobRecord] = {}
    for run in _search_all(client, experiment_id, "tags.`ablate.kind` != 'study'"):
        key = run.data.tags.get("ablate.job_key")
        state = _state(run)
        known = records.get(key)
        if key and state.better_than(known.state if known else None):
            seconds = (
                (run.info.end_time - run.info.start_time) / 1000
                if state is JobState.DONE and run.info.end_time
                else None
            )
            records[key] = JobRecord(state, seconds, dict(run.data.metrics))
    return records


def encode_value(value: Any) -> str:
    """Axis values as params: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def decode_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            location = artifact_root.absolute().as_uri()
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # stores made before
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


class _Serialized:
    """An MlflowClient whose calls take one lock: the driver's threads (the main loop and the
    live-curve forwarder) then write to the store one at a time, as sqlite wants."""

    def __init__(self, client: MlflowClient):
        self._client = client
        self.lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return attribute(*args, **kwargs)

        return call


class Tracker:
    """MLflow runs of one study: a parent run (`ablate.kind = study`) and a child run per job.
    Safe to use from several threads of one process (calls are serialized)."""

    def __init__(self, tracking_uri: str, study_name: str, artifact_root: Path):
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        _quiet_mlflow()
        self.client = _Serialized(MlflowClient(tracking_uri))
        self.experiment_id = _get_or_create_experiment(self.client, study_name, Path(artifact_root))
        self.parent_run_id: str | None = None

    def start_study(
        self, params: dict[str, Any], artifacts: dict[str, Path], axes: list[str] | None = None
    ) -> str:
        """Reuse (or create) the study's parent run; log params (values changed since an earlier
        run go to tags `latest.<name>`, as MLflow params are immutable) and artifacts (name ->
        file; the file is logged under that name)."""
        found = _search_all(self.client, self.experiment_id, "tags.`ablate.kind` = 'study'")
        if found:
            run = found[0]
            self.parent_run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.parent_run_id, status="RUNNING")
            existing = run.data.params
        else:
            tags = {"ablate.study": self.study_name, "ablate.kind": "study"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study_name)
            self.parent_run_id = run.info.run_id
            existing = {}
        encoded = {k: encode_value(v)[:PARAM_VALUE_LIMIT] for k, v in params.items()}
        new = [Param(k, v) for k, v in encoded.items() if k not in existing]
        changed = [
            RunTag(f"latest.{k}", v)
            for k, v in encoded.items()
            if k in existing and existing[k] != v
        ]
        if axes is not None:
            changed.append(RunTag("ablate.axes", json.dumps(list(axes))))
        self.client.log_batch(self.parent_run_id, params=new, tags=changed)
        for name, path in artifacts.items():
            self._log_named_file(self.parent_run_id, name, Path(path))
        return self.parent_run_id

    def _ensure_parent(self) -> str:
        if self.parent_run_id is None:
            found = _search_all(self.client, self.experiment_id, "tags.`ablate.kind` = 'study'")
            self.parent_run_id = found[0].info.run_id if found else self.start_study({}, {})
        return self.parent_run_id

    def set_runs_view(self, axes: list[str], metrics: list[str]) -> None:
        """Save the study's runs-table view (`runs_view`) where `experiment_link` opens it."""
        view = json.dumps(runs_view(axes, metrics))
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, view)

    def log_study_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file (e.g. the report) to the study's parent run, creating it if needed."""
        self.client.log_artifact(self._ensure_parent(), str(path), artifact_path)

    def end_study(self, ok: bool = True) -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, "FINISHED" if ok else "FAILED")

    def log_planned_jobs(self, jobs: list[dict[str, str]]) -> None:
        """Record every planned job ({"job_key", "name", "kind"}) so `fetch_results` can list the
        ones that never finished, including those never started."""
        self._log_json(self._parent(), "jobs.json", jobs)

    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("Tracker.start_study must be called before logging jobs")
        return self.parent_run_id

    def _runs_of(self, job_key: str) -> list:
        return _search_all(self.client, self.experiment_id, f"tags.`ablate.job_key` = '{job_key}'")

    def finished(self, job_key: str) -> bool:
        return any(r.info.status == "FINISHED" for r in self._runs_of(job_key))

    def start_job(
        self,
        job_key: str,
        name: str,
        kind: str,
        params: dict[str, Any],
        tags: dict[str, str],
        variant: dict[str, Any] | None = None,
    ) -> str:
        """Open a child run. `variant` (axis -> value) becomes params and tags `axis.<name>` and
        the tag `ablate.variant`; pass `fold` and `seed` in `params`. An earlier unfinished run
        of the same job is marked FAILED with `ablate.state = superseded`."""
        for run in self._runs_of(job_key):
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "ablate.state", JobState.SUPERSEDED.value)
                self.client.set_terminated(run.info.run_id, "FAILED")
        if variant is None:  # the runner passes axis values as params `axis.<name>`
            variant = {k[len("axis.") :]: v for k, v in params.items() if k.startswith("axis.")}
        axis_values = {f"axis.{a}": encode_value(v) for a, v in variant.items()}
        all_tags = {
            "mlflow.parentRunId": self._parent(),
            "ablate.study": self.study_name,
            "ablate.kind": kind,
            "ablate.job_key": job_key,
            "ablate.variant": variant_label(variant),
            "ablate.state": JobState.RUNNING.value,
            **axis_values,
            **tags,
        }
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        run_params = {**axis_values, **{k: encode_value(v) for k, v in params.items()}}
        self.client.log_batch(
            run.info.run_id, params=[Param(k, v[:PARAM_VALUE_LIMIT]) for k, v in run_params.items()]
        )
        return run.info.run_id

    def start_train_job(self, job: TrainJob, params: dict[str, Any] | None = None) -> str:
        """`start_job` for a TrainJob: variant, fold and seed from the job."""
        return self.start_job(
            job.key,
            job.name,
            "train",
            {"fold": job.fold, "seed": job.seed, **(params or {})},
            {},
            variant=job.variant,
        )

    def start_eval_job(self, job: EvalJob, params: dict[str, Any] | None = None) -> str:
        """`start_job` for an EvalJob; tags `ablate.train_key` so costs join their training."""
        return self.start_job(
            job.key,
            job.name,
            "eval",
            {"fold": job.fold, "seed": job.seed, **(params or {})},
            {"ablate.train_key": job.train_key},
            variant=job.variant,
        )

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(epoch)) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def log_datasets(self, run_id: str, datasets: list[DatasetRecord]) -> None:
        """MLflow dataset inputs of a run (the runs table's Datasets column)."""
        self.client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    MlflowDataset(
                        d.name[:500],
                        d.digest[:36],
                        "local",
                        json.dumps({"uri": str(d.path)}),
                        profile=json.dumps(d.profile),
                    ),
                    [InputTag("mlflow.data.context", d.context)],
                )
                for d in datasets
            ],
        )

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(
            run_id,
            params=[Param(k, encode_value(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()],
        )

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self.log_epoch(run_id, 0, metrics)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_table(self, run_id: str, df: pd.DataFrame, name: str) -> None:
        """A DataFrame as the CSV artifact `name` (".csv" appended when missing)."""
        name = name if name.endswith(".csv") else f"{name}.csv"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            df.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path))

    def _log_json(self, run_id: str, name: str, data: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(data, indent=1))
            self.client.log_artifact(run_id, str(path))

    def _log_named_file(self, run_id: str, name: str, path: Path) -> None:
        if path.name == name:
            self.client.log_artifact(run_id, str(path))
            return
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(path, Path(tmp) / name)
            self.client.log_artifact(run_id, str(Path(tmp) / name))

    def end_job(self, run_id: str, ok: bool, error: str | None = None) -> None:
        state = JobState.DONE if ok else JobState.FAILED
        self.client.set_tag(run_id, "ablate.state", state.value)
        if error:
            self.client.set_tag(run_id, "ablate.error", error[:TAG_VALUE_LIMIT])
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def job_records(self) -> dict[str, JobRecord]:
        """job_key -> its best run (done > running > failed > superseded)."""
        return _job_records(self.client, self.experiment_id)

    def job_states(self) -> dict[str, JobState]:
        """job_key -> best state over its runs (done > running > failed > superseded)."""
        return {key: record.state for key, record in self.job_records().items()}

    def done_keys(self) -> set[str]:
        """The keys of the jobs with a FINISHED run: a rerun skips them."""
        return {key for key, state in self.job_states().items() if state is JobState.DONE}


# ---------------------------------------------------------------- reading results back


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
        state = _state(run)
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
    _quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise ConfigError(
            f"{tracking_uri}: no MLflow experiment {study_name!r}; run the study "
            "first or point --tracking-uri at its store"
        )
    runs = _search_all(client, experiment.experiment_id, "")
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
    cost_df = pd.DataFrame(
        cost,
        columns=[
            *ids,
            "train_seconds",
            "seconds_per_epoch",
            "infer_seconds_per_case",
            "peak_train_memory_mb",
            "peak_infer_memory_mb",
            "parameters",
            "flops",
        ],
    )
    curves_df = pd.DataFrame(
        curves, columns=["variant", "fold", "seed", "epoch", "metric", "value"]
    )
    test_ids = ["variant", *axes, "model", "fold", "seed"]
    test_df = pd.concat(test, ignore_index=True) if test else pd.DataFrame()
    test_df = test_df.reindex(columns=[*test_ids, "case", "target", "metric", "value"])
    test_cost_df = pd.DataFrame(test_cost, columns=[*test_ids, *EVAL_COST])
    return Results(tidy_df, cost_df, curves_df, axes, missing, test_df, test_cost_df)


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
