"""Display tables: numbers from the analysis formatted as strings (units, p-values that agree with
their verdicts, bold for the best), one function per table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Table:
    """A display table: strings, an optional same-shape mask of cells to set in bold, a note,
    and links: (row, column) position -> an anchor in the page ("#case-kidney-case_00001")."""

    title: str
    frame: pd.DataFrame
    bold: pd.DataFrame | None = None
    note: str = ""
    links: dict[tuple[int, int], str] = field(default_factory=dict)
    wrap: tuple[str, ...] = ()  # columns of prose, wrapped; every other cell stays on one line


# the error term of a comparison, in words
LEVELS = {
    "fold models": "configuration level",
    "seeds": "configuration level over seeds, these cases fixed",
    "cases": "case level",
}
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
    n_common: dict[str, int] = {}
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
            n_common[name] = int(c["n_common"].max()) if c["n_common"].notna().any() else 0
    first = sub.loc[metrics[0]].reindex(order)
    frame["n"] = first["n"].fillna(0).astype(int).astype(str)
    if common is not None and not common.empty:
        c = common[(common["target"] == target) & (common["metric"] == metrics[0])]
        frame["absent cases"] = (
            c.set_index("variant")["absent"].reindex(order).fillna(0).astype(int).astype(str)
        )
    note = (
        f"Mean ± sd and median over each variant's own cases (per-case values averaged over "
        f"seeds); n: cases with a {metric_label(metrics[0])} value. Bold: the best mean over the "
        f"cases every variant has a value for ({_common_counts(n_common)}; higher is better for "
        "DSC and NSD, lower for HD95, ASSD and |RVD|); absent cases: cases of this target the "
        "variant has no value for."
    )
    return Table(f"{target}: accuracy per variant", frame, _bold_best(frame, best, higher), note)


LOWER_IS_BETTER = ("hd95", "assd", "abs_rvd")


def _common_counts(n_common: dict[str, int]) -> str:
    """ "DSC, NSD: 12 cases; HD95, ASSD: 9 cases" (distances and |RVD| are n/a where a mask is
    empty, so their common cases can be fewer)."""
    groups: dict[int, list[str]] = {}
    for name, n in n_common.items():
        groups.setdefault(n, []).append(name)
    text = "; ".join(f"{', '.join(names)}: {n} cases" for n, names in groups.items())
    if len(groups) > 1:
        text += " (distances and |RVD| are n/a where the reference or prediction is empty)"
    return text or "no cases"


def table4(
    stats: pd.DataFrame, cost: pd.DataFrame, order: list[str], memory_label: str = "GPU memory"
) -> Table:
    """Zhou 2021 (FLARE21) Table 4 layout: rows target x metric (mean ± sd), time, memory."""
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
    return Table("Cross-validation results (layout of Zhou 2021, FLARE21, Table 4)", frame)


def kits_table(common: pd.DataFrame, order: list[str]) -> Table | None:
    """Isensee 2019 (KiTS19) Table 1: kidney, tumor and composite Dice (mean, %) per variant, on
    the cases every variant has (common_case_means), best in bold."""
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
        "KiTS composite Dice (layout of Isensee 2019, KiTS19, Table 1)",
        frame,
        _bold_best(frame, values),
        note,
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
    # one forward pass of one patch (2 x multiply-accumulates of convs), as Zhou 2021 reports
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
    level = compare["unit"].map(LEVELS).fillna("case level")
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
    wfamily = "W" if family == "H" else f"{family}W"
    note = (
        "Headline: mean paired difference (variant − baseline) on the cases both have, with a t "
        "interval and two-sided t-test whose error term is the training runs for training "
        "variants (the cases of a fold share its fold model: cluster-robust over fold models, "
        "configuration level) and the cases for inference-only variants (the same trained "
        f"models). 95% CI unadjusted; p (Holm) and verdict: Holm family {family}-<metric> = the "
        "rows of this table with that metric. MDD: the difference this test detects with 80% "
        "power at the measured standard error; seeds / cases: what the same test needs to "
        "detect the study's non-inferiority margin with 80% power (variance components of this "
        "study; only the run share shrinks with seeds; -: no number up to 20 seeds or 10000 "
        "cases). Right: two-sided case-level Wilcoxon signed-rank (exact up to 50 non-zero "
        f"pairs; zero differences dropped), Holm family {wfamily}-<metric>: whether these "
        "trained models differ; the median paired difference is labelled as such."
    )
    baseline = compare["baseline"].iat[0]
    return Table(
        title or f"Each variant vs {baseline}", frame, note=note, wrap=("verdict", "pairs")
    )


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
            "one-sided 95% bound (unadjusted)": [
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
    return Table("Non-inferiority of the cheaper variant", frame, note=note, wrap=("verdict",))


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
    return Table(title, out.astype(str), note=note, wrap=tuple(c for c in out if c == "note"))
