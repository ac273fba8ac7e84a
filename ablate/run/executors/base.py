"""The executor interface and the helpers every backend shares.

Contract (every executor, checked by tests/test_executors.py):
- `capacity`: how many jobs the driver keeps in flight.
- `submit(fn, *args) -> Future`: schedule `fn(*args)`; the Future's `result()` returns its value
  or raises its exception.
- `as_completed(futures)`: yields futures as they finish.
- `shutdown(cancel=False)`: stop; with cancel=True, pending work is dropped and running work
  interrupted where the engine allows.
Tracking stays in the driver process: workers return outcomes and never write to the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol


class Executor(Protocol):
    capacity: int  # how many jobs the runner keeps in flight

    def submit(self, fn: Callable, *args: Any) -> cf.Future: ...

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


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
