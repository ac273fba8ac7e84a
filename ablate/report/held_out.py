"""The held-out test set: every fold model and the fold ensemble on cases no model trained on.

Per case, "single fold" is the mean over the fold models (and seeds), so the ensemble is compared
with the model one would get from one fold, on the same cases. Variants are compared with the
baseline on what each would ship: its ensemble, else its single-fold mean; an external prediction
folder (model "external") on its own predictions. That comparison is case level: these trained
models differ.

Configuration level (`configuration_compare`): every fold model (of every seed) predicts every
test case, so training runs and cases are crossed; the test is ablate.report.crossed's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate.report import plots
from ablate.report.comparisons import compare_to_baseline
from ablate.report.held_out_configuration import (
    ENSEMBLE,
    EXTERNAL,
    configuration_compare,
    configuration_table,
)
from ablate.report.paired import paired_mean
from ablate.report.stats import (
    ALPHA,
    HIGHER_IS_BETTER,
    MIN_PAIRS,
    TOO_FEW,
    holm,
    wilcoxon_p,
)
from ablate.report.tables import (
    Table,
    _num,
    _pct,
    compare_table,
    format_p,
)


@dataclass(frozen=True)
class HeldOut:
    n_cases: int
    n_models: int  # fold models per variant and seed
    cases: pd.DataFrame  # per_case(): (target, metric, variant, case) x (single, ensemble)
    ensemble_vs_single: pd.DataFrame  # target, metric, variant, single, fold_min, fold_max, ...
    compare: pd.DataFrame  # compare_to_baseline on the test cases
    cost: pd.DataFrame  # variant, kind (single | ensemble), seconds, memory
    # configuration_compare: fold models x seeds as training runs crossed with the test cases
    configuration: pd.DataFrame = field(default_factory=pd.DataFrame)


def per_case(test: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Index (target, metric, variant, case); columns "single" (the fold models' mean) and, when
    there are any, "ensemble" and "external"."""
    sub = test[test["metric"].isin(metrics)]
    kind = np.where(sub["model"].isin([ENSEMBLE, EXTERNAL]), sub["model"], "single")
    keys = ["target", "metric", "variant", "case", "kind"]
    return sub.assign(kind=kind).groupby(keys, sort=False)["value"].mean().unstack("kind")


def ensemble_vs_single(
    test: pd.DataFrame, metrics: list[str], rng: np.random.Generator, n_boot: int = 2000
) -> pd.DataFrame:
    """Per target, metric, variant: single-fold mean and the range of the fold models' means, the
    ensemble's mean, the mean paired difference (ensemble - single) with a t 95% CI and the paired
    t-test's two-sided p (Holm over every row; the same trained models, so cases are the unit),
    and the case-level Wilcoxon p beside it."""
    cases = per_case(test, metrics)
    if "single" not in cases:
        return pd.DataFrame()
    cases = cases[cases["single"].notna()]  # external folders have no fold models
    singles = test[~test["model"].isin([ENSEMBLE, EXTERNAL]) & test["metric"].isin(metrics)]
    model_means = singles.groupby(["target", "metric", "variant", "model"], sort=False)[
        "value"
    ].mean()
    spreads = {key: part for key, part in model_means.groupby(level=[0, 1, 2], sort=False)}
    rows = []
    for (target, metric, variant), part in cases.groupby(level=[0, 1, 2], sort=False):
        spread = spreads[(target, metric, variant)]
        single = part["single"].to_numpy(dtype=float)
        ensemble = part.get("ensemble", pd.Series(np.nan, index=part.index)).to_numpy(dtype=float)
        diff = ensemble - single
        diff = diff[~np.isnan(diff)]
        res = (
            paired_mean(diff, None)
            if diff.size >= MIN_PAIRS
            else {
                "mean": diff.mean() if diff.size else np.nan,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "p": np.nan,
            }
        )
        rows.append(
            {
                "target": target,
                "metric": metric,
                "variant": variant,
                "n": diff.size,
                "single": np.nanmean(single),
                "fold_min": spread.min(),
                "fold_max": spread.max(),
                "ensemble": np.nanmean(ensemble) if diff.size else np.nan,
                "mean_diff": res["mean"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
                "p": res["p"],
                "wilcoxon_p": wilcoxon_p(diff)[0] if diff.size else np.nan,
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].to_numpy())
    out["significant"] = out["p_holm"] < ALPHA
    return out


def analyse_held_out(
    test: pd.DataFrame,
    test_cost: pd.DataFrame,
    metrics: list[str],
    baseline: str,
    rng: np.random.Generator,
    n_seeds: int,
    n_boot: int = 2000,
    inference_only: dict[str, bool] | None = None,
) -> HeldOut | None:
    """`inference_only`: variants sharing the baseline's trained models (analysis.
    inference_only_variants); they get no configuration-level row."""
    if test.empty:
        return None
    cases = per_case(test, metrics)
    scored = _shipped(cases).dropna()
    matrices = {
        key: part.droplevel([0, 1]).unstack("variant")
        for key, part in scored.groupby(level=[0, 1], sort=False)
    }
    compare = pd.DataFrame()
    if len(test["variant"].unique()) > 1 and baseline in set(test["variant"]):
        compare = compare_to_baseline(matrices, baseline, None, None, n_seeds)
        if not compare.empty:
            compare["kind"] = "test set, case level"
            shipped = "ensemble" if "ensemble" in cases else "single-fold mean"
            compare["pairs"] = compare["pairs"].str.replace(
                "per-case", f"per-case test-set ({shipped})"
            )
    cost = test_cost.assign(kind=np.where(test_cost["model"] == ENSEMBLE, "ensemble", "single"))
    cost = cost[test_cost["model"] != EXTERNAL]
    cost = (
        cost.groupby(["variant", "kind"], sort=False)[
            ["infer_seconds_per_case", "peak_infer_memory_mb"]
        ]
        .mean()
        .reset_index()
    )
    singles = test[~test["model"].isin([ENSEMBLE, EXTERNAL])]
    n_models = (
        int(singles.groupby(["variant", "seed"])["model"].nunique().max()) if len(singles) else 0
    )
    return HeldOut(
        int(test["case"].nunique()),
        n_models,
        cases,
        ensemble_vs_single(test, metrics, rng, n_boot),
        compare,
        cost,
        configuration_compare(test, metrics, baseline, inference_only)
        if baseline in set(test["variant"])
        else pd.DataFrame(),
    )


def _shipped(cases: pd.DataFrame) -> pd.Series:
    """Per case what a variant would ship: its ensemble when the variant has any ensemble value,
    else its fold models' mean, else the external folder's prediction. A case whose ensemble
    value is missing stays missing (never the single-fold mean in its place)."""
    out = pd.Series(np.nan, index=cases.index)
    decided = pd.Series(False, index=cases.index)
    for column in ("ensemble", "single", "external"):
        if column not in cases:
            continue
        has = cases[column].notna().groupby(level=[0, 1, 2]).transform("any").to_numpy()
        take = has & ~decided.to_numpy()
        out[take] = cases.loc[take, column]
        decided |= take
    return out


# ---------------------------------------------------------------- display


def held_out_tables(h: HeldOut, order: list[str], memory_label: str) -> dict[str, Table]:
    tables = {}
    if not h.ensemble_vs_single.empty:
        tables["ensemble"] = _ensemble_table(h, order)
    if not h.compare.empty:
        table = compare_table(h.compare, family="T")
        tables["compare"] = Table(
            f"Held-out test set: {table.title.lower()}", table.frame, note=table.note
        )
    if not h.configuration.empty:
        tables["configuration"] = configuration_table(h.configuration, order)
    if not h.cost.empty:
        tables["cost"] = _cost_table(h.cost, order, memory_label)
    return tables


def _ensemble_table(h: HeldOut, order: list[str]) -> Table:
    e = h.ensemble_vs_single
    rank = {v: i for i, v in enumerate(order)}
    e = e.assign(_rank=e["variant"].map(rank)).sort_values(
        ["target", "metric", "_rank"], kind="stable"
    )
    verdict = np.where(
        e["n"] < MIN_PAIRS, TOO_FEW, np.where(e["significant"], "significant", "not significant")
    )
    frame = pd.DataFrame(
        {
            "target": e["target"],
            "metric": e["metric"].str.upper(),
            "variant": e["variant"],
            "single fold (%)": e["single"].map(_pct),
            "fold models' range (%)": [
                f"{_pct(a)}–{_pct(b)}" for a, b in zip(e["fold_min"], e["fold_max"], strict=True)
            ],
            "ensemble (%)": e["ensemble"].map(_pct),
            "ensemble − single (points)": [
                "n/a" if pd.isna(d) else f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
                for d, lo, hi in zip(e["mean_diff"], e["ci_low"], e["ci_high"], strict=True)
            ],
            "p (Holm)": [format_p(p) for p in e["p_holm"]],
            "result": np.where(e["ensemble"].isna(), "no ensemble", verdict),
        }
    )
    note = (
        f"{h.n_cases} test cases, {h.n_models} fold models per variant. Single fold: per case "
        "the mean over the fold models (and seeds); range: the lowest and highest fold model's "
        "mean. Difference: mean paired difference with its 95% t interval (unadjusted); paired "
        "t-test, two-sided, on the cases (the same trained models, so cases are the unit). "
        "Holm family T-ens: the rows of this table."
    )
    return Table(
        "Held-out test set: fold ensemble vs single fold models",
        frame.reset_index(drop=True),
        note=note,
    )


def _cost_table(cost: pd.DataFrame, order: list[str], memory_label: str) -> Table:
    wide = cost.pivot(index="variant", columns="kind").reindex(order)
    frame = pd.DataFrame({"variant": order}, index=order)
    for kind in ("single", "ensemble"):
        if ("infer_seconds_per_case", kind) in wide:
            frame[f"{kind}: s / case"] = wide[("infer_seconds_per_case", kind)].map(_num)
            frame[f"{kind}: {memory_label} (MB)"] = wide[("peak_infer_memory_mb", kind)].map(_num)
    return Table(
        "Held-out test set: inference cost per case",
        frame.reset_index(drop=True),
        note="From the raw image to the written label map, measured in one pass over "
        "the cases. Single: preprocessing, one fold model's sliding window, "
        "resampling back, export (mean over the fold models). Ensemble: the same "
        "with every fold model's sliding window.",
    )


def held_out_summary(h: HeldOut, metric: str) -> list[str]:
    """Per target: the variant whose ensemble (else single-fold mean) scores best on `metric`."""
    e = h.ensemble_vs_single
    if e.empty:
        return []
    e = e[e["metric"] == metric]
    column = "single" if e["ensemble"].isna().all() else "ensemble"
    lines = []
    for target, part in e.groupby("target", sort=False):
        # "best" on the test cases every variant has a value for (absent cases never favour one)
        wide = h.cases.xs((target, metric), level=[0, 1])[column].unstack("variant")
        wide = wide.reindex(columns=part["variant"]).dropna()
        means = wide.mean()
        values = means if HIGHER_IS_BETTER.get(metric, True) else -means
        if wide.empty or values.isna().all():
            continue
        singles = h.cases.xs((target, metric), level=[0, 1])["single"].unstack("variant")
        singles = singles.reindex(index=wide.index, columns=wide.columns)
        if _all_identical(pd.concat([wide, singles], axis=1)):
            lines.append(
                f"Held-out test set ({h.n_cases} cases), {target} {metric.upper()}: every "
                f"variant scores the same on every case, ensembles and single-fold means alike "
                f"({100 * float(wide.iloc[:, 0].mean()):.1f}% on average); nothing to compare."
            )
            continue
        best = part.set_index("variant").loc[values.idxmax()]
        text = (
            f"Held-out test set ({h.n_cases} cases), {target} {metric.upper()}: best "
            f"{column.replace('single', 'single-fold mean')} over the {len(wide)} cases every "
            f"variant has: {values.idxmax()} ({100 * means[values.idxmax()]:.1f}%)"
        )
        if column == "ensemble":
            verdict = (
                "too few cases for a test"
                if best["n"] < MIN_PAIRS
                else f"{format_p(best['p_holm'], prefix=True)} after Holm, paired t on the cases"
            )
            text += (
                f", {100 * best['mean_diff']:+.1f} points over its single fold models ({verdict})"
            )
        lines.append(text + ".")
    return lines


def _all_identical(wide: pd.DataFrame) -> bool:
    """Every column (variant) equal to the first on every row (case), missing values aside."""
    values = wide.to_numpy(dtype=float)
    return bool(np.allclose(values, values[:, :1], equal_nan=True, rtol=0, atol=1e-12))


def held_out_figures(h: HeldOut, order: list[str]) -> list[tuple[str, bytes]]:
    """Per target and metric, a violin of per-case values: single-fold mean, ensemble, external."""
    kinds = ("single", "ensemble", "external")
    out = []
    for (target, metric), part in h.cases.groupby(level=[0, 1], sort=False):
        long = (
            part.reset_index()
            .melt(
                id_vars=["variant"],
                value_vars=[c for c in kinds if c in part],
                var_name="model",
                value_name="value",
            )
            .dropna()
        )
        long["value"] *= 100
        long["variant"] = long["variant"] + " · " + long["model"]
        shown = set(long["variant"])
        labels = [f"{v} · {m}" for v in order for m in kinds if f"{v} · {m}" in shown]
        title = f"held-out test set: {target} {metric.upper()} per case (single: fold-model mean)"
        out.append((title, plots.violin(long, labels, title, f"{metric.upper()} (%)")))
    return out
