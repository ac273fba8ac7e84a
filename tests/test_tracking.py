"""Tracker against a SQLite store in tmp_path, and (slow) against a real `mlflow server`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from ablate.expand import expand
from ablate.run.outcome import JobState
from ablate.run.results import fetch_results
from ablate.run.store import default_tracking_uri
from ablate.run.tracking import Tracker
from ablate.study import Study


def _study(**extra) -> Study:
    return Study.model_validate(
        {
            "name": "tiny",
            "dataset": {"synthetic": {"cases": 4}},
            "axes": {"train.loss": ["dice_ce", "dice_topk"], "infer.tta": [8, 2]},
            "folds": {"k": 2},
            **extra,
        }
    )


def _tracker(tmp_path: Path, uri: str | None = None) -> Tracker:
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    return Tracker(uri, "tiny", tmp_path / "artifacts")


def _per_case(job_fold: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case": ["a", "b"],
            "target": ["organ", "organ"],
            "metric": ["dsc", "dsc"],
            "value": [0.5 + job_fold, 0.75],
        }
    )


def _run_one_study(tracker: Tracker, tmp_path: Path) -> tuple[list, list]:
    train_jobs, eval_jobs = expand(_study(), "data123")
    config = tmp_path / "study.yaml"
    config.write_text("name: tiny\n")
    tracker.start_study(
        {"data_key": "data123", "epochs": 2},
        {"resolved.yaml": config},
        axes=["train.loss", "infer.tta"],
    )
    planned = [
        {"job_key": j.key, "name": j.name, "kind": kind}
        for kind, jobs in (("train", train_jobs), ("eval", eval_jobs))
        for j in jobs
    ]
    tracker.log_planned_jobs(planned)
    job = train_jobs[0]
    run_id = tracker.start_train_job(job)
    for epoch in range(3):
        tracker.log_epoch(run_id, epoch, {"train_loss": 1.0 - 0.25 * epoch, "lr": 0.01})
    tracker.log_metrics(run_id, {"train_seconds": 12.0, "parameters": 1000})
    tracker.end_job(run_id, ok=True)
    evaluation = next(
        e for e in eval_jobs if e.train_key == job.key and e.variant["infer.tta"] == 2
    )
    eval_id = tracker.start_eval_job(evaluation)
    tracker.log_table(eval_id, _per_case(job.fold), "per_case")
    tracker.log_metrics(eval_id, {"infer_seconds_per_case": 3.0})
    tracker.end_job(eval_id, ok=True)
    return train_jobs, eval_jobs


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(_study(), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default_tracking_uri(_study(), tmp_path) == "http://127.0.0.1:1"
    assert default_tracking_uri(_study(tracking_uri="sqlite:///x.db"), tmp_path) == "sqlite:///x.db"


def test_parent_child_finished_and_fetch_round_trip(tmp_path):
    tracker = _tracker(tmp_path)
    train_jobs, eval_jobs = _run_one_study(tracker, tmp_path)
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert parent.data.params["data_key"] == "data123"
    assert [a.path for a in tracker.client.list_artifacts(parent.info.run_id)] == [
        "jobs.json",
        "resolved.yaml",
    ]
    assert tracker.finished(train_jobs[0].key)
    assert not tracker.finished(train_jobs[1].key)
    child = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`ablate.job_key` = '{train_jobs[0].key}'"
    )[0]
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert child.data.params["axis.train.loss"] == "dice_ce"
    assert child.data.tags["axis.train.loss"] == "dice_ce"
    assert child.data.tags["ablate.variant"] == "dice_ce"

    # a second Tracker on the same store reuses the parent run and experiment
    again = _tracker(tmp_path)
    assert again.start_study({"data_key": "changed"}, {}) == tracker.parent_run_id
    assert again.client.get_run(again.parent_run_id).data.tags["latest.data_key"] == "changed"

    results = fetch_results(tracker.tracking_uri, "tiny")
    assert results.axes == ["train.loss", "infer.tta"]
    assert list(results.tidy.columns) == [
        "variant",
        "train.loss",
        "infer.tta",
        "fold",
        "seed",
        "case",
        "target",
        "metric",
        "value",
    ]
    assert results.tidy["value"].tolist() == [0.5, 0.75]
    assert set(results.tidy["variant"]) == {"dice_ce · tta=2"}
    assert results.tidy["infer.tta"].tolist() == [2, 2]  # decoded back to int
    cost = results.cost.iloc[0]
    assert (cost["train_seconds"], cost["infer_seconds_per_case"]) == (12.0, 3.0)
    losses = results.curves.query("metric == 'train_loss'").sort_values("epoch")
    assert losses["value"].tolist() == [1.0, 0.75, 0.5]
    assert len(results.missing) == len(train_jobs) + len(eval_jobs) - 2
    assert results.missing[0] == f"train {train_jobs[1].name}: not started"


def test_runs_of_jobs_the_study_no_longer_plans_stay_out_of_the_results(tmp_path):
    tracker = _tracker(tmp_path)
    train_jobs, eval_jobs = _run_one_study(tracker, tmp_path)
    assert len(fetch_results(tracker.tracking_uri, "tiny").tidy) == 2
    # the study is edited: its next run plans other jobs; the finished runs stay in MLflow
    tracker.log_planned_jobs(
        [{"job_key": j.key, "name": j.name, "kind": "train"} for j in train_jobs[1:]]
    )
    results = fetch_results(tracker.tracking_uri, "tiny")
    assert results.tidy.empty and results.cost.empty and results.curves.empty
    assert len(results.missing) == len(train_jobs) - 1
    assert tracker.finished(train_jobs[0].key)  # still there for a study that plans it again


def test_a_job_finished_twice_is_counted_once(tmp_path):
    """Two runs of one job both FINISHED (two runners before the lock): the latest one counts."""
    tracker = _tracker(tmp_path)
    _, eval_jobs = _run_one_study(tracker, tmp_path)
    evaluation = next(e for e in eval_jobs if e.variant["infer.tta"] == 2 and e.fold == 0)
    again = tracker.start_eval_job(evaluation)
    tracker.log_table(again, _per_case(7), "per_case")
    tracker.end_job(again, ok=True)
    results = fetch_results(tracker.tracking_uri, "tiny")
    assert results.tidy["value"].tolist() == [7.5, 0.75]  # 2 cases, not 4
    assert len(results.cost) == 1


@pytest.mark.parametrize("fold_column", [True, False])  # False: written before the column
def test_test_runs_fill_the_held_out_tables(tmp_path, fold_column):
    tracker = _tracker(tmp_path)
    tracker.start_study({}, {}, axes=["infer.tta"])
    run = tracker.start_job(
        "t1", "tta=2 · test", "test", {"axis.infer.tta": 2, "fold": -1, "seed": 0}, {}
    )
    rows = pd.DataFrame(
        {
            "model": ["fold 0", "fold 1", "ensemble"],
            "case": ["x"] * 3,
            "target": ["organ"] * 3,
            "metric": ["dsc"] * 3,
            "value": [0.5, 0.7, 0.8],
        }
    )
    if fold_column:  # the model's fold, as the test job writes it
        rows.insert(1, "fold", [0, 1, -1])
    tracker.log_table(run, rows, "per_case")
    tracker.log_metrics(
        run,
        {
            "infer_seconds_per_case": 2.0,
            "peak_infer_memory_mb": 10.0,
            "ensemble_infer_seconds_per_case": 3.5,
            "ensemble_peak_infer_memory_mb": 12.0,
        },
    )
    tracker.end_job(run, ok=True)
    results = fetch_results(tracker.tracking_uri, "tiny")
    assert results.tidy.empty  # test cases are not cross-validation results
    test = results.test.set_index("model")
    assert test["fold"].to_dict() == {"fold 0": 0, "fold 1": 1, "ensemble": -1}
    assert test.loc["ensemble", "value"] == 0.8 and (test["infer.tta"] == 2).all()
    cost = results.test_cost.set_index("model")
    assert cost.loc["single", "infer_seconds_per_case"] == 2.0
    assert cost.loc["ensemble", ["infer_seconds_per_case", "peak_infer_memory_mb"]].tolist() == [
        3.5,
        12.0,
    ]


def test_unfinished_run_is_superseded(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.start_study({}, {})
    # the runner's call style: axis values as params `axis.<name>`, no `variant`
    crashed = tracker.start_job("k1", "job one", "train", {"axis.infer.tta": 2, "fold": 0}, {})
    assert tracker.client.get_run(crashed).data.tags["ablate.variant"] == "tta=2"
    assert tracker.job_states() == {"k1": JobState.RUNNING}
    retry = tracker.start_job("k1", "job one", "train", {"fold": 0, "seed": 0}, {})
    old = tracker.client.get_run(crashed)
    assert (old.info.status, old.data.tags["ablate.state"]) == ("FAILED", "superseded")
    tracker.end_job(retry, ok=False, error="boom " * 2000)
    failed = tracker.client.get_run(retry)
    assert failed.data.tags["ablate.state"] == "failed"
    assert len(failed.data.tags["ablate.error"]) == 5000
    assert tracker.job_states() == {"k1": JobState.FAILED}
    assert not tracker.finished("k1")
    assert fetch_results(tracker.tracking_uri, "tiny").missing == ["train job one: failed"]
    tracker.log_study_artifact(tmp_path / "mlflow.db", "store")
    listed = tracker.client.list_artifacts(tracker.parent_run_id, "store")
    assert [a.path for a in listed] == ["store/mlflow.db"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_logging_to_a_real_mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.5)
        tracker = _tracker(tmp_path, uri)
        _run_one_study(tracker, tmp_path)
        results = fetch_results(uri, "tiny")
        assert results.tidy["value"].tolist() == [0.5, 0.75]
        assert (tmp_path / "artifacts").exists()  # the experiment's explicit artifact location
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_experiment_opens_on_runs_and_datasets_are_run_inputs(tmp_path):
    from ablate.run.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
    from ablate.run.tracking import DatasetRecord

    tracker = _tracker(tmp_path)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    parent = tracker.start_study({}, {})
    records = [
        DatasetRecord("kits19", "abc123", tmp_path / "data", "source", {"cases": 210}),
        DatasetRecord("preprocessed 0f0f", "0f0f" * 16, tmp_path / "pre", "training", {}),
    ]
    tracker.log_datasets(parent, records)
    tracker.log_datasets(parent, records)  # a rerun logs them again
    inputs = tracker.client.get_run(parent).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["kits19", "preprocessed 0f0f"]
    assert {i.tags[0].value for i in inputs} == {"source", "training"}
    assert json.loads(inputs[0].dataset.source)["uri"].startswith(str(tmp_path))

    from ablate.run.tracking import VIEW_TAG, experiment_link

    tracker.set_runs_view(["arch"], ["dsc_kidney"])
    view = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[VIEW_TAG])
    assert "params.`axis.arch`" in view["selectedColumns"]
    assert view["orderByKey"] == "metrics.`dsc_kidney`" and view["orderByAsc"] is False
    link = experiment_link("http://127.0.0.1:5000/", tracker.experiment_id)
    assert link.endswith("/runs?workflowType=machine_learning&viewStateShareKey=ablate-runs")
