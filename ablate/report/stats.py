"""Statistics on the tidy results table; no plotting here.

Unit of analysis: one case (each case lies in exactly one validation fold). A variant's value for
a case is the mean over its seeds. Every test pairs variants by case and drops pairs with a NaN;
fewer than MIN_PAIRS pairs gives a note instead of a p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

HIGHER_IS_BETTER = {"dsc": True, "nsd": True, "hd95": False, "assd": False, "abs_rvd": False}
MIN_PAIRS = 6  # non-zero paired differences a Wilcoxon test needs
EXACT_MAX = 50  # non-zero pairs up to which the Wilcoxon p is exact
ALPHA = 0.05
TOO_FEW = f"fewer than {MIN_PAIRS} non-zero paired differences: no test"


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) * p_(j), j from 1
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def case_matrices(tidy: pd.DataFrame, metrics: list[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """(target, metric) -> DataFrame (cases, variants) of per-case values, mean over seeds."""
    sub = tidy[tidy["metric"].isin(metrics)]
    means = sub.groupby(["target", "metric", "case", "variant"], sort=False)["value"].mean()
    wide = means.unstack("variant")
    return {key: frame.droplevel([0, 1]) for key, frame in wide.groupby(level=[0, 1], sort=False)}


def describe(tidy: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per target, metric, variant: mean, sd, median, q1, q3, n over cases (seed-averaged)."""
    sub = tidy[tidy["metric"].isin(metrics)]
    per_case = sub.groupby(["target", "metric", "variant", "case"], sort=False)["value"].mean()
    grouped = per_case.groupby(level=[0, 1, 2], sort=False)
    out = pd.DataFrame(
        {
            "mean": grouped.mean(),
            "sd": grouped.std(ddof=1),
            "median": grouped.median(),
            "q1": grouped.quantile(0.25),
            "q3": grouped.quantile(0.75),
            "n": grouped.count(),
        }
    )
    return out.reset_index()


def wilcoxon_p(diffs: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """Paired Wilcoxon signed-rank p per row of `diffs` (m, n); NaNs dropped per row.

    Zero differences carry no sign and are dropped (Wilcoxon's rule); a row needs MIN_PAIRS
    non-zero differences, else NaN (all zero: 1). Up to EXACT_MAX non-zero pairs the p is exact:
    the permutation distribution of the signed-rank sum given the rank ties (counted over all
    2^n sign patterns); above it, scipy's normal approximation with the tie correction.
    """
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    out = np.full(diffs.shape[0], np.nan)
    valid = ~np.isnan(diffs)
    nonzero = (valid & (diffs != 0)).sum(axis=1)
    out[(valid.sum(axis=1) >= MIN_PAIRS) & (nonzero == 0)] = 1.0
    large = (nonzero > EXACT_MAX) & valid.all(axis=1)
    if large.any():  # one vectorised call; scipy drops the zeros of each row itself
        out[large] = sps.wilcoxon(
            diffs[large], axis=1, alternative=alternative, method="approx", zero_method="wilcox"
        ).pvalue
    for r in np.flatnonzero((nonzero >= MIN_PAIRS) & ~large):
        d = diffs[r][valid[r] & (diffs[r] != 0)]
        if d.size <= EXACT_MAX:
            out[r] = _exact_signed_rank_p(d, alternative)
        else:
            out[r] = sps.wilcoxon(d, alternative=alternative, method="approx").pvalue
    return out


def _exact_signed_rank_p(d: np.ndarray, alternative: str) -> float:
    """Exact p of the signed-rank sum of non-zero `d`, midranks for ties (all 2^n sign flips)."""
    doubled = np.rint(2 * sps.rankdata(np.abs(d))).astype(int)  # midranks are multiples of 1/2
    counts = np.zeros(doubled.sum() + 1)
    counts[0] = 1.0
    for r in doubled:  # distribution of the sum of a random subset of the ranks
        counts[r:] = counts[r:] + counts[: counts.size - r].copy()
    prob = counts / counts.sum()
    t_plus = doubled[d > 0].sum()
    greater, less = prob[t_plus:].sum(), prob[: t_plus + 1].sum()
    if alternative == "greater":
        return float(greater)
    if alternative == "less":
        return float(less)
    return float(min(1.0, 2 * min(greater, less)))


def friedman(matrices: dict) -> pd.DataFrame:
    """Friedman test over all variants per (target, metric), on cases complete for every variant."""
    rows = []
    for (target, metric), m in matrices.items():
        complete = m.dropna()
        k, n = complete.shape[1], complete.shape[0]
        row = {
            "target": target,
            "metric": metric,
            "k": k,
            "n": n,
            "statistic": np.nan,
            "p": np.nan,
            "note": "",
        }
        if k < 3:
            row["note"] = "Friedman needs at least 3 variants"
        elif n < MIN_PAIRS:
            row["note"] = TOO_FEW
        elif np.ptp(complete.to_numpy(), axis=1).max() == 0:
            row["note"] = "every case ties across variants: no ranking to test"
        else:
            res = sps.friedmanchisquare(*complete.to_numpy().T)
            row.update(statistic=float(res.statistic), p=float(res.pvalue))
        rows.append(row)
    return pd.DataFrame(rows)


def pairwise_wilcoxon(m: pd.DataFrame, alternative: str = "two-sided") -> pd.DataFrame:
    """All pairs (two-sided: unordered; one-sided: ordered, 'a better than b'), Holm-adjusted.

    For alternative="greater" the difference is a - b, so "greater" means a has larger values.
    """
    names = list(m.columns)
    values = m.to_numpy(dtype=float)  # (cases, variants)
    if alternative == "two-sided":
        pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    else:
        pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    if not pairs:
        return pd.DataFrame(columns=["a", "b", "n", "p", "p_holm", "significant"])
    ia, ib = np.array(pairs).T
    diffs = (values[:, ia] - values[:, ib]).T  # (pairs, cases)
    p = wilcoxon_p(diffs, alternative=alternative)
    p_holm = holm(p)
    return pd.DataFrame(
        {
            "a": [names[i] for i in ia],
            "b": [names[j] for j in ib],
            "n": (~np.isnan(diffs)).sum(axis=1),
            "p": p,
            "p_holm": p_holm,
            "significant": p_holm < ALPHA,
        }
    )


def significance_map(m: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """challengeR's map: cell (a, b) True when a is significantly better than b (one-sided paired
    Wilcoxon for every ordered pair, Holm over the map, alpha 0.05)."""
    oriented = m if higher_is_better else -m
    pairs = pairwise_wilcoxon(oriented, alternative="greater")
    names = list(m.columns)
    table = pd.DataFrame(False, index=names, columns=names)
    for a, b, sig in pairs[["a", "b", "significant"]].itertuples(index=False):
        table.loc[a, b] = bool(sig)
    return table


def case_ranks(m: pd.DataFrame, higher_is_better: bool = True) -> np.ndarray:
    """Rank of each variant within each case, 1 = best, ties share the lowest rank.

    A missing value ranks last (challengeR ranks NA last); cases no variant has are dropped.
    """
    values = m.dropna(how="all").to_numpy(dtype=float)
    values = -values if higher_is_better else values
    values = np.where(np.isnan(values), np.inf, values)
    return sps.rankdata(values, axis=1, method="min")  # (cases, variants)


def rank_then_aggregate(m: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Mean per-case rank per variant and the final rank of those means (challengeR)."""
    mean_rank = case_ranks(m, higher_is_better).mean(axis=0)
    final = sps.rankdata(mean_rank, method="min")
    out = pd.DataFrame({"variant": m.columns, "mean_rank": mean_rank, "rank": final})
    return out.sort_values("rank", kind="stable").reset_index(drop=True)


def rank_stability(
    m: pd.DataFrame, rng: np.random.Generator, higher_is_better: bool = True, n_boot: int = 1000
) -> tuple[pd.DataFrame, np.ndarray]:
    """Bootstrap the cases (n_boot resamples), re-rank each sample by mean rank.

    Returns (frequency table variants x ranks, Kendall's tau of each bootstrap ranking with the
    full-data ranking). Resamples are multinomial case weights, so it is one matrix product.
    """
    ranks = case_ranks(m, higher_is_better)  # (cases, variants)
    n, k = ranks.shape
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, cases)
    boot_mean = weights @ ranks / n  # (n_boot, variants)
    boot_rank = sps.rankdata(boot_mean, axis=1, method="min").astype(int)
    full = sps.rankdata(ranks.mean(axis=0), method="min")
    freq = np.stack([(boot_rank == r).sum(axis=0) for r in range(1, k + 1)], axis=1)
    table = pd.DataFrame(freq / n_boot, index=m.columns, columns=range(1, k + 1))
    return table, _kendall_tau(full, boot_rank)


def _kendall_tau(reference: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of one ranking against each row of `rankings` (vectorised over rows)."""
    i, j = np.triu_indices(reference.size, k=1)
    s_ref = np.sign(reference[i] - reference[j])  # (pairs,)
    s_b = np.sign(rankings[:, i] - rankings[:, j])  # (n_boot, pairs)
    concord = (s_b * s_ref).sum(axis=1)
    denom = np.sqrt((s_ref != 0).sum() * (s_b != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, concord / denom, np.nan)


def seed_spread(tidy: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per (target, metric): sd of the case-mean between seeds (root mean square over variants)
    beside the sd between variants (of their seed-averaged case-means). Empty for one seed."""
    sub = tidy[tidy["metric"].isin(metrics)]
    if sub["seed"].nunique() < 2:
        return pd.DataFrame()
    per_seed = sub.groupby(["target", "metric", "variant", "seed"], sort=False)["value"].mean()
    seed_sd = per_seed.groupby(level=[0, 1, 2], sort=False).std(ddof=1)
    between_seeds = np.sqrt((seed_sd**2).groupby(level=[0, 1], sort=False).mean())
    variant_mean = per_seed.groupby(level=[0, 1, 2], sort=False).mean()
    between_variants = variant_mean.groupby(level=[0, 1], sort=False).std(ddof=1)
    n_seeds = sub.groupby(["target", "metric"], sort=False)["seed"].nunique()
    return pd.DataFrame(
        {
            "n_seeds": n_seeds,
            "sd_between_seeds": between_seeds,
            "sd_between_variants": between_variants,
        }
    ).reset_index()


def pareto_front(
    cost: np.ndarray, accuracy: np.ndarray, higher_is_better: bool = True
) -> np.ndarray:
    """Boolean mask of points no other point beats (lower or equal cost and better or equal
    accuracy, one strictly); `higher_is_better` False for distances (HD95, ASSD, |RVD|)."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    accuracy = accuracy if higher_is_better else -accuracy
    le = cost[None, :] <= cost[:, None]  # (i, j): j costs no more than i
    ge = accuracy[None, :] >= accuracy[:, None]
    strict = (cost[None, :] < cost[:, None]) | (accuracy[None, :] > accuracy[:, None])
    return ~(le & ge & strict).any(axis=1)
