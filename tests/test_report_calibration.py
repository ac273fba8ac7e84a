"""Calibration of the report's tests on simulated studies with training-run variance (seeded,
vectorised, a few seconds): false-positive rate, family-wise rate, CI coverage, power and the
non-inferiority level, each within Monte-Carlo error of its nominal value."""

import numpy as np
import pytest

from ablate.report import calibration as cal

REPS = 2000
ALPHA = 0.05


def _tolerance(rate: float, reps: int = REPS) -> float:
    return 3 * cal.mc_error(rate, reps)  # three Monte-Carlo standard errors


@pytest.mark.parametrize(
    "run_sd, n_cases, seeds",
    [(0.0025, 20, 1), (0.005, 40, 3), (0.01, 100, 5), (0.01, 20, 1)],
)
def test_configuration_level_false_positive_rate(run_sd, n_cases, seeds):
    """Identical configurations whose trained models differ by a run offset (sd 0.25-1 point)."""
    rng = np.random.default_rng(int(run_sd * 1e4) + n_cases + seeds)
    rate = cal.false_positive_rate(
        "cluster_t", rng, REPS, n_cases=n_cases, seeds=seeds, run_sd=run_sd
    )
    assert rate <= ALPHA + _tolerance(ALPHA)


def test_case_level_wilcoxon_is_not_a_configuration_test():
    """Why the headline changed: the case-level test rejects identical configurations far more
    often than 5% once runs differ (the issue's 10% at 40 cases, 0.5-point offsets)."""
    rng = np.random.default_rng(1)
    rate = cal.false_positive_rate("wilcoxon", rng, REPS, n_cases=40, run_sd=0.005)
    assert rate > 0.08


def test_familywise_rate_of_one_holm_family():
    rng = np.random.default_rng(2)
    rate = cal.familywise_rate("cluster_t", rng, 1000, n_cases=40, run_sd=0.005)
    assert rate <= ALPHA + _tolerance(ALPHA, 1000)


@pytest.mark.parametrize("n_cases", [6, 20, 100])
def test_configuration_level_interval_covers(n_cases):
    rng = np.random.default_rng(10 + n_cases)
    cover = cal.coverage("cluster_t", rng, REPS, n_cases=n_cases, run_sd=0.005)
    assert abs(cover - 0.95) <= _tolerance(0.95)


@pytest.mark.parametrize("n_cases", [6, 20, 100])
def test_case_level_interval_covers_for_the_same_trained_models(n_cases):
    """Inference-only comparisons (TTA, postprocessing): no run term, cases are the unit."""
    rng = np.random.default_rng(20 + n_cases)
    cover = cal.coverage("case_t", rng, REPS, n_cases=n_cases, run_sd=0.0)
    assert abs(cover - 0.95) <= _tolerance(0.95)


def test_power_matches_the_noncentral_t():
    rng = np.random.default_rng(3)
    simulated = cal.power("cluster_t", rng, 0.02, REPS, n_cases=40, run_sd=0.005)
    expected = cal.analytic_power(0.02, 40, run_sd=0.005)
    assert abs(simulated - expected) <= _tolerance(expected)


def test_noninferiority_keeps_its_one_sided_level():
    rng = np.random.default_rng(4)
    rate = cal.noninferiority_level(rng, margin=0.01, reps=REPS, n_cases=40, run_sd=0.005)
    assert rate <= ALPHA + _tolerance(ALPHA)


@pytest.mark.parametrize("seeds", [3, 5])
def test_seed_level_false_positive_rate_with_one_split(seeds):
    rng = np.random.default_rng(30 + seeds)
    rate = cal.seed_level_false_positive_rate(rng, REPS, n_cases=40, seeds=seeds, run_sd=0.01)
    assert rate <= ALPHA + _tolerance(ALPHA)
