"""Mean paired differences whose error term holds the training runs: the report's headline tests.

A variant's fold model is a training run, so every case a fold model predicts shares that run's
offset. Two trained configurations are therefore compared on clusters: the cases of one fold form
one cluster, and the cluster-robust (CR1) variance of the mean paired difference has K - 1
degrees of freedom for K folds (seeds are averaged per case first, which shrinks the run term).
With equal fold sizes this is exactly the paired t-test on the K fold means, which is exact under
the random-effects model `value = config + case + run + noise`; see docs/STATISTICS.md for its
calibration against the case-level Wilcoxon, a hierarchical bootstrap and Nadeau and Bengio's
correction. Inference-only comparisons (TTA, postprocessing: the same trained models) and pairs
without folds use each case as its own cluster: the ordinary paired t-test.

Everything here is vectorised over rows so that the calibration simulations run in seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

MIN_RUNS = 3  # fewer fold models per variant leave too few degrees of freedom for run variance
NO_VARIANCE = 1e-12  # a standard error below this is rounding: the differences are all equal


def cluster_mean_rows(d: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and cluster-robust standard error per row of `d` (rows, cases); no NaNs.

    groups: (cases,) cluster label of each case. Returns (mean, se, df = clusters - 1).
    """
    d = np.atleast_2d(np.asarray(d, dtype=float))
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    k, n = labels.size, d.shape[1]
    onehot = np.zeros((n, k))
    onehot[np.arange(n), index] = 1.0
    sizes = onehot.sum(axis=0)  # (k,)
    mean = d.mean(axis=1)  # (rows,)
    resid = d @ onehot - mean[:, None] * sizes[None, :]  # (rows, k): S_g - n_g * mean
    var = k / max(k - 1, 1) * (resid**2).sum(axis=1) / n**2
    return mean, np.sqrt(var), k - 1


def t_test_rows(mean, se, df, shift: float = 0.0, alternative: str = "two-sided") -> np.ndarray:
    """p of H0: mu = -shift (two-sided), or of the one-sided alternatives, from a t statistic."""
    mean, se = np.asarray(mean, float), np.asarray(se, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean + shift) / se
        t = np.where(se > 0, t, np.where(mean + shift == 0, 0.0, np.sign(mean + shift) * np.inf))
    if alternative == "greater":
        return sps.t.sf(t, df)
    if alternative == "less":
        return sps.t.cdf(t, df)
    return np.minimum(1.0, 2 * sps.t.sf(np.abs(t), df))


def paired_mean(d: np.ndarray, groups: np.ndarray | None, level: float = 0.95) -> dict:
    """Mean paired difference with a t interval and a two-sided p (H0: mean 0).

    d: per-case differences (NaNs dropped with their group); groups: cluster per case (fold), or
    None for cases as clusters. Fewer than MIN_RUNS clusters (or 2 cases) gives NaN p and CI.
    """
    d = np.asarray(d, dtype=float)
    keep = ~np.isnan(d)
    groups = np.arange(d.size) if groups is None else np.asarray(groups)
    d, groups = d[keep], groups[keep]
    clusters = int(np.unique(groups).size)
    out = {
        "n": int(d.size),
        "clusters": clusters,
        "df": max(clusters - 1, 0),
        "mean": float(d.mean()) if d.size else np.nan,
        "se": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "p": np.nan,
    }
    if clusters < MIN_RUNS or d.size < 2:
        return out
    mean, se, df = cluster_mean_rows(d[None, :], groups)
    if (
        se[0] < NO_VARIANCE and abs(mean[0]) >= NO_VARIANCE
    ):  # one shift on every cluster: no variance to test with
        out.update(se=0.0, ci_low=float(mean[0]), ci_high=float(mean[0]))
        return out
    half = sps.t.ppf(0.5 + level / 2, df) * se[0]
    out.update(
        se=float(se[0]),
        ci_low=float(mean[0] - half),
        ci_high=float(mean[0] + half),
        p=float(t_test_rows(mean, se, df)[0]),
    )
    return out


def noninferiority(
    mean: float, se: float, df: int, margin: float, higher_is_better: bool, alpha: float = 0.05
) -> dict:
    """One-sided test that a candidate is not worse than its reference by more than `margin`.

    mean, se: of the paired difference candidate - reference. H0: the candidate is worse by the
    margin or more (mean <= -margin when higher is better, >= +margin when lower is better).
    Returns p, the one-sided (1 - alpha) confidence bound on the worse side, and the verdict;
    the two one-sided tests' equivalence p (TOST) is added for completeness.
    """
    if (
        not np.isfinite(se) or se < NO_VARIANCE or df < 1
    ):  # no variance (all differences equal): no test
        return {"p": np.nan, "bound": np.nan, "noninferior": False, "p_equivalence": np.nan}
    q = sps.t.ppf(1 - alpha, df)
    if higher_is_better:
        p = float(t_test_rows(mean, se, df, shift=margin, alternative="greater"))
        bound = mean - q * se
    else:
        p = float(t_test_rows(mean, se, df, shift=-margin, alternative="less"))
        bound = mean + q * se
    upper = float(t_test_rows(mean, se, df, shift=-margin, alternative="less"))
    lower = float(t_test_rows(mean, se, df, shift=margin, alternative="greater"))
    return {
        "p": p,
        "bound": float(bound),
        "noninferior": p < alpha,
        "p_equivalence": max(upper, lower),
    }


def minimum_detectable(se: float, df: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference the two-sided t-test detects with `power` at this standard error
    (the standard error measured in this study, so an estimate itself)."""
    if not np.isfinite(se) or df < 1:
        return np.nan
    return float((sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) * se)


def variance_components(d: np.ndarray, groups: np.ndarray) -> tuple[float, float, float]:
    """(within, run, mean cluster size) of seed-averaged differences: `within` the pooled
    variance of cases inside a fold, `run` the part of the fold means' variance the cases do not
    explain (the training runs' share, floored at 0). NaNs dropped."""
    d, groups = np.asarray(d, float), np.asarray(groups)
    keep = ~np.isnan(d)
    d, groups = d[keep], groups[keep]
    parts = [d[groups == g] for g in np.unique(groups)]
    parts = [p for p in parts if p.size]
    sizes = np.array([p.size for p in parts], float)
    if len(parts) < 2 or (sizes < 2).all():
        return np.nan, np.nan, np.nan
    within = float(
        np.sum([p.var(ddof=1) * (p.size - 1) for p in parts if p.size > 1])
        / np.sum(sizes[sizes > 1] - 1)
    )
    between = float(np.var([p.mean() for p in parts], ddof=1))
    m = float(sizes.mean())
    return within, max(between - within / m, 0.0), m


def runs_needed(
    d: np.ndarray,
    groups: np.ndarray,
    difference: float,
    seeds: int,
    power: float = 0.8,
    alpha: float = 0.05,
    max_seeds: int = 20,
) -> dict:
    """Seeds (same cases) and cases (same seeds) for the configuration-level test to detect
    `difference` with `power`, from this study's variance components. Conservative: only the run
    share shrinks with more seeds (the case scatter may hold case x configuration effects that
    seeds do not average out). None where no number up to the limit suffices."""
    within, run, m = variance_components(d, groups)
    k = int(np.unique(np.asarray(groups)[~np.isnan(np.asarray(d, float))]).size)
    out = {"seeds_needed": None, "cases_needed": None}
    if not np.isfinite(within) or k < MIN_RUNS or within + run < NO_VARIANCE**2:
        return out
    q = sps.t.ppf(1 - alpha / 2, k - 1) + sps.t.ppf(power, k - 1)

    def detects(n_seeds: float, per_fold: float) -> bool:
        return q * np.sqrt((run * seeds / n_seeds + within / per_fold) / k) <= abs(difference)

    out["seeds_needed"] = next((s for s in range(1, max_seeds + 1) if detects(s, m)), None)
    out["cases_needed"] = next((k * c for c in range(2, 2001) if detects(seeds, c)), None)
    return out


def cases_needed(
    d: np.ndarray, difference: float, power: float = 0.8, alpha: float = 0.05, limit: int = 5000
) -> int | None:
    """Cases for the case-level paired t-test (the same trained models) to detect `difference`
    with `power`, from the sd of these paired differences."""
    d = np.asarray(d, float)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd < NO_VARIANCE:
        return None
    for n in range(MIN_RUNS, limit + 1):
        q = sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)
        if q * sd / np.sqrt(n) <= abs(difference):
            return n
    return None
