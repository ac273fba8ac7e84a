"""The jobs: plain picklable functions an executor runs (maybe in another process or on another
node). Each returns an outcome dict ({"metrics", "history" | "rows", "params", "artifacts"}) that
the driver (ablate.runner) records; jobs never touch the tracking store."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablate.checkpoint import FINAL, checkpoint_regions, load_model
from ablate.data.dataset import Dataset
from ablate.study import EvalJob, Study, TrainJob


def execute_training(job: TrainJob, data, job_dir: Path, log_checkpoint: bool = False) -> dict:
    from ablate.device import headline_peak_mb
    from ablate.train import train

    result = train(job.train, data, job.fold, job.seed, job_dir)
    metrics = {
        "train_seconds": result.seconds, "seconds_per_epoch": result.seconds_per_epoch,
        "parameters": float(result.parameters), "flops": float(result.flops),
        "peak_train_memory_mb": headline_peak_mb(result.peak_memory_mb),
        **{f"train_{k}": v for k, v in result.peak_memory_mb.items()},
    }
    return {"metrics": metrics, "history": result.history,
            "params": {"parameters": result.parameters, "flops_per_patch": result.flops},
            "artifacts": [(result.checkpoint, "checkpoints")] if log_checkpoint else []}


@dataclass(frozen=True)
class PostprocessGroup:
    """The folds of one (variant, seed) whose cross-validation predictions decide `auto`
    postprocessing together (nnU-Net's determine_postprocessing); raw predictions are shared."""

    raw_dir: Path
    folds: tuple[tuple[int, Path], ...]  # (fold, checkpoint)


def postprocess_groups(eval_jobs: list[EvalJob], jobs_dir: Path) -> dict[str, PostprocessGroup]:
    """EvalJob key -> its group, for the jobs with `infer.postprocess: auto`."""
    from ablate.study import job_key

    members: dict[str, list[EvalJob]] = {}
    for job in eval_jobs:
        if job.infer.postprocess == "auto":
            identity = json.dumps([sorted(job.variant.items()), job.seed], default=str)
            members.setdefault(identity, []).append(job)
    groups = {}
    for jobs in members.values():
        raw_dir = jobs_dir / f"raw-{job_key({'group': sorted(j.key for j in jobs)})}"
        folds = tuple(sorted((j.fold, jobs_dir / j.train_key / FINAL) for j in jobs))
        groups.update({j.key: PostprocessGroup(raw_dir, folds) for j in jobs})
    return groups


def predict_raw(checkpoint: Path, case_ids, data, infer, out_dir: Path, file_ending: str) -> None:
    """Label maps without postprocessing, written as NIfTI with per-case cost beside them; cases
    already there are kept (written atomically, so parallel jobs may share the folder)."""
    from ablate.device import peak_memory_mb, reset_peak_memory, select_device, synchronize
    from ablate.imageio import write_image
    from ablate.infer import predict_probabilities, probabilities_to_labels, restore_probabilities

    todo = [c for c in case_ids if not (out_dir / f"{c}.json").is_file()]
    if not todo:
        return
    device = select_device(infer.device)
    model, _, plan = load_model(checkpoint, device)
    regions = checkpoint_regions(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case_id in todo:
        image, _, props = data.load_case(case_id)
        reset_peak_memory(device)
        start = time.perf_counter()
        probs = predict_probabilities([model], np.array(image), plan, infer, device,
                                      "sigmoid" if regions else "softmax")
        labels = probabilities_to_labels(restore_probabilities(probs, props, plan, regions),
                                          regions)
        synchronize(device)
        cost = {"seconds": time.perf_counter() - start, **peak_memory_mb(device)}
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
            yield (read_image(self.raw_dir / f"{case_id}{self.file_ending}")[0],
                   read_image(label)[0])


def execute_evaluation(job: EvalJob, checkpoint: Path, data, dataset: Dataset,
                       targets: dict[str, tuple[int, ...]], tolerance_mm: dict[str, float],
                       job_dir: Path, group: PostprocessGroup | None = None) -> dict:
    """Predict the fold's validation cases with the trained model, postprocess, write, score.

    `auto` postprocessing first predicts every fold of its group (shared raw folder), decides on
    all cross-validation cases as nnU-Net does, then applies the decision to this fold."""
    from ablate.device import headline_peak_mb
    from ablate.evaluate import evaluate_case
    from ablate.imageio import read_image, write_image
    from ablate.postprocess import decide_postprocessing, keep_largest_component

    ending = dataset.file_ending
    label_files = {c.case_id: c.label for c in dataset.cases}
    raw_dir = group.raw_dir if group else job_dir / "raw"
    steps: tuple[tuple[int, ...], ...] = ()
    outcome: dict = {"params": {}, "artifacts": []}
    if group is not None:
        for fold, fold_checkpoint in group.folds:
            predict_raw(fold_checkpoint, data.folds[fold].val, data, job.infer, raw_dir, ending)
        cases = {c: label_files[c] for fold, _ in group.folds for c in data.folds[fold].val}
        decision = decide_postprocessing(_CrossValidationCases(raw_dir, cases, ending), targets)
        steps = decision.steps
        (job_dir / "postprocessing.json").parent.mkdir(parents=True, exist_ok=True)
        (job_dir / "postprocessing.json").write_text(json.dumps(decision.to_json(), indent=1))
        outcome["params"]["postprocessing"] = json.dumps([list(s) for s in steps])
        outcome["artifacts"].append((job_dir / "postprocessing.json", None))
    else:
        predict_raw(checkpoint, data.folds[job.fold].val, data, job.infer, raw_dir, ending)
        if job.infer.postprocess == "largest_component":
            steps = (tuple(sorted({v for values in targets.values() for v in values})),)
    rows, seconds, peaks = [], [], {}
    for case_id in data.folds[job.fold].val:
        labels, geometry = read_image(raw_dir / f"{case_id}{ending}")
        for values in steps:
            labels = keep_largest_component(labels, values)
        cost = json.loads((raw_dir / f"{case_id}.json").read_text())
        seconds.append(cost.pop("seconds"))
        for key, value in cost.items():
            peaks[key] = max(peaks.get(key, 0.0), value)
        write_image(labels, geometry, job_dir / "predictions" / f"{case_id}{ending}")
        ref, ref_geometry = read_image(label_files[case_id])
        for row in evaluate_case(labels, ref, ref_geometry.spacing_mm, targets, tolerance_mm):
            rows.append({"case": case_id, **row})
    metrics = {"infer_seconds_per_case": float(np.mean(seconds)),
               "peak_infer_memory_mb": headline_peak_mb(peaks),
               **{f"infer_{k}": v for k, v in peaks.items()}}
    for target in targets:
        for metric in ("dsc", "nsd"):
            values = [r["value"] for r in rows if r["target"] == target and r["metric"] == metric]
            metrics[f"{metric}_{target}"] = float(np.nanmean(values)) if values else float("nan")
    return {**outcome, "metrics": metrics, "rows": rows}


@dataclass(frozen=True)
class ExternalJob:
    """Scoring one fold's validation cases of an external prediction folder (an extra variant)."""

    key: str
    name: str
    label: str
    folder: Path
    fold: int
    case_ids: tuple[str, ...]
    seed: int = 0
    variant: dict = field(default_factory=dict)


def external_jobs(study: Study, data, dataset: Dataset) -> list[ExternalJob]:
    from ablate.study import job_key

    jobs = []
    for label, folder in study.external.items():
        for fold, split in enumerate(data.folds):
            files = [folder / f"{c}{dataset.file_ending}" for c in split.val]
            stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) if f.is_file() else f.name
                     for f in files]
            key = job_key({"external": label, "folder": str(folder), "files": stamp,
                           "data": data.key, "fold": fold,
                           "evaluation": study.evaluation.model_dump(mode="json")})
            jobs.append(ExternalJob(key, f"{label} · external · fold {fold}", label, folder, fold,
                                    tuple(split.val)))
    return jobs


def execute_external(job: ExternalJob, dataset: Dataset, targets: dict[str, tuple[int, ...]],
                     tolerance_mm: dict[str, float]) -> dict:
    from ablate.evaluate import evaluate_files

    labels = {c.case_id: c.label for c in dataset.cases}
    table = evaluate_files([(c, job.folder / f"{c}{dataset.file_ending}", labels[c])
                            for c in job.case_ids], targets, tolerance_mm)
    metrics = {f"{m}_{t}": float(table[(table.metric == m) & (table.target == t)].value.mean())
               for t in targets for m in ("dsc", "nsd")}
    return {"metrics": metrics, "rows": table.to_dict("records")}
