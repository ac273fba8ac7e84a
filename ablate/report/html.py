"""Assemble the report: compute (stats), render (plots), then write one self-contained HTML file
plus CSV/Parquet exports and Markdown/LaTeX tables. Every string from data is HTML-escaped."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.errors import ConfigError
from ablate.report import plots
from ablate.report.analysis import Analysis, analyse
from ablate.report.collect import (
    Table,
    accuracy_table,
    compare_table,
    cost_table,
    diff_text,
    diff_unit,
    format_p,
    generic_table,
    kits_table,
    metric_label,
    metric_unit,
    noninferiority_table_display,
    table4,
    value_text,
)
from ablate.report.held_out import held_out_figures, held_out_summary, held_out_tables
from ablate.report.paired import MIN_RUNS
from ablate.report.stats import HIGHER_IS_BETTER, MIN_PAIRS

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f3f7} td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto} .note{color:#555;font-size:13px} pre{background:#f6f6f6;padding:.8em;
overflow-x:auto;font-size:12px} img{max-width:100%} ul.summary li{margin:.25em 0}
"""


def build_report(results, meta: dict, out_dir: Path) -> Path:
    """Write out_dir/index.html (self-contained) plus tidy/cost CSV + Parquet and tables.md/.tex.

    meta: name (required), baseline, config_yaml, plan, environment, nsd_tolerance_mm,
    tracking_uri, missing, empty_mask_policy.
    """
    if not meta.get("name"):
        raise ConfigError("report meta: 'name' is missing; pass the study name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = analyse(results, meta)
    device = str((meta.get("environment") or {}).get("device", "cuda"))
    memory_label = "peak RSS" if device == "cpu" else "GPU memory"
    tables = build_tables(result, memory_label)
    figures = render_figures(result, memory_label)
    page = assemble(result, tables, figures, meta)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    export(results, result, tables, out_dir)
    return path


def build_tables(a: Analysis, memory_label: str = "GPU memory") -> dict[str, dict[str, Table]]:
    """Section -> {key: Table}, formatted for display. `memory_label` names what the peak
    memory column measured (GPU allocated with CUDA, resident memory on a CPU)."""
    targets = list(pd.unique(a.describe["target"]))
    accuracy = {t: accuracy_table(a.describe, t, a.metrics, a.order, a.common) for t in targets}
    kits = kits_table(a.common, a.order)
    accuracy["table4"] = table4(a.describe, a.cost, a.order, memory_label)
    if kits:
        accuracy["kits"] = kits
    stats = {}
    if not a.compare.empty:
        stats["compare"] = compare_table(a.compare)
    if not a.noninferiority.empty:
        stats["noninferiority"] = noninferiority_table_display(a.noninferiority)
    if not a.friedman.empty:
        stats["friedman"] = generic_table(
            "Friedman test over all variants",
            a.friedman,
            "Cases complete for every variant; k variants, n cases.",
        )
        sig = a.posthoc[a.posthoc["significant"]]
        stats["posthoc"] = generic_table(
            f"Post-hoc: pairs that differ (two-sided case-level Wilcoxon, these trained models; "
            f"{len(sig)} of {len(a.posthoc)} pairs)",
            sig.head(60)[["target", "metric", "a", "b", "n", "p", "p_holm"]].assign(
                family=lambda f: "P-" + f["target"] + "-" + f["metric"].str.upper()
            ),
            "Holm family P-<target>-<metric>: all unordered pairs of variants on that target and "
            "metric; the same pair can be judged differently in another family.",
        )
    for target, ranking in a.ranking.items():
        frame = ranking.copy()
        if target in a.stability:
            freq = a.stability[target][0]
            frame["bootstrap share at this rank"] = [
                freq.loc[v, r] if r in freq.columns else np.nan
                for v, r in zip(frame["variant"], frame["rank"], strict=True)
            ]
        stats[f"rank_{target}"] = generic_table(
            f"{target}: rank-then-aggregate ({metric_label(a.metrics[0])})",
            frame,
            "Rank per case (1 = best: "
            + ("highest" if HIGHER_IS_BETTER[a.metrics[0]] else "lowest")
            + " value; ties share the lowest rank; a missing value ranks last, as in challengeR),"
            " mean over cases, re-ranked.",
        )
    if not a.main_effects.empty:
        stats["effects"] = generic_table(
            "Main effect of each axis (level minus reference, mean over cases; points, or mm for "
            "distances)",
            _in_points(a.main_effects, ["mean_diff", "ci_low", "ci_high"]),
            "Per case: paired difference averaged over the combinations of the other axes that "
            "every case has at both levels ('combinations' used of all); t interval (95%, "
            "unadjusted) and two-sided t-test with fold models as the error term for training "
            "axes, cases for infer. axes. Holm family E: every row of this table.",
        )
    if not a.seed_spread.empty:
        stats["seeds"] = generic_table(
            "Spread between seeds beside spread between variants",
            a.seed_spread,
            "Standard deviations of the mean over cases.",
        )
    cost = {"cost": cost_table(a.cost, a.order)}
    empty = a.empty.merge(
        a.nan_counts.pivot(index="target", columns="metric", values="nan_values")
        .add_prefix("NaN ")
        .reset_index(),
        on="target",
        how="left",
    )
    held_out = held_out_tables(a.held_out, a.order, memory_label) if a.held_out else {}
    return {
        "accuracy": accuracy,
        "held_out": held_out,
        "stats": stats,
        "cost": cost,
        "methods": {"empty": generic_table("Empty references and NaN values", empty)},
    }


def _in_points(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Differences in display units (points for DSC, NSD, |RVD|; mm for distances), two
    decimals; p-values formatted so that they agree with the verdict."""
    out = frame.copy()
    for col in columns:
        out[col] = [diff_text(x, m) for x, m in zip(out[col], out["metric"], strict=True)]
    for col in ("p", "p_holm"):
        if col in out:
            out[col] = out[col].map(format_p)
    out["metric"] = out["metric"].map(metric_label)
    return out


def summary_lines(a: Analysis, max_lines: int = 12) -> list[str]:
    """Plain-words summary: study size, best variant per target (on the cases every variant has),
    the comparisons with the baseline (mean paired difference, its CI and the verdict of the same
    test), non-inferiority of cheaper variants."""
    n_cases = max(len(m) for m in a.matrices.values())
    targets = list(pd.unique(a.describe["target"]))
    runs = (
        f"{a.n_folds} fold model(s) x {a.n_seeds} seed(s) = {a.n_folds * a.n_seeds} "
        "training runs per trained variant"
        if a.n_folds
        else f"{a.n_seeds} seed(s)"
    )
    lines = [
        f"{len(a.order)} variants, {n_cases} cases, targets {', '.join(targets)}, {runs}; "
        f"baseline: {a.baseline}."
    ]
    lines += _best_lines(a)
    rows = (
        a.compare.sort_values(["significant", "p_holm"], ascending=[False, True])
        if not a.compare.empty
        else a.compare
    )
    for r in rows.head(max_lines).itertuples(index=False):
        lines.append(_compare_line(r))
    if len(rows) > max_lines:
        lines.append(f"... and {len(rows) - max_lines} more comparisons under Statistics.")
    ni = a.noninferiority
    if not ni.empty:  # the first metric's lines; the rest under Statistics
        shown = ni[ni["metric"] == a.metrics[0]].head(max_lines)
        lines += [_noninferiority_line(r) for r in shown.itertuples(index=False)]
        if len(ni) > len(shown):
            lines.append(
                f"... and {len(ni) - len(shown)} more non-inferiority tests under Statistics."
            )
    if a.held_out is not None:
        lines += held_out_summary(a.held_out, a.metrics[0])
    if a.missing:
        lines.append(f"{len(a.missing)} job(s) have no results; see Methods.")
    return lines


def _best_lines(a: Analysis) -> list[str]:
    metric = a.metrics[0]
    lines = []
    first = a.common[a.common["metric"] == metric]
    for target, part in first.groupby("target", sort=False):
        values = part["common_mean"] if HIGHER_IS_BETTER[metric] else -part["common_mean"]
        if values.isna().all():
            continue
        best = part.loc[values.idxmax()]
        absent = [f"{v} {n}" for v, n in zip(part["variant"], part["absent"], strict=True) if n]
        text = (
            f"Best mean {metric_label(metric)} on {target} over the {best['n_common']} cases "
            f"every variant has: {best['variant']} "
            f"({value_text(best['common_mean'], metric)}"
            f"{'%' if metric_unit(metric) == '%' else ' mm'})"
        )
        if absent:
            text += f"; absent cases: {', '.join(absent)}"
        lines.append(text + ".")
    comp = a.common[a.common["target"] == "composite"]
    if not comp.empty and comp["common_mean"].notna().any():
        best = comp.loc[comp["common_mean"].idxmax()]
        lines.append(
            f"Best composite Dice over the {best['n_common']} cases every variant has: "
            f"{best['variant']} ({100 * best['common_mean']:.1f}%)."
        )
    return lines


def _compare_line(r) -> str:
    unit = diff_unit(r.metric)
    head = f"{r.variant} vs {r.baseline}, {r.target} {metric_label(r.metric)} ({r.kind})"
    if r.n < MIN_PAIRS:
        return f"{head}: only {r.n} paired cases, too few for a test."
    level = "configuration level" if r.unit == "fold models" else "case level"
    text = f"{head}: mean paired difference {diff_text(r.mean_diff, r.metric, 1)} {unit}"
    if r.note:
        text += f"; {r.note}"
    else:
        verdict = (
            ("significantly " + ("better" if r.better else "worse"))
            if r.significant
            else "not significant"
        )
        text += (
            f", 95% CI [{diff_text(r.ci_low, r.metric, 1)}, "
            f"{diff_text(r.ci_high, r.metric, 1)}] (unadjusted), "
            f"{format_p(r.p_holm, prefix=True)} after Holm ({level}, family "
            f"H-{r.metric.upper()}): {verdict}"
        )
    plan = _planning_text(r)
    if plan:
        text += f"; {plan}"
    if not np.isnan(r.wilcoxon_p_holm):
        differ = "differ" if r.wilcoxon_significant else "no difference shown"
        text += (
            f". Case level, these trained models: Wilcoxon "
            f"{format_p(r.wilcoxon_p_holm, prefix=True)} after Holm ({differ}), median "
            f"paired difference {diff_text(r.median_diff, r.metric, 1)} {unit}"
        )
    return text + "."


def _planning_text(r) -> str:
    """Seeds or cases the headline test would need to detect the study's stated difference (its
    non-inferiority margin) with 80% power; empty when none is stated or the row is significant."""
    detect = getattr(r, "detect", np.nan)
    if pd.isna(detect) or r.significant or r.note:
        return ""
    size = f"{diff_text(detect, r.metric, 1).lstrip('+')} {diff_unit(r.metric)}"
    seeds, cases = getattr(r, "seeds_needed", None), getattr(r, "cases_needed", None)
    seeds = None if seeds is None or pd.isna(seeds) else int(seeds)
    cases = None if cases is None or pd.isna(cases) else int(cases)
    if r.unit != "fold models":
        return f"to detect {size} with 80% power: {cases} paired cases" if cases else ""
    options = []
    if seeds:
        options.append(f"{seeds} seed(s) per fold on these cases")
    if cases:
        options.append(f"{cases} cases with the present seeds")
    if not options:
        return f"detecting {size} with 80% power needs more seeds and more cases together"
    return f"to detect {size} with 80% power: " + ", or ".join(options)


def _noninferiority_line(r) -> str:
    unit = diff_unit(r.metric)
    margin = f"{diff_text(r.margin, r.metric, 1).lstrip('+')} {unit}"
    parts = []
    sec = getattr(r, "infer_seconds_per_case_saved", np.nan)
    ref = getattr(r, "infer_seconds_per_case_ref", np.nan)
    if pd.notna(sec) and sec > 0 and pd.notna(ref) and ref > 0:
        parts.append(f"saves {sec:.2g} s of inference per case, {100 * sec / ref:.0f}%")
    mem = getattr(r, "peak_infer_memory_mb_saved", np.nan)
    if pd.notna(mem) and mem > 0:
        parts.append(f"{mem:,.0f} MB less inference memory")
    params = getattr(r, "parameters_saved", np.nan)
    if pd.notna(params) and params > 0:
        parts.append(f"{params / 1e6:.2f} M fewer parameters")
    saved = f" ({'; '.join(parts)})" if parts else ""
    head = (
        f"Non-inferiority, {r.target} {metric_label(r.metric)}: {r.candidate}{saved} vs "
        f"{r.reference}"
    )
    if r.note or np.isnan(r.p):
        return f"{head}: no test ({r.note or 'too few pairs'})."
    numbers = (
        f"mean difference {diff_text(r.mean_diff, r.metric, 1)} {unit}, one-sided 95% "
        f"bound {diff_text(r.bound, r.metric, 1)} {unit}, "
        f"{format_p(r.p_holm, prefix=True)} after Holm"
    )
    if r.noninferior:
        return f"{head}: non-inferior within {margin} ({numbers})."
    return f"{head}: cannot claim non-inferiority within {margin} ({numbers})."


def methods_text(a: Analysis) -> list[str]:
    """The statistical methods in words; the Holm families follow as a list."""
    runs = f"{a.n_folds} folds" if a.n_folds else "no fold information"
    margins = (
        ", ".join(
            f"{metric_label(k)} {diff_text(v, k).lstrip('+')} {diff_unit(k)}"
            for k, v in a.margins.items()
        )
        or "none declared"
    )
    return [
        "Unit of analysis: one case; each case lies in one validation fold and a variant's value "
        "for a case is the mean over its seeds. Variants are paired by case on the cases both "
        "have; absent cases are counted per variant, and 'best' and bold use only the cases "
        "every compared variant has.",
        "Configuration level (the headline for variants that train their own models): fold "
        "models and seeds are training runs, and every case a fold model predicts shares its "
        "offset, so the mean paired difference is tested with a cluster-robust t-test whose "
        f"clusters are the folds ({runs}; K - 1 degrees of freedom; with equal folds the paired "
        "t-test on the fold means). Chosen by calibration against the case-level Wilcoxon, a "
        "hierarchical bootstrap over folds and cases and Nadeau and Bengio's corrected t-test "
        "(docs/STATISTICS.md); it does not model the overlap of the folds' training sets. With "
        f"fewer than {MIN_RUNS} fold models there is no configuration-level verdict.",
        "Inference-only variants (differing from the baseline only on infer. axes such as TTA "
        "and postprocessing: the same trained models) and the held-out test set use the cases "
        "as the unit: paired t-test on the mean difference.",
        "Case level (these trained models differ): two-sided paired Wilcoxon signed-rank; zero "
        f"differences dropped, at least {MIN_PAIRS} non-zero pairs, exact permutation p (ties "
        "by midranks) up to 50 non-zero pairs, normal approximation above. The median paired "
        "difference shown with it is labelled as a median.",
        f"Non-inferiority (margins from the study's analysis.noninferiority_margin: {margins}): "
        "one-sided t-test (Schuirmann) of the cheaper variant against the margin, with the "
        "headline's error term; the equivalence p of both one-sided tests is exported.",
        "Intervals beside verdicts are 95% t intervals, not adjusted for multiplicity (labelled "
        "unadjusted); verdicts use Holm-adjusted p at alpha 0.05. p-values print with as many "
        "digits as needed to sit on the same side of 0.05 as the verdict. Ranking: "
        "rank-then-aggregate (challengeR) with missing values ranked last, 1000 case bootstrap "
        "samples, Kendall's tau. Lower is better for HD95, ASSD and |RVD| in every ranking, "
        "bold, 'best', Pareto front and significance map.",
        "Holm families (each adjusts only within itself):",
    ]


def render_figures(
    a: Analysis, memory_label: str = "GPU memory"
) -> dict[str, list[tuple[str, bytes]]]:
    """Section name -> list of (caption, PNG bytes)."""
    figs: dict[str, list[tuple[str, bytes]]] = {
        "violins": [],
        "stats": [],
        "cost": [],
        "held_out": [],
    }
    for (target, metric), m in a.matrices.items():
        long = m[a.order].melt(var_name="variant", value_name="value").dropna()
        if metric_unit(metric) == "%":
            long["value"] *= 100
        title = f"{target} {metric_label(metric)} per case"
        ylabel = f"{metric_label(metric)} ({metric_unit(metric)})"
        figs["violins"].append((title, plots.violin(long, a.order, title, ylabel)))
    if not a.compare.empty:
        table = a.compare.copy()
        scale = np.where(table["metric"].isin(["dsc", "nsd", "abs_rvd"]), 100.0, 1.0)
        for col in ("mean_diff", "ci_low", "ci_high"):
            table[col] = table[col] * scale
        caption = (
            f"Mean paired difference to {a.baseline} with its unadjusted 95% CI, configuration "
            "level for training variants, case level for inference-only ones (points; mm for "
            "distances; red: significant after Holm)"
        )
        figs["stats"].append((caption, plots.paired_differences(table, a.baseline)))
    if a.sig_maps:
        caption = (
            "Significance maps (one-sided case-level Wilcoxon: these trained models; Holm "
            "per map, families S-<target>-<metric>; alpha 0.05; lower is better for "
            "distances)"
        )
        figs["stats"].append((caption, plots.significance_maps(a.sig_maps)))
    if a.stability:
        freqs = {t: f for t, (f, _) in a.stability.items()}
        taus = {t: tau for t, (_, tau) in a.stability.items()}
        caption = (
            "Rank stability over 1000 bootstrap samples of the cases (DSC, rank-then-aggregate)"
        )
        figs["stats"].append((caption, plots.rank_stability(freqs, taus)))
    if a.held_out is not None:
        figs["held_out"] += held_out_figures(a.held_out, a.order)
    if not a.cost.empty:
        figs["cost"].append(
            (
                "Runtime and peak memory per variant (bars: mean; points: runs)",
                plots.cost_per_variant(a.cost, a.order, memory_label),
            )
        )
    if a.pareto is not None:
        figs["cost"].append(
            (
                "Mean DSC vs inference time; Pareto front in red",
                plots.pareto(a.pareto, "inference seconds per case", "mean DSC over targets (%)"),
            )
        )
    if not a.curves.empty:
        figs["cost"].append(
            (
                "Training curves (mean over folds and seeds)",
                plots.training_curves(a.curves, a.order),
            )
        )
    return figs


def table_html(t: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in t.frame.columns)
    body = []
    for i in range(len(t.frame)):
        cells = []
        for j, value in enumerate(t.frame.iloc[i]):
            text = esc(str(value))
            bold = t.bold is not None and bool(t.bold.iat[i, j])
            cells.append(f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{esc(t.note)}</p>' if t.note else ""
    return (
        f'<h4>{esc(t.title)}</h4><div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def table_markdown(t: Table) -> str:
    def cell(i, j, value):
        text = str(value).replace("|", "\\|")
        return f"**{text}**" if t.bold is not None and bool(t.bold.iat[i, j]) else text

    lines = [
        f"### {t.title}",
        "",
        "| " + " | ".join(map(str, t.frame.columns)) + " |",
        "|" + "---|" * len(t.frame.columns),
    ]
    for i in range(len(t.frame)):
        lines.append("| " + " | ".join(cell(i, j, v) for j, v in enumerate(t.frame.iloc[i])) + " |")
    return "\n".join(lines + (["", t.note] if t.note else []))


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def table_latex(t: Table) -> str:
    def cell(i, j, value):
        text = _latex_escape(str(value))
        return rf"\textbf{{{text}}}" if t.bold is not None and bool(t.bold.iat[i, j]) else text

    cols = "l" + "r" * (len(t.frame.columns) - 1)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{_latex_escape(t.title)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\hline",
        " & ".join(_latex_escape(str(c)) for c in t.frame.columns) + r" \\",
        r"\hline",
    ]
    for i in range(len(t.frame)):
        lines.append(" & ".join(cell(i, j, v) for j, v in enumerate(t.frame.iloc[i])) + r" \\")
    return "\n".join(lines + [r"\hline", r"\end{tabular}", r"\end{table}"])


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _pre(title: str, text: str) -> str:
    return f"<h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>"


def _methods(a: Analysis, tables: dict, meta: dict) -> str:
    esc = html.escape
    tol = meta.get("nsd_tolerance_mm")
    if isinstance(tol, dict):
        tol_text = ", ".join(f"{k}: {v} mm" for k, v in tol.items()) or "not given"
    else:
        tol_text = "not given" if tol is None else f"{tol} mm for every target"
    policy = meta.get("empty_mask_policy") or (
        "as computed by ablate.evaluate: a case whose reference and prediction are both empty "
        "scores DSC = NSD = 1, exactly one empty scores 0; distance metrics are NaN then."
    )
    parts = [
        f"<p>NSD tolerance per target: {esc(tol_text)}.</p>",
        f"<p>Empty-mask policy: {esc(str(policy))}</p>",
        *("<p>" + esc(line) + "</p>" for line in methods_text(a)),
        "<ul>" + "".join(f"<li>{esc(f.text())}</li>" for f in a.families) + "</ul>",
        table_html(tables["methods"]["empty"]),
    ]
    if a.missing:
        items = "".join(f"<li>{esc(str(m))}</li>" for m in a.missing)
        parts.append(f"<p>Jobs without results ({len(a.missing)}):</p><ul>{items}</ul>")
    return "".join(parts)


def _appendix(meta: dict) -> str:
    parts = []
    if meta.get("tracking_uri"):
        parts.append(f"<p>Tracking URI: {html.escape(str(meta['tracking_uri']))}</p>")
    if meta.get("config_yaml"):
        parts.append(_pre("Study configuration", str(meta["config_yaml"])))
    if meta.get("plan"):
        parts.append(_pre("Plan", json.dumps(meta["plan"], indent=2, default=str)))
    if meta.get("environment"):
        parts.append(_pre("Environment", json.dumps(meta["environment"], indent=2, default=str)))
    return "".join(parts) or "<p>No configuration was passed to the report.</p>"


def assemble(
    a: Analysis, tables: dict, figs: dict[str, list[tuple[str, bytes]]], meta: dict
) -> str:
    esc = html.escape
    summary = "".join(f"<li>{esc(line)}</li>" for line in summary_lines(a))

    def block(section: str, fig_key: str) -> str:
        return "".join(map(table_html, tables[section].values())) + "".join(
            _figure(c, p) for c, p in figs[fig_key]
        )

    sections = [
        ("Summary", f'<ul class="summary">{summary}</ul>'),
        (
            "Accuracy per target" + (" (cross-validation)" if tables["held_out"] else ""),
            block("accuracy", "violins"),
        ),
    ]
    if tables["held_out"]:
        intro = f"<p>{esc(meta['test_set'])}</p>" if meta.get("test_set") else ""
        sections.append(("Held-out test set", intro + block("held_out", "held_out")))
    sections += [
        ("Statistics", block("stats", "stats")),
        ("Runtime and memory", block("cost", "cost")),
        ("Methods", _methods(a, tables, meta)),
        ("Configuration, plan and environment", _appendix(meta)),
    ]
    body = "".join(f"<section><h2>{esc(t)}</h2>{content}</section>" for t, content in sections)
    title = esc(f"ablate report: {meta['name']}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><h1>{title}</h1>{body}</body></html>\n"
    )


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as strings: axis values may mix types, which Parquet cannot store."""
    out = frame.copy()
    for col in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return out


def export(results, a: Analysis, tables: dict, out_dir: Path) -> None:
    frames = [("tidy", results.tidy), ("cost", results.cost)]
    if not results.test.empty:
        frames += [("test", results.test), ("test_cost", results.test_cost)]
    for name, frame in frames:
        frame.to_csv(out_dir / f"{name}.csv", index=False)
        _parquet_safe(frame).to_parquet(out_dir / f"{name}.parquet", index=False)
    if not a.compare.empty:
        a.compare.to_csv(out_dir / "comparisons.csv", index=False)
    flat = [t for section in tables.values() for t in section.values()]
    (out_dir / "tables.md").write_text("\n\n".join(map(table_markdown, flat)) + "\n")
    (out_dir / "tables.tex").write_text("\n\n".join(map(table_latex, flat)) + "\n")
