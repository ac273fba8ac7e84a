"""Ray executor: each job is a Ray task with `num_cpus` / `num_gpus`, on an existing cluster
(`executor.ray.address`, e.g. "auto" or "ray://head:10001") or on a local one started here.

Ray sets CUDA_VISIBLE_DEVICES per task from `num_gpus`; fractional GPUs pack jobs on one GPU.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ablate.errors import ConfigError
from ablate.run.executors.base import drop, interrupted, limit_torch_threads
from ablate.study import RaySpec


def _run_call(threads: int, fn: Callable, *args: Any) -> Any:
    limit_torch_threads(threads)
    return fn(*args)


class RayExecutor:
    """Jobs as Ray tasks; a local cluster started here is stopped again by `shutdown`."""

    def __init__(self, spec: RaySpec, workers: int = 1, threads_per_worker: int = 1):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "executor.kind 'ray' needs Ray; pip install 'ablate[cluster]' (or pip install ray)"
            ) from None
        self._ray = ray
        self.capacity = workers
        self._started_here = False
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker)}}
        if not ray.is_initialized():
            if spec.address:
                ray.init(address=spec.address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(1, math.ceil(workers * max(spec.num_cpus, 1))),
                    num_gpus=math.ceil(workers * spec.num_gpus) or None,  # None: detect
                    include_dashboard=False,
                    runtime_env=env,
                    log_to_driver=False,
                    object_store_memory=256 * 2**20,
                )  # jobs pass small arguments only
                self._started_here = True
        self._task = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=0)(
            _run_call
        )
        self._threads = threads_per_worker
        self._refs: dict[cf.Future, Any] = {}

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        ref = self._task.remote(self._threads, fn, *args)
        future: cf.Future = cf.Future()
        self._refs[future] = ref
        ref.future().add_done_callback(lambda done: self._settle(future, done))
        return future

    def _settle(self, future: cf.Future, done: cf.Future) -> None:
        self._refs.pop(future, None)
        if future.done():  # cancelled by shutdown
            return
        exc = done.exception()
        if exc is None:
            future.set_result(done.result())
        else:
            # hand back the job's own exception, not Ray's wrapper around it
            future.set_exception(getattr(exc, "cause", None) or exc)

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        if cancel or interrupted():
            refs, self._refs = dict(self._refs), {}
            for future, ref in refs.items():
                drop(future)
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone with its worker
                    pass
        else:
            cf.wait(list(self._refs))
        if self._started_here:
            self._ray.shutdown()
