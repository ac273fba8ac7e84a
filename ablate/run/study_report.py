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
    from ablate.run.results import fetch_results
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
    path = build_report(results, meta, report_dir_of(study))
    tracker = tracker or Tracker(uri, study.name, workdir / "mlartifacts")
    tracker.log_study_artifact(path)
    return path


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
