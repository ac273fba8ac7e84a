"""Where jobs run. The runner hands an executor picklable calls and gets outcomes back; the
stages never know which executor ran them.

Contract (every executor, checked by tests/test_executors.py):
- `submit(fn, *args) -> Future`: schedule `fn(*args)`; the Future's `result()` returns its value
  or raises its exception.
- `as_completed(futures)`: yields futures as they finish.
- `shutdown(cancel=False)`: stop; with cancel=True, pending work is dropped and running work
  interrupted where the engine allows.
Tracking stays in the driver process: workers return outcomes and never write to the store.

Kinds (`EXECUTORS`, chosen by the study's `executor:` section through `executor_for(study)`):
inprocess (default), local (spawned worker processes, one GPU each), slurm (submitit job arrays,
`ablate.executor_slurm`), ray (Ray tasks, `ablate.executor_ray`). The last two import their
engine only when chosen, so neither is needed for the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ablate.errors import ConfigError
from ablate.study import ExecutorSpec, Study


class Executor(Protocol):
    capacity: int  # how many jobs the runner keeps in flight

    def submit(self, fn: Callable, *args: Any) -> cf.Future: ...

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


class InProcessExecutor:
    """Runs each call at submit time, in this process (the default; no parallelism)."""

    capacity = 1

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed back through the future
            future.set_exception(exc)
        return future

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        yield from futures

    def shutdown(self, cancel: bool = False) -> None:
        pass


def _pin_worker(slots: mp.Queue, threads: int) -> None:
    """Worker initialiser: take one device slot (a GPU index or 'cpu') for the worker's life."""
    slot = slots.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if slot == "cpu" else str(slot)
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))  # before torch starts its pools
    limit_torch_threads(threads)


def drop(future: cf.Future) -> None:
    """Cancel a future nobody started, telling `cf.wait` / `as_completed` callers it is done
    (a bare `cancel()` leaves them waiting)."""
    if not future.done() and future.cancel():
        future.set_running_or_notify_cancel()


def limit_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(max(1, threads))
    except RuntimeError:  # already set in this process
        pass


def interrupted() -> bool:
    """True while a KeyboardInterrupt or SystemExit propagates (e.g. in the runner's `finally`),
    so a plain `shutdown()` during Ctrl-C still stops running work instead of waiting for it."""
    exc = sys.exc_info()[1]
    return isinstance(exc, (KeyboardInterrupt, SystemExit))


class LocalExecutor:
    """N worker processes on this machine, each pinned to one GPU (or CPU-only)."""

    def __init__(self, workers: int, gpus: list[int] | None = None, threads_per_worker: int = 1):
        if workers < 1:
            raise ConfigError(f"executor.workers must be >= 1, got {workers}")
        if gpus and len(gpus) < workers:
            raise ConfigError(f"executor.gpus lists {len(gpus)} GPUs for {workers} workers; "
                              "give one GPU per worker")
        self.capacity = workers
        ctx = mp.get_context("spawn")  # fork would copy the driver's torch/CUDA/MLflow state
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(gpus[i] if gpus else "cpu")
        self._pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_worker,
                                            initargs=(slots, threads_per_worker))
        self._unfinished: set[cf.Future] = set()

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future = self._pool.submit(fn, *args)
        self._unfinished.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: cf.Future) -> None:
        if not future.cancelled():
            self._unfinished.discard(future)

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        cancel = cancel or interrupted()
        if cancel:
            # the pool has no public way to stop running calls; their futures then fail with
            # BrokenProcessPool, which the runner records as failed jobs
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        # the pool cancels queued futures without notifying `cf.wait` callers; do it for it
        for future in list(self._unfinished):
            if future._state == "CANCELLED":  # not yet notified; no public accessor
                future.set_running_or_notify_cancel()
        self._unfinished.clear()


def _local(spec: ExecutorSpec, workdir: Path) -> Executor:
    return LocalExecutor(spec.workers, spec.gpus, spec.threads_per_worker)


def _slurm(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.executor_slurm import SlurmExecutor

    folder = spec.slurm.folder or workdir / "slurm"
    return SlurmExecutor(spec.slurm, folder, spec.threads_per_worker)


def _ray(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.executor_ray import RayExecutor

    return RayExecutor(spec.ray, spec.workers, spec.threads_per_worker)


EXECUTORS: dict[str, Callable[[ExecutorSpec, Path], Executor]] = {
    "inprocess": lambda spec, workdir: InProcessExecutor(),
    "local": _local,
    "slurm": _slurm,
    "ray": _ray,
}


def make_executor(spec: ExecutorSpec | str = "inprocess", workdir: Path | None = None,
                  **options: Any) -> Executor:
    """The executor a study's `executor:` section describes; a kind name plus options
    (`make_executor("local", workers=2)`) works too."""
    if isinstance(spec, str):
        try:
            spec = ExecutorSpec(kind=spec, **options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "kind"
            raise ConfigError(f"executor.{where}: {first['msg']}; valid kinds: "
                              f"{', '.join(EXECUTORS)}") from None
    return EXECUTORS[spec.kind](spec, Path(workdir or Path.cwd()).absolute())


def executor_for(study: Study) -> Executor:
    """The executor of a study (`executor:` section; in-process when absent)."""
    return make_executor(study.executor, study.work_dir())
