"""Paired differences of two configurations on a test set that every training run predicts in
full: runs (fold models x seeds) crossed with cases.

With d = delta + run + case + noise (run: the two runs' offsets; case: the case x configuration
interaction; both random), the variance of the mean difference is estimated from the two-way
ANOVA mean squares, (MS_run + MS_case - MS_error) / (runs x cases), floored at the larger of
MS_run and MS_case, on min(Satterthwaite, runs - 1) degrees of freedom. Chosen by calibration
(tests/test_held_out_configuration.py, 20,000 simulated nulls per cell, 3-15 runs, 6-100 cases,
run sd 0.25-2 points, case sd 0-1 point): worst false-positive rate 5.1%. Clustering on the runs
alone (the cross-validation test's clusters) ignores the case term and rejected up to 35% of true
nulls; Satterthwaite's df without the cap reached 6.6% at 3 runs.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ablate.report.paired import MIN_RUNS, NO_VARIANCE
from ablate.report.stats import MIN_PAIRS


def crossed_mean_rows(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and df of d (rows, runs, cases) under run x case crossed random
    effects (see the module docstring); rows are independent studies (vectorised for the
    calibration simulations)."""
    d = np.asarray(d, dtype=float)
    _, runs, cases = d.shape
    grand = d.mean(axis=(1, 2))
    run_means, case_means = d.mean(axis=2), d.mean(axis=1)
    ms_run = cases * ((run_means - grand[:, None]) ** 2).sum(axis=1) / (runs - 1)
    ms_case = runs * ((case_means - grand[:, None]) ** 2).sum(axis=1) / (cases - 1)
    resid = d - run_means[:, :, None] - case_means[:, None, :] + grand[:, None, None]
    ms_error = (resid**2).sum(axis=(1, 2)) / ((runs - 1) * (cases - 1))
    num = np.maximum(ms_run + ms_case - ms_error, np.maximum(ms_run, ms_case))
    with np.errstate(divide="ignore", invalid="ignore"):
        satterthwaite = num**2 / (
            ms_run**2 / (runs - 1)
            + ms_case**2 / (cases - 1)
            + ms_error**2 / ((runs - 1) * (cases - 1))
        )
    df = np.minimum(np.nan_to_num(satterthwaite, nan=runs - 1.0), runs - 1.0)
    return grand, np.sqrt(num / (runs * cases)), df


def crossed_mean(d: np.ndarray, level: float = 0.95) -> dict:
    """Mean of a (runs, cases) table of paired differences with its crossed-effects t interval
    and two-sided p; NaN p and interval below MIN_RUNS runs or MIN_PAIRS cases."""
    d = np.asarray(d, dtype=float)
    runs, cases = d.shape
    out = {"runs": runs, "n": cases, "mean": float(d.mean()) if d.size else np.nan}
    out.update(se=np.nan, df=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan)
    if runs < MIN_RUNS or cases < MIN_PAIRS:
        return out
    mean, se, df = (x[0] for x in crossed_mean_rows(d[None]))
    if se < NO_VARIANCE:
        return out
    half = sps.t.ppf(0.5 + level / 2, df) * se
    p = float(min(1.0, 2 * sps.t.sf(abs(mean) / se, df)))
    out.update(se=float(se), df=float(df), ci_low=mean - half, ci_high=mean + half, p=p)
    return out
