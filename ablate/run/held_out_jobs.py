"""The held-out test set's jobs: every fold model of a variant on the test cases (and their
ensemble), and ensembles of grid cells on cross-validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.checkpoint import checkpoint_region_order, checkpoint_regions, load_model
from ablate.data.dataset import Case, Dataset
from ablate.expand import EnsembleJob, TestJob
from ablate.run.cost import add_costs, measured_job, timed
from ablate.run.outcome import HeldOutModel, Outcome
from ablate.run.scoring import CaseScorer, all_labels


def steps_for_test_set(infer, targets, decision_file: Path) -> tuple[tuple[int, ...], ...]:
    from ablate.errors import DataError
    from ablate.postprocess import PostprocessingDecision

    if infer.postprocess == "largest_component":
        return all_labels(targets)
    if infer.postprocess != "auto":
        return ()
    if not decision_file.is_file():
        raise DataError(
            f"{decision_file}: no postprocessing decision; the cross-validation "
            "evaluation of this variant failed or has not run; run the study again"
        )
    return PostprocessingDecision.from_json(json.loads(decision_file.read_text())).steps


@measured_job
def execute_test(
    job: TestJob,
    checkpoints: list[Path],
    cases: tuple[Case, ...],
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float],
    job_dir: Path,
    decision_file: Path,
    file_ending: str,
    ignore_label: int | None = None,
    previous_stage=None,
) -> Outcome:
    """Predict the held-out test cases from their raw images with every fold model and, with
    `infer.ensemble_folds`, their ensemble, in one pass (each case is preprocessed once and each
    model runs once); postprocess, write and score every model's prediction. `auto`
    postprocessing applies the decision of the variant's cross-validation (`decision_file`).

    Cost per case: a fold model's is preprocessing + its sliding window + export; the
    ensemble's is preprocessing + every model's sliding window + export. A cascade's
    full-resolution stage (`previous_stage`, ablate.cascade.PreviousStage) first predicts the
    case with every 3d_lowres fold model (part of its preprocessing cost), as nnU-Net does."""
    from ablate.device import select_device
    from ablate.imageio import read_image
    from ablate.infer import CaseEnsemble, model_logits
    from ablate.preprocess import preprocess_images

    steps = steps_for_test_set(job.infer, targets, decision_file)
    device = select_device(job.infer.device)
    models, plan = [], None
    for checkpoint in checkpoints:
        model, _, plan = load_model(checkpoint, device)
        models.append(model)
    regions, order = checkpoint_regions(checkpoints[0]), checkpoint_region_order(checkpoints[0])
    single = [HeldOutModel(fold) for fold in job.folds]
    ensemble_model = HeldOutModel(None)
    scored = single + ([ensemble_model] if job.infer.ensemble_folds else [])
    scorers = {
        model: CaseScorer(
            steps,
            targets,
            tolerance_mm,
            job_dir / model.folder,
            file_ending,
            job_dir / model.folder / "raw",
            ignore_label,
        )
        for model in scored
    }

    if previous_stage is not None:
        prepare = _cascade_preparation(previous_stage, plan, device)
    else:

        def prepare(images, geometry):
            return preprocess_images(images, geometry, plan)

    for case in cases:
        loaded = [read_image(path) for path in case.images]
        geometry = loaded[0][1]
        (data, props), prep = timed(device, prepare, [a for a, _ in loaded], geometry)
        average = job.infer.ensemble_average if job.infer.ensemble_folds else None
        ensemble = CaseEnsemble(props, plan, regions, average, order)
        windows = []
        for test_model, model in zip(single, models, strict=True):
            logits, window = timed(
                device, model_logits, model, np.array(data), plan, job.infer, device
            )
            labels, out = timed(device, ensemble.add, logits)
            windows.append(window)
            scorers[test_model].add(
                case.case_id, labels, geometry, add_costs(prep, window, out), case.label
            )
        if job.infer.ensemble_folds:
            labels, out = timed(device, ensemble.labels)
            scorers[ensemble_model].add(
                case.case_id, labels, geometry, add_costs(prep, *windows, out), case.label
            )
    rows, metrics = [], {}
    for test_model, scorer in scorers.items():
        tag = {"model": test_model.name, "fold": test_model.tracked_fold}
        rows += [{**tag, **row} for row in scorer.rows]
        metrics.update({test_model.prefix + k: v for k, v in scorer.metrics().items()})
    fold_metrics = {m.fold: scorers[m].metrics() for m in single}
    for key in fold_metrics[single[0].fold]:  # unprefixed: the mean over the fold models
        metrics[key] = float(np.nanmean([fold[key] for fold in fold_metrics.values()]))
    return Outcome(metrics, rows=rows, params={"models": len(models)})


@measured_job
def _cascade_preparation(previous_stage, plan, device):
    """Preprocessing of a test case for the cascade: the 3d_lowres folds' prediction of it, then
    the image preprocessed with it as one-hot channels (ablate.cascade)."""
    from ablate.cascade import cascade_input_for_image, predict_previous_stage_for_image

    lowres = [load_model(c, device) for _, c in sorted(previous_stage.checkpoints.items())]
    first = next(iter(previous_stage.checkpoints.values()))
    regions, order = checkpoint_regions(first), checkpoint_region_order(first)
    models, lowres_plan = [model for model, _, _ in lowres], lowres[0][2]

    def prepare(images, geometry):
        seg_prev = predict_previous_stage_for_image(
            images, geometry, models, lowres_plan, previous_stage.infer, device, regions, order
        )
        return cascade_input_for_image(images, seg_prev, geometry, plan)

    return prepare


def execute_ensemble(
    job: EnsembleJob,
    checkpoints: list[Path],
    data,
    dataset: Dataset,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float],
    job_dir: Path,
) -> Outcome:
    """Predict one fold's validation cases with the average of its members' fold models (each
    with its own inference settings), write and score them. No postprocessing: nnU-Net decides
    it anew for an ensemble, which ablate does not yet do.

    `data` is one PreprocessedData for all members, or one per member: members planned
    differently (nnU-Net's configurations) each predict their own preprocessed case, and
    their exported probabilities are averaged in the image's geometry, as nnU-Net's
    ensemble_crossvalidations averages the configurations' saved probabilities."""
    from ablate.infer import CaseEnsemble, model_logits

    if isinstance(data, (list, tuple)) and any(d.plan != data[0].plan for d in data[1:]):
        return _execute_cross_plan_ensemble(
            job, checkpoints, list(data), dataset, targets, tolerance_mm, job_dir
        )
    data = data[0] if isinstance(data, (list, tuple)) else data

    members = _EnsembleMembers.load(job, checkpoints, dataset, targets, tolerance_mm, job_dir)
    device, models, regions, order = members.device, members.models, members.regions, members.order
    label_files, scorer = members.label_files, members.scorer

    def predict(image: np.ndarray, props) -> np.ndarray:
        average = job.members[0].infer.ensemble_average
        ensemble = CaseEnsemble(props, data.plan, regions, average, order)
        for member, model in zip(job.members, models, strict=True):
            ensemble.add(model_logits(model, image, data.plan, member.infer, device))
        return ensemble.labels()

    for case_id in data.folds[job.fold].val:
        image, _, props = data.load_case(case_id)
        labels, cost = timed(device, predict, np.array(image), props)
        scorer.add(case_id, labels, props.geometry, cost, label_files[case_id])
    return Outcome(
        scorer.metrics(),
        rows=scorer.rows,
        params={"members": json.dumps([m.name for m in job.members])},
    )


def _execute_cross_plan_ensemble(
    job: EnsembleJob,
    checkpoints: list[Path],
    data: list,
    dataset: Dataset,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float],
    job_dir: Path,
) -> Outcome:
    """An ensemble of members with different plans: each member's probabilities exported to the
    image's geometry from its own preprocessed case, then averaged and labelled."""
    from ablate.errors import ConfigError
    from ablate.infer import export_probabilities, model_logits, probabilities_to_labels

    if job.members[0].infer.ensemble_average != "probabilities":
        raise ConfigError(
            f"ensemble {job.label}: its members are planned differently (another "
            "plan.configuration); only infer.ensemble_average: probabilities can average them"
        )
    members = _EnsembleMembers.load(job, checkpoints, dataset, targets, tolerance_mm, job_dir)
    device, models, regions, order = members.device, members.models, members.regions, members.order
    label_files, scorer = members.label_files, members.scorer

    def predict(case_id: str):
        total, geometry = None, None
        for member, model, source in zip(job.members, models, data, strict=True):
            image, _, props = source.load_case(case_id)
            logits = model_logits(model, np.array(image), source.plan, member.infer, device)
            part = export_probabilities(logits, props, source.plan, regions)
            total = part if total is None else total + part
            geometry = props.geometry
        return probabilities_to_labels(total / len(models), regions, order), geometry

    for case_id in data[0].folds[job.fold].val:
        (labels, geometry), cost = timed(device, predict, case_id)
        scorer.add(case_id, labels, geometry, cost, label_files[case_id])
    return Outcome(
        scorer.metrics(),
        rows=scorer.rows,
        params={"members": json.dumps([m.name for m in job.members])},
    )


def _members_regions(job: EnsembleJob, checkpoints: list[Path]):
    """The regions and paint order the members of an ensemble share (None, None: softmax);
    DataError when they differ, since their outputs could not be averaged or painted alike."""
    from ablate.errors import DataError

    trained = [(checkpoint_regions(c), checkpoint_region_order(c)) for c in checkpoints]
    regions, order = trained[0]
    for other in trained[1:]:
        if other != (regions, order):
            raise DataError(
                f"ensemble {job.label}: members were trained with different regions or region "
                "orders; ensemble cells with the same train.regions"
            )
    return regions, order


@dataclass
class _EnsembleMembers:
    """What both ensemble paths set up: the members' models on the device, their shared regions
    and paint order, the references and the scorer of the ensemble's predictions."""

    device: object
    models: list
    regions: dict | None
    order: tuple[int, ...] | None
    label_files: dict[str, Path]
    scorer: CaseScorer

    @classmethod
    def load(cls, job, checkpoints, dataset, targets, tolerance_mm, job_dir: Path):
        from ablate.device import select_device

        device = select_device(job.members[0].infer.device)
        models = [load_model(checkpoint, device)[0] for checkpoint in checkpoints]
        regions, order = _members_regions(job, checkpoints)
        scorer = CaseScorer(
            (),
            targets,
            tolerance_mm,
            job_dir / "predictions",
            dataset.file_ending,
            ignore_label=dataset.ignore_label,
        )
        label_files = {c.case_id: c.label for c in dataset.cases}
        return cls(device, models, regions, order, label_files, scorer)
