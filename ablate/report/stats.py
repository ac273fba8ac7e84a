"""Statistics on the tidy results table; no plotting here.

Unit of analysis: one case (each case lies in exactly one validation fold). A variant's value for
a case is the mean over its seeds. Every test pairs variants by case and drops pairs with a NaN;
fewer than MIN_PAIRS pairs gives a note instead of a p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

HIGHER_IS_BETTER = {"dsc": True, "nsd": True, "hd95": False, "assd": False}
MIN_PAIRS = 6
ALPHA = 0.05
TOO_FEW = f"fewer than {MIN_PAIRS} paired cases: no test"


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

    Rows with fewer than MIN_PAIRS pairs get NaN; rows whose differences are all zero get 1.
    Rows are sent to scipy together when none has NaNs and all have > 50 pairs (then scipy uses
    the normal approximation for every row, as it would one by one).
    """
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    out = np.full(diffs.shape[0], np.nan)
    counts = (~np.isnan(diffs)).sum(axis=1)
    nonzero = ((diffs != 0) & ~np.isnan(diffs)).sum(axis=1)
    testable = (counts >= MIN_PAIRS) & (nonzero > 0)
    out[(counts >= MIN_PAIRS) & (nonzero == 0)] = 1.0
    rows = np.flatnonzero(testable)
    if rows.size and not np.isnan(diffs[rows]).any() and diffs.shape[1] > 50:
        out[rows] = sps.wilcoxon(diffs[rows], axis=1, alternative=alternative).pvalue
        return out
    for r in rows:
        d = diffs[r][~np.isnan(diffs[r])]
        out[r] = sps.wilcoxon(d, alternative=alternative).pvalue
    return out


def bootstrap_ci(
    values: np.ndarray,
    rng: np.random.Generator,
    statistic=np.median,
    n_boot: int = 2000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over resampled cases (vectorised)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size < 2:
        return (np.nan, np.nan)
    idx = rng.integers(0, values.size, (n_boot, values.size))
    boot = statistic(values[idx], axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return (float(lo), float(hi))


def compare_to_baseline(
    matrices: dict, baseline: str, rng: np.random.Generator, n_seeds: int = 1, n_boot: int = 2000
) -> pd.DataFrame:
    """Each variant vs the baseline per (target, metric): two-sided paired Wilcoxon, Holm over all
    rows of the table, median paired difference (variant - baseline) with a bootstrap 95% CI."""
    rows = []
    for (target, metric), m in matrices.items():
        if baseline not in m:
            continue
        for variant in [v for v in m.columns if v != baseline]:
            d = (m[variant] - m[baseline]).to_numpy()
            d = d[~np.isnan(d)]
            lo, hi = bootstrap_ci(d, rng, n_boot=n_boot)
            seeds = f" (mean over {n_seeds} seeds)" if n_seeds > 1 else ""
            rows.append(
                {
                    "target": target,
                    "metric": metric,
                    "variant": variant,
                    "baseline": baseline,
                    "n": d.size,
                    "median_diff": float(np.median(d)) if d.size else np.nan,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p": wilcoxon_p(d)[0],
                    "pairs": f"{d.size} cases: per-case {metric.upper()} of {variant} vs "
                    f"{baseline}{seeds}",
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].to_numpy())
    out["significant"] = out["p_holm"] < ALPHA
    out["note"] = np.where(out["n"] < MIN_PAIRS, TOO_FEW, "")
    return out


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
    """Rank of each variant within each complete case, 1 = best, ties share the lowest rank."""
    values = m.dropna().to_numpy(dtype=float)
    values = -values if higher_is_better else values
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


def main_effects(
    tidy: pd.DataFrame,
    axes: list[str],
    metrics: list[str],
    reference_levels: dict[str, str],
    rng: np.random.Generator,
    n_boot: int = 2000,
) -> pd.DataFrame:
    """Factorial main effect of each axis: per case, the difference level - reference level,
    averaged over the combinations of the other axes present for both, then the mean over cases
    with a bootstrap 95% CI."""
    rows = []
    # external variants (predictions made elsewhere) have no axis values: not part of the grid
    sub = tidy[tidy["metric"].isin(metrics)].dropna(subset=axes)
    for axis in axes:
        levels = list(pd.unique(sub[axis]))
        if len(levels) < 2:
            continue
        ref = reference_levels.get(axis, levels[0])
        others = [a for a in axes if a != axis]
        keys = ["target", "metric", "case", *others]
        wide = sub.groupby([*keys, axis], sort=False)["value"].mean().unstack(axis)
        for level in [lv for lv in levels if lv != ref]:
            per_case = (wide[level] - wide[ref]).groupby(level=[0, 1, 2], sort=False).mean()
            for (target, metric), d in per_case.groupby(level=[0, 1], sort=False):
                d = d.dropna().to_numpy()
                lo, hi = bootstrap_ci(d, rng, statistic=np.mean, n_boot=n_boot)
                rows.append(
                    {
                        "axis": axis,
                        "level": level,
                        "reference": ref,
                        "target": target,
                        "metric": metric,
                        "n": d.size,
                        "mean_diff": float(d.mean()) if d.size else np.nan,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    return pd.DataFrame(rows)


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


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats (lower or equal cost and higher or equal
    accuracy, one strictly)."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    le = cost[None, :] <= cost[:, None]  # (i, j): j costs no more than i
    ge = accuracy[None, :] >= accuracy[:, None]
    strict = (cost[None, :] < cost[:, None]) | (accuracy[None, :] > accuracy[:, None])
    return ~(le & ge & strict).any(axis=1)
