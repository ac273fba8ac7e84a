"""The grid runner's order for jobs that need other jobs (a cascade's full-resolution stage needs
its 3d_lowres folds), against every executor: a job starts only after every job it needs has
finished, in this run or an earlier one; when one of them failed, it fails unrun."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture
from test_executors import executor  # noqa: F401 - every executor kind

from ablate.run.outcome import Outcome
from ablate.run.phases import PhaseContext, PhaseCount, run_phase


@pytest.fixture(autouse=True)
def _by_value():
    """Ray and submitit workers cannot import this module: ship its functions by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        from ray import cloudpickle as ray_cloudpickle

        ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except ImportError:
        pass


def stage(folder: str, name: str, needs: tuple[str, ...], seconds: float, fail: bool) -> Outcome:
    """Checks that what it needs has finished (their files exist), works, then leaves its file."""
    missing = [n for n in needs if not (Path(folder) / n).exists()]
    if missing:
        raise AssertionError(f"{name} started before {missing} finished")
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"{name} failed")
    (Path(folder) / name).write_text("done")
    return Outcome({})


@dataclass(frozen=True)
class Job:
    key: str
    name: str
    needs: tuple[str, ...] = ()
    fail: bool = False
    variant: dict = field(default_factory=dict)
    fold: int = 0
    seed: int = 0


class Tracker:
    def __init__(self, done=()):
        self.done, self.ended = set(done), {}

    def done_keys(self):
        return set(self.done)

    def start_job(self, key, name, kind, params, tags):
        return key

    def end_job(self, run_id, ok, error=None):
        self.ended[run_id] = (ok, error)

    def __getattr__(self, name):  # log_metrics, log_params, ...: nothing to record here
        return lambda *args, **kwargs: None


class Quiet:
    def __getattr__(self, name):
        return lambda *args, **kwargs: set()


def _run(jobs, executor, folder: Path, done=()):  # noqa: F811
    tracker = Tracker(done)
    ctx = PhaseContext(executor, tracker, Quiet(), Quiet(), folder, [])
    run_phase(
        jobs,
        "trainings",
        lambda j: (stage, (str(folder), j.key, j.needs, 0.3 if not j.needs else 0.0, j.fail)),
        ctx,
        PhaseCount(),
    )
    return tracker, ctx.failed


def test_a_job_waits_for_the_jobs_it_needs(executor, tmp_path):  # noqa: F811
    # the dependants come first and capacity allows them at once: they must still wait
    jobs = [
        Job("cascade0", "cascade 0", needs=("lowres0", "lowres1")),
        Job("cascade1", "cascade 1", needs=("lowres0", "lowres1")),
        Job("lowres0", "lowres 0"),
        Job("lowres1", "lowres 1"),
        Job("other", "2d"),
    ]
    tracker, failed = _run(jobs, executor, tmp_path)
    assert failed == [] and all(ok for ok, _ in tracker.ended.values())
    assert len(tracker.ended) == 5


def test_a_job_whose_need_failed_fails_unrun_and_a_done_need_counts(executor, tmp_path):  # noqa: F811
    jobs = [
        Job("cascade0", "cascade 0", needs=("lowres0", "lowres1")),
        Job("lowres0", "lowres 0", fail=True),
        Job("lowres1", "lowres 1"),
    ]
    tracker, failed = _run(jobs, executor, tmp_path)
    assert sorted(failed) == ["cascade 0", "lowres 0"]
    assert "3d_lowres stage" in tracker.ended["cascade0"][1]
    assert not (tmp_path / "cascade0").exists()
    # a rerun: lowres0 was done in an earlier run (its file is there), so the cascade runs
    (tmp_path / "lowres0").write_text("done")
    tracker, failed = _run(jobs, executor, tmp_path, done={"lowres0", "lowres1"})
    assert failed == [] and tracker.ended == {"cascade0": (True, None)}
