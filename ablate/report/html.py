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
from ablate.report.held_out import held_out_figures, held_out_tables
from ablate.report.stats import HIGHER_IS_BETTER
from ablate.report.summary import methods_text, summary_lines
from ablate.report.tables import (
    Table,
    accuracy_table,
    compare_table,
    cost_table,
    diff_text,
    format_p,
    generic_table,
    kits_table,
    metric_label,
    metric_unit,
    noninferiority_table_display,
    table4,
)

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
            "Cases complete for every variant; k variants, n cases. One test per target and "
            "metric, not adjusted for multiplicity (no Holm family); case level (these trained "
            "models).",
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
