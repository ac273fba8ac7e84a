"""One study, one runner: the lock refuses a second `ablate run` (two real processes), a SIGKILLed
run's lock is taken over, the work dir resolves against the study file, and read-only commands
create no store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.run.lock import LOCK_NAME, StudyBusy, StudyLock, read_holder
from ablate.study_load import load_study

STUDY = """
name: locked
dataset:
  synthetic: {cases: 4, seed: 1, fov_mm: [50, 60, 60]}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16, intensity_samples: 100000}
train: {epochs: 2, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {tta: 1}
folds: {k: 2}
report_dir: report
"""

HOLD = """
import sys, time
from ablate.run.lock import StudyLock
lock = StudyLock(sys.argv[1]).acquire()
print("took over", lock.took_over.pid if lock.took_over else None, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "study" / "study.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(STUDY))
    return path


def _holder(workdir: Path, seconds: float) -> tuple[subprocess.Popen, str]:
    """A real second process holding the study's lock, and whose stale lock it took over."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()  # printed once it holds the lock
    assert line.startswith("took over"), line
    return proc, line.split()[-1]


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken_over(tmp_path):
    study = _study(tmp_path)
    workdir = study.parent / "runs" / "locked"
    first, _ = _holder(workdir, 60)
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "ablate.cli", "run", str(study)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2
        line = refused.stderr.strip()
        assert "\n" not in line  # one line
        assert f"already running: pid {first.pid} on host {socket.gethostname()}" in line
        assert f"kill {first.pid}" in line and "ablate status" in line
        assert not (workdir / "mlflow.db").exists()  # refused before touching anything
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert read_holder(workdir / LOCK_NAME).pid == first.pid  # the killed run's lock file stays
    second, took_over = _holder(workdir, 0)
    assert took_over == str(first.pid) and second.wait() == 0
    with StudyLock(workdir) as lock:
        assert lock.took_over.pid == second.pid  # it exited without release(): stale again


def test_takeover_names_the_dead_holder(tmp_path):
    first, _ = _holder(tmp_path, 60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with StudyLock(tmp_path) as lock:
        assert lock.took_over is not None and lock.took_over.pid == first.pid
        with pytest.raises(StudyBusy, match=f"pid {os.getpid()}"):
            StudyLock(tmp_path).acquire()  # a second holder in this process is refused too


def test_workdir_and_report_dir_resolve_against_the_study_file(tmp_path, monkeypatch):
    study = _study(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_study(study).work_dir() == study.parent / "runs" / "locked"
    assert load_study(study).report_path() == study.parent / "report"
    study.write_text(textwrap.dedent(STUDY) + "workdir: ../work\n")
    assert load_study(study).work_dir() == tmp_path / "work"
    study.write_text(textwrap.dedent(STUDY).replace("report_dir: report\n", ""))
    assert load_study(study).report_path() == study.parent / "reports" / "locked"


def test_read_only_commands_create_no_store_and_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = _study(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    assert "2 trainings and 2 evaluations pending" in out
    assert "nothing has run yet" in out and "nothing was created" in out
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and "nothing was created" in err
    assert main(["validate", str(study)]) == 0
    capsys.readouterr()
    after = sorted(p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert after == before


@pytest.mark.slow
def test_two_concurrent_runs_train_each_job_once(tmp_path):
    """Two `ablate run` of one study started together: one runs, the other refuses; every job
    has one finished run and the study's run ends FINISHED."""
    import mlflow

    study = _study(tmp_path)
    cmd = [sys.executable, "-m", "ablate.cli", "run", str(study)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    time.sleep(0.5)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out, err = first.communicate(timeout=900)
    assert sorted([first.returncode, second.returncode]) == [0, 2], (err, second.stderr)
    assert "already running" in (second.stderr if second.returncode else err)
    db = study.parent / "runs" / "locked" / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("locked").experiment_id])
    keys = [r.data.tags["ablate.job_key"] for r in runs if r.data.tags["ablate.kind"] != "study"]
    assert len(keys) == len(set(keys)) == 4  # 2 trainings, 2 evaluations, once each
    parent = [r for r in runs if r.data.tags["ablate.kind"] == "study"]
    assert [r.info.status for r in parent] == ["FINISHED"]
