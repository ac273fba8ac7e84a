"""The jobs: plain picklable functions an executor runs (maybe in another process or on another
node). Each returns an `Outcome` that the driver (ablate.run.driver) records; jobs never touch
the tracking store."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.checkpoint import (
    checkpoint_for,
    checkpoint_region_order,
    checkpoint_regions,
    load_model,
)
from ablate.data.dataset import Dataset
from ablate.expand import EvalJob, ExternalJob, TrainJob
from ablate.run.cost import measured_job, timed
from ablate.run.outcome import Outcome
from ablate.run.scoring import CaseScorer, all_labels


@measured_job
def execute_training(
    job: TrainJob, data, job_dir: Path, log_checkpoint: bool = False, previous_stage=None
) -> Outcome:
    """`previous_stage` (ablate.cascade.PreviousStage): a 3d_cascade_fullres training's 3d_lowres
    stage, whose cross-validation predictions are written first (once, shared, resumable)."""
    from ablate.device import headline_peak_mb
    from ablate.run.live import EVENTS_NAME, EpochEvents
    from ablate.train import train

    events = EpochEvents(job_dir / EVENTS_NAME, job.train.epochs)  # the driver forwards them
    folder = previous_stage.ensure(data) if previous_stage is not None else None
    result = train(
        job.train, data, job.fold, job.seed, job_dir, on_epoch_end=events, previous_stage=folder
    )
    metrics = {
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "parameters": float(result.parameters),
        "flops": float(result.flops),
        "peak_train_memory_mb": headline_peak_mb(result.peak_memory_mb),
        **{f"train_{k}": v for k, v in result.peak_memory_mb.items()},
    }
    return Outcome(
        metrics,
        history=result.history,
        params={"parameters": result.parameters, "flops_per_patch": result.flops},
        artifacts=[(result.checkpoint, "checkpoints")] if log_checkpoint else [],
    )


@dataclass(frozen=True)
class PostprocessGroup:
    """The folds of one (variant, seed) whose cross-validation predictions decide `auto`
    postprocessing together (nnU-Net's determine_postprocessing); raw predictions are shared."""

    raw_dir: Path
    folds: tuple[tuple[int, Path], ...]  # (fold, checkpoint)


def postprocess_groups(eval_jobs: list[EvalJob], jobs_dir: Path) -> dict[str, PostprocessGroup]:
    """EvalJob key -> its group, for the jobs with `infer.postprocess: auto`."""
    from ablate.expand import job_key

    members: dict[str, list[EvalJob]] = {}
    for job in eval_jobs:
        if job.infer.postprocess == "auto":
            identity = json.dumps([sorted(job.variant.items()), job.seed], default=str)
            members.setdefault(identity, []).append(job)
    groups = {}
    for jobs in members.values():
        raw_dir = jobs_dir / f"raw-{job_key({'group': sorted(j.key for j in jobs)})}"
        folds = tuple(
            sorted(
                (j.fold, checkpoint_for(jobs_dir / j.train_key, j.infer.checkpoint)) for j in jobs
            )
        )
        groups.update({j.key: PostprocessGroup(raw_dir, folds) for j in jobs})
    return groups


def predict_raw(checkpoint: Path, case_ids, data, infer, out_dir: Path, file_ending: str) -> None:
    """Label maps without postprocessing, written as NIfTI with per-case cost beside them; cases
    already there are kept (written atomically, so parallel jobs may share the folder)."""
    from ablate.device import select_device
    from ablate.imageio import write_image
    from ablate.infer import export_labels, model_logits

    todo = [c for c in case_ids if not (out_dir / f"{c}.json").is_file()]
    if not todo:
        return
    device = select_device(infer.device)
    model, _, plan = load_model(checkpoint, device)
    regions, order = checkpoint_regions(checkpoint), checkpoint_region_order(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)

    def predict(image: np.ndarray, props) -> np.ndarray:
        logits = model_logits(model, image, plan, infer, device)
        return export_labels(logits, props, plan, regions, order)

    for case_id in todo:
        image, _, props = data.load_case(case_id)
        labels, cost = timed(device, predict, np.array(image), props)
        tmp = out_dir / f"{case_id}.tmp{os.getpid()}{file_ending}"
        write_image(labels, props.geometry, tmp)
        os.replace(tmp, out_dir / f"{case_id}{file_ending}")
        (out_dir / f"{case_id}.json.tmp{os.getpid()}").write_text(json.dumps(cost))
        os.replace(out_dir / f"{case_id}.json.tmp{os.getpid()}", out_dir / f"{case_id}.json")


class _CrossValidationCases:
    """(prediction, reference) of every case of a group, read from disk one at a time."""

    def __init__(self, raw_dir: Path, labels: dict[str, Path], file_ending: str):
        self.raw_dir, self.labels, self.file_ending = raw_dir, labels, file_ending

    def __iter__(self):
        from ablate.imageio import read_image

        for case_id, label in self.labels.items():
            yield (
                read_image(self.raw_dir / f"{case_id}{self.file_ending}")[0],
                read_image(label)[0],
            )


@measured_job
def execute_evaluation(
    job: EvalJob,
    checkpoint: Path,
    data,
    dataset: Dataset,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float],
    job_dir: Path,
    group: PostprocessGroup | None = None,
) -> Outcome:
    """Predict the fold's validation cases with the trained model, postprocess, write, score.

    `auto` postprocessing first predicts every fold of its group (shared raw folder), decides on
    all cross-validation cases as nnU-Net does (on the training labels or regions, not the
    reporting targets), then applies the decision to this fold."""
    from ablate.imageio import read_image
    from ablate.postprocess import decide_postprocessing, training_targets

    ending = dataset.file_ending
    label_files = {c.case_id: c.label for c in dataset.cases}
    raw_dir = group.raw_dir if group else job_dir / "raw"
    steps: tuple[tuple[int, ...], ...] = ()
    params: dict[str, str] = {}
    artifacts: list[tuple[Path, str | None]] = []
    if group is not None:
        for fold, fold_checkpoint in group.folds:
            predict_raw(fold_checkpoint, data.folds[fold].val, data, job.infer, raw_dir, ending)
        cases = {c: label_files[c] for fold, _ in group.folds for c in data.folds[fold].val}
        trained_on = training_targets(dataset.labels, checkpoint_regions(checkpoint))
        decision = decide_postprocessing(
            _CrossValidationCases(raw_dir, cases, ending), trained_on, dataset.ignore_label
        )
        steps = decision.steps
        (job_dir / "postprocessing.json").parent.mkdir(parents=True, exist_ok=True)
        (job_dir / "postprocessing.json").write_text(json.dumps(decision.to_json(), indent=1))
        params["postprocessing"] = json.dumps([list(s) for s in steps])
        artifacts.append((job_dir / "postprocessing.json", None))
    else:
        predict_raw(checkpoint, data.folds[job.fold].val, data, job.infer, raw_dir, ending)
        if job.infer.postprocess == "largest_component":
            steps = all_labels(targets)
    scorer = CaseScorer(
        steps,
        targets,
        tolerance_mm,
        job_dir / "predictions",
        ending,
        ignore_label=dataset.ignore_label,
    )
    for case_id in data.folds[job.fold].val:
        labels, geometry = read_image(raw_dir / f"{case_id}{ending}")
        cost = json.loads((raw_dir / f"{case_id}.json").read_text())
        scorer.add(case_id, labels, geometry, cost, label_files[case_id])
    return Outcome(scorer.metrics(), rows=scorer.rows, params=params, artifacts=artifacts)


def execute_external(
    job: ExternalJob,
    labels: dict[str, Path],
    file_ending: str,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float],
    ignore_label: int | None = None,
) -> Outcome:
    """Score the job's cases of an external folder against `labels` (case id -> reference)."""
    from ablate.evaluate import evaluate_files

    table = evaluate_files(
        [(c, job.folder / f"{c}{file_ending}", labels[c]) for c in job.case_ids],
        targets,
        tolerance_mm,
        ignore_label,
    )
    metrics = {
        f"{m}_{t}": float(table[(table.metric == m) & (table.target == t)].value.mean())
        for t in targets
        for m in ("dsc", "nsd")
    }
    if job.on_test_set:
        table.insert(0, "model", "external")
        table.insert(1, "fold", -1)
    return Outcome(metrics, rows=table.to_dict("records"))
