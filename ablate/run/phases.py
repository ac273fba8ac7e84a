"""One phase of a study (its trainings, evaluations, ...): jobs submitted to the executor up to
its capacity, each outcome recorded on the job's MLflow run as it arrives."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ablate.expand import EnsembleJob, EvalJob, ExternalJob, TestJob, TrainJob
from ablate.run.live import EVENTS_NAME
from ablate.run.outcome import Outcome
from ablate.run.progress import Progress


@dataclass
class PhaseCount:
    """The jobs of one phase: run now, and skipped as already done."""

    run: int = 0
    skipped: int = 0


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
    on. A job that `needs` others (a cascade's full-resolution stage) starts only once they are
    done, in an earlier run or in this one; if one of them failed, it fails unrun."""
    import concurrent.futures as cf

    in_flight: dict[cf.Future, tuple] = {}
    starting: list[str] = []
    if not jobs:
        return
    done = ctx.tracker.done_keys()
    ctx.progress.phase(name, total=sum(job.key not in done for job in jobs))
    # the jobs others need first (stable otherwise); finished keys of this phase, by outcome
    jobs = sorted(jobs, key=lambda job: bool(getattr(job, "needs", ())))
    ended: dict[str, bool] = {key: True for key in done}
    try:
        for job in jobs:
            if job.key in done:
                count.skipped += 1
                continue
            needs = getattr(job, "needs", ())
            while in_flight and any(key not in ended for key in needs):
                _record_next(in_flight, ctx, count, ended)
            if not all(ended.get(key, False) for key in needs):
                _fail_unrun(job, ctx, "a training it needs (its 3d_lowres stage) failed")
                continue
            while len(in_flight) >= ctx.executor.capacity:
                _record_next(in_flight, ctx, count, ended)
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
            _record_next(in_flight, ctx, count, ended)
    except (KeyboardInterrupt, SystemExit):
        ctx.live.stop_all()
        why = "interrupted; run the study again to resume"
        for run_id in [*starting, *(run_id for _, run_id, _ in in_flight.values())]:
            ctx.tracker.end_job(run_id, ok=False, error=why)
        ctx.executor.shutdown(cancel=True)
        raise


def _fail_unrun(job, ctx: PhaseContext, why: str) -> None:
    """Record a job as failed without running it (what it needs did not finish)."""
    tracked_as, tags = job_tracking(job)
    run_id = ctx.tracker.start_job(job.key, job.name, tracked_as, job_params(job), tags)
    ctx.tracker.end_job(run_id, ok=False, error=why)
    ctx.failed.append(job.name)
    ctx.progress.job_started(job.key, tracked_as, job.name)
    ctx.progress.job_ended(job.key, False, why)


def _record_next(
    in_flight: dict, ctx: PhaseContext, count: PhaseCount, ended: dict | None = None
) -> None:
    """Record the next finished job; `ended` gets its key and whether it succeeded."""
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
            if ended is not None:
                ended[job.key] = False
            trace = "".join(traceback.format_exception(exc, limit=-3))
            ctx.progress.job_ended(job.key, False, f"{type(exc).__name__}: {exc}\n{trace}")
        else:
            ctx.tracker.end_job(run_id, ok=True)
            if ended is not None:
                ended[job.key] = True
            count.run += 1
            ctx.progress.job_ended(job.key, True)
