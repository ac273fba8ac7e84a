"""Device choice and memory measurement shared by training and inference.

Peak memory is measured for one span of work (a training loop, one step of a case's prediction),
between `reset_peak_memory` and `peak_memory_mb`, so that equal numbers mean equal use:

- CUDA: the caching allocator's peak allocated (and reserved) bytes after a reset
  (`torch.cuda.reset_peak_memory_stats`, `max_memory_allocated`): every live tensor counts,
  those allocated before the reset (the weights, the case's data) included.
- CPU (Linux): the process's peak resident set size during the span (`VmHWM`, reset through
  `/proc/self/clear_refs`, Linux >= 4.0) minus its resident size at the start of the job
  (`job_memory`), after the garbage collector ran and glibc returned freed heap memory to the
  system (`malloc_trim`): what the job holds, weights and data included, as on CUDA, and nothing
  an earlier job of the same worker left. Outside a `job_memory` block the span's own start is
  the reference. Without /proc (macOS) the per-job figure is NaN and only the process's
  lifetime peak is given.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RSS_AT_RESET_MB: list[float] = []  # the reference of the current CPU span (one per process)
_RSS_AT_JOB_START_MB: list[float] = []  # set inside `job_memory`


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reset_peak_memory(device: torch.device) -> None:
    """Start a measured span: reset the allocator's peak (CUDA) or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    _RSS_AT_RESET_MB.clear()
    if not _reset_rss_peak():
        return
    rss = _RSS_AT_JOB_START_MB[0] if _RSS_AT_JOB_START_MB else _status_mb("VmRSS")
    if rss is not None:
        _RSS_AT_RESET_MB.append(rss)


@contextmanager
def job_memory() -> Iterator[None]:
    """One job: CPU peaks measured inside count from the process's resident memory now (after
    freeing what an earlier job left), so every step of the job is charged what the job holds."""
    _free_memory()
    rss = _status_mb("VmRSS")
    _RSS_AT_JOB_START_MB[:] = [] if rss is None else [rss]
    try:
        yield
    finally:
        _RSS_AT_JOB_START_MB.clear()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory of the span since `reset_peak_memory` (see the module docstring).

    CUDA: peak_gpu_allocated_mb, peak_gpu_reserved_mb. CPU: peak_rss_rise_mb (the job's use:
    peak RSS minus RSS at the job's start; NaN where it cannot be measured), peak_rss_mb (the
    process's peak RSS during the span) and lifetime_peak_rss_mb (since the process started)."""
    if device.type == "cuda":
        return {
            "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"lifetime_peak_rss_mb": lifetime / (2**20 if sys.platform == "darwin" else 2**10)}
    peak = _status_mb("VmHWM") if _RSS_AT_RESET_MB else None
    if peak is None:
        return {**out, "peak_rss_mb": float("nan"), "peak_rss_rise_mb": float("nan")}
    return {**out, "peak_rss_mb": peak, "peak_rss_rise_mb": max(peak - _RSS_AT_RESET_MB[0], 0.0)}


def headline_peak_mb(peaks: dict[str, float]) -> float:
    """The one number a report shows: peak allocated GPU memory, else the span's RSS rise."""
    return peaks.get("peak_gpu_allocated_mb", peaks.get("peak_rss_rise_mb", float("nan")))


def _reset_rss_peak() -> bool:
    """Free what can be freed, then set the kernel's peak RSS to the current RSS; False where the
    platform has no resettable peak (no /proc, or clear_refs not writable)."""
    _free_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc), so the resident
    size reflects what is live."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _status_mb(field: str) -> float | None:
    """A `kB` field of /proc/self/status in MiB, or None without it."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


@cache
def _glibc():
    """glibc, for malloc_trim; None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (absent outside glibc)
    except (OSError, AttributeError):
        return None
    return libc
