"""Where jobs run. The runner hands an executor picklable calls and gets outcomes back; the
stages never know which executor ran them.

Contract (every executor, checked by tests/test_executors.py):
- `submit(fn, *args) -> Future`: schedule `fn(*args)`; the Future's `result()` returns its value
  or raises its exception.
- `as_completed(futures)`: yields futures as they finish.
- `shutdown(cancel=False)`: stop; with cancel=True, pending work is dropped and running work
  interrupted where the engine allows.
Tracking stays in the driver process: workers return outcomes and never write to the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ablate.errors import ConfigError


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
    import torch

    torch.set_num_threads(max(1, threads))


class LocalExecutor:
    """N worker processes on this machine, each pinned to one GPU (or CPU-only)."""

    def __init__(self, workers: int, gpus: list[int] | None = None, threads_per_worker: int = 1):
        if workers < 1:
            raise ConfigError(f"executor.workers must be >= 1, got {workers}")
        if gpus and len(gpus) < workers:
            raise ConfigError(f"executor.gpus lists {len(gpus)} GPUs for {workers} workers; "
                              "give one GPU per worker")
        self.capacity = workers
        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(gpus[i] if gpus else "cpu")
        self._pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_worker,
                                            initargs=(slots, threads_per_worker))

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        return self._pool.submit(fn, *args)

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "inprocess": lambda **kw: InProcessExecutor(),
    "local": lambda **kw: LocalExecutor(kw.get("workers", 2), kw.get("gpus"),
                                        kw.get("threads_per_worker", 1)),
}


def make_executor(kind: str, **options: Any) -> Executor:
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind {kind!r} is unknown; valid: {', '.join(EXECUTORS)}")
    return EXECUTORS[kind](**options)
