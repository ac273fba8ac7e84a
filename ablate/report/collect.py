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
    curves: variant, fold, seed, epoch, metric, value
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
    """KiTS composite Dice: per case the mean of the parts' DSC (seed 004); empty without a part.

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


@dataclass(frozen=True)
class Table:
    """A display table: strings, an optional same-shape mask of cells to set in bold, a note."""

    title: str
    frame: pd.DataFrame
    bold: pd.DataFrame | None = None
    note: str = ""


FRACTION_METRICS = ("dsc", "nsd", "abs_rvd")  # shown in % and differences in points


def metric_label(metric: str) -> str:
    return {"abs_rvd": "|RVD|"}.get(metric, metric.upper())


def metric_unit(metric: str) -> str:
    """Unit of a value ("%" or "mm") and of a difference ("points" or "mm")."""
    return "%" if metric in FRACTION_METRICS else "mm"


def diff_unit(metric: str) -> str:
    return "points" if metric in FRACTION_METRICS else "mm"


def value_text(x: float, metric: str, digits: int = 1) -> str:
    """A value in its display unit: fractions x100 (%), distances in mm."""
    scale = 100 if metric in FRACTION_METRICS else 1
    return "n/a" if pd.isna(x) else f"{scale * x:.{digits}f}"


def diff_text(x: float, metric: str, digits: int = 2) -> str:
    scale = 100 if metric in FRACTION_METRICS else 1
    return "n/a" if pd.isna(x) else f"{scale * x:+.{digits}f}"


def format_p(p: float, alpha: float = 0.05, prefix: bool = False) -> str:
    """A p-value whose printed number sits on the same side of alpha as the value itself: 0.0496
    prints "0.0496", never "0.050" beside "significant" (digits are added until it does)."""
    if pd.isna(p):
        return "n/a"
    if p < 0.001:
        return "p < 0.001" if prefix else "< 0.001"
    for digits in range(2, 8):
        text = f"{p:.{digits}g}" if p < 0.01 else f"{p:.{digits + 1}f}"
        if (float(text) < alpha) == (p < alpha):
            break
    return f"p = {text}" if prefix else text


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:.1f}"


def _num(x: float, digits: int = 1) -> str:
    return "n/a" if pd.isna(x) else f"{x:,.{digits}f}"


def _bold_best(
    frame: pd.DataFrame, values: dict[str, pd.Series], higher: dict[str, bool] | None = None
) -> pd.DataFrame:
    """Bold the cell of the best value in each named column (largest, or smallest where
    `higher[col]` is False)."""
    bold = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for col, series in values.items():
        if series.notna().any():
            best = series.idxmax() if (higher or {}).get(col, True) else series.idxmin()
            bold.loc[best, col] = True
    return bold


def accuracy_table(
    stats: pd.DataFrame,
    target: str,
    metrics: list[str],
    order: list[str],
    common: pd.DataFrame | None = None,
) -> Table:
    """Per variant: mean ± sd and median [IQR] per metric over its own cases, the mean over the
    cases every variant has (bold: the best of those, lower is better for distances and |RVD|),
    n and the cases it lacks."""
    sub = stats[stats["target"] == target].set_index(["metric", "variant"])
    frame = pd.DataFrame({"variant": order}, index=order)
    best, higher = {}, {}
    n_common = 0
    for metric in metrics:
        if metric not in sub.index.get_level_values(0):
            continue
        s = sub.loc[metric].reindex(order)
        name, unit = metric_label(metric), metric_unit(metric)
        frame[f"{name} mean ± sd ({unit})"] = [
            f"{value_text(m, metric)} ± {value_text(d, metric)}"
            for m, d in zip(s["mean"], s["sd"], strict=True)
        ]
        frame[f"{name} median [IQR] ({unit})"] = [
            f"{value_text(m, metric)} [{value_text(a, metric)}, {value_text(b, metric)}]"
            for m, a, b in zip(s["median"], s["q1"], s["q3"], strict=True)
        ]
        if common is not None and not common.empty:
            c = common[(common["target"] == target) & (common["metric"] == metric)]
            c = c.set_index("variant").reindex(order)
            col = f"{name} mean, common cases ({unit})"
            frame[col] = c["common_mean"].map(lambda x, m=metric: value_text(x, m))
            best[col], higher[col] = c["common_mean"], metric not in LOWER_IS_BETTER
            n_common = int(c["n_common"].max()) if c["n_common"].notna().any() else 0
    first = sub.loc[metrics[0]].reindex(order)
    frame["n"] = first["n"].fillna(0).astype(int).astype(str)
    if common is not None and not common.empty:
        c = common[(common["target"] == target) & (common["metric"] == metrics[0])]
        frame["absent cases"] = (
            c.set_index("variant")["absent"].reindex(order).fillna(0).astype(int).astype(str)
        )
    note = (
        f"Mean ± sd and median over each variant's own cases (per-case values averaged over "
        f"seeds). Bold: the best mean over the {n_common} cases every variant has "
        "(higher is better for DSC and NSD, lower for HD95, ASSD and |RVD|); absent cases: "
        "cases of this target the variant has no value for."
    )
    return Table(f"{target}: accuracy per variant", frame, _bold_best(frame, best, higher), note)


LOWER_IS_BETTER = ("hd95", "assd", "abs_rvd")


def table4(
    stats: pd.DataFrame, cost: pd.DataFrame, order: list[str], memory_label: str = "GPU memory"
) -> Table:
    """Seed 000's Table 4 layout: rows target x metric (mean ± sd in %), running time, memory."""
    rows = []
    indexed = stats.set_index(["target", "metric", "variant"]).sort_index()
    for target in pd.unique(stats["target"]):
        for metric in pd.unique(stats["metric"]):
            s = indexed.loc[(target, metric)].reindex(order)
            cells = [
                f"{value_text(m, metric)}±{value_text(d, metric)}"
                for m, d in zip(s["mean"], s["sd"], strict=True)
            ]
            rows.append([target, f"{metric_label(metric)} ({metric_unit(metric)})", *cells])
    if not cost.empty:
        per = cost.groupby("variant").mean(numeric_only=True).reindex(order)
        rows.append(["Running time", "s / case", *map(_num, per["infer_seconds_per_case"])])
        rows.append([memory_label, "MB (train)", *map(_num, per["peak_train_memory_mb"])])
    frame = pd.DataFrame(rows, columns=["target", "metric", *order])
    return Table("Cross-validation results (layout of seed 000, Table 4)", frame)


def kits_table(common: pd.DataFrame, order: list[str]) -> Table | None:
    """Seed 004's Table 1: kidney, tumor and composite Dice (mean, %) per variant, on the cases
    every variant has (common_case_means), best in bold."""
    if common.empty or "composite" not in set(common["target"]):
        return None
    dsc = common[common["metric"] == "dsc"].pivot(
        index="variant", columns="target", values="common_mean"
    )
    values = {
        "Kidney Dice": dsc["kidney"].reindex(order),
        "Tumor Dice": dsc["tumor"].reindex(order),
        "Composite Dice": dsc["composite"].reindex(order),
    }
    frame = pd.DataFrame(
        {"variant": order, **{k: v.map(_pct) for k, v in values.items()}}, index=order
    )
    n = common[common["target"] == "composite"]["n_common"].max()
    note = (
        "Composite Dice: per case the mean of kidney and tumor DSC (KiTS 2019), then averaged. "
        f"Means over the {n} cases every variant has (composite), and per target over the cases "
        "every variant has there; bold: the best."
    )
    return Table(
        "KiTS composite Dice (layout of seed 004, Table 1)", frame, _bold_best(frame, values), note
    )


def cost_table(cost: pd.DataFrame, order: list[str]) -> Table:
    """Training s/epoch, inference s/case, peak memory, parameters: mean ± sd over runs."""
    cols = {
        "seconds_per_epoch": "train s / epoch",
        "infer_seconds_per_case": "inference s / case",
        "peak_train_memory_mb": "peak train memory (MB)",
        "peak_infer_memory_mb": "peak inference memory (MB)",
    }
    if cost.empty:
        return Table("Runtime and memory", pd.DataFrame({"variant": order}), note="No cost data.")
    grouped = cost.groupby("variant")
    mean, sd = grouped.mean(numeric_only=True).reindex(order), grouped.std(numeric_only=True)
    sd = sd.reindex(order)
    frame = pd.DataFrame({"variant": order}, index=order)
    for col, name in cols.items():
        frame[name] = [f"{_num(m)} ± {_num(s)}" for m, s in zip(mean[col], sd[col], strict=True)]
    frame["parameters (M)"] = (mean["parameters"] / 1e6).map(lambda x: _num(x, 2))
    # one forward pass of one patch (2 x multiply-accumulates of convs), as seed 000 reports
    frame["GFLOPs / patch"] = (mean["flops"] / 1e9).map(lambda x: _num(x, 2))
    frame["runs"] = grouped.size().reindex(order).fillna(0).astype(int).astype(str)
    return Table("Runtime and memory (mean ± sd over folds and seeds)", frame)


def compare_table(compare: pd.DataFrame, title: str | None = None, family: str = "H") -> Table:
    """Variant vs baseline: the headline mean paired difference with its unadjusted 95% CI, p and
    Holm p (configuration level for training variants, case level for inference-only ones), and
    beside it the case-level Wilcoxon (these trained models) with the median difference."""
    headline = np.where(
        compare["note"] != "",
        compare["note"],
        np.where(
            compare["significant"],
            np.where(compare["better"], "significantly better", "significantly worse"),
            "not significant",
        ),
    )
    level = np.where(compare["unit"] == "fold models", "configuration level", "case level")
    wil = np.where(
        compare["wilcoxon_p_holm"].isna(),
        "no test",
        np.where(compare["wilcoxon_significant"], "differ", "no difference shown"),
    )
    frame = pd.DataFrame(
        {
            "variant": compare["variant"],
            "target": compare["target"],
            "metric": compare["metric"].map(metric_label),
            "kind": compare["kind"],
            "n (absent: variant, baseline)": [
                f"{n} ({a}, {b})"
                for n, a, b in zip(
                    compare["n"], compare["absent_variant"], compare["absent_baseline"], strict=True
                )
            ],
            "mean diff": [
                f"{diff_text(x, m)} {diff_unit(m)}"
                for x, m in zip(compare["mean_diff"], compare["metric"], strict=True)
            ],
            "95% CI (unadjusted)": [
                f"[{diff_text(a, m)}, {diff_text(b, m)}]"
                for a, b, m in zip(
                    compare["ci_low"], compare["ci_high"], compare["metric"], strict=True
                )
            ],
            "error term": [
                f"{u} ({c}), {lv}"
                for u, c, lv in zip(compare["unit"], compare["clusters"], level, strict=True)
            ],
            "p": compare["p"].map(format_p),
            "p (Holm)": compare["p_holm"].map(format_p),
            "verdict": headline,
            "family": [f"{family}-{m.upper()}" for m in compare["metric"]],
            "MDD 80% power": [
                diff_text(x, m).lstrip("+")
                for x, m in zip(compare["mdd"], compare["metric"], strict=True)
            ],
            "seeds / cases to detect the margin (80%)": [
                _needed(r) for r in compare.itertuples(index=False)
            ],
            "median diff (case level)": [
                diff_text(x, m)
                for x, m in zip(compare["median_diff"], compare["metric"], strict=True)
            ],
            "Wilcoxon p (Holm)": compare["wilcoxon_p_holm"].map(format_p),
            "these trained models": wil,
            "pairs": compare["pairs"],
        }
    )
    note = (
        "Headline: mean paired difference (variant − baseline) on the cases both have, with a t "
        "interval and two-sided t-test whose error term is the training runs for training "
        "variants (the cases of a fold share its fold model: cluster-robust over fold models, "
        "configuration level) and the cases for inference-only variants (the same trained "
        "models). 95% CI unadjusted; p (Holm) and verdict: Holm family {family}-<metric> = the "
        "rows of this table with that metric. MDD: the difference this test detects with 80% "
        "power at the measured standard error; seeds / cases: what the same test needs to detect "
        "the study's non-inferiority margin with 80% power (variance components of this study; "
        "only the run share shrinks with seeds; -: no number up to 20 seeds or 10000 cases). "
        "Right: two-sided case-level Wilcoxon "
        "signed-rank (exact up to 50 non-zero pairs; zero differences dropped), Holm family "
        "W-<metric>: whether these trained models differ; the median paired difference is "
        "labelled as such."
    ).replace("{family}", family)
    baseline = compare["baseline"].iat[0]
    return Table(title or f"Each variant vs {baseline}", frame, note=note)


def _needed(r) -> str:
    detect = getattr(r, "detect", np.nan)
    if pd.isna(detect):
        return ""
    seeds, cases = getattr(r, "seeds_needed", None), getattr(r, "cases_needed", None)
    seeds = "-" if seeds is None or pd.isna(seeds) else str(int(seeds))
    cases = "-" if cases is None or pd.isna(cases) else str(int(cases))
    return f"{seeds} / {cases}"


def noninferiority_table_display(ni: pd.DataFrame) -> Table:
    """Non-inferiority of the cheaper variant of each compared pair, with the cost it saves."""
    verdict = np.where(
        ni["note"] != "",
        ni["note"],
        np.where(ni["noninferior"], "non-inferior", "cannot claim non-inferiority"),
    )
    frame = pd.DataFrame(
        {
            "candidate (cheaper)": ni["candidate"],
            "reference": ni["reference"],
            "target": ni["target"],
            "metric": ni["metric"].map(metric_label),
            "kind": ni["kind"],
            "margin": [
                f"{diff_text(x, m).lstrip('+')} {diff_unit(m)}"
                for x, m in zip(ni["margin"], ni["metric"], strict=True)
            ],
            "mean diff": [
                diff_text(x, m) for x, m in zip(ni["mean_diff"], ni["metric"], strict=True)
            ],
            "one-sided 95% bound": [
                diff_text(x, m) for x, m in zip(ni["bound"], ni["metric"], strict=True)
            ],
            "p": ni["p"].map(format_p),
            "p (Holm)": ni["p_holm"].map(format_p),
            "verdict": verdict,
            "family": [f"NI-{m.upper()}" for m in ni["metric"]],
            "inference s / case saved": [
                _saved(r, "infer_seconds_per_case") for _, r in ni.iterrows()
            ],
            "parameters saved (M)": [_saved(r, "parameters", 1e6) for _, r in ni.iterrows()],
        }
    )
    note = (
        "Candidate: the cheaper of the pair (less inference time per case, else fewer "
        "parameters). H0: it is worse than the reference by the margin or more; one-sided "
        "t-test with the headline comparison's error term (fold models for training "
        "variants, cases for inference-only ones); bound: the one-sided 95% confidence bound "
        "on the worse side (non-inferior when it lies inside the margin). Holm family "
        "NI-<metric>: the rows of this table with that metric."
    )
    return Table("Non-inferiority of the cheaper variant", frame, note=note)


def _saved(row, col: str, scale: float = 1.0) -> str:
    saved, ref = row.get(f"{col}_saved", np.nan), row.get(f"{col}_ref", np.nan)
    if pd.isna(saved):
        return "n/a"
    share = f" ({100 * saved / ref:.0f}%)" if ref and pd.notna(ref) else ""
    return f"{saved / scale:,.2f}{share}"


def generic_table(title: str, frame: pd.DataFrame, note: str = "", digits: int = 4) -> Table:
    """Format a numeric DataFrame: floats rounded, everything as strings."""
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda x, d=digits: "n/a" if pd.isna(x) else f"{x:.{d}g}")
    return Table(title, out.astype(str), note=note)
