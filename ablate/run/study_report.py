"""The study's report: results read back from MLflow, the study's settings and environment, the
HTML written to the report folder and logged on the study's run."""

from __future__ import annotations

from pathlib import Path

from ablate.run.study_data import report_dir_of, workdir_of
from ablate.study import Study


def build_study_report(study: Study, config_yaml: str = "", tracker=None) -> Path:
    """Collect the study's results from MLflow and write the HTML report."""
    import json

    from ablate.report import build_report
    from ablate.run.results import eval_predictions, fetch_results
    from ablate.run.store import default_tracking_uri
    from ablate.run.tracking import Tracker
    from ablate.study import baseline_variant, variant_label

    workdir = workdir_of(study)
    uri = default_tracking_uri(study, workdir)
    results = fetch_results(uri, study.name)
    meta = {
        "name": study.name,
        "config_yaml": config_yaml,
        "tracking_uri": uri,
        "baseline": variant_label(baseline_variant(study)) if study.axes else None,
        "environment": environment(),
        "missing": list(results.missing),
        "nsd_tolerance_mm": study.evaluation.nsd_tolerance_mm,
        "test_set": test_set_text(study),
        "analysis": study.analysis.model_dump(mode="json"),
    }
    plan_path = next(iter(sorted((workdir / "preprocessed").glob("*/plan.json"))), None)
    if plan_path is not None:
        meta["plan"] = json.loads(plan_path.read_text())
    predictions = eval_predictions(uri, study.name, workdir / "jobs")
    path = build_report(results, meta, report_dir_of(study), cases=_case_files(study, predictions))
    tracker = tracker or Tracker(uri, study.name, workdir / "mlartifacts")
    tracker.log_study_artifact(path)
    _log_pictures(tracker, path.parent / "cases", results.tidy, predictions)
    return path


def _case_files(study: Study, predictions: list):
    """Where the case pictures' images, references and predictions are; None (no pictures,
    the page says so) when the dataset cannot be read here."""
    from ablate.errors import AblateError
    from ablate.report.pictures import case_files
    from ablate.run.study_data import load_dataset

    try:
        dataset, _ = load_dataset(study)
    except (AblateError, OSError):
        return None
    folders: dict[str, list[Path]] = {}
    for p in predictions:
        folders.setdefault(p.variant, []).append(p.folder)
    targets = study.evaluation.targets or dataset.targets()
    return case_files(dataset.cases, targets, folders, dataset.file_ending)


def _log_pictures(tracker, folder: Path, tidy, predictions: list) -> None:
    """Each case picture on the study's run (report/cases/) and on the evaluation runs whose
    models predicted that case (its fold), under pictures/."""
    from ablate.report.pictures import anchor

    if not folder.is_dir() or tidy.empty:
        return
    cases = tidy[["target", "case", "fold"]].drop_duplicates(["target", "case"])
    for target, case, fold in cases.itertuples(index=False):
        picture = folder / f"{anchor(str(target), str(case))}.png"
        if not picture.is_file():
            continue
        tracker.log_study_artifact(picture, "report/cases")
        for p in predictions:
            if p.fold == fold:
                tracker.log_artifact(p.run_id, picture, "pictures")


def test_set_text(study: Study) -> str | None:
    """How the held-out test set was made and scored, for the report."""
    test = study.dataset.test
    if test is None:
        return None
    made = (
        f"{test.holdout} labelled cases drawn with seed {test.seed} before planning and "
        "cross-validation"
        if test.holdout
        else f"the cases of {test.path}"
    )
    ensemble = ""
    if study.infer.ensemble_folds:
        average = study.infer.ensemble_average
        like = (
            "as Isensee 2019 on KiTS19"
            if average == "probabilities"
            else "as nnU-Net v2's predictor"
        )
        ensemble = f" and by the ensemble of all fold models, averaging their {average} ({like})"
    return (
        f"Test set: {made}. No model trained on them and the plan never saw them. Each "
        f"case was predicted from its raw image by every fold model{ensemble}, with each "
        "variant's inference and postprocessing settings ('auto' postprocessing applies the "
        "decision made on that variant's cross-validation)."
    )


def environment() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for pkg in (
        "ablate",
        "torch",
        "numpy",
        "scipy",
        "SimpleITK",
        "mlflow",
        "surface-distance",
        "pandas",
        "seaborn",
    ):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = "not installed"
    return env
