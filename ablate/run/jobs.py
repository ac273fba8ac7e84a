"""The jobs: plain picklable functions an executor runs (maybe in another process or on another
node). Each returns an `Outcome` that the driver (ablate.run.driver) records; jobs never touch
the tracking store."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.checkpoint import checkpoint_for, checkpoint_regions, load_model
from ablate.data.dataset import Case, Dataset
from ablate.expand import EnsembleJob, EvalJob, ExternalJob, TestJob, TrainJob
from ablate.run.outcome import HeldOutModel, Outcome


def execute_training(job: TrainJob, data, job_dir: Path, log_checkpoint: bool = False) -> Outcome:
    from ablate.device import headline_peak_mb
    from ablate.run.live import EVENTS_NAME, EpochEvents
    from ablate.train import train

    events = EpochEvents(job_dir / EVENTS_NAME, job.train.epochs)  # the driver forwards them
    result = train(job.train, data, job.fold, job.seed, job_dir, on_epoch_end=events)
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


def _timed(device, fn, *args):
    """fn(*args) and its cost: seconds (synchronised with the device) and peak memory during it."""
    from ablate.device import peak_memory_mb, reset_peak_memory, synchronize

    reset_peak_memory(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    return out, {"seconds": time.perf_counter() - start, **peak_memory_mb(device)}


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
    regions = checkpoint_regions(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)

    def predict(image: np.ndarray, props) -> np.ndarray:
        logits = model_logits(model, image, plan, infer, device)
        return export_labels(logits, props, plan, regions)

    for case_id in todo:
        image, _, props = data.load_case(case_id)
        labels, cost = _timed(device, predict, np.array(image), props)
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
            steps = _all_labels(targets)
    scorer = _Scorer(
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


class _Scorer:
    """Postprocesses, writes and scores one model's predictions one case at a time, keeping the
    rows and costs (never the label maps: a KiTS-sized map is ~100 MB)."""

    def __init__(
        self,
        steps,
        targets,
        tolerance_mm,
        out_dir: Path,
        ending: str,
        raw_dir: Path | None = None,
        ignore_label: int | None = None,
    ):
        self.steps, self.targets, self.tolerance_mm = steps, targets, tolerance_mm
        self.ignore_label = ignore_label  # reference voxels holding it are scored in no target
        self.out_dir, self.ending, self.raw_dir = out_dir, ending, raw_dir
        self.rows: list[dict] = []
        self.seconds: list[float] = []
        self.peaks: dict[str, float] = {}

    def add(self, case_id: str, labels, geometry, cost: dict, reference: Path) -> None:
        """With `steps` and a `raw_dir`, the labels before postprocessing are written there."""
        from ablate.evaluate import evaluate_case
        from ablate.imageio import read_image, write_image
        from ablate.postprocess import keep_largest_component

        if self.steps and self.raw_dir is not None:
            write_image(labels, geometry, self.raw_dir / f"{case_id}{self.ending}")
        for values in self.steps:
            labels = keep_largest_component(labels, values)
        cost = dict(cost)
        self.seconds.append(cost.pop("seconds"))
        for key, value in cost.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        write_image(labels, geometry, self.out_dir / f"{case_id}{self.ending}")
        ref, ref_geometry = read_image(reference)
        for row in evaluate_case(
            labels, ref, ref_geometry.spacing_mm, self.targets, self.tolerance_mm, self.ignore_label
        ):
            self.rows.append({"case": case_id, **row})

    def metrics(self) -> dict[str, float]:
        from ablate.device import headline_peak_mb

        metrics = {
            "infer_seconds_per_case": float(np.mean(self.seconds)),
            "peak_infer_memory_mb": headline_peak_mb(self.peaks),
            **{f"infer_{k}": v for k, v in self.peaks.items()},
        }
        for target in self.targets:
            for metric in ("dsc", "nsd"):
                values = [
                    r["value"] for r in self.rows if r["target"] == target and r["metric"] == metric
                ]
                metrics[f"{metric}_{target}"] = (
                    float(np.nanmean(values)) if values else float("nan")
                )
        return metrics


def _all_labels(targets: dict[str, tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """largest_component: one step on the union of every target's labels."""
    return (tuple(sorted({v for values in targets.values() for v in values})),)


def _test_steps(infer, targets, decision_file: Path) -> tuple[tuple[int, ...], ...]:
    from ablate.errors import DataError
    from ablate.postprocess import PostprocessingDecision

    if infer.postprocess == "largest_component":
        return _all_labels(targets)
    if infer.postprocess != "auto":
        return ()
    if not decision_file.is_file():
        raise DataError(
            f"{decision_file}: no postprocessing decision; the cross-validation "
            "evaluation of this variant failed or has not run; run the study again"
        )
    return PostprocessingDecision.from_json(json.loads(decision_file.read_text())).steps


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
) -> Outcome:
    """Predict the held-out test cases from their raw images with every fold model and, with
    `infer.ensemble_folds`, their ensemble, in one pass (each case is preprocessed once and each
    model runs once); postprocess, write and score every model's prediction. `auto`
    postprocessing applies the decision of the variant's cross-validation (`decision_file`).

    Cost per case: a fold model's is preprocessing + its sliding window + export; the
    ensemble's is preprocessing + every model's sliding window + export."""
    from ablate.device import select_device
    from ablate.imageio import read_image
    from ablate.infer import CaseEnsemble, model_logits
    from ablate.preprocess import preprocess_images

    steps = _test_steps(job.infer, targets, decision_file)
    device = select_device(job.infer.device)
    models, plan = [], None
    for checkpoint in checkpoints:
        model, _, plan = load_model(checkpoint, device)
        models.append(model)
    regions = checkpoint_regions(checkpoints[0])
    single = [HeldOutModel(fold) for fold in job.folds]
    ensemble_model = HeldOutModel(None)
    scored = single + ([ensemble_model] if job.infer.ensemble_folds else [])
    scorers = {
        model: _Scorer(
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

    for case in cases:
        loaded = [read_image(path) for path in case.images]
        geometry = loaded[0][1]
        (data, props), prep = _timed(
            device, preprocess_images, [a for a, _ in loaded], geometry, plan
        )
        average = job.infer.ensemble_average if job.infer.ensemble_folds else None
        ensemble = CaseEnsemble(props, plan, regions, average)
        windows = []
        for test_model, model in zip(single, models, strict=True):
            logits, window = _timed(
                device, model_logits, model, np.array(data), plan, job.infer, device
            )
            labels, out = _timed(device, ensemble.add, logits)
            windows.append(window)
            scorers[test_model].add(
                case.case_id, labels, geometry, _add_costs(prep, window, out), case.label
            )
        if job.infer.ensemble_folds:
            labels, out = _timed(device, ensemble.labels)
            scorers[ensemble_model].add(
                case.case_id, labels, geometry, _add_costs(prep, *windows, out), case.label
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
    it anew for an ensemble, which ablate does not yet do."""
    from ablate.device import select_device
    from ablate.errors import DataError
    from ablate.infer import CaseEnsemble, model_logits

    device = select_device(job.members[0].infer.device)
    models = [load_model(checkpoint, device)[0] for checkpoint in checkpoints]
    regions = checkpoint_regions(checkpoints[0])
    if any(checkpoint_regions(c) != regions for c in checkpoints[1:]):
        raise DataError(
            f"ensemble {job.label}: members were trained with different regions; "
            "ensemble cells with the same train.regions"
        )
    label_files = {c.case_id: c.label for c in dataset.cases}
    scorer = _Scorer(
        (),
        targets,
        tolerance_mm,
        job_dir / "predictions",
        dataset.file_ending,
        ignore_label=dataset.ignore_label,
    )

    def predict(image: np.ndarray, props) -> np.ndarray:
        ensemble = CaseEnsemble(props, data.plan, regions, job.members[0].infer.ensemble_average)
        for member, model in zip(job.members, models, strict=True):
            ensemble.add(model_logits(model, image, data.plan, member.infer, device))
        return ensemble.labels()

    for case_id in data.folds[job.fold].val:
        image, _, props = data.load_case(case_id)
        labels, cost = _timed(device, predict, np.array(image), props)
        scorer.add(case_id, labels, props.geometry, cost, label_files[case_id])
    return Outcome(
        scorer.metrics(),
        rows=scorer.rows,
        params={"members": json.dumps([m.name for m in job.members])},
    )


def _add_costs(*parts: dict) -> dict:
    """Seconds add up; peak memories take the maximum."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = (
                total.get(key, 0.0) + value if key == "seconds" else max(total.get(key, 0.0), value)
            )
    return total


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
