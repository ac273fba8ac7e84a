"""The held-out test set at configuration level: every fold model (and seed) is a training run
that predicts every test case, so runs and cases are crossed (`crossed.crossed_mean`). Training
variants against the baseline, paired by fold and seed; inference-only variants stay at the case
level."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.crossed import crossed_mean
from ablate.report.paired import MIN_RUNS
from ablate.report.stats import ALPHA, HIGHER_IS_BETTER, MIN_PAIRS, holm
from ablate.report.tables import Table, diff_text, diff_unit, format_p, metric_label

# the test table's `model` values that are not fold models
ENSEMBLE = "ensemble"
EXTERNAL = "external"


def run_table(test: pd.DataFrame, variant: str, target: str, metric: str) -> pd.DataFrame:
    """(seed, fold model) x case values of one variant's fold models on the test set."""
    rows = test[
        (test["variant"] == variant)
        & (test["target"] == target)
        & (test["metric"] == metric)
        & ~test["model"].isin([ENSEMBLE, EXTERNAL])
    ]
    return rows.groupby(["seed", "model", "case"], sort=False)["value"].mean().unstack("case")


def configuration_compare(
    test: pd.DataFrame,
    metrics: list[str],
    baseline: str,
    inference_only: dict[str, bool] | None = None,
) -> pd.DataFrame:
    """Each variant vs the baseline at configuration level on the test set: training runs (fold
    model and seed, paired with the baseline's same fold and seed) crossed with the cases every
    paired run has. Holm per metric over variants x targets (family "T-cfg"). A variant sharing
    the baseline's trained models (`inference_only`) is left to the case-level table."""
    inference_only = inference_only or {}
    sub = test[test["metric"].isin(metrics)]
    rows = []
    for (target, metric), part in sub.groupby(["target", "metric"], sort=False):
        base = run_table(part, baseline, target, metric)
        for variant in [v for v in pd.unique(part["variant"]) if v != baseline]:
            if inference_only.get(variant, False):
                continue
            other = run_table(part, variant, target, metric)
            runs = base.index.intersection(other.index)
            d = (other.loc[runs] - base.loc[runs]).dropna(axis=1)
            res = crossed_mean(d.to_numpy(dtype=float))
            rows.append(
                {
                    "target": target,
                    "metric": metric,
                    "variant": variant,
                    "baseline": baseline,
                    **res,
                    "note": _one_model_note(len(runs), d.shape[1]),
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = out.groupby("metric")["p"].transform(lambda p: holm(p.to_numpy()))
    out["significant"] = out["p_holm"] < ALPHA
    hib = out["metric"].map(HIGHER_IS_BETTER).fillna(True).astype(bool)
    out["better"] = (out["mean"] > 0) == hib
    return out


def _one_model_note(runs: int, cases: int) -> str:
    if runs == 0:
        return "no fold model of both variants predicted the test set: nothing to compare"
    if runs == 1:
        return (
            "only one trained model per variant on the test set: the difference is that of "
            "these two models, no configuration-level verdict; train more seeds or folds"
        )
    if runs < MIN_RUNS:
        return (
            f"only {runs} trained models per variant on the test set: too few to estimate "
            f"their variance, no configuration-level verdict; run at least {MIN_RUNS}"
        )
    if cases < MIN_PAIRS:
        return f"only {cases} test cases every paired run has: too few for a test"
    return ""


def configuration_table(c: pd.DataFrame, order: list[str]) -> Table:
    rank = {v: i for i, v in enumerate(order)}
    c = c.assign(_rank=c["variant"].map(rank)).sort_values(
        ["target", "metric", "_rank"], kind="stable"
    )
    verdict = np.where(
        c["significant"],
        np.where(c["better"], "significantly better", "significantly worse"),
        "not significant",
    )
    frame = pd.DataFrame(
        {
            "variant": c["variant"],
            "target": c["target"],
            "metric": c["metric"].map(metric_label),
            "runs x cases": [f"{r} x {n}" for r, n in zip(c["runs"], c["n"], strict=True)],
            "mean diff": [
                f"{diff_text(x, m)} {diff_unit(m)}"
                for x, m in zip(c["mean"], c["metric"], strict=True)
            ],
            "95% CI (unadjusted)": [
                f"[{diff_text(a, m)}, {diff_text(b, m)}]"
                for a, b, m in zip(c["ci_low"], c["ci_high"], c["metric"], strict=True)
            ],
            "p (Holm)": [format_p(p) for p in c["p_holm"]],
            "result": np.where(c["note"] != "", c["note"], verdict),
        }
    )
    note = (
        "Configuration level on the test set: each fold model (and seed) is a training run "
        "and predicts every test case, so runs and cases are crossed. Per run (the baseline's "
        "same fold and seed) and case, the paired difference variant - baseline; its mean with "
        "a 95% t interval whose variance holds both the runs and the cases (two-way "
        "random-effects ANOVA, df = min(Satterthwaite, runs - 1)). Inference-only variants "
        "share the baseline's models and are in the case-level table only. Holm families "
        "T-cfg-<metric>: the rows of this table, per metric."
    )
    return Table(
        "Held-out test set: configuration level (training runs x test cases)",
        frame.reset_index(drop=True),
        note=note,
    )
