"""The report's comparisons of means: each variant vs the baseline (headline, with the case-level
Wilcoxon beside it) and the main effect of each axis. The error term holds the training runs
(ablate.report.paired) unless the compared levels share their trained models."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.paired import (
    MIN_RUNS,
    NO_VARIANCE,
    cases_needed,
    minimum_detectable,
    paired_mean,
    runs_needed,
)
from ablate.report.stats import ALPHA, HIGHER_IS_BETTER, MIN_PAIRS, holm, wilcoxon_p
from ablate.study import axis_paths


def inference_axis(axis: str) -> bool:
    """True when the axis only sets `infer.` paths (TTA, postprocessing): its levels share the
    trained models. Unknown names count as training axes (the conservative error term)."""
    return all(p.startswith("infer.") for p in axis_paths(str(axis)))


def compare_to_baseline(
    matrices: dict,
    baseline: str,
    case_folds: pd.Series | None = None,
    inference_only: dict[str, bool] | None = None,
    n_seeds: int = 1,
    detect: dict[str, float] | None = None,
    seed_values: dict | None = None,
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
    With fewer than MIN_RUNS folds but MIN_RUNS or more seeds, `seed_values` ((target, metric) ->
    cases x (variant, seed)) gives the runs instead: per seed (paired in order) the mean
    difference over the common cases, a t-test over seeds (the cases then stay fixed).
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
                    (seed_values or {}).get((target, metric)),
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
    m,
    variant,
    baseline,
    target,
    metric,
    case_folds,
    inference_only,
    n_seeds,
    detect=None,
    seed_values=None,
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
    unit = "cases" if inference_only or folds is None else "fold models"
    if d.size < MIN_PAIRS:
        head.update(p=np.nan, ci_low=np.nan, ci_high=np.nan)
        note = f"only {d.size} paired cases: too few for a test"
    elif not inference_only and folds is not None and head["clusters"] < MIN_RUNS:
        per_seed = _seed_differences(seed_values, variant, baseline, m.index[both])
        if per_seed.size >= MIN_RUNS:
            head = {**paired_mean(per_seed, None), "n": int(d.size)}
            folds, unit = None, "seeds"
        else:
            note = (
                f"only {head['clusters']} fold model(s) x {max(per_seed.size, 1)} seed(s) per "
                "variant: too few training runs to estimate their variance, no "
                f"configuration-level verdict; run at least {MIN_RUNS} seeds (or cross-validate "
                "with 5 folds)"
            )
    if not note and head["se"] < NO_VARIANCE and abs(head["mean"]) >= NO_VARIANCE:
        note = "every paired difference is the same: no variance to test with"
    wil = wilcoxon_p(d)[0] if d.size else np.nan
    needed = {"seeds_needed": None, "cases_needed": None}
    if detect and d.size >= MIN_PAIRS and unit != "seeds":
        if folds is None:
            needed["cases_needed"] = cases_needed(d, detect)
        else:
            needed = runs_needed(d, folds, detect, n_seeds)
    seeds = f", mean over {n_seeds} seeds" if n_seeds > 1 else ""
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


def _seed_differences(seed_values, variant, baseline, cases) -> np.ndarray:
    """Per seed (the k-th seed of each variant paired with the k-th of the other), the mean over
    `cases` of variant - baseline; empty without per-seed values."""
    if seed_values is None or variant not in seed_values or baseline not in seed_values:
        return np.array([])
    v = seed_values[variant].reindex(cases).to_numpy(dtype=float)  # (cases, seeds)
    b = seed_values[baseline].reindex(cases).to_numpy(dtype=float)
    k = min(v.shape[1], b.shape[1])
    if k == 0:
        return np.array([])
    with np.errstate(invalid="ignore"):
        out = np.nanmean(v[:, :k] - b[:, :k], axis=0)
    return out[~np.isnan(out)]


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
