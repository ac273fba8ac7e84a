"""The report as a study builds it from its MLflow store: a study with an inference axis, whose
training runs are labelled by their training variant ("ds=none") and whose evaluation runs by
the full variant ("ds=none · tta=2"), gets training curves drawn and its prediction folders
found for the case pictures."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from ablate.report.analysis import analyse
from ablate.report.figures import make_figures
from ablate.report.headline import headline
from ablate.report.labels import variant_labels
from ablate.run.results import eval_predictions, fetch_results
from ablate.run.tracking import Tracker

AXES = {"train.deep_supervision": ["nnunet", "none"], "infer.tta": [1, 2]}
CASES = [f"case_{i}" for i in range(9)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 folds x 2 trained variants, each evaluated with TTA 1 and 2, as the driver logs them."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "curves", root / "artifacts")
    tracker.start_study({"study": "curves"}, {}, axes=list(AXES))
    rng = np.random.default_rng(0)
    for ds, fold in itertools.product(AXES["train.deep_supervision"], range(3)):
        train_key = f"train-{ds}-{fold}"
        run = tracker.start_job(
            train_key,
            f"{ds} fold {fold}",
            "train",
            {"fold": fold, "seed": 0},
            {},
            variant={"train.deep_supervision": ds},
        )
        for epoch in range(3):
            tracker.log_epoch(run, epoch, {"train_loss": -0.1 * epoch, "pseudo_dice": 0.3 * epoch})
        tracker.end_job(run, ok=True)
        for tta in AXES["infer.tta"]:
            key = f"eval-{ds}-{tta}-{fold}"
            run = tracker.start_job(
                key,
                f"{ds} tta {tta} fold {fold}",
                "eval",
                {"fold": fold, "seed": 0},
                {"ablate.train_key": train_key},
                variant={"train.deep_supervision": ds, "infer.tta": tta},
            )
            cases = CASES[fold::3]
            rows = [
                {"case": c, "target": "kidney", "metric": m, "value": rng.uniform(0.8, 0.9)}
                for c in cases
                for m in ("dsc", "nsd")
            ]
            tracker.log_table(run, pd.DataFrame(rows), "per_case")
            tracker.log_metrics(run, {"infer_seconds_per_case": 1.0 + tta})
            tracker.end_job(run, ok=True)
            (root / "jobs" / key / "predictions").mkdir(parents=True)
    tracker.end_study(ok=True)
    return uri, root


def test_curves_of_training_runs_are_drawn_for_their_evaluated_variants(store):
    uri, _ = store
    results = fetch_results(uri, "curves")
    assert set(results.curves["variant"]) == {"ds=nnunet", "ds=none"}
    assert "ds=none · tta=2" in set(results.tidy["variant"])
    a = analyse(results, {"name": "curves", "baseline": "ds=nnunet · tta=1"}, n_boot=50)
    figs = make_figures(a, "GPU memory", variant_labels(a.order), headline(a))
    (curves,) = [f for c, f in figs["cost"] if c.startswith("Training curves")]
    for ax in [ax for ax in curves.axes if ax.axison]:
        drawn = {line.get_label() for line in ax.lines if len(line.get_xdata()) == 3}
        assert drawn == {"ds=nnunet", "ds=none"}, ax.get_title()


def test_eval_predictions_name_each_runs_folder(store):
    uri, root = store
    found = eval_predictions(uri, "curves", root / "jobs")
    assert len(found) == 12
    one = next(p for p in found if p.variant == "ds=none · tta=2" and p.fold == 1)
    assert one.folder == root / "jobs" / "eval-none-2-1" / "predictions" and one.run_id
    assert eval_predictions(f"sqlite:///{root / 'absent.db'}", "curves", root) == []


def test_case_pictures_are_logged_on_the_study_and_on_the_runs_that_predicted_the_case(
    store, tmp_path
):
    from mlflow.tracking import MlflowClient

    from ablate.report.pictures import anchor
    from ablate.run.study_report import _log_pictures

    uri, root = store
    results = fetch_results(uri, "curves")
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / f"{anchor('kidney', 'case_4')}.png").write_bytes(b"\x89PNG picture")
    tracker = Tracker(uri, "curves", root / "artifacts")
    predictions = eval_predictions(uri, "curves", root / "jobs")
    _log_pictures(tracker, folder, results.tidy, predictions)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("curves").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`ablate.kind` = 'study'")
    study = [a.path for a in client.list_artifacts(parent.info.run_id, "report/cases")]
    assert study == ["report/cases/case-kidney-case_4.png"]
    for p in predictions:  # case_4 lies in fold 1: its four evaluation runs have it
        logged = [a.path for a in client.list_artifacts(p.run_id, "pictures")]
        assert logged == (["pictures/case-kidney-case_4.png"] if p.fold == 1 else [])
