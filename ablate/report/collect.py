"""The results tables a report is built from, their checks, and a synthetic generator.

`Results` is the contract between `ablate.run.tracking` (which builds it from MLflow) and the report
(which never touches MLflow). `synthetic_results` builds one with known effects for tests and the
benchmark.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate.errors import DataError

TIDY_COLUMNS = ("variant", "fold", "seed", "case", "target", "metric", "value")
COST_COLUMNS = (
    "variant",
    "fold",
    "seed",
    "train_seconds",
    "seconds_per_epoch",
    "infer_seconds_per_case",
    "peak_train_memory_mb",
    "peak_infer_memory_mb",
    "parameters",
    "flops",
)
CURVE_COLUMNS = ("variant", "fold", "seed", "epoch", "metric", "value")


@dataclass(frozen=True)
class Results:
    """Long tables of one study.

    tidy:   variant, <axis columns...>, fold, seed, case, target, metric, value (one row per value)
    cost:   variant, <axis columns...>, fold, seed, train_seconds, seconds_per_epoch,
            infer_seconds_per_case, peak_train_memory_mb, peak_infer_memory_mb, parameters, flops
    curves: variant, fold, seed, epoch, metric, value (variant: the label of the training runs,
            their training-axis values only: inference axes reuse the trained models)
    axes:   the axis column names; missing: readable labels of jobs without results
    test:   the held-out test set, as tidy plus `model` ("fold <n>" or "ensemble"; fold -1)
    test_cost: variant, <axis columns...>, model, fold, seed, infer_seconds_per_case,
            peak_infer_memory_mb (from the raw image to the written label map)
    """

    tidy: pd.DataFrame
    cost: pd.DataFrame
    curves: pd.DataFrame
    axes: list[str]
    missing: list[str] = field(default_factory=list)
    test: pd.DataFrame = field(default_factory=pd.DataFrame)
    test_cost: pd.DataFrame = field(default_factory=pd.DataFrame)


def check_results(results: Results) -> None:
    """Raise DataError naming the table and the absent columns when a table is malformed."""
    tables = {"tidy": (results.tidy, TIDY_COLUMNS), "cost": (results.cost, COST_COLUMNS)}
    tables["curves"] = (results.curves, CURVE_COLUMNS)
    for name, (frame, required) in tables.items():
        if name != "tidy" and frame.empty:
            continue
        absent = [
            c for c in (*required, *(results.axes if name != "curves" else ())) if c not in frame
        ]
        if absent:
            raise DataError(
                f"Results.{name}: missing columns {absent}; rebuild it with fetch_results"
            )
    if results.tidy.empty:
        raise DataError("Results.tidy: no per-case values; run the evaluations before the report")


def variant_order(results: Results, baseline: str | None) -> list[str]:
    """Variant labels with the baseline first, the rest in their order of appearance."""
    labels = [str(v) for v in pd.unique(results.tidy["variant"])]
    if baseline is not None and baseline in labels:
        labels.remove(baseline)
        labels.insert(0, baseline)
    return labels


def variant_axes(results: Results) -> pd.DataFrame:
    """One row per variant with its axis values (index: variant)."""
    cols = ["variant", *results.axes]
    return results.tidy[cols].drop_duplicates("variant").set_index("variant")


def empty_case_counts(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per target: cases with an empty reference, and evaluations (variant x seed x case) whose
    prediction is empty while the reference is not (a missed structure).

    Reads ablate.evaluate's `empty` flag (0 none, 1 reference, 2 prediction, 3 both empty); without
    it, an empty reference is vol_ref_ml == 0.
    """
    flags = tidy[tidy["metric"] == "empty"]
    if flags.empty:
        vol = tidy[tidy["metric"] == "vol_ref_ml"]
        ref_empty, missed = vol[vol["value"] <= 0], vol.iloc[:0]
    else:
        ref_empty = flags[flags["value"].isin([1, 3])]
        missed = flags[flags["value"] == 2]
    targets = pd.Index(pd.unique(tidy["target"]), name="target")
    out = pd.DataFrame(
        {
            "empty_reference_cases": ref_empty.groupby("target")["case"].nunique(),
            "missed_structure_evaluations": missed.groupby("target").size(),
        }
    )
    return out.reindex(targets).fillna(0).astype(int).reset_index()


def empty_predictions(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per target and variant: cases scored, cases whose prediction is empty (flag 2 or 3) and
    cases whose reference is empty (flag 1 or 3), from ablate.evaluate's `empty` rows (seeds
    pooled: a case counts as empty when every seed's prediction is). Empty without the flags."""
    flags = tidy[tidy["metric"] == "empty"]
    columns = ["target", "variant", "cases", "empty_prediction", "empty_reference"]
    if flags.empty:
        return pd.DataFrame(columns=columns)
    per_case = (
        flags.assign(pred=flags["value"].isin([2, 3]), ref=flags["value"].isin([1, 3]))
        .groupby(["target", "variant", "case"], sort=False)[["pred", "ref"]]
        .all()
    )
    out = per_case.groupby(level=[0, 1], sort=False).agg(["size", "sum"])
    return pd.DataFrame(
        {
            "cases": out[("pred", "size")],
            "empty_prediction": out[("pred", "sum")].astype(int),
            "empty_reference": out[("ref", "sum")].astype(int),
        }
    ).reset_index()[columns]


def missing_value_counts(tidy: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Count of NaN values per target and metric (dropped pairwise before every test)."""
    sub = tidy[tidy["metric"].isin(metrics)]
    return (
        sub.assign(nan=sub["value"].isna())
        .groupby(["target", "metric"], sort=False)["nan"]
        .sum()
        .astype(int)
        .rename("nan_values")
        .reset_index()
    )


def composite_dice(
    tidy: pd.DataFrame, parts: tuple[str, ...] = ("kidney", "tumor")
) -> pd.DataFrame:
    """KiTS composite Dice: per case the mean of the parts' DSC (Isensee 2019, KiTS19); empty
    without a part.

    Returns variant, seed, case, target="composite", metric="dsc", value.
    """
    dsc = tidy[(tidy["metric"] == "dsc") & tidy["target"].isin(parts)]
    if set(parts) - set(dsc["target"]):
        return pd.DataFrame(columns=["variant", "seed", "case", "target", "metric", "value"])
    wide = dsc.pivot_table(
        index=["variant", "seed", "case"], columns="target", values="value", aggfunc="mean"
    )
    value = wide[list(parts)].mean(axis=1, skipna=False)
    out = value.rename("value").reset_index()
    return out.assign(target="composite", metric="dsc")


def _case_values(rng, difficulty, variant_shift, seed_shift, noise):
    """DSC values (cases, targets) around each case's difficulty, clipped to [0, 1]."""
    value = difficulty + variant_shift + seed_shift + rng.normal(0.0, noise, difficulty.shape)
    return np.clip(value, 0.0, 1.0)


def synthetic_results(
    axes: dict[str, list[str]] | None = None,
    n_cases: int = 30,
    targets: tuple[str, ...] = ("kidney", "tumor"),
    folds: int = 5,
    seeds: tuple[int, ...] = (0,),
    effects: dict[str, float] | None = None,
    noise: float = 0.02,
    seed_sd: float = 0.002,
    epochs: int = 5,
    rng_seed: int = 0,
    run_sd: float = 0.0,
    distances: bool = False,
) -> Results:
    """Results of a full-factorial study with known effects.

    The variant label joins its level values with " / "; `effects` maps a level value to its
    additive DSC shift (NSD = DSC - 0.05 + noise). Case i lies in validation fold i % folds.
    `run_sd`: sd of each training run's offset (one per variant, fold and seed: the fold model),
    shared by the cases of its fold. `distances`: also HD95 and ASSD in mm (lower is better,
    falling as DSC rises) and the signed RVD.
    """
    axes = axes or {"arch": ["plain", "residual"]}
    effects = effects or {}
    rng = np.random.default_rng(rng_seed)
    case_ids = [f"case_{i:05d}" for i in range(n_cases)]
    difficulty = rng.normal(0.82, 0.06, (n_cases, len(targets)))  # shared by all variants
    tidy_parts, cost_rows, curve_rows = [], [], []
    for levels in itertools.product(*axes.values()):
        label = " / ".join(levels)
        shift = sum(effects.get(level, 0.0) for level in levels)
        axis_values = dict(zip(axes, levels, strict=True))
        speed = 1.0 + rng.uniform(0.0, 1.0)
        for seed in seeds:
            run = rng.normal(0.0, run_sd, folds)[np.arange(n_cases) % folds][:, None]
            dsc = _case_values(rng, difficulty, shift, rng.normal(0, seed_sd) + run, noise)
            nsd = np.clip(dsc - 0.05 + rng.normal(0, noise, dsc.shape), 0.0, 1.0)
            values_by_metric = [("dsc", dsc), ("nsd", nsd)]
            if distances:
                hd95 = np.maximum(0.0, 40 * (1 - dsc) + rng.normal(0, 0.5, dsc.shape))
                rvd = rng.normal(0.0, 0.1, dsc.shape) * (1.2 - dsc) * 5
                values_by_metric += [("hd95", hd95), ("assd", hd95 / 4), ("rvd", rvd)]
            for metric, values in values_by_metric:
                part = pd.DataFrame(
                    {
                        "case": np.repeat(case_ids, len(targets)),
                        "target": np.tile(targets, n_cases),
                        "value": values.ravel(),
                    }
                )
                part["fold"] = np.repeat(np.arange(n_cases) % folds, len(targets))
                tidy_parts.append(
                    part.assign(variant=label, seed=seed, metric=metric, **axis_values)
                )
            for fold in range(folds):
                cost_rows.append(_cost_row(rng, label, axis_values, fold, seed, speed, epochs))
                curve_rows += _curve_rows(rng, label, fold, seed, epochs, shift)
    cols = ["variant", *axes, "fold", "seed", "case", "target", "metric", "value"]
    tidy = pd.concat(tidy_parts, ignore_index=True)[cols]
    return Results(tidy, pd.DataFrame(cost_rows), pd.DataFrame(curve_rows), list(axes), [])


def _cost_row(rng, label, axis_values, fold, seed, speed, epochs) -> dict:
    per_epoch = 60.0 * speed * rng.uniform(0.95, 1.05)
    return {
        "variant": label,
        **axis_values,
        "fold": fold,
        "seed": seed,
        "train_seconds": per_epoch * epochs,
        "seconds_per_epoch": per_epoch,
        "infer_seconds_per_case": 4.0 * speed * rng.uniform(0.95, 1.05),
        "peak_train_memory_mb": 3000.0 * speed,
        "peak_infer_memory_mb": 1500.0 * speed,
        "parameters": int(2e7 * speed),
        "flops": int(4e11 * speed),
    }


def _curve_rows(rng, label, fold, seed, epochs, shift) -> list[dict]:
    rows = []
    for epoch in range(epochs):
        decay = np.exp(-epoch / max(epochs / 3, 1))
        values = {
            "train_loss": -0.2 - 0.6 * (1 - decay) + rng.normal(0, 0.01),
            "val_loss": -0.15 - 0.55 * (1 - decay) + rng.normal(0, 0.01),
            "pseudo_dice": 0.3 + (0.5 + shift) * (1 - decay) + rng.normal(0, 0.01),
        }
        for metric, value in values.items():
            rows.append(
                {"variant": label, "fold": fold, "seed": seed, "epoch": epoch}
                | {"metric": metric, "value": value}
            )
    return rows
