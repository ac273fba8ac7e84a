"""The study's MLflow store, read and written: where it is, what it holds for each job, and the
names and encodings the writer (`tracking`) and the reader (`results`) share.

Nothing here creates a store: read-only commands (`status`, `report`) check `store_missing` first.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ablate.run.outcome import JobState
from ablate.study import Study

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


def quiet_mlflow() -> None:
    """MLflow's and alembic's info lines (store migrations, ...) are noise in a study's log."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its artifact download bars fill a log file (`make demo > log`) with carriage returns
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_state(run) -> JobState:
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
    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return None
    return job_records_of(client, experiment.experiment_id)


def job_records_of(client: MlflowClient, experiment_id: str) -> dict[str, JobRecord]:
    records: dict[str, JobRecord] = {}
    for run in search_all(client, experiment_id, "tags.`ablate.kind` != 'study'"):
        key = run.data.tags.get("ablate.job_key")
        state = run_state(run)
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


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
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
