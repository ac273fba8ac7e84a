"""A tiny real study through every stage: synthetic data, plan, preprocess, train, infer,
evaluate, a held-out test set with the fold ensemble, MLflow, report; then a re-run that must skip
every finished job."""

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
  synthetic: {cases: 8, seed: 3, fov_mm: [60, 70, 70]}
  test: {holdout: 2}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16}
train: {epochs: 2, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {window_batch: 4, ensemble_folds: true}
evaluation: {nsd_tolerance_mm: 2.0}
axes:
  train.deep_supervision: [nnunet, none]
  infer.tta: [1, 2]
folds: {k: 2}
workdir: work
report_dir: report
external: {oracle: oracle}
ensembles: {ds_both: [{train.deep_supervision: nnunet}, {train.deep_supervision: none}]}
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    # an "external" variant: predictions made elsewhere, here the reference labels themselves
    reference = make_synthetic_dataset(root / "reference", cases=8, seed=3, fov_mm=(60, 70, 70))
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
    # x 2 TTA counts, + the external variant's folds, + the ensemble's folds
    assert kinds.count("eval") == 2 * 2 * 2 + 2 + 2
    assert kinds.count("test") == 2 * 2 + 1  # per cell: 2 fold models + ensemble; the external
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
            elif "ablate.ensemble" in run.data.tags:
                assert run.data.tags["ablate.variant"] == "ds_both"
            else:
                assert run.data.params["axis.infer.tta"] in {"1", "2"}
        if "ablate.external" in run.data.tags and run.data.tags.get("ablate.kind") == "test":
            assert run.data.metrics["dsc_kidney"] == 1.0  # the oracle scores the test cases too


@pytest.mark.slow
def test_report_is_self_contained(tiny_study: Path) -> None:
    html = (tiny_study / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html
    assert "kidney" in html and "tumor" in html and "oracle" in html
    assert "ds_both" in html.split("<h2>Held-out test set</h2>")[0]  # the CV ensemble's rows
    assert "<h2>Held-out test set</h2>" in html and "2 labelled cases drawn with seed" in html
    held_out = html.split("<h2>Held-out test set</h2>")[1].split("</section>")[0]
    assert "oracle" in held_out  # the external folder, compared on the test cases
    assert 'src="http' not in html and 'href="http' not in html


@pytest.mark.slow
def test_held_out_cases_stay_out_of_planning_and_the_ensemble_averages_fold_probabilities(
    tiny_study: Path,
) -> None:
    import json

    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from ablate.checkpoint import load_model
    from ablate.config import InferConfig
    from ablate.imageio import read_image
    from ablate.infer import export_labels, export_probabilities, model_logits
    from ablate.preprocess import preprocess_images

    work = tiny_study / "work"
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id],
        "tags.`ablate.kind` = 'test'",
        max_results=100,
    )
    runs = [r for r in runs if "ablate.external" not in r.data.tags]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    run = runs[0]
    metrics = run.data.metrics
    assert 0 <= metrics["ensemble_dsc_kidney"] <= 1 and 0 <= metrics["dsc_kidney"] <= 1
    assert metrics["dsc_kidney"] == pytest.approx(
        (metrics["fold0_dsc_kidney"] + metrics["fold1_dsc_kidney"]) / 2
    )
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "per_case.csv", str(tiny_study)))
    assert set(table["model"]) == {"fold 0", "fold 1", "ensemble"}
    test_cases = sorted(set(table["case"]))
    assert len(test_cases) == 2
    splits = json.loads(next((work / "preprocessed").glob("*/splits.json")).read_text())
    cross_validated = {c for fold in splits for part in fold.values() for c in part}
    assert len(cross_validated) == 6 and cross_validated.isdisjoint(test_cases)

    keys = run.data.tags["ablate.train_keys"].split(",")
    assert len(keys) == 2 and run.data.params["fold"] == "-1"
    cpu = torch.device("cpu")
    loaded = [load_model(work / "jobs" / k / "checkpoint_final.pt", cpu) for k in keys]
    plan = loaded[0][2]
    cfg = InferConfig(tta=int(run.data.params["axis.infer.tta"]), window_batch=4)
    data_dir = next((work / "data").glob("synthetic-*"))
    job_dir = work / "jobs" / run.data.tags["ablate.job_key"]
    for case in test_cases:
        image, geometry = read_image(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
        data, props = preprocess_images([image], geometry, plan)
        # one fold model at a time, exported as nnU-Net does (logits resampled, then argmax); the
        # ensemble averages the exported probabilities (nnUNetv2_ensemble, the default)
        logits = [model_logits(model, data, plan, cfg, cpu) for model, _, _ in loaded]
        ensemble = np.mean([export_probabilities(x, props, plan) for x in logits], axis=0)
        for name, expected in [
            ("fold_0", export_labels(logits[0], props, plan)),
            ("fold_1", export_labels(logits[1], props, plan)),
            ("ensemble", np.argmax(ensemble, axis=0)),
        ]:
            written, written_geometry = read_image(job_dir / name / f"{case}.nii.gz")
            np.testing.assert_array_equal(written, expected)
            np.testing.assert_allclose(written_geometry.spacing_mm, geometry.spacing_mm, rtol=1e-6)


@pytest.mark.slow
def test_a_cross_validation_ensemble_averages_its_members_fold_models(tiny_study: Path) -> None:
    import json

    import mlflow
    import numpy as np
    import torch

    from ablate.checkpoint import load_model
    from ablate.config import InferConfig
    from ablate.imageio import read_image
    from ablate.infer import export_probabilities, model_logits
    from ablate.preprocess import CaseProperties
    from ablate.storage import open_array

    work = tiny_study / "work"
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    run = client.search_runs(
        [experiment], "tags.`ablate.variant` = 'ds_both' and params.fold = '0'"
    )[0]
    members = [
        client.search_runs([experiment], f"tags.`ablate.job_key` = '{key}'")[0]
        for key in run.data.tags["ablate.ensemble"].split(",")
    ]
    assert [m.data.params["axis.train.deep_supervision"] for m in members] == ["nnunet", "none"]
    assert all(m.data.params["axis.infer.tta"] == "1" for m in members)  # the baseline's
    assert all(m.data.params["fold"] == "0" for m in members)
    cpu = torch.device("cpu")
    models = [
        load_model(work / "jobs" / m.data.tags["ablate.train_key"] / "checkpoint_final.pt", cpu)
        for m in members
    ]
    plan = models[0][2]
    cache = next((work / "preprocessed").glob("*/splits.json")).parent
    for case in json.loads((cache / "splits.json").read_text())[0]["val"]:
        data = np.asarray(open_array(cache, f"{case}_data")[...])
        props = CaseProperties.from_json(json.loads((cache / f"{case}.json").read_text()))
        mean = np.mean(
            [
                export_probabilities(
                    model_logits(m, data, plan, InferConfig(tta=1), cpu), props, plan
                )
                for m, _, _ in models
            ],
            axis=0,
        )  # one member at a time
        expected = np.argmax(mean, axis=0)
        written = read_image(
            work / "jobs" / run.data.tags["ablate.job_key"] / "predictions" / f"{case}.nii.gz"
        )[0]
        np.testing.assert_array_equal(written, expected)


@pytest.mark.slow
def test_rerun_skips_finished_jobs(tiny_study: Path, capsys) -> None:
    assert main(["run", str(tiny_study / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        "trainings: 0 run, 4 already done; evaluations: 0 run, 8 already done; "
        "ensembles: 0 run, 2 already done; test-set evaluations: 0 run, 4 already done"
    ) in out


@pytest.mark.slow
def test_status_lists_every_job_done(tiny_study: Path, capsys) -> None:
    assert main(["status", str(tiny_study / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    # the grid's 4 trainings, 8 evaluations and 4 test jobs, 2 ensemble folds, and the external
    # folder's 2 folds and test set: every job `ablate run` ran
    assert "21 done, 0 running, 0 failed, 0 pending" in out
    assert "done     eval  oracle · external · fold 1" in out
    assert "best so far:" in out and "nothing left to run" in out
