"""A study killed with SIGKILL mid-training and started again finishes every job exactly once and
gives the same per-case results as an uninterrupted run (CPU, same seeds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

STUDY = """
name: resume
dataset:
  synthetic: {cases: 4, seed: 5, fov_mm: [50, 60, 60]}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16, intensity_samples: 100000}
train: {epochs: 4, iterations_per_epoch: 3, val_iterations: 1, data_workers: 0}
infer: {tta: 2}
folds: {k: 2}
workdir: work
report_dir: report
"""


def start_run(study: Path) -> subprocess.Popen:
    """`ablate run STUDY` in its own process, one thread, no tracking URI from the caller."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "run", str(study)],
        cwd=study.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(study: Path) -> str:
    proc = start_run(study)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return out


def _kill_mid_training(study: Path, sig: int = signal.SIGKILL, timeout_s: float = 600) -> str:
    proc = start_run(study)
    jobs = study.parent / "work" / "jobs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = list(jobs.glob("*/checkpoint_latest.pt")) if jobs.is_dir() else []
        if latest and not list(jobs.glob("*/checkpoint_final.pt")):
            proc.send_signal(sig)
            proc.wait(timeout=120)
            return f"exit {proc.returncode}\n{proc.stdout.read()}"
        if proc.poll() is not None:
            pytest.fail(f"the study ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def _per_case(root: Path):
    from ablate.run.results import fetch_results

    tidy = fetch_results(f"sqlite:///{root / 'work' / 'mlflow.db'}", "resume").tidy
    return tidy.sort_values(["fold", "case", "target", "metric"]).reset_index(drop=True)


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    import mlflow

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for root in (whole, killed):
        root.mkdir()
        (root / "study.yaml").write_text(textwrap.dedent(STUDY))
    _run(whole / "study.yaml")
    _kill_mid_training(killed / "study.yaml")
    out = _run(killed / "study.yaml")
    assert "trainings: 2 run, 0 already done" in out or "trainings: 1 run, 1 already done" in out

    client = mlflow.MlflowClient(f"sqlite:///{killed / 'work' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    finished: dict[str, int] = {}
    for run in runs:
        if run.data.tags.get("ablate.kind") in {"train", "eval"}:
            if run.info.status == "FINISHED":
                key = run.data.tags["ablate.job_key"]
                finished[key] = finished.get(key, 0) + 1
            else:
                assert run.info.status == "FAILED"
                assert run.data.tags["ablate.state"] == "superseded"
    assert len(finished) == 4 and set(finished.values()) == {1}  # 2 trainings + 2 evaluations
    assert "taking over the lock of an ended run" in out  # the SIGKILLed run left its lock
    for run in runs:  # the resumed training's curves: one value per epoch, none repeated
        if run.data.tags.get("ablate.kind") == "train" and run.info.status == "FINISHED":
            for metric in ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr"):
                steps = [p.step for p in client.get_metric_history(run.info.run_id, metric)]
                assert sorted(steps) == [0, 1, 2, 3], (metric, steps)

    a, b = _per_case(whole), _per_case(killed)
    assert len(a) > 0
    assert a[["fold", "case", "target", "metric"]].equals(b[["fold", "case", "target", "metric"]])
    assert (a.value.fillna(-1) == b.value.fillna(-1)).all()


@pytest.mark.slow
def test_sigterm_closes_the_running_job_as_failed_and_rerun_finishes(tmp_path: Path) -> None:
    import mlflow

    (tmp_path / "study.yaml").write_text(textwrap.dedent(STUDY))
    out = _kill_mid_training(tmp_path / "study.yaml", signal.SIGTERM)
    assert out.startswith("exit 130") and "run the same command again to resume" in out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume").experiment_id
    interrupted = [
        r
        for r in client.search_runs([experiment])
        if r.data.tags.get("ablate.kind") == "train" and r.info.status != "FINISHED"
    ]
    assert len(interrupted) == 1 and interrupted[0].info.status == "FAILED"
    assert "interrupted" in interrupted[0].data.tags["ablate.error"]
    _run(tmp_path / "study.yaml")
    states = [
        r.info.status
        for r in client.search_runs([experiment])
        if r.data.tags.get("ablate.kind") == "train"
    ]
    assert states.count("FINISHED") == 2
