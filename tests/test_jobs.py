"""The job functions (ablate.run.jobs): what each returns as its Outcome, the postprocessing
groups and steps, the cost bookkeeping and the per-case scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablate.config import InferConfig
from ablate.errors import DataError
from ablate.expand import ExternalJob, expand
from ablate.imageio import Geometry, read_image, write_image
from ablate.run.cost import add_costs
from ablate.run.held_out_jobs import steps_for_test_set
from ablate.run.jobs import execute_external, postprocess_groups
from ablate.run.outcome import HeldOutModel, Outcome
from ablate.run.scoring import CaseScorer, all_labels
from ablate.study import Study

GEOMETRY = Geometry((3.0, 1.0, 0.8), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
TARGETS = {"organ": (1,)}
TOLERANCE = {"organ": 1.0}


def _reference() -> np.ndarray:
    ref = np.zeros((4, 6, 5), dtype=np.uint8)  # (Z, Y, X), non-cubic and anisotropic
    ref[1:3, 2:4, 1:3] = 1  # 8 voxels
    return ref


def _half(ref: np.ndarray) -> np.ndarray:
    pred = np.zeros_like(ref)
    pred[1:2, 2:4, 1:3] = 1  # 4 of the reference's 8 voxels: DSC = 2 * 4 / (8 + 4) = 2/3
    return pred


def test_costs_add_seconds_and_keep_peak_memory() -> None:
    total = add_costs({"seconds": 1.0, "cuda_mb": 5.0}, {"seconds": 2.5, "cuda_mb": 3.0})
    assert total == {"seconds": 3.5, "cuda_mb": 5.0}


def test_largest_component_is_one_step_on_every_targets_labels() -> None:
    assert all_labels({"kidney": (1, 2), "tumor": (2,), "cyst": (3,)}) == ((1, 2, 3),)


def test_test_set_postprocessing_steps(tmp_path: Path) -> None:
    assert steps_for_test_set(InferConfig(), TARGETS, tmp_path / "none.json") == ()
    largest = InferConfig(postprocess="largest_component")
    assert steps_for_test_set(largest, TARGETS, tmp_path / "none.json") == ((1,),)
    auto = InferConfig(postprocess="auto")
    with pytest.raises(DataError, match=r"none.json: no postprocessing decision; the cross-"):
        steps_for_test_set(auto, TARGETS, tmp_path / "none.json")


def test_auto_postprocessing_groups_the_folds_of_a_variant_and_seed(tmp_path: Path) -> None:
    study = Study.model_validate(
        {
            "name": "groups",
            "dataset": {"synthetic": {"cases": 4}},
            "folds": {"k": 2},
            "axes": {"infer.postprocess": ["none", "auto"], "infer.tta": [1, 2]},
        }
    )
    _, eval_jobs = expand(study, "data")
    groups = postprocess_groups(eval_jobs, tmp_path)
    auto = [j for j in eval_jobs if j.infer.postprocess == "auto"]
    assert set(groups) == {j.key for j in auto}  # "none" jobs decide nothing
    for tta in (1, 2):
        members = [groups[j.key] for j in auto if j.infer.tta == tta]
        assert len(members) == 2 and members[0] == members[1]  # both folds, one group
        assert [fold for fold, _ in members[0].folds] == [0, 1]
    assert len({g.raw_dir for g in groups.values()}) == 2  # one raw folder per tta


def test_scorer_writes_postprocessed_predictions_and_scores_them(tmp_path: Path) -> None:
    ref = _reference()
    write_image(ref, GEOMETRY, tmp_path / "ref.nii.gz")
    pred = _half(ref)
    pred[3, 5, 4] = 1  # a stray voxel that largest_component removes
    scorer = CaseScorer(((1,),), TARGETS, TOLERANCE, tmp_path / "out", ".nii.gz", tmp_path / "raw")
    (tmp_path / "out").mkdir()
    (tmp_path / "raw").mkdir()
    scorer.add("a", pred, GEOMETRY, {"seconds": 2.0, "cuda_mb": 7.0}, tmp_path / "ref.nii.gz")
    scorer.add("b", ref, GEOMETRY, {"seconds": 4.0, "cuda_mb": 3.0}, tmp_path / "ref.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "raw" / "a.nii.gz")[0], pred)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "a.nii.gz")[0], _half(ref))
    dsc = {r["case"]: r["value"] for r in scorer.rows if r["metric"] == "dsc"}
    assert dsc == pytest.approx({"a": 2 / 3, "b": 1.0})
    metrics = scorer.metrics()
    assert metrics["dsc_organ"] == pytest.approx(5 / 6)
    assert metrics["infer_seconds_per_case"] == 3.0 and metrics["infer_cuda_mb"] == 7.0


@pytest.mark.parametrize("fold", [0, -1])  # -1: the held-out test cases
def test_external_job_outcome(tmp_path: Path, fold: int) -> None:
    ref = _reference()
    labels = {}
    for case_id, pred in (("a", ref), ("b", _half(ref))):
        labels[case_id] = tmp_path / "ref" / f"{case_id}.nii.gz"
        labels[case_id].parent.mkdir(exist_ok=True)
        write_image(ref, GEOMETRY, labels[case_id])
        (tmp_path / "pred").mkdir(exist_ok=True)
        write_image(pred, GEOMETRY, tmp_path / "pred" / f"{case_id}.nii.gz")
    job = ExternalJob("k", "theirs · external", "theirs", tmp_path / "pred", fold, ("a", "b"))
    outcome = execute_external(job, labels, ".nii.gz", TARGETS, TOLERANCE)
    assert isinstance(outcome, Outcome)
    assert outcome.metrics["dsc_organ"] == pytest.approx(5 / 6)
    assert {r["case"] for r in outcome.rows} == {"a", "b"}
    if fold == -1:  # a test run's rows say which model predicted: the external folder
        assert {(r["model"], r["fold"]) for r in outcome.rows} == {("external", -1)}
    else:
        assert "model" not in outcome.rows[0]
    assert outcome.history == [] and outcome.artifacts == []


def test_held_out_models_are_named_by_their_fold() -> None:
    fold, ensemble = HeldOutModel(3), HeldOutModel(None)
    assert (fold.name, fold.folder, fold.prefix, fold.tracked_fold) == (
        "fold 3",
        "fold_3",
        "fold3_",
        3,
    )
    assert (ensemble.name, ensemble.folder, ensemble.prefix, ensemble.tracked_fold) == (
        "ensemble",
        "ensemble",
        "ensemble_",
        -1,
    )


STUDY = {
    "name": "jobs",
    "dataset": {
        "synthetic": {"cases": 6, "seed": 1, "fov_mm": [50, 60, 60]},
        "test": {"holdout": 2},
    },
    "plan": {
        "gpu_memory_gb": 0.02,
        "base_features": 4,
        "max_features": 16,
        "intensity_samples": 100000,
    },
    "train": {"epochs": 2, "iterations_per_epoch": 2, "val_iterations": 1, "data_workers": 0},
    "infer": {"tta": 1, "ensemble_folds": True},
    "folds": {"k": 2},
}


@pytest.mark.slow
def test_training_evaluation_and_test_jobs_return_their_outcomes(tmp_path: Path) -> None:
    from ablate.checkpoint import FINAL
    from ablate.expand import expand_study
    from ablate.run import study_data
    from ablate.run.held_out_jobs import execute_test
    from ablate.run.jobs import execute_evaluation, execute_training

    study = Study.model_validate({**STUDY, "workdir": str(tmp_path / "work")})
    dataset, test_cases = study_data.load_dataset(study)
    data = study_data.prepare_data(study, dataset)
    jobs = expand_study(study, data.key, data.folds, dataset.file_ending, test_cases)
    targets = {name: tuple(labels) for name, labels in dataset.targets().items()}
    tolerance = dict.fromkeys(targets, 2.0)
    out = tmp_path / "jobs"
    for job in jobs.train:
        trained = execute_training(job, data, out / job.key, log_checkpoint=True)
        assert len(trained.history) == 2 and "train_loss" in trained.history[0]  # per epoch
        assert trained.metrics["train_seconds"] > 0 and trained.params["parameters"] > 0
        assert trained.artifacts == [(out / job.key / FINAL, "checkpoints")]

    job = jobs.eval[1]
    evaluated = execute_evaluation(
        job, out / job.train_key / FINAL, data, dataset, targets, tolerance, out / job.key
    )
    assert {r["case"] for r in evaluated.rows} == set(data.folds[1].val)
    assert set(evaluated.rows[0]) == {"case", "target", "metric", "value"}

    (test_job,) = jobs.test
    tested = execute_test(
        test_job,
        [out / k / FINAL for k in test_job.train_keys],
        test_cases,
        targets,
        tolerance,
        out / test_job.key,
        out / "no-decision.json",
        dataset.file_ending,
    )
    models = {(r["model"], r["fold"]) for r in tested.rows}
    assert models == {("fold 0", 0), ("fold 1", 1), ("ensemble", -1)}
    for target in targets:
        folds = [tested.metrics[f"fold{f}_dsc_{target}"] for f in (0, 1)]
        assert tested.metrics[f"dsc_{target}"] == pytest.approx(np.nanmean(folds), nan_ok=True)
        assert f"ensemble_dsc_{target}" in tested.metrics
    folders = sorted(p.name for p in (out / test_job.key).iterdir())
    assert folders == ["ensemble", "fold_0", "fold_1"]
    assert tested.params == {"models": 2}
