"""Simulated studies with known truth, to measure the report's tests: false-positive rate, CI
coverage and power (tests/test_report_calibration.py; the table of docs/STATISTICS.md).

Model of one comparison (values in DSC fractions): per case c in fold f(c),

    value(variant, seed, c) = case difficulty(c) + shift(variant) + run(variant, f(c), seed)
                              + noise(variant, seed, c)

run ~ N(0, run_sd) is the training run's offset (one per fold model and seed) and noise ~
N(0, case_sd) the case-level scatter of one trained model. The case difficulty cancels in paired
differences, so a comparison only needs the seed-averaged differences. Everything is vectorised
over simulated studies (rows).

    python -m ablate.report.calibration     # prints the tables of docs/STATISTICS.md
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ablate.report.paired import cluster_mean_rows, t_test_rows
from ablate.report.stats import holm, wilcoxon_p


def fold_of_cases(n_cases: int, folds: int) -> np.ndarray:
    """Case i lies in fold i % folds (as synthetic_results and sklearn-style splits)."""
    return np.arange(n_cases) % folds


def paired_differences(
    rng: np.random.Generator,
    reps: int,
    n_cases: int,
    folds: int = 5,
    seeds: int = 1,
    run_sd: float = 0.005,
    case_sd: float = 0.02,
    shift: float = 0.0,
    variants: int = 1,
) -> np.ndarray:
    """Seed-averaged per-case differences variant - baseline: (reps, variants, n_cases).

    The baseline's runs and noise are shared by all variants of one simulated study, as in a
    report where every variant is compared with the same baseline.
    """
    fold = fold_of_cases(n_cases, folds)

    def system(k):  # (reps, k, n_cases): run offsets by fold plus case noise, seed-averaged
        runs = rng.normal(0.0, run_sd / np.sqrt(seeds), (reps, k, folds))[..., fold]
        return runs + rng.normal(0.0, case_sd / np.sqrt(seeds), (reps, k, n_cases))

    return system(variants) + shift - system(1)


def p_values(d: np.ndarray, groups: np.ndarray, method: str) -> np.ndarray:
    """Two-sided p per row of d (rows, cases) for one of the methods compared in STATISTICS.md."""
    if method == "wilcoxon":  # case level: the report's "these trained models differ"
        return wilcoxon_p(d)
    if method == "case_t":  # paired t-test, cases as the unit
        mean, se, df = cluster_mean_rows(d, np.arange(d.shape[1]))
        return t_test_rows(mean, se, df)
    if method == "cluster_t":  # the report's configuration level: folds as clusters
        mean, se, df = cluster_mean_rows(d, groups)
        return t_test_rows(mean, se, df)
    if method == "nadeau_bengio":  # corrected resampled t on the fold means
        k = np.unique(groups).size
        means = np.stack([d[:, groups == g].mean(axis=1) for g in np.unique(groups)], axis=1)
        se = np.sqrt((1 / k + 1 / (k - 1)) * means.var(axis=1, ddof=1))
        return t_test_rows(means.mean(axis=1), se, k - 1)
    raise ValueError(f"unknown method {method!r}")


def intervals(
    d: np.ndarray,
    groups: np.ndarray,
    method: str,
    rng: np.random.Generator,
    level: float = 0.95,
    n_boot: int = 400,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per row: the t intervals of the report, or the bootstraps they replaced."""
    if method in ("case_t", "cluster_t"):
        g = np.arange(d.shape[1]) if method == "case_t" else groups
        mean, se, df = cluster_mean_rows(d, g)
        half = sps.t.ppf(0.5 + level / 2, df) * se
        return mean - half, mean + half
    if method == "case_bootstrap":  # the old percentile bootstrap of the mean over cases
        idx = rng.integers(0, d.shape[1], (n_boot, d.shape[1]))
        boot = d[:, idx].mean(axis=2)  # (rows, n_boot)
    elif method == "hierarchical_bootstrap":  # folds with replacement, then cases within
        labels = np.unique(groups)
        members = [np.flatnonzero(groups == g) for g in labels]
        pick = rng.integers(0, labels.size, (n_boot, labels.size))
        boot = np.zeros((d.shape[0], n_boot))
        count = np.zeros(n_boot)
        for j in range(labels.size):
            for g, cases in enumerate(members):
                chosen = pick[:, j] == g
                inner = cases[rng.integers(0, cases.size, (chosen.sum(), cases.size))]
                boot[:, chosen] += d[:, inner].sum(axis=2)
                count[chosen] += cases.size
        boot /= count
    else:
        raise ValueError(f"unknown method {method!r}")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=1)
    return low, high


def false_positive_rate(method: str, rng, reps=2000, **kw) -> float:
    """Share of simulated null comparisons (identical configurations) with p < 0.05."""
    d = paired_differences(rng, reps, **kw)[:, 0]
    groups = fold_of_cases(d.shape[1], kw.get("folds", 5))
    return float((p_values(d, groups, method) < 0.05).mean())


def coverage(method: str, rng, reps=2000, shift=0.01, **kw) -> float:
    """Share of simulated comparisons whose 95% interval holds the true mean difference."""
    d = paired_differences(rng, reps, shift=shift, **kw)[:, 0]
    groups = fold_of_cases(d.shape[1], kw.get("folds", 5))
    low, high = intervals(d, groups, method, rng)
    return float(((low <= shift) & (shift <= high)).mean())


def power(method: str, rng, shift: float, reps=2000, **kw) -> float:
    """Share of simulated comparisons with a true shift that the test finds (p < 0.05)."""
    d = paired_differences(rng, reps, shift=shift, **kw)[:, 0]
    groups = fold_of_cases(d.shape[1], kw.get("folds", 5))
    return float((p_values(d, groups, method) < 0.05).mean())


def analytic_power(
    shift: float,
    n_cases: int,
    folds: int = 5,
    seeds: int = 1,
    run_sd: float = 0.005,
    case_sd: float = 0.02,
) -> float:
    """Power of the fold-cluster t-test from the noncentral t (equal folds assumed)."""
    var_fold = 2 * run_sd**2 / seeds + 2 * case_sd**2 / (seeds * n_cases / folds)
    nc = shift / np.sqrt(var_fold / folds)
    crit = sps.t.ppf(0.975, folds - 1)
    return float(sps.nct.sf(crit, folds - 1, nc) + sps.nct.cdf(-crit, folds - 1, nc))


def familywise_rate(method: str, rng, reps=1000, variants=3, targets=2, **kw) -> float:
    """Share of simulated reports of identical configurations (`variants` vs the baseline on
    `targets` targets: one Holm family of variants x targets) with any significant row."""
    hits = np.zeros(reps, dtype=bool)
    p = []
    for _ in range(targets):
        d = paired_differences(rng, reps, variants=variants, **kw)  # (reps, variants, cases)
        groups = fold_of_cases(d.shape[2], kw.get("folds", 5))
        flat = d.reshape(reps * variants, -1)
        p.append(p_values(flat, groups, method).reshape(reps, variants))
    p = np.concatenate(p, axis=1)  # (reps, variants * targets)
    hits = np.array([np.nanmin(holm(row)) < 0.05 for row in p])
    return float(hits.mean())


def noninferiority_level(rng, margin=0.01, reps=2000, **kw) -> float:
    """Share of simulated comparisons at the null boundary (the candidate exactly `margin`
    worse) declared non-inferior by the report's one-sided test (should be <= 5%)."""
    d = paired_differences(rng, reps, shift=-margin, **kw)[:, 0]
    groups = fold_of_cases(d.shape[1], kw.get("folds", 5))
    mean, se, df = cluster_mean_rows(d, groups)
    p = t_test_rows(mean, se, df, shift=margin, alternative="greater")
    return float((p < 0.05).mean())


def seed_level_false_positive_rate(
    rng, reps=2000, n_cases=40, seeds=3, run_sd=0.005, case_sd=0.02
) -> float:
    """One split (no folds to cluster on), `seeds` training runs per variant: the t-test over the
    per-seed mean differences, as the report uses it with fewer than 3 folds."""
    runs = rng.normal(0.0, run_sd * np.sqrt(2), (reps, seeds))  # variant - baseline run offsets
    noise = rng.normal(0.0, case_sd * np.sqrt(2), (reps, seeds, n_cases)).mean(axis=2)
    mean, se, df = cluster_mean_rows(runs + noise, np.arange(seeds))
    return float((t_test_rows(mean, se, df) < 0.05).mean())


def mc_error(rate: float, reps: int) -> float:
    """One Monte-Carlo standard error of a simulated rate."""
    return float(np.sqrt(rate * (1 - rate) / reps))


def tables(reps: int = 2000, seed: int = 0) -> str:
    """Markdown tables of measured rates (docs/STATISTICS.md)."""
    rng = np.random.default_rng(seed)
    lines = [
        "| run sd (pts) | cases | seeds | Wilcoxon, case level (before) | paired t, case "
        "level | cluster t, fold models (after) | Nadeau-Bengio |",
        "|---|---|---|---|---|---|---|",
    ]
    for run_sd in (0.0025, 0.005, 0.01):
        for n in (20, 40, 100):
            for seeds in (1, 3):
                kw = dict(n_cases=n, seeds=seeds, run_sd=run_sd)
                rates = [
                    false_positive_rate(m, rng, reps, **kw)
                    for m in ("wilcoxon", "case_t", "cluster_t", "nadeau_bengio")
                ]
                lines.append(
                    f"| {100 * run_sd:g} | {n} | {seeds} | "
                    + " | ".join(f"{100 * r:.1f}%" for r in rates)
                    + " |"
                )
    lines += [
        "",
        "| cases | case bootstrap of the mean (before) | hierarchical bootstrap | "
        "cluster t (after) | no run term: case bootstrap (before) | no run term: case t "
        "(after) |",
        "|---|---|---|---|---|---|",
    ]
    for n in (6, 20, 100):
        cov = [
            coverage(m, rng, reps, n_cases=n, run_sd=0.005)
            for m in ("case_bootstrap", "hierarchical_bootstrap", "cluster_t")
        ]
        cov += [coverage(m, rng, reps, n_cases=n, run_sd=0.0) for m in ("case_bootstrap", "case_t")]
        lines.append(f"| {n} | " + " | ".join(f"{100 * c:.1f}%" for c in cov) + " |")
    lines += [
        "",
        "| shift (pts) | cases | seeds | cluster t, simulated | cluster t, analytic (noncentral "
        "t) | Wilcoxon, simulated (before; not calibrated) |",
        "|---|---|---|---|---|---|",
    ]
    for shift, n, seeds in ((0.01, 40, 1), (0.02, 40, 1), (0.02, 40, 3), (0.02, 100, 1)):
        kw = dict(n_cases=n, seeds=seeds)
        sim = power("cluster_t", rng, shift, reps, **kw)
        wil = power("wilcoxon", rng, shift, reps, **kw)
        lines.append(
            f"| {100 * shift:g} | {n} | {seeds} | {100 * sim:.1f}% | "
            f"{100 * analytic_power(shift, n, seeds=seeds):.1f}% | {100 * wil:.1f}% |"
        )
    fw_before = familywise_rate("wilcoxon", rng, reps // 2, n_cases=40)
    fw_after = familywise_rate("cluster_t", rng, reps // 2, n_cases=40)
    ni = noninferiority_level(rng, reps=reps, n_cases=40)
    lines += [
        "",
        f"Family-wise rate, 3 variants x 2 targets of identical configurations, 40 "
        f"cases, run sd 0.5 pts: Wilcoxon {100 * fw_before:.1f}%, cluster t "
        f"{100 * fw_after:.1f}% ({reps // 2} reports).",
        f"Non-inferiority at the null boundary (margin 1 pt, 40 cases): declared "
        f"non-inferior in {100 * ni:.1f}% ({reps} comparisons).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables())
