"""Run a study end to end: data once, then every training and evaluation, tracked, then the report.

The driver strings the stages together. Jobs run through an executor (`ablate.run.executors`) as
plain picklable calls (`execute_training`, `execute_evaluation`, ...) that return an `Outcome`; only
this driver process writes to the tracking store, because sqlite allows a single writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.checkpoint import checkpoint_for
from ablate.run.held_out_jobs import execute_ensemble, execute_test
from ablate.run.jobs import (
    execute_evaluation,
    execute_external,
    execute_training,
    postprocess_groups,
)
from ablate.run.live import LiveCurves
from ablate.run.phases import PhaseContext, PhaseCount, job_tracking, run_phase
from ablate.run.progress import PlainProgress, Progress
from ablate.run.study_data import (
    cache_record,
    load_dataset,
    prepare_data,
    study_datasets,
    workdir_of,
)
from ablate.run.study_report import build_study_report
from ablate.study import Study


@dataclass
class RunSummary:
    trainings: PhaseCount = field(default_factory=PhaseCount)
    evaluations: PhaseCount = field(default_factory=PhaseCount)
    ensembles: PhaseCount = field(default_factory=PhaseCount)
    tests: PhaseCount = field(default_factory=PhaseCount)
    externals: PhaseCount = field(default_factory=PhaseCount)
    failed: list[str] = field(default_factory=list)  # names of the jobs that failed
    report: Path | None = None
    browse: str = ""  # how to open the study's runs in `mlflow ui`


def run_study(
    study: Study,
    config_yaml: str = "",
    progress: Progress | None = None,
    make_report: bool = True,
    executor=None,
    study_file: str = "<study>",
) -> RunSummary:
    """Run every unfinished job of the study as its only runner (`<workdir>/run.lock`; a second
    `ablate run` raises `StudyBusy`, a lock left by a killed run is taken over)."""
    from ablate.run.lock import StudyLock

    progress = progress or PlainProgress()
    with StudyLock(workdir_of(study), study_file) as lock:
        if lock.took_over is not None:
            progress.message(
                f"taking over the lock of an ended run ({lock.took_over.describe()}); its "
                "unfinished jobs are superseded and resume from their checkpoints"
            )
        return _run_locked(study, config_yaml, progress, make_report, executor)


def _run_locked(study: Study, config_yaml: str, progress: Progress, make_report: bool, executor):
    from ablate.expand import expand_study
    from ablate.regions import dataset_regions
    from ablate.run.executors import executor_for
    from ablate.run.store import default_tracking_uri
    from ablate.run.tracking import Tracker, ui_hint

    workdir = workdir_of(study)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, test_cases = load_dataset(study, check=True)
    held_out = f" (+ {len(test_cases)} held-out test cases)" if test_cases else ""
    progress.message(
        f"dataset {dataset.name}: {len(dataset.cases)} cases{held_out}; planning, preprocessing"
    )
    base = prepare_data(study, dataset)
    declared = dataset_regions(dataset)  # a region dataset trains region-based by default
    jobs = expand_study(study, base.key, base.folds, dataset.file_ending, test_cases, declared)
    train_jobs, eval_jobs, test_jobs = jobs.train, jobs.eval, jobs.test
    ensemble_jobs, extra_jobs = jobs.ensemble, jobs.external
    # plan axes (e.g. CT windowing) need their own preprocessing; prepared once each, up front
    data_for = {
        job.key: base if job.plan == study.plan else prepare_data(study, dataset, job.plan)
        for job in train_jobs
    }
    # a cascade's full-resolution stage reads its 3d_lowres stage's predictions (ablate.cascade)
    jobs_dir = workdir / "jobs"
    stages = previous_stages(train_jobs, data_for, jobs_dir, study)
    eval_data = {key: cascade_input(data, stages.get(key)) for key, data in data_for.items()}
    plan = base.plan
    spacing = tuple(round(s, 2) for s in plan.target_spacing_mm)
    progress.message(
        f"plan: spacing {spacing} mm, patch {plan.patch_size}, batch "
        f"{plan.batch_size}, {plan.num_stages} stages; {len(train_jobs)} trainings, "
        f"{len(eval_jobs)} evaluations"
        + (f", {len(test_jobs)} test-set evaluations" if test_jobs else "")
    )
    for other in {
        d.key: d.plan for d in data_for.values() if d.plan.configuration != plan.configuration
    }.values():
        progress.message(  # nnU-Net's other configurations of the study, one line each
            f"plan {other.configuration}: spacing "
            f"{tuple(round(s, 2) for s in other.target_spacing_mm)} mm, patch "
            f"{other.patch_size}, batch {other.batch_size}, {other.num_stages} stages"
        )
    tracker = Tracker(default_tracking_uri(study, workdir), study.name, workdir / "mlartifacts")
    tracker.start_study(
        {"data_key": base.key, "num_cases": len(dataset.cases)},
        {
            "plan.json": base.root / "plan.json",
            "fingerprint.json": base.root / "fingerprint.json",
            "splits.json": base.root / "splits.json",
        },
        axes=list(study.axes),
    )
    tracker.log_datasets(tracker.parent_run_id, study_datasets(dataset, test_cases, base))
    targets = {k: tuple(v) for k, v in (study.evaluation.targets or dataset.targets()).items()}
    headline = [f"{m}_{t}" for m in ("dsc", "nsd") for t in targets]
    tracker.set_runs_view(list(study.axes), [*headline, "train_seconds", "infer_seconds_per_case"])
    planned = [*train_jobs, *eval_jobs, *test_jobs, *ensemble_jobs, *extra_jobs]
    tracker.log_planned_jobs(
        [{"job_key": j.key, "name": j.name, "kind": job_tracking(j)[0]} for j in planned]
    )
    executor = executor or executor_for(study)
    groups = postprocess_groups(eval_jobs, jobs_dir)
    tolerance = {t: study.evaluation.tolerance_mm(t) for t in targets}
    summary = RunSummary()
    _start_progress(progress, planned, tracker, executor.capacity)
    names = {job.key: job.name for job in train_jobs}
    live = LiveCurves(tracker, lambda key, *epoch: progress.epoch(key, names.get(key, key), *epoch))
    used = {job.key: data_for[job.key] for job in train_jobs}
    used.update({job.key: data_for[job.train_key] for job in eval_jobs})
    ctx = PhaseContext(
        executor,
        tracker,
        progress,
        live,
        jobs_dir,
        summary.failed,
        lambda job: [cache_record(used[job.key], "training")] if job.key in used else [],
    )
    try:
        run_phase(
            train_jobs,
            "trainings",
            lambda j: (
                execute_training,
                (j, data_for[j.key], jobs_dir / j.key, study.log_checkpoints, stages.get(j.key)),
            ),
            ctx,
            summary.trainings,
        )
        run_phase(
            eval_jobs,
            "evaluations",
            lambda j: (
                execute_evaluation,
                (
                    j,
                    checkpoint_for(jobs_dir / j.train_key, j.infer.checkpoint),
                    eval_data[j.train_key],
                    dataset,
                    targets,
                    tolerance,
                    jobs_dir / j.key,
                    groups.get(j.key),
                ),
            ),
            ctx,
            summary.evaluations,
        )
        run_phase(
            ensemble_jobs,
            "ensembles",
            lambda j: (
                execute_ensemble,
                (
                    j,
                    [checkpoint_for(jobs_dir / m.train_key, m.infer.checkpoint) for m in j.members],
                    [eval_data[m.train_key] for m in j.members],
                    dataset,
                    targets,
                    tolerance,
                    jobs_dir / j.key,
                ),
            ),
            ctx,
            summary.ensembles,
        )
        run_phase(
            test_jobs,
            "tests",
            lambda j: (
                execute_test,
                (
                    j,
                    [checkpoint_for(jobs_dir / k, j.infer.checkpoint) for k in j.train_keys],
                    test_cases,
                    targets,
                    tolerance,
                    jobs_dir / j.key,
                    jobs_dir / j.eval_key / "postprocessing.json",
                    dataset.file_ending,
                    dataset.ignore_label,
                    stages.get(j.train_keys[0]),
                ),
            ),
            ctx,
            summary.tests,
        )
        labels = {c.case_id: c.label for c in (*dataset.cases, *test_cases)}
        run_phase(
            extra_jobs,
            "externals",
            lambda j: (
                execute_external,
                (j, labels, dataset.file_ending, targets, tolerance, dataset.ignore_label),
            ),
            ctx,
            summary.externals,
        )
    except BaseException:
        tracker.end_study(ok=False)
        raise
    finally:
        live.close()
        executor.shutdown()
    if make_report:
        try:
            summary.report = build_study_report(study, config_yaml, tracker)
        except BaseException:
            tracker.end_study(ok=False)
            raise
    tracker.end_study(ok=not summary.failed)
    summary.browse = ui_hint(tracker.tracking_uri, tracker.experiment_id)
    return summary


def previous_stages(train_jobs, data_for: dict, jobs_dir: Path, study: Study) -> dict:
    """Train key of each 3d_cascade_fullres training -> its ablate.cascade.PreviousStage: the
    3d_lowres fold checkpoints it needs, their data, and one predictions folder per lowres
    stage (shared by the cascade's folds, so each case is predicted once)."""
    from ablate.cascade import PreviousStage
    from ablate.config import InferConfig
    from ablate.expand import job_key

    by_key = {job.key: job for job in train_jobs}
    # nnU-Net's validation predicts with every mirror axis and step 0.5
    infer = InferConfig(device=study.infer.device, window_batch=study.infer.window_batch)
    stages = {}
    for job in train_jobs:
        if job.needs:
            checkpoints = {by_key[k].fold: checkpoint_for(jobs_dir / k, "final") for k in job.needs}
            folder = jobs_dir / f"previous-stage-{job_key({'needs': list(job.needs)})}"
            stages[job.key] = PreviousStage(checkpoints, data_for[job.needs[0]], folder, infer)
    return stages


def cascade_input(data, stage):
    """What a training's evaluations read: its data, with a cascade's previous-stage one-hot."""
    from ablate.cascade import CascadeInput

    return data if stage is None else CascadeInput(data, stage.folder)


def _start_progress(progress: Progress, planned: list, tracker, capacity: int) -> None:
    """Tell the display how many jobs of each kind are left and how long each kind took in
    earlier runs of the study (its time left before any job of this run ends)."""
    from ablate.run.outcome import JobState

    records = tracker.job_records()
    todo: dict[str, int] = {}
    took: dict[str, list[float]] = {}
    for job in planned:
        kind = job_tracking(job)[0]
        record = records.get(job.key)
        if record is not None and record.state is JobState.DONE:
            if record.seconds:
                took.setdefault(kind, []).append(record.seconds)
        else:
            todo[kind] = todo.get(kind, 0) + 1
    typical = {kind: sum(s) / len(s) for kind, s in took.items()}
    progress.start(todo, capacity, typical)
