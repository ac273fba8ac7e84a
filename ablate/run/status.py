"""`ablate status`: every job of a study (exactly those `ablate run` runs) with its state, the
best result so far and the time left. Reads the tracking store; never preprocesses."""

from __future__ import annotations

from pathlib import Path

from ablate.data.dataset import Dataset
from ablate.folds import Fold, make_folds, read_splits
from ablate.run.outcome import JobState
from ablate.run.phases import job_tracking
from ablate.run.progress import left_text
from ablate.run.study_data import declared_regions, load_dataset, workdir_of
from ablate.study import Study

# the states `ablate status` counts, in its order (a superseded run counts as failed)
SHOWN = (JobState.DONE, JobState.RUNNING, JobState.FAILED, JobState.PENDING)


def planned_folds(study: Study, dataset: Dataset, data_key: str) -> list[Fold]:
    """The folds `ablate run` uses, without preprocessing: the cache's splits.json once it is
    built, else the rule `prepare` follows (a splits file, else seeded KFold)."""
    stored = workdir_of(study) / "preprocessed" / data_key / "splits.json"
    if stored.is_file():
        return read_splits(stored)
    custom = study.folds.splits_file or Path(dataset.root) / "splits_final.json"
    if custom.is_file():
        return read_splits(custom)
    return make_folds([c.case_id for c in dataset.cases], study.folds.k, study.folds.seed)


def study_status(study: Study) -> str:
    """One line per job (done / running / failed / pending), the best metric so far, time left."""
    from ablate.expand import expand, expand_study
    from ablate.preprocess import cache_key
    from ablate.regions import dataset_regions
    from ablate.run.store import JobRecord, default_tracking_uri, read_job_records

    uri = default_tracking_uri(study, workdir_of(study))
    records = read_job_records(uri, study.name)
    if records is None:  # never ran: nothing to read, and nothing is created to read it
        train_jobs, eval_jobs = expand(study, "status", declared_regions(study))
        return (
            f"{len(train_jobs)} trainings and {len(eval_jobs)} evaluations pending\n"
            f"no runs of study {study.name!r} in {uri}: nothing has run yet "
            f"(ablate run <study file>); nothing was created"
        )
    dataset, test_cases = load_dataset(study)
    data_key = cache_key(dataset, study.plan, study.plan.intensity_samples)
    folds = planned_folds(study, dataset, data_key) if study.external else []  # externals only
    declared = dataset_regions(dataset)
    jobs = expand_study(study, data_key, folds, dataset.file_ending, test_cases, declared).all()
    lines, best = [], (None, float("-inf"))
    counts = dict.fromkeys(SHOWN, 0)
    left: dict[str, int] = {}
    means: dict[str, float | None] = {}
    for kind in ("train", "eval", "test"):
        of_kind = [j for j in jobs if job_tracking(j)[0] == kind]
        durations = [r.seconds for j in of_kind if (r := records.get(j.key)) and r.seconds]
        means[kind] = sum(durations) / len(durations) if durations else None
        for job in of_kind:
            record = records.get(job.key, JobRecord(JobState.PENDING, None, {}))
            state = JobState.FAILED if record.state is JobState.SUPERSEDED else record.state
            counts[state] += 1
            dsc = {k: v for k, v in record.metrics.items() if k.startswith("dsc_")}
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(dsc.items()))
            lines.append(f"{state.value:8s} {kind:5s} {job.name}  {shown}".rstrip())
            if dsc and (mean := sum(dsc.values()) / len(dsc)) > best[1]:
                best = (job.name, mean)
            if state is not JobState.DONE:
                left[kind] = left.get(kind, 0) + 1
    lines.append(
        f"[{counts[JobState.DONE]}/{len(jobs)}] "
        + ", ".join(f"{n} {state.value}" for state, n in counts.items())
    )
    if best[0]:
        lines.append(f"best so far: {best[0]} (mean DSC over targets {best[1]:.4f})")
    if counts[JobState.DONE] == len(jobs):
        lines.append("nothing left to run")
    else:
        capacity = planned_capacity(study)
        lines.append(f"time left: {left_text(left, means, capacity)} ({capacity} at a time)")
    return "\n".join(lines)


def planned_capacity(study: Study) -> int:
    """How many jobs the study's executor runs at once (what `ablate run` would keep in
    flight), without starting it."""
    spec = study.executor
    if spec.kind == "slurm":
        return spec.slurm.array_parallelism
    return 1 if spec.kind == "inprocess" else spec.workers
