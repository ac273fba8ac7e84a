"""What a job's steps cost: seconds, synchronised with the device, and peak memory (measured as
ablate.device describes: per step, counted from the job's start)."""

from __future__ import annotations

import functools
import time


def timed(device, fn, *args):
    """fn(*args) and its cost: seconds (synchronised with the device) and peak memory during it."""
    from ablate.device import peak_memory_mb, reset_peak_memory, synchronize

    reset_peak_memory(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    return out, {"seconds": time.perf_counter() - start, **peak_memory_mb(device)}


def add_costs(*parts: dict) -> dict:
    """Seconds add up; peak memories take the maximum."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = (
                total.get(key, 0.0) + value if key == "seconds" else max(total.get(key, 0.0), value)
            )
    return total


def measured_job(fn):
    """A job function whose steps' peak memory counts from the process's memory at the job's
    start (ablate.device.job_memory): what the job holds, and nothing an earlier job left."""

    @functools.wraps(fn)
    def job(*args, **kwargs):
        from ablate.device import job_memory

        with job_memory():
            return fn(*args, **kwargs)

    return job
