"""Executors on this machine: in-process (the default; no parallelism) and a local pool of
spawned worker processes, each pinned to one GPU or to the CPU."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ablate.errors import ConfigError
from ablate.run.executors.base import interrupted, limit_torch_threads


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


class LocalExecutor:
    """N worker processes on this machine, each pinned to one GPU (or CPU-only)."""

    def __init__(self, workers: int, gpus: list[int] | None = None, threads_per_worker: int = 1):
        if workers < 1:
            raise ConfigError(f"executor.workers must be >= 1, got {workers}")
        if gpus and len(gpus) < workers:
            raise ConfigError(
                f"executor.gpus lists {len(gpus)} GPUs for {workers} workers; "
                "give one GPU per worker"
            )
        self.capacity = workers
        ctx = mp.get_context("spawn")  # fork would copy the driver's torch/CUDA/MLflow state
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(gpus[i] if gpus else "cpu")
        self._pool = cf.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_pin_worker, initargs=(slots, threads_per_worker)
        )
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
