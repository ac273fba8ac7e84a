"""Everything the report shows, computed once from the results: the numbers, no formatting
(ablate.report.stats holds the tests themselves)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.errors import ConfigError, DataError
from ablate.report.collect import (
    Results,
    check_results,
    composite_dice,
    empty_case_counts,
    missing_value_counts,
    variant_axes,
    variant_order,
)
from ablate.report.held_out import HeldOut, analyse_held_out
from ablate.report.stats import (
    HIGHER_IS_BETTER,
    case_matrices,
    compare_to_baseline,
    describe,
    friedman,
    main_effects,
    pairwise_wilcoxon,
    pareto_front,
    rank_stability,
    rank_then_aggregate,
    seed_spread,
    significance_map,
)


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed once from the results (numbers, no formatting)."""

    baseline: str
    order: list[str]  # variant labels, baseline first
    metrics: list[str]  # of REPORT_METRICS, those present
    n_seeds: int
    describe: pd.DataFrame
    matrices: dict[tuple[str, str], pd.DataFrame]  # (target, metric) -> (cases, variants)
    compare: pd.DataFrame
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


REPORT_METRICS = ("dsc", "nsd")


def analyse(results: Results, meta: dict, seed: int = 0, n_boot: int = 2000) -> Analysis:
    """Run every statistic of the report; raise ConfigError for an unknown baseline."""
    check_results(results)
    tidy = results.tidy
    metrics = [m for m in REPORT_METRICS if (tidy["metric"] == m).any()]
    if not metrics:
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
    ranked = {t: m for (t, metric), m in matrices.items() if metric == metrics[0]}
    many = len(labels) >= 3
    return Analysis(
        baseline=baseline,
        order=labels,
        metrics=metrics,
        n_seeds=n_seeds,
        describe=describe(tidy, metrics),
        matrices=matrices,
        compare=compare_to_baseline(matrices, baseline, rng, n_seeds, n_boot),
        friedman=friedman(matrices) if many else pd.DataFrame(),
        posthoc=_posthoc(matrices) if many else pd.DataFrame(),
        sig_maps={k: significance_map(m, HIGHER_IS_BETTER[k[1]]) for k, m in matrices.items()},
        ranking={t: rank_then_aggregate(m) for t, m in ranked.items()},
        stability={t: rank_stability(m, rng) for t, m in ranked.items() if len(m.dropna()) > 1},
        main_effects=main_effects(
            tidy, results.axes, metrics, _reference_levels(results, baseline), rng, n_boot
        ),
        seed_spread=seed_spread(tidy, metrics),
        composite=_composite(tidy),
        pareto=_pareto_points(matrices, results.cost, metrics[0]),
        cost=results.cost,
        curves=results.curves,
        empty=empty_case_counts(tidy),
        nan_counts=missing_value_counts(tidy, metrics),
        missing=list(dict.fromkeys([*(meta.get("missing") or []), *results.missing])),
        held_out=analyse_held_out(results.test, results.test_cost, metrics, baseline, rng,
                                  n_seeds, n_boot),
    )


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
    if cost.empty or cost["infer_seconds_per_case"].isna().all():
        return None
    frames = [m.mean() for (_, mt), m in matrices.items() if mt == metric]
    accuracy = pd.concat(frames, axis=1).mean(axis=1) * 100
    seconds = cost.groupby("variant")["infer_seconds_per_case"].mean()
    points = pd.DataFrame({"accuracy": accuracy, "cost": seconds}).dropna()
    if points.empty:
        return None
    points["front"] = pareto_front(points["cost"].to_numpy(), points["accuracy"].to_numpy())
    return points.rename_axis("variant").reset_index()
