"""Statistics on the tidy results table; no plotting here.

Unit of analysis: one case (each case lies in exactly one validation fold). A variant's value for
a case is the mean over its seeds. Every test pairs variants by case and drops pairs with a NaN;
fewer than MIN_PAIRS pairs gives a note instead of a p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from ablate.report.paired import (
    MIN_RUNS,
    cases_needed,
    minimum_detectable,
    paired_mean,
    runs_needed,
)
from ablate.study import axis_paths

HIGHER_IS_BETTER = {"dsc": True, "nsd": True, "hd95": False, "assd": False, "abs_rvd": False}
MIN_PAIRS = 6  # non-zero paired differences a Wilcoxon test needs
EXACT_MAX = 50  # non-zero pairs up to which the Wilcoxon p is exact
ALPHA = 0.05
TOO_FEW = f"fewer than {MIN_PAIRS} non-zero paired differences: no test"


def inference_axis(axis: str) -> bool:
    """True when the axis only sets `infer.` paths (TTA, postprocessing): its levels share the
    trained models. Unknown names count as training axes (the conservative error term)."""
    return all(p.startswith("infer.") for p in axis_paths(str(axis)))


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
    matrices: dict,
    baseline: str,
    case_folds: pd.Series | None = None,
    inference_only: dict[str, bool] | None = None,
    n_seeds: int = 1,
    detect: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Each variant vs the baseline per (target, metric), on the cases both have.

    Headline (columns mean_diff, ci_low, ci_high, p, p_holm, significant): the mean paired
    difference (variant - baseline) with a t interval and test whose error term holds the training
    runs (the cases of a fold share its fold model: `paired.paired_mean` with the folds of
    `case_folds` as clusters). A variant marked in `inference_only` (same trained models as the
    baseline) is compared case by case instead (paired t-test). Beside it, the case-level
    two-sided Wilcoxon signed-rank test (these trained models differ) with the median paired
    difference. Holm runs per metric over the rows of that metric (variants x targets), for the
    headline p and for the Wilcoxon p separately; column `family` names it. `detect` (metric ->
    difference) adds the seeds and cases the headline test needs to detect it with 80% power.
    """
    inference_only = inference_only or {}
    rows = []
    for (target, metric), m in matrices.items():
        if baseline not in m:
            continue
        for variant in [v for v in m.columns if v != baseline]:
            rows.append(
                _compare_row(
                    m,
                    variant,
                    baseline,
                    target,
                    metric,
                    case_folds,
                    inference_only.get(variant, False),
                    n_seeds,
                    (detect or {}).get(metric),
                )
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    sizes = out.groupby("metric")["metric"].transform("size")
    out["family"] = [
        f"{metric.upper()} vs {baseline} ({k} rows: variants x targets)"
        for metric, k in zip(out["metric"], sizes, strict=True)
    ]
    for col in ("p", "wilcoxon_p"):
        out[f"{col}_holm"] = out.groupby("metric")[col].transform(lambda p: holm(p.to_numpy()))
    out["significant"] = out["p_holm"] < ALPHA
    out["wilcoxon_significant"] = out["wilcoxon_p_holm"] < ALPHA
    hib = out["metric"].map(HIGHER_IS_BETTER).fillna(True).astype(bool)
    out["better"] = (out["mean_diff"] > 0) == hib
    return out


def _compare_row(
    m, variant, baseline, target, metric, case_folds, inference_only, n_seeds, detect=None
):
    has_v, has_b = m[variant].notna(), m[baseline].notna()
    both = has_v & has_b
    d = (m.loc[both, variant] - m.loc[both, baseline]).to_numpy(dtype=float)
    folds = None
    if not inference_only and case_folds is not None:
        folds = case_folds.reindex(m.index[both]).to_numpy()
    head = (
        paired_mean(d, None)
        if inference_only or case_folds is None or d.size < MIN_PAIRS
        else paired_mean(d, folds)
    )
    note = ""
    if d.size < MIN_PAIRS:
        head.update(p=np.nan, ci_low=np.nan, ci_high=np.nan)
        note = f"only {d.size} paired cases: too few for a test"
    elif not inference_only and head["clusters"] < MIN_RUNS:
        note = (
            f"only {head['clusters']} training run(s) (fold models) per variant: too few to "
            "estimate the training variance, no configuration-level verdict; cross-validate "
            f"with at least {MIN_RUNS} folds (5 recommended)"
        )
    wil = wilcoxon_p(d)[0] if d.size else np.nan
    needed = {"seeds_needed": None, "cases_needed": None}
    if detect and d.size >= MIN_PAIRS:
        if folds is None:
            needed["cases_needed"] = cases_needed(d, detect)
        else:
            needed = runs_needed(d, folds, detect, n_seeds)
    seeds = f", mean over {n_seeds} seeds" if n_seeds > 1 else ""
    unit = "cases" if inference_only or folds is None else "fold models"
    return {
        "target": target,
        "metric": metric,
        "variant": variant,
        "baseline": baseline,
        "kind": "inference-only" if inference_only else "training",
        "n": int(d.size),
        "absent_variant": int((has_b & ~has_v).sum()),
        "absent_baseline": int((has_v & ~has_b).sum()),
        "mean_diff": head["mean"],
        "se": head["se"],
        "df": head["df"],
        "clusters": head["clusters"],
        "unit": unit,
        "ci_low": head["ci_low"],
        "ci_high": head["ci_high"],
        "p": head["p"],
        "mdd": minimum_detectable(head["se"], head["df"]),
        "detect": detect if detect else np.nan,
        **needed,
        "median_diff": float(np.median(d)) if d.size else np.nan,
        "wilcoxon_p": wil,
        "nonzero": int((d != 0).sum()),
        "note": note,
        "pairs": f"{d.size} cases: per-case {metric.upper()} of {variant} vs {baseline}{seeds}",
    }


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


def main_effects(
    tidy: pd.DataFrame,
    axes: list[str],
    metrics: list[str],
    reference_levels: dict[str, str],
    case_folds: pd.Series | None = None,
) -> pd.DataFrame:
    """Factorial main effect of each axis: per case, the difference level - reference level,
    averaged over the combinations of the other axes that every case has at both levels (a
    combination missing anywhere is left out for all cases, so every case averages the same
    contrasts; `combinations` says how many of how many), then the mean over cases with a t
    interval and test: clusters are the folds for a training axis, the cases for an `infer.` axis
    (the same trained models). A None level is a level ("None"); variants without any axis value
    (ensembles, external predictions) are not part of the grid."""
    rows = []
    sub = tidy[tidy["metric"].isin(metrics)]
    sub = sub[sub[axes].notna().any(axis=1)].copy()
    for axis in axes:
        sub[axis] = sub[axis].map(lambda v: "None" if v is None or v != v else v)
    for axis in axes:
        levels = list(pd.unique(sub[axis]))
        if len(levels) < 2:
            continue
        ref = reference_levels.get(axis, levels[0])
        ref = "None" if ref is None else ref
        others = [a for a in axes if a != axis]
        wide = (
            sub.groupby(["target", "metric", "case", *others, axis], sort=False)["value"]
            .mean()
            .unstack(axis)
        )
        for level in [lv for lv in levels if lv != ref]:
            diff = wide[level] - wide[ref]
            for (target, metric), d in diff.groupby(level=[0, 1], sort=False):
                rows.append(_effect_row(d, axis, level, ref, target, metric, others, case_folds))
    return pd.DataFrame(rows)


def _effect_row(d, axis, level, ref, target, metric, others, case_folds) -> dict:
    by_combo = d.droplevel([0, 1]).unstack(others) if others else d.droplevel([0, 1]).to_frame()
    complete = by_combo.loc[:, by_combo.notna().all(axis=0)] if len(by_combo) else by_combo
    per_case = complete.mean(axis=1) if complete.shape[1] else pd.Series(dtype=float)
    training = not inference_axis(axis)
    folds = (
        case_folds.reindex(per_case.index).to_numpy()
        if training and case_folds is not None
        else None
    )
    res = paired_mean(per_case.to_numpy(dtype=float), folds)
    return {
        "axis": axis,
        "level": level,
        "reference": ref,
        "target": target,
        "metric": metric,
        "n": res["n"],
        "combinations": f"{complete.shape[1]} of {by_combo.shape[1]}",
        "unit": "fold models" if folds is not None else "cases",
        "mean_diff": res["mean"],
        "ci_low": res["ci_low"],
        "ci_high": res["ci_high"],
        "p": res["p"],
    }


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
