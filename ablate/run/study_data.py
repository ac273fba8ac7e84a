"""A study's data as the driver and the read-only commands find it: the work dir and report
folder, the dataset and its held-out test cases, the shared preprocessed cache, and both as
MLflow dataset inputs."""

from __future__ import annotations

import time
from pathlib import Path

from ablate.data.dataset import Case, Dataset
from ablate.study import Study


def workdir_of(study: Study) -> Path:
    return study.work_dir()


def report_dir_of(study: Study) -> Path:
    return study.report_path()


def _read_dataset(study: Study) -> Dataset:
    """The study's dataset; a synthetic spec is generated once into <workdir>/data."""
    spec = study.dataset
    if spec.synthetic is not None:
        from ablate.data.dataset import read_nnunet_raw
        from ablate.data.synthetic import GENERATOR_VERSION, make_synthetic_dataset

        syn = spec.synthetic
        fov = "x".join(f"{v:g}" for v in syn.fov_mm)
        # the generator's version in the name: a work dir made by an older generator is not reused
        name = f"synthetic-v{GENERATOR_VERSION}-s{syn.seed}-n{syn.cases}-fov{fov}"
        out = workdir_of(study) / "data" / name
        if not (out / "dataset.json").is_file():
            tmp = out.with_name(out.name + f".tmp{time.time_ns()}")
            make_synthetic_dataset(tmp, cases=syn.cases, seed=syn.seed, fov_mm=tuple(syn.fov_mm))
            tmp.rename(out)
        return read_nnunet_raw(out)
    from ablate.data.formats import read_dataset

    return read_dataset(spec.path, None if spec.format == "auto" else spec.format, spec.labels)


def declared_regions(study: Study):
    """The regions of the study's dataset when it is a region dataset (its trainings' default,
    ablate.regions.dataset_regions), for commands that expand the grid without reading the data
    (`validate`, `--dry-run`, `status` before a run): read from dataset.json (or the KiTS21/23
    layout) alone, so no case is listed or converted. None when the dataset cannot be found
    here; synthetic datasets and a study's own `dataset.labels` are label datasets."""
    from ablate.data.dataset import label_spec, load_json
    from ablate.data.formats import detect_format
    from ablate.errors import AblateError
    from ablate.regions import DatasetRegions, dataset_regions

    spec = study.dataset
    if spec.synthetic is not None or spec.labels is not None or spec.path is None:
        return None
    try:
        fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
        if fmt in ("kits21", "kits23"):
            from ablate.data.kits import KITS2X_ORDER, KITS2X_REGIONS

            return DatasetRegions(dict(KITS2X_REGIONS), KITS2X_ORDER)
        if fmt != "nnunet":
            return None
        meta_path = Path(spec.path) / "dataset.json"
        labels = label_spec(load_json(meta_path), meta_path)
    except (AblateError, OSError):
        return None
    return dataset_regions(
        Dataset(
            root=Path(spec.path),
            name="",
            channels=(),
            labels=labels.labels,
            cases=(),
            regions=labels.targets,
            ignore_label=labels.ignore_label,
            region_based=labels.region_based,
            regions_class_order=labels.regions_class_order,
        )
    )


def load_dataset(study: Study, check: bool = False) -> tuple[Dataset, tuple[Case, ...]]:
    """The cases for planning and cross-validation, and the held-out test cases (none without
    `dataset.test`); test cases never reach the fingerprint, the plan or the folds. `check`
    stops on a broken dataset or test set before anything is cached (warnings pass)."""
    from ablate.data.testset import check_test_dataset, hold_out

    dataset = _read_dataset(study)
    if check:
        check_dataset(dataset)
    test = study.dataset.test
    if test is None:
        return dataset, ()
    if test.holdout is not None:
        return hold_out(dataset, test.holdout, test.seed, study.folds.k)
    from ablate.data.formats import read_dataset

    test_dataset = read_dataset(
        test.path, None if test.format == "auto" else test.format, study.dataset.labels
    )
    if check:
        check_dataset(test_dataset)
    return dataset, check_test_dataset(dataset, test_dataset)


def check_dataset(dataset: Dataset) -> None:
    from ablate.data.verify import raise_on_errors, verify

    raise_on_errors(verify(dataset))


def prepare_data(study: Study, dataset: Dataset, plan_cfg=None):
    """The shared preprocessed data for one plan configuration (cached; built once)."""
    from ablate.preprocess import prepare

    plan_cfg = plan_cfg or study.plan
    return prepare(
        dataset,
        plan_cfg,
        workdir_of(study) / "preprocessed",
        folds=study.folds.k,
        folds_seed=study.folds.seed,
        workers=study.workers,
        intensity_samples=plan_cfg.intensity_samples,
        splits_file=study.folds.splits_file,
    )


def cache_record(data, context: str):
    """The preprocessed cache as an MLflow dataset input."""
    from ablate.run.tracking import DatasetRecord

    plan = data.plan
    profile = {
        "cases": len(data.case_ids),
        "spacing_mm": [round(s, 3) for s in plan.target_spacing_mm],
        "patch_size": list(plan.patch_size),
        "folds": len(data.folds),
    }
    return DatasetRecord(f"preprocessed {data.key[:12]}", data.key, data.root, context, profile)


def study_datasets(dataset: Dataset, test_cases: tuple, base) -> list:
    """The parent run's inputs: the dataset as read and the shared preprocessed cache."""
    from ablate.run.tracking import DatasetRecord

    raw = DatasetRecord(
        dataset.name,
        dataset.content_hash(),
        Path(dataset.root),
        "source",
        {"cases": len(dataset.cases), "held_out_test_cases": len(test_cases)},
    )
    return [raw, cache_record(base, "training")]
