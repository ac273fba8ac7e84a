"""Peak memory is measured per span of work (ablate.device): two jobs of different size in one
process get different numbers, and a small job after a big one is not charged the big one's
peak (the worker's lifetime peak was what the report showed before)."""

import pickle

import numpy as np
import pytest
import torch

from ablate.device import headline_peak_mb, peak_memory_mb, reset_peak_memory
from ablate.run.cost import add_costs, measured_job, timed

CPU = torch.device("cpu")
MB = 2**20

needs_proc = pytest.mark.skipif(
    np.isnan(headline_peak_mb((reset_peak_memory(CPU), peak_memory_mb(CPU))[1])),
    reason="no resettable peak RSS here (needs Linux /proc/self/clear_refs)",
)


def _job(megabytes: int) -> float:
    """A 'job' that touches `megabytes` of fresh memory, then frees it; its measured peak."""
    reset_peak_memory(CPU)
    block = torch.ones(megabytes * MB // 4)  # float32, every page written
    block += 1
    del block
    return headline_peak_mb(peak_memory_mb(CPU))


@needs_proc
def test_each_job_is_charged_its_own_peak_not_the_process_lifetime():
    big = _job(300)
    small = _job(30)
    again = _job(300)
    assert 280 < big < 360 and 280 < again < 360
    assert 25 < small < 60  # after the big job, in the same process
    lifetime = peak_memory_mb(CPU)["lifetime_peak_rss_mb"]
    assert lifetime > small + 250  # what the report used to show for every job


@needs_proc
def test_memory_held_from_before_the_span_is_not_the_span_s_use():
    held = torch.ones(200 * MB // 4) + 1  # like weights loaded before the measured loop
    small = _job(20)
    assert 15 < small < 50
    peaks = peak_memory_mb(CPU)
    assert peaks["peak_rss_mb"] > peaks["peak_rss_rise_mb"] + 200  # the process holds `held`
    del held


def test_cuda_peaks_are_the_allocator_s_and_take_priority():
    peaks = {"peak_gpu_allocated_mb": 12.0, "peak_gpu_reserved_mb": 20.0, "peak_rss_rise_mb": 1.0}
    assert headline_peak_mb(peaks) == 12.0
    assert np.isnan(headline_peak_mb({}))


@measured_job
def _case_job(held_mb: int, window_mb: int) -> float:
    """A job shaped like a test-set case: data held across steps, then a sliding-window step."""
    held, prep = timed(CPU, lambda: torch.ones(held_mb * MB // 4) + 1)  # kept: the case's data
    _, window = timed(CPU, _touch, window_mb)
    del held
    return headline_peak_mb(add_costs(prep, window))


def _touch(megabytes: int) -> None:
    block = torch.ones(megabytes * MB // 4)
    block += 1


@needs_proc
def test_a_job_s_steps_are_charged_what_the_job_holds_and_jobs_differ():
    big = _case_job(100, 200)
    small = _case_job(10, 20)
    assert 280 < big < 360  # the window step counts the 100 MB held from the first step
    assert 25 < small < 60  # the same worker, after the big job
    assert _case_job(100, 200) == pytest.approx(big, abs=20)


def test_job_functions_stay_picklable_for_worker_processes():
    from ablate.run.held_out_jobs import execute_ensemble, execute_test
    from ablate.run.jobs import execute_evaluation, execute_training

    for fn in (execute_training, execute_evaluation, execute_test, execute_ensemble):
        assert pickle.loads(pickle.dumps(fn)) is fn
