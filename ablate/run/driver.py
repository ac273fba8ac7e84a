"""Run a study end to end: data once, then every training and evaluation, tracked, then the report.

The driver strings the stages together. Jobs run through an executor (`ablate.run.executors`) as
plain picklable calls (`execute_training`, `execute_evaluation`, ...) that return an `Outcome`; only
this driver process writes to the tracking store, because sqlite allows a single writer.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ablate.checkpoint import checkpoint_for
from ablate.data.dataset import Case, Dataset
from ablate.expand import EnsembleJob, EvalJob, ExternalJob, TestJob, TrainJob
from ablate.run.jobs import (
    execute_ensemble,
    execute_evaluation,
    execute_external,
    execute_test,
    execute_training,
    postprocess_groups,
)
from ablate.run.live import EVENTS_NAME, LiveCurves
from ablate.run.outcome import Outcome
from ablate.run.progress import PlainProgress, Progress
from ablate.study import Study


@dataclass
class PhaseCount:
    """The jobs of one phase: run now, and skipped as already done."""

    run: int = 0
    skipped: int = 0


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


def workdir_of(study: Study) -> Path:
    return study.work_dir()


def report_dir_of(study: Study) -> Path:
    return study.report_path()


def _read_dataset(study: Study) -> Dataset:
    """The study's dataset; a synthetic spec is generated once into <workdir>/data."""
    spec = study.dataset
    if spec.synthetic is not None:
        from ablate.data.dataset import read_nnunet_raw
        from ablate.data.synthetic import make_synthetic_dataset

        syn = spec.synthetic
        fov = "x".join(f"{v:g}" for v in syn.fov_mm)
        out = workdir_of(study) / "data" / f"synthetic-s{syn.seed}-n{syn.cases}-fov{fov}"
        if not (out / "dataset.json").is_file():
            tmp = out.with_name(out.name + f".tmp{time.time_ns()}")
            make_synthetic_dataset(tmp, cases=syn.cases, seed=syn.seed, fov_mm=tuple(syn.fov_mm))
            tmp.rename(out)
        return read_nnunet_raw(out)
    from ablate.data.formats import read_dataset

    return read_dataset(spec.path, None if spec.format == "auto" else spec.format, spec.labels)


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


# --- the driver ----------------------------------------------------------------------------


def job_tracking(job) -> tuple[str, dict[str, str]]:
    """The MLflow kind of a job and the tags that tie it to the rest of the study."""
    if isinstance(job, ExternalJob):
        return (
            "test" if job.on_test_set else "eval",
            {"ablate.variant": job.label, "ablate.external": str(job.folder)},
        )
    if isinstance(job, EnsembleJob):
        return "eval", {
            "ablate.variant": job.label,
            "ablate.ensemble": ",".join(m.key for m in job.members),
        }
    if isinstance(job, EvalJob):
        return "eval", {"ablate.train_key": job.train_key}
    if isinstance(job, TestJob):
        return "test", {"ablate.train_keys": ",".join(job.train_keys)}
    return "train", {}


def job_params(job: TrainJob | EvalJob | TestJob) -> dict:
    return {**{f"axis.{k}": v for k, v in job.variant.items()}, "fold": job.fold, "seed": job.seed}


def record_outcome(
    tracker, run_id: str, kind: str, outcome: Outcome, logged_steps: set[int] = frozenset()
) -> None:
    """Log a job's outcome on its run; an eval or test run gets its rows as `per_case.csv`.
    A training's epochs already forwarded live (`logged_steps`) are not logged again."""
    import pandas as pd

    for epoch, metrics in enumerate(outcome.history):
        if epoch not in logged_steps:
            tracker.log_epoch(run_id, epoch, metrics)
    if kind in ("eval", "test"):
        model = ["model", "fold"] if kind == "test" else []  # which model predicted the case
        table = pd.DataFrame(outcome.rows, columns=[*model, "case", "target", "metric", "value"])
        tracker.log_table(run_id, table, "per_case.csv")
    if outcome.params:
        tracker.log_params(run_id, outcome.params)
    for path, folder in outcome.artifacts:  # folder None: the run's root
        tracker.log_artifact(run_id, Path(path), folder)
    tracker.log_metrics(run_id, outcome.metrics)


@dataclass
class PhaseContext:
    """What every phase shares: where jobs run, where they are recorded and shown."""

    executor: object
    tracker: object
    progress: Progress
    live: object  # run.live.LiveCurves: forwards trainings' epochs while they run
    jobs_dir: Path
    failed: list[str]  # names of the jobs that failed
    datasets: Callable = lambda job: []  # a job's MLflow dataset inputs (DatasetRecord)


def run_phase(jobs: list, name: str, make_call: Callable, ctx: PhaseContext, count: PhaseCount):
    """Keep up to `executor.capacity` unfinished jobs in flight and record each outcome as it
    arrives, so a kill loses at most the jobs in flight. A training's epochs reach its run while
    it trains (`ctx.live`). A failure is recorded (its name added to `ctx.failed`); the rest go
    on. On Ctrl-C (or SIGTERM) the runs in flight are marked failed before the interrupt goes
    on."""
    import concurrent.futures as cf

    in_flight: dict[cf.Future, tuple] = {}
    starting: list[str] = []
    if not jobs:
        return
    done = ctx.tracker.done_keys()
    ctx.progress.phase(name, total=sum(job.key not in done for job in jobs))
    try:
        for job in jobs:
            if job.key in done:
                count.skipped += 1
                continue
            while len(in_flight) >= ctx.executor.capacity:
                _record_next(in_flight, ctx, count)
            tracked_as, tags = job_tracking(job)
            run_id = ctx.tracker.start_job(job.key, job.name, tracked_as, job_params(job), tags)
            starting[:] = [run_id]
            if records := ctx.datasets(job):
                ctx.tracker.log_datasets(run_id, records)
            ctx.progress.job_started(job.key, tracked_as, job.name)
            if tracked_as == "train":
                ctx.live.watch(run_id, job.key, ctx.jobs_dir / job.key / EVENTS_NAME)
            fn, args = make_call(job)
            future = ctx.executor.submit(fn, *args)  # in-process: runs the job here
            in_flight[future] = (job, starting.pop(), tracked_as)
        while in_flight:
            _record_next(in_flight, ctx, count)
    except (KeyboardInterrupt, SystemExit):
        ctx.live.stop_all()
        why = "interrupted; run the study again to resume"
        for run_id in [*starting, *(run_id for _, run_id, _ in in_flight.values())]:
            ctx.tracker.end_job(run_id, ok=False, error=why)
        ctx.executor.shutdown(cancel=True)
        raise


def _record_next(in_flight: dict, ctx: PhaseContext, count: PhaseCount) -> None:
    import concurrent.futures as cf

    finished, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
    for future in finished:
        job, run_id, tracked_as = in_flight.pop(future)
        try:
            outcome = future.result()
            logged = ctx.live.finish(run_id, outcome.history)
            record_outcome(ctx.tracker, run_id, tracked_as, outcome, logged)
        except Exception as exc:  # noqa: BLE001 - recorded, and the study goes on
            ctx.live.finish(run_id)
            ctx.tracker.end_job(run_id, ok=False, error=f"{type(exc).__name__}: {exc}")
            ctx.failed.append(job.name)
            trace = "".join(traceback.format_exception(exc, limit=-3))
            ctx.progress.job_ended(job.key, False, f"{type(exc).__name__}: {exc}\n{trace}")
        else:
            ctx.tracker.end_job(run_id, ok=True)
            count.run += 1
            ctx.progress.job_ended(job.key, True)


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
    from ablate.run.executors import executor_for
    from ablate.run.tracking import Tracker, default_tracking_uri, ui_hint

    workdir = workdir_of(study)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, test_cases = load_dataset(study, check=True)
    held_out = f" (+ {len(test_cases)} held-out test cases)" if test_cases else ""
    progress.message(
        f"dataset {dataset.name}: {len(dataset.cases)} cases{held_out}; planning, preprocessing"
    )
    base = prepare_data(study, dataset)
    jobs = expand_study(study, base.key, base.folds, dataset.file_ending, test_cases)
    train_jobs, eval_jobs, test_jobs = jobs.train, jobs.eval, jobs.test
    ensemble_jobs, extra_jobs = jobs.ensemble, jobs.external
    # plan axes (e.g. CT windowing) need their own preprocessing; prepared once each, up front
    data_for = {
        job.key: base if job.plan == study.plan else prepare_data(study, dataset, job.plan)
        for job in train_jobs
    }
    plan = base.plan
    spacing = tuple(round(s, 2) for s in plan.target_spacing_mm)
    progress.message(
        f"plan: spacing {spacing} mm, patch {plan.patch_size}, batch "
        f"{plan.batch_size}, {plan.num_stages} stages; {len(train_jobs)} trainings, "
        f"{len(eval_jobs)} evaluations"
        + (f", {len(test_jobs)} test-set evaluations" if test_jobs else "")
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
    jobs_dir = workdir / "jobs"
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
                (j, data_for[j.key], jobs_dir / j.key, study.log_checkpoints),
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
                    data_for[j.train_key],
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
                    data_for[j.members[0].train_key],
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


def build_study_report(study: Study, config_yaml: str = "", tracker=None) -> Path:
    """Collect the study's results from MLflow and write the HTML report."""
    import json

    from ablate.report import build_report
    from ablate.run.tracking import Tracker, default_tracking_uri, fetch_results
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
