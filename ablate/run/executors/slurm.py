"""SLURM executor through submitit: calls submitted close together go out as one job array;
a preempted or timed-out job is requeued and runs the same call again, which continues from
the job's checkpoint (`train` resumes from checkpoint_latest.pt in its job folder).

Needs a filesystem shared by the driver and the compute nodes for the study's workdir (data
cache, job folders) and `executor.slurm.folder` (submitit's pickles and logs). The driver polls
the queue; it never writes from the jobs to the tracking store.
"""

from __future__ import annotations

import concurrent.futures as cf
import pickle
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError
from ablate.run.executors.base import drop, interrupted, limit_torch_threads
from ablate.study import SlurmSpec

try:
    import submitit
    from submitit.core.utils import pickle_load
    from submitit.helpers import Checkpointable
except ImportError:  # the executor says what to install when chosen
    submitit = None
    Checkpointable = object


class ResumableCall(Checkpointable):
    """submitit requeues this same call on preemption/time-out (Checkpointable.checkpoint)."""

    def __init__(self, fn: Callable, threads: int):
        self.fn = fn
        self.threads = threads

    def __call__(self, *args: Any) -> tuple:
        import traceback

        limit_torch_threads(self.threads)
        try:
            return ("ok", self.fn(*args))
        except Exception as exc:  # noqa: BLE001 - sent back whole, so the driver re-raises its type
            trace = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            return ("error", exc, trace)


def slurm_parameters(spec: SlurmSpec, threads: int) -> dict[str, Any]:
    """submitit's `update_parameters` keywords for one job of the study."""
    params = {
        "name": "ablate",
        "timeout_min": spec.time_min,
        "gpus_per_node": spec.gpus_per_job,
        "cpus_per_task": spec.cpus_per_job,
        "mem_gb": spec.mem_gb,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": spec.array_parallelism,
        "slurm_setup": [f"export OMP_NUM_THREADS={threads}"],
    }
    if spec.partition:
        params["slurm_partition"] = spec.partition
    if spec.extra:
        params["slurm_additional_parameters"] = dict(spec.extra)
    return params


def queued_job_ids() -> set[str] | None:
    """Ids of this user's jobs still in the queue (array tasks as `123_4`); None if squeue fails."""
    try:
        out = subprocess.run(
            ["squeue", "--me", "-h", "-r", "-o", "%i"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


class SlurmExecutor:
    """Jobs as SLURM jobs (arrays when submitted together); futures settled by a poller thread."""

    def __init__(
        self,
        spec: SlurmSpec,
        folder: Path,
        threads_per_worker: int = 1,
        poll_s: float = 0.5,
        batch_wait_s: float = 0.2,
        squeue_every_s: float = 15.0,
    ):
        if submitit is None:
            raise ConfigError(
                "executor.kind 'slurm' needs submitit; pip install "
                "'ablate[cluster]' (or pip install submitit)"
            )
        self.capacity = spec.array_parallelism
        self._executor = submitit.AutoExecutor(
            folder=Path(folder) / "%j", cluster="slurm", slurm_max_num_timeout=spec.max_requeues
        )
        self._executor.update_parameters(**slurm_parameters(spec, threads_per_worker))
        self._threads = threads_per_worker
        # result files are cheap to look for; squeue (to notice jobs that died) is asked rarely
        self._poll_s, self._batch_wait_s = poll_s, batch_wait_s
        self._squeue_every_s = squeue_every_s
        self._last_squeue = time.monotonic()
        self._lock = threading.Lock()
        self._pending: list[tuple[cf.Future, Callable, tuple]] = []
        self._running: dict[cf.Future, Any] = {}  # future -> submitit Job
        self._gone: set[cf.Future] = set()  # absent from the last squeue, no result yet
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ablate-slurm", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        with self._lock:
            self._pending.append((future, fn, args))
        self._wake.set()
        return future

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            if self._wake.is_set():
                self._wake.clear()
                time.sleep(self._batch_wait_s)  # let the runner's burst of submits join one array
            try:
                self._flush()
                self._poll()
            except Exception as exc:  # noqa: BLE001 - fail the jobs, never the thread silently
                self._fail_all(exc)

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        batch = [item for item in batch if not item[0].done()]
        if not batch:
            return
        try:
            with self._executor.batch():
                jobs = [
                    self._executor.submit(ResumableCall(fn, self._threads), *args)
                    for _, fn, args in batch
                ]
        except Exception as exc:  # noqa: BLE001 - sbatch refused: every job of the batch fails
            for future, _, _ in batch:
                future.set_exception(exc)
            return
        with self._lock:
            for (future, _, _), job in zip(batch, jobs, strict=True):
                self._running[future] = job

    def _poll(self) -> None:
        with self._lock:
            running = list(self._running.items())
        for future, job in running:
            if job.paths.result_pickle.exists():
                self._settle(future, job)
        if not running or time.monotonic() - self._last_squeue < self._squeue_every_s:
            return
        self._last_squeue = time.monotonic()
        queued = queued_job_ids()
        with self._lock:
            running = list(self._running.items())
        for future, job in running:
            if queued is None or job.job_id in queued or job.paths.result_pickle.exists():
                self._gone.discard(future)
            elif future in self._gone:  # absent twice in a row, still no result file
                self._settle(future, job, gone=True)
            else:  # left the queue: cancelled, killed, or its result file is still on its way
                self._gone.add(future)

    def _settle(self, future: cf.Future, job: Any, gone: bool = False) -> None:
        with self._lock:
            self._running.pop(future, None)
        self._gone.discard(future)
        if future.done():
            return
        if gone:
            future.set_exception(
                RuntimeError(
                    f"SLURM job {job.job_id} ended without a result (cancelled or killed); "
                    f"see {job.paths.stderr}"
                )
            )
            return
        try:
            outcome, value = pickle_load(job.paths.result_pickle)
        except (EOFError, pickle.UnpicklingError):  # still being written; next poll
            with self._lock:
                self._running[future] = job
            return
        if outcome != "success":  # submitit's own failure record: ("error", traceback text)
            future.set_exception(RuntimeError(f"SLURM job {job.job_id} failed:\n{value}"))
        elif value[0] == "ok":
            future.set_result(value[1])
        else:
            exc, trace = value[1], value[2]
            if hasattr(exc, "add_note"):
                exc.add_note(f"in SLURM job {job.job_id}:\n{trace}")
            future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            futures = [f for f, _, _ in self._pending] + list(self._running)
            self._pending, self._running = [], {}
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    def shutdown(self, cancel: bool = False) -> None:
        cancel = cancel or interrupted()
        if not cancel:
            with self._lock:
                futures = [f for f, _, _ in self._pending] + list(self._running)
            cf.wait(futures)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with self._lock:
            pending, running = self._pending, self._running
            self._pending, self._running = [], {}
        for future, _, _ in pending:
            drop(future)
        for future, job in running.items():
            drop(future)
            job.cancel(check=False)  # scancel; a later `ablate run` resumes from the checkpoint
