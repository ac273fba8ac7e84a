"""MLflow tracking: one parent run per study, one child run per train/eval job, tags for resume.

The only writer of the store. A `Tracker` is used from one process (the driver), so the SQLite
store has a single writer; results are read back by `results`, never from local side files.
"""

from __future__ import annotations

import json
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

from ablate.expand import EvalJob, TrainJob
from ablate.run.outcome import JobState
from ablate.run.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARAM_VALUE_LIMIT,
    TAG_VALUE_LIMIT,
    JobRecord,
    encode_value,
    job_records_of,
    quiet_mlflow,
    search_all,
    sqlite_file,
)
from ablate.study import variant_label


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
        quiet_mlflow()
        self.client = _Serialized(MlflowClient(tracking_uri))
        self.experiment_id = _get_or_create_experiment(self.client, study_name, Path(artifact_root))
        self.parent_run_id: str | None = None

    def start_study(
        self, params: dict[str, Any], artifacts: dict[str, Path], axes: list[str] | None = None
    ) -> str:
        """Reuse (or create) the study's parent run; log params (values changed since an earlier
        run go to tags `latest.<name>`, as MLflow params are immutable) and artifacts (name ->
        file; the file is logged under that name)."""
        found = search_all(self.client, self.experiment_id, "tags.`ablate.kind` = 'study'")
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
            found = search_all(self.client, self.experiment_id, "tags.`ablate.kind` = 'study'")
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
        return search_all(self.client, self.experiment_id, f"tags.`ablate.job_key` = '{job_key}'")

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
        return job_records_of(self.client, self.experiment_id)

    def job_states(self) -> dict[str, JobState]:
        """job_key -> best state over its runs (done > running > failed > superseded)."""
        return {key: record.state for key, record in self.job_records().items()}

    def done_keys(self) -> set[str]:
        """The keys of the jobs with a FINISHED run: a rerun skips them."""
        return {key for key, state in self.job_states().items() if state is JobState.DONE}
