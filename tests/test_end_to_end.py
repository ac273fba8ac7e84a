"""A tiny real study through every stage: synthetic data, plan, preprocess, train, infer,
evaluate, MLflow, report; then a re-run that must skip every finished job."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.data.synthetic import make_synthetic_dataset

TINY_STUDY = """
name: tiny
dataset:
  synthetic: {cases: 6, seed: 3, fov_mm: [60, 70, 70]}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16}
train: {epochs: 2, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {window_batch: 4}
evaluation: {nsd_tolerance_mm: 2.0}
axes:
  train.deep_supervision: [nnunet, none]
  infer.tta: [1, 2]
folds: {k: 2}
workdir: work
report_dir: report
external: {oracle: oracle}
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    # an "external" variant: predictions made elsewhere, here the reference labels themselves
    reference = make_synthetic_dataset(root / "reference", cases=6, seed=3, fov_mm=(60, 70, 70))
    (root / "oracle").mkdir()
    for case in reference.cases:
        shutil.copy(case.label, root / "oracle" / case.label.name)
    path = root / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_STUDY))
    assert main(["run", str(path)]) == 0
    return root


@pytest.mark.slow
def test_run_logs_one_finished_child_run_per_job(tiny_study: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_study / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    kinds = [r.data.tags.get("ablate.kind") for r in runs]
    assert kinds.count("train") == 2 * 2  # 2 training variants x 2 folds
    assert kinds.count("eval") == 2 * 2 * 2 + 2  # x 2 TTA counts, + the external variant's folds
    parent = [r for r in runs if r.data.tags.get("ablate.kind") == "study"]
    assert len(parent) == 1
    for run in runs:
        if run.data.tags.get("ablate.kind") == "eval":
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
            assert 0.0 <= run.data.metrics["dsc_kidney"] <= 1.0
            if "ablate.external" in run.data.tags:
                assert run.data.tags["ablate.variant"] == "oracle"
                assert run.data.metrics["dsc_kidney"] == 1.0
            else:
                assert run.data.params["axis.infer.tta"] in {"1", "2"}


@pytest.mark.slow
def test_report_is_self_contained(tiny_study: Path) -> None:
    html = (tiny_study / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html
    assert "kidney" in html and "tumor" in html and "oracle" in html
    assert "src=\"http" not in html and "href=\"http" not in html


@pytest.mark.slow
def test_rerun_skips_finished_jobs(tiny_study: Path, capsys) -> None:
    assert main(["run", str(tiny_study / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "trainings: 0 run, 4 already done; evaluations: 0 run, 8 already done" in out


@pytest.mark.slow
def test_status_lists_every_job_done(tiny_study: Path, capsys) -> None:
    assert main(["status", str(tiny_study / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "12 done, 0 running, 0 failed, 0 pending" in out  # the grid's jobs
    assert "best so far:" in out
