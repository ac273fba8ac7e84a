"""How long a study will take, measured rather than guessed (`ablate run --dry-run`).

For each distinct training setting (plan and network) the study's own training runs a few real
iterations on the device it would use (two short trainings of two epochs, 2 and 8 iterations
each: their second epochs give a fixed cost per epoch and a cost per iteration), and
the model it leaves predicts and scores one real validation case with each distinct inference
setting (sliding windows, TTA, export, metrics). Job times are those measurements scaled to the
job (epochs x iterations, cases x models); the wall-clock time divides each phase by the
executor's parallelism. Measurements are kept in <workdir>/timings.json per device and setting
and read back by later estimates (delete the file to measure again).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ablate.run.progress import PLURAL, human_duration

TIMINGS_NAME = "timings.json"


@dataclass(frozen=True)
class TrainTiming:
    epoch_seconds: float  # a fixed cost per epoch (batch loaders start, one validation batch)
    iteration_seconds: float  # one training iteration
    overhead_seconds: float  # per training: model and loaders set up, checkpoints

    def training_seconds(self, cfg) -> float:
        """A whole training of `cfg`: validation iterations beyond the measured one at half a
        training iteration (forward only, no augmentation)."""
        extra_val = max(0, cfg.val_iterations - 1) * self.iteration_seconds / 2
        per_epoch = self.epoch_seconds + cfg.iterations_per_epoch * self.iteration_seconds
        return cfg.epochs * (per_epoch + extra_val) + self.overhead_seconds


@dataclass(frozen=True)
class JobTimes:
    """Estimated seconds of every job to run, per kind (train, eval, test)."""

    seconds: dict[str, list[float]]
    preprocess_seconds: float
    device: str


def _short(cfg, iterations: int):
    update = {"epochs": 2, "iterations_per_epoch": iterations, "val_iterations": 1}
    return cfg.model_copy(update=update)


def time_training(cfg, data, out_dir: Path) -> TrainTiming:
    """Two short trainings of two epochs each, with few and more iterations per epoch (one
    validation batch); the second epochs give the fixed cost per epoch and the cost per
    iteration, the rest of the wall-clock time the cost per training."""
    from ablate.train import train

    few, more = min(cfg.iterations_per_epoch, 2), min(cfg.iterations_per_epoch, 8)
    steady, overhead = {}, []
    for n in dict.fromkeys((few, more)):
        began = time.perf_counter()
        result = train(_short(cfg, n), data, 0, 0, out_dir / f"n{n}")
        wall = time.perf_counter() - began
        steady[n] = result.history[-1]["epoch_seconds"]
        overhead.append(wall - sum(h["epoch_seconds"] for h in result.history))
    per_iteration = (steady[more] - steady[few]) / (more - few) if more > few else 0.0
    per_iteration = max(per_iteration, 0.0)
    fixed = max(0.0, steady[few] - few * per_iteration)
    if more == few:  # a one- or two-iteration epoch: all of it counts per iteration
        per_iteration, fixed = steady[few] / few, 0.0
    return TrainTiming(fixed, per_iteration, max(0.0, min(overhead)))


def time_case(checkpoint: Path, data, infer, case_id: str, targets, tolerance) -> float:
    """Seconds to predict (sliding windows, TTA, export) and score one preprocessed case, after
    one untimed pass (the first pass on a shape pays the kernels' set-up once per job)."""
    import numpy as np

    from ablate.checkpoint import checkpoint_regions, load_model
    from ablate.device import select_device, synchronize
    from ablate.evaluate import evaluate_case
    from ablate.infer import export_labels, model_logits

    device = select_device(infer.device)
    model, _, plan = load_model(checkpoint, device)
    image, seg, props = data.load_case(case_id)
    model_logits(model, np.array(image), plan, infer, device)  # warm-up: a job predicts many
    synchronize(device)
    began = time.perf_counter()
    logits = model_logits(model, np.array(image), plan, infer, device)
    labels = export_labels(logits, props, plan, checkpoint_regions(checkpoint))
    synchronize(device)
    reference = np.where(labels > 0, 1, 0)  # the metrics' cost, not their values, matters here
    evaluate_case(labels, reference, props.geometry.spacing_mm, targets, tolerance)
    return time.perf_counter() - began


def _any_checkpoint(out: Path) -> Path:
    return sorted(out.glob("*/checkpoint_final.pt"))[-1]


def _median_case(data, fold: int) -> str:
    """The validation case of median size: a typical sliding-window count."""
    cases = sorted(data.folds[fold].val, key=lambda c: _voxels(data, c))
    return cases[len(cases) // 2]


def _voxels(data, case_id: str) -> int:
    import numpy as np

    return int(np.prod(data.load_case(case_id)[2].shape_after_resample))


class _Store:
    """timings.json: measurements per device and setting, reused by later estimates."""

    def __init__(self, path: Path, device: str):
        self.path, self.device = path, device
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str):
        return self.data.get(f"{self.device}|{key}")

    def put(self, key: str, value) -> None:
        self.data[f"{self.device}|{key}"] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def _setting(data_key: str, cfg) -> str:
    """A key for a measured setting: the data (plan) and a train or infer config."""
    from ablate.expand import job_key

    return job_key({"data": data_key, "config": cfg.model_dump(mode="json")})


def measure(study, say=print) -> JobTimes:
    """Prepare the data (cached for the run), measure each distinct setting, and estimate the
    seconds of every job `ablate run` would run."""
    from ablate.device import select_device
    from ablate.expand import expand_study
    from ablate.regions import dataset_regions
    from ablate.run.study_data import load_dataset, prepare_data, workdir_of

    began = time.perf_counter()
    dataset, test_cases = load_dataset(study, check=True)
    base = prepare_data(study, dataset)
    declared = dataset_regions(dataset)
    jobs = expand_study(study, base.key, base.folds, dataset.file_ending, test_cases, declared)
    data_for = {
        j.key: base if j.plan == study.plan else prepare_data(study, dataset, j.plan)
        for j in jobs.train
    }
    preprocess = time.perf_counter() - began
    device = str(select_device(study.train.device))
    store = _Store(workdir_of(study) / TIMINGS_NAME, device)
    targets = {k: tuple(v) for k, v in (study.evaluation.targets or dataset.targets()).items()}
    tolerance = {t: study.evaluation.tolerance_mm(t) for t in targets}
    per_case: dict[tuple[str, str], float] = {}  # (train setting, infer setting) -> seconds
    train_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints: dict[str, Path] = {}
        for job in jobs.train:
            data = data_for[job.key]
            if job.needs:  # a cascade stage: timed as its plan without the one-hot inputs
                data = replace(data, plan=replace(data.plan, previous_stage_labels=()))
            key = _setting(data.key, job.train.model_copy(update={"epochs": 1}))
            if (stored := store.get(f"train|{key}")) is None:
                say(f"timing a few training iterations of {job.name} on {device}")
                out = Path(tmp) / key
                timing = time_training(job.train, data, out)
                checkpoints[key] = _any_checkpoint(out)
                stored = [timing.epoch_seconds, timing.iteration_seconds, timing.overhead_seconds]
                store.put(f"train|{key}", stored)
            train_seconds[job.key] = TrainTiming(*stored).training_seconds(job.train)
            train_key = key
            for evaluation in (e for e in jobs.eval if e.train_key == job.key):
                setting = (train_key, _setting("", evaluation.infer))
                if setting in per_case:
                    continue
                stored = store.get(f"case|{setting[0]}|{setting[1]}")
                if stored is None:
                    if train_key not in checkpoints:  # trained for an earlier estimate only
                        out = Path(tmp) / train_key
                        time_training(job.train, data, out)
                        checkpoints[train_key] = _any_checkpoint(out)
                    say(f"timing one validation case with {evaluation.name}'s inference")
                    case = _median_case(data, job.fold)
                    stored = time_case(
                        checkpoints[train_key], data, evaluation.infer, case, targets, tolerance
                    )
                    store.put(f"case|{setting[0]}|{setting[1]}", stored)
                per_case[setting] = stored
    return JobTimes(
        _job_seconds(jobs, data_for, train_seconds, per_case, len(test_cases)), preprocess, device
    )


def _job_seconds(jobs, data_for, train_seconds, per_case, n_test) -> dict[str, list[float]]:
    """Each job's estimate: trainings as measured; an evaluation's cases x its seconds per case;
    an ensemble's members add up; a test job runs every fold model (and the ensemble's export)
    on every test case."""
    train_setting = {
        j.key: _setting(data_for[j.key].key, j.train.model_copy(update={"epochs": 1}))
        for j in jobs.train
    }

    def case_seconds(evaluation) -> float:
        return per_case[(train_setting[evaluation.train_key], _setting("", evaluation.infer))]

    by_key = {e.key: e for e in jobs.eval}
    data = next(iter(data_for.values()))
    seconds: dict[str, list[float]] = {
        "train": list(train_seconds.values()),
        "eval": [],
        "test": [],
    }
    for e in jobs.eval:
        seconds["eval"].append(len(data.folds[e.fold].val) * case_seconds(e))
    for e in jobs.ensemble:
        members = sum(case_seconds(m) for m in e.members)
        seconds["eval"].append(len(data.folds[e.fold].val) * members)
    for t in jobs.test:
        cv = by_key[t.eval_key]
        models = len(t.train_keys) + (1 if t.infer.ensemble_folds else 0)
        seconds["test"].append(n_test * models * case_seconds(cv))
    return {k: v for k, v in seconds.items() if v}


def estimate_text(times: JobTimes, capacity: int) -> str:
    """GPU- or CPU-hours per phase and in all, and the wall-clock time at `capacity` jobs at a
    time."""
    unit = "GPU" if times.device.startswith("cuda") else "CPU"
    lines = [f"time estimate on {times.device} (measured here; {capacity} job(s) at a time):"]
    lines.append(f"  preprocessing: {human_duration(times.preprocess_seconds)} (now cached)")
    total = wall = 0.0
    for kind, seconds in times.seconds.items():
        phase = sum(seconds)
        total += phase
        wall += _phase_wall(seconds, capacity)
        lines.append(
            f"  {PLURAL.get(kind, kind)}: {len(seconds)} x about "
            f"{human_duration(phase / len(seconds))} = {_hours(phase, unit)}"
        )
    lines.append(
        f"  in all: {_hours(total, unit)}; about {human_duration(wall)} from start to end "
        f"(+ {human_duration(times.preprocess_seconds)} preprocessing on a first run)"
    )
    return "\n".join(lines)


def _hours(seconds: float, unit: str) -> str:
    return f"{seconds / 3600:.2f} {unit}-hours ({human_duration(seconds)})"


def _phase_wall(seconds: list[float], capacity: int) -> float:
    """A phase's wall-clock time: the jobs handed to `capacity` slots longest first."""
    slots = [0.0] * max(1, capacity)
    for s in sorted(seconds, reverse=True):
        slots[slots.index(min(slots))] += s
    return max(slots)
