"""nnU-Net's configurations as a study, end to end on the CPU: 2d vs 3d_fullres vs 3d_lowres vs
the cascade on generated data (tiny plans, two epochs), killed with SIGKILL between the cascade's
two stages and run again. The cascade's full-resolution trainings start only after every
3d_lowres fold has finished; the rerun does not retrain the 3d_lowres stage nor redo the
predictions it had written; the report names nnU-Net's choice."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from test_resume import start_run

STUDY = """
name: configurations
dataset:
  synthetic: {cases: 4, seed: 0, fov_mm: [60, 70, 70]}
plan:
  gpu_memory_gb: 0.005
  base_features: 4
  max_features: 16
  max_features_2d: 16
  intensity_samples: 10000
train: {epochs: 2, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {tta: 1}
folds: {k: 2}
axes:
  plan.configuration: [3d_cascade_fullres, 2d, 3d_fullres, 3d_lowres]
ensembles:
  2d + 3d_fullres: [{plan.configuration: 2d}, {plan.configuration: 3d_fullres}]
workdir: work
report_dir: report
"""


def _kill_between_stages(study: Path, timeout_s: float = 300) -> None:
    """SIGKILL as soon as the cascade's first training has begun writing the 3d_lowres
    predictions (the folder appears only once both 3d_lowres folds are recorded done)."""
    proc = start_run(study)
    jobs = study.parent / "work" / "jobs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if jobs.is_dir() and list(jobs.glob("previous-stage-*")):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return
        if proc.poll() is not None:
            pytest.fail(f"the study ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the cascade never started")


def _train_runs(root: Path) -> pd.DataFrame:
    """The study's training runs as mlflow.search_runs lays them out, read with a client of its
    own: mlflow.set_tracking_uri would set $MLFLOW_TRACKING_URI for every later test."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("configurations")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablate.kind` = 'train'")
    return pd.DataFrame(
        [
            {
                "status": run.info.status,
                "start_time": run.info.start_time,  # ms since the epoch
                "end_time": run.info.end_time,
                **{f"params.{k}": v for k, v in run.data.params.items()},
                **{f"tags.{k}": v for k, v in run.data.tags.items()},
            }
            for run in runs
        ]
    )


@pytest.mark.slow
def test_configuration_study_orders_the_cascade_and_resumes_between_its_stages(tmp_path):
    from ablate.run.results import fetch_results

    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    _kill_between_stages(study)
    jobs = tmp_path / "work" / "jobs"
    runs = _train_runs(tmp_path)
    config = "params.axis.plan.configuration"
    lowres = runs[(runs[config] == "3d_lowres") & (runs["status"] == "FINISHED")]
    assert len(lowres) == 2, runs[[config, "status"]]
    finals = {
        k: (jobs / k / "checkpoint_final.pt").stat().st_mtime_ns
        for k in lowres["tags.ablate.job_key"]
    }
    written = {p: p.stat().st_mtime_ns for p in jobs.glob("previous-stage-*/*.b2nd")}

    proc = start_run(study)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    # the 3d_lowres stage was not retrained, its predictions not redone
    assert {k: (jobs / k / "checkpoint_final.pt").stat().st_mtime_ns for k in finals} == finals
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    runs = _train_runs(tmp_path)
    done = runs[runs["status"] == "FINISHED"]
    assert done.groupby(config).size().to_dict() == {
        "2d": 2,
        "3d_fullres": 2,
        "3d_lowres": 2,
        "3d_cascade_fullres": 2,
    }
    assert (done[config] == "3d_lowres").sum() == 2  # one finished run per lowres fold, ever
    # every cascade training started after the last 3d_lowres training ended
    lowres_end = done[done[config] == "3d_lowres"]["end_time"].max()
    assert (done[done[config] == "3d_cascade_fullres"]["start_time"] > lowres_end).all()
    predictions = list(jobs.glob("previous-stage-*/*.b2nd"))
    assert len(predictions) == 4  # every case once, by the 3d_lowres fold that held it out

    results = fetch_results(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "configurations")
    assert set(results.tidy["variant"]) >= {"configuration=2d", "2d + 3d_fullres"}
    page = (tmp_path / "report" / "index.html").read_text()
    assert "find_best_configuration" in page
