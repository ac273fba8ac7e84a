"""What a job's steps cost: seconds, synchronised with the device, and peak memory."""

from __future__ import annotations

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
