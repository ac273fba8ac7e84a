"""The runner records a failing job with its error, goes on with the rest, and `ablate run`
exits non-zero at the end."""

from __future__ import annotations

import concurrent.futures as cf
import textwrap
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.run import driver, phases, study_data

STUDY = """
name: failing
dataset:
  synthetic: {cases: 4, seed: 1, fov_mm: [50, 60, 60]}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16, intensity_samples: 100000}
train: {epochs: 1, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {tta: 1}
folds: {k: 2}
workdir: work
report_dir: report
log_checkpoints: true
"""


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    import mlflow

    real = driver.execute_training

    def flaky(job, data, job_dir, log_checkpoint, previous_stage=None):
        if job.fold == 1:
            raise RuntimeError("simulated out-of-memory")
        return real(job, data, job_dir, log_checkpoint, previous_stage)

    monkeypatch.setattr(driver, "execute_training", flaky)
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(STUDY))
    assert main(["run", str(study)]) == 1
    captured = capsys.readouterr()
    assert "2 job(s) failed" in captured.err  # the training of fold 1 and its evaluation

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    by_kind_fold = {(r.data.tags.get("ablate.kind"), r.data.params.get("fold")): r for r in runs}
    failed = by_kind_fold[("train", "1")]
    assert failed.info.status == "FAILED"
    assert "simulated out-of-memory" in failed.data.tags["ablate.error"]
    trained = by_kind_fold[("train", "0")]
    assert trained.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(trained.info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/checkpoint_final.pt"]
    assert int(trained.data.params["parameters"]) > 0  # also a metric, for the report
    assert int(trained.data.params["flops_per_patch"]) > 0
    assert by_kind_fold[("eval", "0")].info.status == "FINISHED"
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.slow
def test_auto_postprocessing_is_decided_once_on_all_folds(tmp_path: Path) -> None:
    import json

    import mlflow

    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(STUDY)
        .replace("name: failing", "name: auto-pp")
        .replace("infer: {tta: 1}", "infer: {tta: 1, postprocess: auto}")
        .replace("cases: 4,", "cases: 6,")
        .replace("fov_mm: [50, 60, 60]}", "fov_mm: [50, 60, 60]}\n  test: {holdout: 2}")
    )
    assert main(["run", str(study)]) == 0
    raw_dirs = list((tmp_path / "work" / "jobs").glob("raw-*"))
    assert len(raw_dirs) == 1  # both folds' evaluations share one set of raw predictions
    assert len(list(raw_dirs[0].glob("*.nii.gz"))) == 4  # every case, predicted once

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("auto-pp").experiment_id])
        if r.data.tags.get("ablate.kind") == "eval"
    ]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    decisions = {r.data.params["postprocessing"] for r in runs}
    assert len(decisions) == 1  # the same decision for every fold
    local = client.download_artifacts(runs[0].info.run_id, "postprocessing.json", str(tmp_path))
    decision = json.loads(Path(local).read_text())
    assert [t["name"] for t in decision["trials"]][:1] == ["foreground_union"]
    assert json.loads(decisions.pop()) == decision["steps"]

    # the held-out test cases get the decision made on cross-validation
    from ablate.imageio import read_image
    from ablate.postprocess import keep_largest_component

    tests = [
        r
        for r in client.search_runs([runs[0].info.experiment_id])
        if r.data.tags.get("ablate.kind") == "test"
    ]
    assert len(tests) == 1 and tests[0].info.status == "FINISHED"
    job_dir = tmp_path / "work" / "jobs" / tests[0].data.tags["ablate.job_key"]
    for fold in ("fold_0", "fold_1"):
        raw = sorted((job_dir / fold / "raw").glob("*.nii.gz"))
        assert len(raw) == (2 if decision["steps"] else 0)  # kept only when postprocessed
        assert len(list((job_dir / fold).glob("*.nii.gz"))) == 2
        for path in raw:
            expected = read_image(path)[0]
            for values in decision["steps"]:
                expected = keep_largest_component(expected, values)
            written = read_image(job_dir / fold / path.name)[0]
            assert (written == expected).all()


@pytest.mark.slow
def test_region_based_study_ensembles_sigmoid_probabilities_on_the_test_set(tmp_path: Path) -> None:
    import mlflow
    import numpy as np
    import torch

    from ablate.checkpoint import load_model
    from ablate.config import InferConfig
    from ablate.imageio import read_image
    from ablate.infer import export_probabilities, model_logits, probabilities_to_labels
    from ablate.preprocess import preprocess_images

    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(STUDY)
        .replace("name: failing", "name: regions")
        .replace("infer: {tta: 1}", "infer: {tta: 1, ensemble_folds: true}")
        .replace(
            "data_workers: 0}",
            "data_workers: 0, loss: dice_bce,\n        regions: {kidney: [1, 2], tumor: [2]}}",
        )
        .replace("cases: 4,", "cases: 6,")
        .replace("fov_mm: [50, 60, 60]}", "fov_mm: [50, 60, 60]}\n  test: {holdout: 2}")
    )
    assert main(["run", str(study)]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("regions").experiment_id], "tags.`ablate.kind` = 'test'"
    )[0]
    assert run.info.status == "FINISHED" and "ensemble_dsc_kidney" in run.data.metrics
    work = tmp_path / "work"
    cpu = torch.device("cpu")
    keys = run.data.tags["ablate.train_keys"].split(",")
    loaded = [load_model(work / "jobs" / k / "checkpoint_final.pt", cpu) for k in keys]
    plan = loaded[0][2]
    regions = {"kidney": (1, 2), "tumor": (2,)}
    data_dir = next((work / "data").glob("synthetic-*"))
    ensemble_dir = work / "jobs" / run.data.tags["ablate.job_key"] / "ensemble"
    cases = sorted(p.name.removesuffix(".nii.gz") for p in ensemble_dir.glob("*.nii.gz"))
    assert len(cases) == 2
    for case in cases:
        image, geometry = read_image(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
        data, props = preprocess_images([image], geometry, plan)
        mean = np.mean(
            [
                export_probabilities(
                    model_logits(m, data, plan, InferConfig(tta=1), cpu), props, plan, regions
                )
                for m, _, _ in loaded
            ],
            axis=0,
        )  # (2 regions, Z, Y, X) sigmoid probabilities in the original geometry
        expected = probabilities_to_labels(mean, regions)
        written = read_image(ensemble_dir / f"{case}.nii.gz")[0]
        np.testing.assert_array_equal(written, expected)


def test_status_estimates_the_time_left_from_finished_jobs(tmp_path: Path) -> None:
    from ablate.expand import expand
    from ablate.preprocess import cache_key
    from ablate.run.status import study_status
    from ablate.run.tracking import Tracker
    from ablate.study_load import load_study

    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(STUDY).replace("name: failing", "name: status"))
    study = load_study(path)
    dataset, _ = study_data.load_dataset(study)
    train_jobs, _ = expand(study, cache_key(dataset, study.plan, study.plan.intensity_samples))
    tracker = Tracker(
        f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "status", tmp_path / "work" / "mlartifacts"
    )
    tracker.start_study({}, {})
    run_id = tracker.start_train_job(train_jobs[0])
    tracker.end_job(run_id, ok=True)
    start = tracker.client.get_run(run_id).info.start_time
    tracker.client.set_terminated(run_id, "FINISHED", end_time=start + 90_000)  # took 90 s
    text = study_status(study)
    assert f"done     train {train_jobs[0].name}" in text
    assert "[1/4] 1 done, 0 running, 0 failed, 3 pending" in text
    # the other training at 90 s; the evaluations have no duration yet
    assert (
        "time left: 3 left, about 1.5 min + the evaluations (not timed yet) (1 at a time)" in text
    )


class _Recording:
    """An executor that runs nothing: it records each job and fails it."""

    capacity = 1

    def __init__(self) -> None:
        self.jobs: list = []

    def submit(self, fn, *args) -> cf.Future:
        self.jobs.append(args[0])
        future: cf.Future = cf.Future()
        future.set_exception(RuntimeError("not run in this test"))
        return future

    def as_completed(self, futures):
        yield from futures

    def shutdown(self, cancel: bool = False) -> None:
        pass


def test_status_lists_exactly_the_jobs_run_runs(tmp_path: Path) -> None:
    """Trainings, evaluations, an ensemble, held-out test jobs and an external folder's jobs."""
    from ablate.run.progress import PlainProgress
    from ablate.run.status import study_status
    from ablate.study_load import load_study

    (tmp_path / "pred").mkdir()
    path = tmp_path / "study.yaml"
    path.write_text(
        textwrap.dedent(STUDY)
        .replace("name: failing", "name: same-jobs")
        .replace("cases: 4,", "cases: 6,")
        .replace("fov_mm: [50, 60, 60]}", "fov_mm: [50, 60, 60]}\n  test: {holdout: 2}")
        + "axes: {infer.tta: [1, 2]}\n"
        + "ensembles: {both: [{infer.tta: 1}, {infer.tta: 2}]}\n"
        + "external: {theirs: pred}\n"
    )
    study = load_study(path)
    dataset, _ = study_data.load_dataset(study)
    for case in dataset.cases:  # the external folder predicts every cross-validation case
        (tmp_path / "pred" / f"{case.case_id}.nii.gz").write_bytes(b"")
    executor = _Recording()
    driver.run_study(study, progress=PlainProgress(), make_report=False, executor=executor)
    ran = sorted((phases.job_tracking(j)[0], j.name) for j in executor.jobs)

    lines = study_status(study).splitlines()
    listed = sorted((line[9:14].strip(), line[15:]) for line in lines if line.startswith("failed"))
    assert listed == ran
    assert len(lines) == len(ran) + 2  # plus the counts and the time left
    names = [name for _, name in ran]
    assert sum("external" in n for n in names) == 2 and sum("ensemble" in n for n in names) == 2
    assert sum(kind == "test" for kind, _ in ran) == 2  # one per cell
