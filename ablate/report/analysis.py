"""Everything the report shows, computed once from the results: the numbers, no formatting
(ablate.report.stats holds the tests themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate.errors import ConfigError, DataError
from ablate.report.collect import (
    Results,
    check_results,
    composite_dice,
    empty_case_counts,
    empty_predictions,
    missing_value_counts,
    variant_axes,
    variant_order,
)
from ablate.report.comparisons import compare_to_baseline, inference_axis, main_effects
from ablate.report.families import Family, report_families
from ablate.report.held_out import HeldOut, analyse_held_out
from ablate.report.paired import MIN_RUNS, NO_VARIANCE, noninferiority
from ablate.report.stats import (
    HIGHER_IS_BETTER,
    case_matrices,
    describe,
    friedman,
    holm,
    pairwise_wilcoxon,
    pareto_front,
    rank_stability,
    rank_then_aggregate,
    seed_spread,
    significance_map,
)
from ablate.study import is_training_axis, variant_label


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed once from the results (numbers, no formatting)."""

    baseline: str
    order: list[str]  # variant labels, baseline first
    metrics: list[str]  # of REPORT_METRICS, those present
    n_seeds: int
    describe: pd.DataFrame
    matrices: dict[tuple[str, str], pd.DataFrame]  # (target, metric) -> (cases, variants)
    compare: pd.DataFrame  # headline (configuration level) + case-level Wilcoxon, per row
    common: pd.DataFrame  # target, metric, variant, mean on the cases every variant has, absent
    friedman: pd.DataFrame
    posthoc: pd.DataFrame
    sig_maps: dict[tuple[str, str], pd.DataFrame]
    ranking: dict[str, pd.DataFrame]  # target -> rank-then-aggregate on the first metric
    stability: dict[str, tuple[pd.DataFrame, np.ndarray]]
    main_effects: pd.DataFrame
    seed_spread: pd.DataFrame
    composite: pd.DataFrame  # describe() of the KiTS composite Dice, empty without kidney+tumor
    pareto: pd.DataFrame | None
    cost: pd.DataFrame
    curves: pd.DataFrame
    empty: pd.DataFrame
    nan_counts: pd.DataFrame
    missing: list[str]
    held_out: HeldOut | None = None  # the held-out test set, when the study declares one
    noninferiority: pd.DataFrame = field(default_factory=pd.DataFrame)
    margins: dict[str, float] = field(default_factory=dict)
    families: list[Family] = field(default_factory=list)  # every Holm family of the report
    n_folds: int = 0
    # per target and variant: cases, empty predictions, empty references (collect.py)
    empty_predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    case_folds: pd.Series | None = None  # case -> its validation fold (None: no single fold)
    trained_as: dict[str, str] = field(default_factory=dict)  # variant -> its training variant


# overlap (higher is better), then distances and |RVD| (lower is better); only those present
REPORT_METRICS = ("dsc", "nsd", "hd95", "assd", "abs_rvd")


def analyse(results: Results, meta: dict, seed: int = 0, n_boot: int = 2000) -> Analysis:
    """Run every statistic of the report; raise ConfigError for an unknown baseline."""
    check_results(results)
    tidy = report_rows(results.tidy)
    metrics = [m for m in REPORT_METRICS if (tidy["metric"] == m).any()]
    if not {"dsc", "nsd"} & set(metrics):
        raise DataError("Results.tidy: no 'dsc' or 'nsd' rows; check the evaluation's metrics")
    baseline = meta.get("baseline")
    labels = variant_order(results, baseline)
    if baseline is not None and baseline not in labels:
        raise ConfigError(
            f"report meta: baseline {baseline!r} is not a variant; use one of {labels}"
        )
    baseline = baseline or labels[0]
    rng = np.random.default_rng(seed)
    matrices = {k: m.reindex(columns=labels) for k, m in case_matrices(tidy, metrics).items()}
    n_seeds = int(tidy["seed"].nunique())
    folds = case_folds(tidy)
    ranked = {t: m for (t, metric), m in matrices.items() if metric == metrics[0]}
    hib = HIGHER_IS_BETTER[metrics[0]]
    many = len(labels) >= 3
    margins = noninferiority_margins(meta)
    few_folds = folds is None or folds.nunique() < MIN_RUNS
    inference_only = inference_only_variants(results, baseline)
    compare = compare_to_baseline(
        matrices,
        baseline,
        folds,
        inference_only,
        n_seeds,
        margins,
        seed_matrices(tidy, metrics) if few_folds and n_seeds >= MIN_RUNS else None,
    )
    effects = main_effects(tidy, results.axes, metrics, _reference_levels(results, baseline), folds)
    if not effects.empty:
        effects["p_holm"] = holm(effects["p"].to_numpy())
    ni = noninferiority_table(compare, results.cost, margins)
    posthoc = _posthoc(matrices) if many else pd.DataFrame()
    sig_maps = {k: significance_map(m, HIGHER_IS_BETTER[k[1]]) for k, m in matrices.items()}
    held_out = analyse_held_out(
        results.test, results.test_cost, metrics, baseline, rng, n_seeds, n_boot, inference_only
    )
    return Analysis(
        baseline=baseline,
        order=labels,
        metrics=metrics,
        n_seeds=n_seeds,
        describe=describe(tidy, metrics),
        matrices=matrices,
        compare=compare,
        common=common_case_means({**matrices, **_composite_matrix(tidy, labels)}),
        friedman=friedman(matrices) if many else pd.DataFrame(),
        posthoc=posthoc,
        sig_maps=sig_maps,
        ranking={t: rank_then_aggregate(m, hib) for t, m in ranked.items()},
        stability={
            t: rank_stability(m, rng, hib)
            for t, m in ranked.items()
            if len(m.dropna(how="all")) > 1
        },
        main_effects=effects,
        seed_spread=seed_spread(tidy, metrics),
        composite=_composite(tidy),
        pareto=_pareto_points(matrices, results.cost, metrics[0]),
        cost=results.cost,
        curves=results.curves,
        empty=empty_case_counts(tidy),
        nan_counts=missing_value_counts(tidy, metrics),
        missing=list(dict.fromkeys([*(meta.get("missing") or []), *results.missing])),
        held_out=held_out,
        noninferiority=ni,
        margins=margins,
        families=report_families(compare, posthoc, sig_maps, effects, held_out, baseline, ni),
        n_folds=0 if folds is None else int(folds.nunique()),
        empty_predictions=empty_predictions(tidy),
        case_folds=folds,
        trained_as=training_variants(results),
    )


def report_rows(tidy: pd.DataFrame) -> pd.DataFrame:
    """The tidy table with |RVD| ("abs_rvd") beside the signed RVD, infinite distances as NaN
    (an empty surface has no distance; counted as missing)."""
    rvd = tidy[tidy["metric"] == "rvd"]
    out = (
        pd.concat([tidy, rvd.assign(metric="abs_rvd", value=rvd["value"].abs())], ignore_index=True)
        if len(rvd)
        else tidy
    )
    value = out["value"].astype(float)
    return out.assign(value=value.where(np.isfinite(value) | value.isna(), np.nan))


def seed_matrices(tidy: pd.DataFrame, metrics: list[str]) -> dict:
    """(target, metric) -> cases x (variant, seed): per-seed values for seeds as training runs."""
    sub = tidy[tidy["metric"].isin(metrics)]
    keys = ["target", "metric", "case", "variant", "seed"]
    wide = sub.groupby(keys, sort=False)["value"].mean().unstack(["variant", "seed"])
    return {key: frame.droplevel([0, 1]) for key, frame in wide.groupby(level=[0, 1], sort=False)}


def case_folds(tidy: pd.DataFrame) -> pd.Series | None:
    """The validation fold of each case (its fold model's training run); None when a case lies in
    more than one fold or none has a fold (no clusters to use)."""
    rows = tidy[tidy["fold"].notna() & (tidy["fold"] >= 0)]
    if rows.empty:
        return None
    per_case = rows.groupby("case")["fold"].agg(["min", "max"])
    if (per_case["min"] != per_case["max"]).any():
        return None
    return per_case["min"]


def inference_only_variants(results: Results, baseline: str) -> dict[str, bool]:
    """Variant -> True when it differs from the baseline only on `infer.` axes (the same trained
    models: TTA, postprocessing). Ensembles and external folders have no axis values: False."""
    axes = variant_axes(results)
    if baseline not in axes.index or axes.empty:
        return {}
    train_axes = [a for a in results.axes if not inference_axis(a)]
    base = axes.loc[baseline]
    out = {}
    for variant, row in axes.iterrows():
        gridded = row.notna().any() and base.notna().any()
        out[str(variant)] = bool(gridded and all(_same(row[a], base[a]) for a in train_axes))
    return out


def training_variants(results: Results) -> dict[str, str]:
    """Variant -> the label its training runs carry: the variant's training-axis values only
    (ablate.expand names a TrainJob so), since inference axes (TTA, postprocessing) reuse the
    trained models. Variants without axis values keep their own label."""
    axes = variant_axes(results)
    if axes.empty:
        return {}
    train_axes = [a for a in results.axes if is_training_axis(a)]
    out = {}
    for variant, row in axes.iterrows():
        if row.isna().all():
            out[str(variant)] = str(variant)
            continue
        out[str(variant)] = variant_label({a: row[a] for a in train_axes})
    return out


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) if (a is None or b is None or a != a or b != b) else a == b


def common_case_means(matrices: dict) -> pd.DataFrame:
    """Per target, metric, variant: the mean over the cases every variant has (so "best" compares
    like with like), how many those are, and how many of all cases this variant lacks."""
    rows = []
    for (target, metric), m in matrices.items():
        complete = m.dropna()
        for variant in m.columns:
            rows.append(
                {
                    "target": target,
                    "metric": metric,
                    "variant": variant,
                    "common_mean": complete[variant].mean() if len(complete) else np.nan,
                    "n_common": len(complete),
                    "absent": int(m[variant].isna().sum()),
                }
            )
    return pd.DataFrame(rows)


def noninferiority_margins(meta: dict) -> dict[str, float]:
    """`analysis.noninferiority_margin` from meta["analysis"], else from the study YAML text."""
    analysis = meta.get("analysis")
    if analysis is None and meta.get("config_yaml"):
        import yaml

        try:
            analysis = (yaml.safe_load(meta["config_yaml"]) or {}).get("analysis")
        except yaml.YAMLError:
            analysis = None
    margins = (analysis or {}).get("noninferiority_margin") or {}
    return {str(k): float(v) for k, v in margins.items()}


def noninferiority_table(
    compare: pd.DataFrame, cost: pd.DataFrame, margins: dict[str, float]
) -> pd.DataFrame:
    """For each compared pair with a margin for its metric: is the cheaper one (less inference
    time per case, else fewer parameters) non-inferior to the other within the margin? Same
    error term as the headline comparison; Holm per metric over the rows."""
    if compare.empty or not margins:
        return pd.DataFrame()
    per = cost.groupby("variant").mean(numeric_only=True) if not cost.empty else pd.DataFrame()
    rows = []
    for r in compare[compare["metric"].isin(margins)].itertuples(index=False):
        swap = _cheaper(per, r.baseline, r.variant)
        cand, ref = (r.baseline, r.variant) if swap else (r.variant, r.baseline)
        diff = -r.mean_diff if swap else r.mean_diff
        hib = HIGHER_IS_BETTER.get(r.metric, True)
        test = noninferiority(diff, r.se, int(r.df), margins[r.metric], hib)
        note = r.note or (
            "" if r.se >= NO_VARIANCE else "every paired difference is the same: no variance"
        )
        rows.append(
            {
                "target": r.target,
                "metric": r.metric,
                "candidate": cand,
                "reference": ref,
                "kind": r.kind,
                "margin": margins[r.metric],
                "n": r.n,
                "mean_diff": diff,
                "bound": test["bound"],
                "p": test["p"],
                "p_equivalence": test["p_equivalence"],
                "note": note,
                **_savings(per, cand, ref),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = out.groupby("metric")["p"].transform(lambda p: holm(p.to_numpy()))
    out["noninferior"] = out["p_holm"] < 0.05
    return out


def _cheaper(per: pd.DataFrame, a: str, b: str) -> bool:
    """True when `a` costs less than `b` (inference s/case, then parameters, then train s)."""
    for col in ("infer_seconds_per_case", "parameters", "train_seconds"):
        if col in per and a in per.index and b in per.index:
            x, y = per.at[a, col], per.at[b, col]
            if pd.notna(x) and pd.notna(y) and x != y:
                return bool(x < y)
    return False


def _savings(per: pd.DataFrame, cand: str, ref: str) -> dict:
    out = {}
    for col in ("infer_seconds_per_case", "peak_infer_memory_mb", "parameters"):
        if col in per and cand in per.index and ref in per.index:
            out[f"{col}_saved"] = per.at[ref, col] - per.at[cand, col]
            out[f"{col}_ref"] = per.at[ref, col]
    return out


def _composite_matrix(tidy: pd.DataFrame, labels: list[str]) -> dict:
    """{("composite", "dsc"): (cases, variants)} of the KiTS composite Dice; {} without it."""
    composite = composite_dice(tidy)
    if composite.empty:
        return {}
    return {k: m.reindex(columns=labels) for k, m in case_matrices(composite, ["dsc"]).items()}


def _composite(tidy: pd.DataFrame) -> pd.DataFrame:
    """describe() of the KiTS composite Dice; empty when the study lacks kidney or tumor."""
    composite = composite_dice(tidy)
    return pd.DataFrame() if composite.empty else describe(composite, ["dsc"])


def _posthoc(matrices: dict) -> pd.DataFrame:
    parts = [
        pairwise_wilcoxon(m).assign(target=t, metric=metric) for (t, metric), m in matrices.items()
    ]
    return pd.concat(parts, ignore_index=True)


def _reference_levels(results: Results, baseline: str) -> dict[str, str]:
    """Each axis's reference level is the baseline's level on that axis."""
    axes = variant_axes(results)
    return {} if baseline not in axes.index else axes.loc[baseline].to_dict()


def _pareto_points(matrices: dict, cost: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """Per variant: mean `metric` over targets on the cases every variant has, beside inference
    time; `front` marks the Pareto front (direction of the metric respected)."""
    if cost.empty or cost["infer_seconds_per_case"].isna().all():
        return None
    frames = [m.dropna().mean() for (_, mt), m in matrices.items() if mt == metric]
    scale = 100 if metric in ("dsc", "nsd", "abs_rvd") else 1
    accuracy = pd.concat(frames, axis=1).mean(axis=1) * scale
    seconds = cost.groupby("variant")["infer_seconds_per_case"].mean()
    points = pd.DataFrame({"accuracy": accuracy, "cost": seconds}).dropna()
    if points.empty:
        return None
    points["front"] = pareto_front(
        points["cost"].to_numpy(), points["accuracy"].to_numpy(), HIGHER_IS_BETTER[metric]
    )
    return points.rename_axis("variant").reset_index()
