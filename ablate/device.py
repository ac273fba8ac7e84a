"""Device choice and memory measurement shared by training and inference."""

from __future__ import annotations

import resource
import sys

import torch


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory since the last reset: allocated/reserved on CUDA, else the process's peak RSS.

    Peak RSS on CPU is a high-water mark for the whole process and cannot be reset.
    """
    if device.type == "cuda":
        return {
            "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}


def headline_peak_mb(peaks: dict[str, float]) -> float:
    """The one number a report shows: peak allocated GPU memory, else peak resident memory."""
    return peaks.get("peak_gpu_allocated_mb", peaks.get("peak_rss_mb", float("nan")))
