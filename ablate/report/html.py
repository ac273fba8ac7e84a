"""Assemble the report: compute (stats), render (plots), then write one self-contained HTML file
plus CSV/Parquet exports and Markdown/LaTeX tables. The page leads with the answer (forest plots
and one sentence per variant), then folds out the details; every string from data is escaped
(ablate.report.page)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.errors import ConfigError
from ablate.report.analysis import Analysis, analyse
from ablate.report.case_table import case_tables
from ablate.report.exports import export
from ablate.report.figures import render_figures
from ablate.report.headline import Headline, headline
from ablate.report.held_out import held_out_tables
from ablate.report.labels import VariantLabels, variant_labels
from ablate.report.page import (
    Section,
    figure_html,
    page_html,
    paragraphs,
    pre_html,
    table_html,
    table_id,
)
from ablate.report.pictures import CaseFiles, CasePicture, case_pictures
from ablate.report.selection import selection_section
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
    noninferiority_table_display,
    table4,
)


def build_report(results, meta: dict, out_dir: Path, cases: CaseFiles | None = None) -> Path:
    """Write out_dir/index.html (self-contained) plus tidy/cost CSV + Parquet, tables.md/.tex
    and, with `cases` (where the images and predictions are), the case pictures as
    out_dir/cases/<anchor>.png (also embedded in the page).

    meta: name (required), baseline, config_yaml, plan, environment, nsd_tolerance_mm,
    tracking_uri, missing, empty_mask_policy, test_set, analysis.
    """
    if not meta.get("name"):
        raise ConfigError("report meta: 'name' is missing; pass the study name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = analyse(results, meta)
    device = str((meta.get("environment") or {}).get("device", "cuda"))
    memory_label = "job's peak RSS" if device == "cpu" else "GPU memory"
    labels = variant_labels(result.order)
    head = headline(result)
    pictures = case_pictures(result, cases, labels)
    tables = build_tables(result, memory_label)
    tables["cases"] = case_tables(result, pictures, labels)
    figures = render_figures(result, memory_label, labels, head)
    page = assemble(
        result, tables, figures, meta, head, pictures, labels, selection_section(results)
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    write_pictures(pictures, out_dir / "cases")
    export(results, result, tables, out_dir)
    return path


def write_pictures(pictures: list[CasePicture], folder: Path) -> list[Path]:
    """Each case picture as <folder>/<anchor>.png (what the run logs to MLflow); pictures of an
    earlier build that this one did not pick are removed."""
    for old in folder.glob("case-*.png") if folder.is_dir() else []:
        old.unlink()
    paths = []
    if pictures:
        folder.mkdir(parents=True, exist_ok=True)
    for p in pictures:
        path = folder / f"{p.anchor}.png"
        path.write_bytes(p.png)
        paths.append(path)
    return paths


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
        shown = sig.head(60)[["target", "metric", "a", "b", "n", "p", "p_holm"]].assign(
            family=lambda f: "P-" + f["target"] + "-" + f["metric"].str.upper()
        )
        if shown.empty:  # a table without rows reads as a rendering fault
            shown = pd.DataFrame({"result": ["no pair of variants differs after Holm"]})
        stats["posthoc"] = generic_table(
            f"Post-hoc: pairs that differ (two-sided case-level Wilcoxon, these trained models; "
            f"{len(sig)} of {len(a.posthoc)} pairs)",
            shown,
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


def _methods(a: Analysis, tables: dict, meta: dict, table) -> str:
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
        paragraphs(methods_text(a)),
        "<ul>" + "".join(f"<li>{esc(f.text())}</li>" for f in a.families) + "</ul>",
        table(tables["methods"]["empty"]),
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
        parts.append(pre_html("Study configuration", str(meta["config_yaml"])))
    if meta.get("plan"):
        parts.append(pre_html("Plan", json.dumps(meta["plan"], indent=2, default=str)))
    if meta.get("environment"):
        parts.append(
            pre_html("Environment", json.dumps(meta["environment"], indent=2, default=str))
        )
    return "".join(parts) or "<p>No configuration was passed to the report.</p>"


def _answer(a: Analysis, head: Headline, figs, labels: VariantLabels, table) -> str:
    parts = []
    if head.collapsed:
        parts.append(paragraphs([c.text() for c in head.collapsed], "collapsed"))
    if labels.abbreviated:  # first: the figures below use the short labels
        legend = pd.DataFrame(labels.legend(), columns=["label", "variant"])
        parts.append(table(Table("Variant labels used in the figures", legend), ("variant",)))
    parts += [figure_html(c, p) for c, p in figs["answer"]]
    if not head.verdicts.empty:
        frame = head.verdicts.assign(variant=head.verdicts["variant"].map(labels))
        note = (
            f"One sentence per variant against {a.baseline}: the first metric on every target "
            "compared, other metrics where the verdict is not 'no difference shown'; costs: "
            "the variant's mean over its runs minus the baseline's ('same': within 0.5%)."
        )
        verdicts = Table(f"Each variant against {a.baseline}, in words", frame, note=note)
        parts.append(table(verdicts, ("sentence",)))
    elif len(a.order) < 2:
        parts.append("<p>One variant: nothing to compare.</p>")
    return "".join(parts)


def _cases(a: Analysis, pictures: list[CasePicture], case_tabs: dict, labels, table) -> str:
    parts = []
    if not pictures:
        parts.append(
            "<p>No pictures: the report was built without the images and predictions (pass "
            "the study's work dir: `ablate report`).</p>"
        )
    for p in pictures:
        shown = ", ".join(labels(v) for v in p.variants)
        caption = (
            f"{p.target}, {p.case}: {p.why}. White line = the reference; one coloured line = "
            f"one variant's predicted contour ({shown}; the legend gives each one's "
            f"{metric_label(a.metrics[0])} on this case); slices through the most reference and "
            "through the most disagreement."
        )
        parts.append(figure_html(caption, p.png, p.anchor))
    parts += [table(t) for t in case_tabs.values()]
    return "".join(parts)


def assemble(
    a: Analysis,
    tables: dict,
    figs: dict[str, list[tuple[str, bytes]]],
    meta: dict,
    head: Headline | None = None,
    pictures: list[CasePicture] | None = None,
    labels: VariantLabels | None = None,
    selection: str = "",
) -> str:
    labels = labels or variant_labels(a.order)
    head = head or headline(a)
    counter = iter(range(1, 10_000))

    def table(t: Table, text_columns: tuple[str, ...] = ()) -> str:
        return table_html(t, table_id(t.title, next(counter)), text_columns)

    def block(section: str, fig_key: str) -> str:
        return "".join(table(t) for t in tables[section].values()) + "".join(
            figure_html(c, p) for c, p in figs[fig_key]
        )

    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(a))
    sections = [
        Section("answer", "The answer", _answer(a, head, figs, labels, table)),
        Section("summary", "Summary", f'<ul class="summary">{summary}</ul>'),
    ]
    if selection:  # ablate.report.selection: nnU-Net's choice of configuration
        sections.append(Section("selection", "Which configuration: nnU-Net's choice", selection))
    sections += [
        Section(
            "accuracy",
            "Accuracy per target" + (" (cross-validation)" if tables["held_out"] else ""),
            block("accuracy", "violins"),
        ),
        Section(
            "cases",
            "Cases: where the variants differ",
            _cases(a, pictures or [], tables.get("cases", {}), labels, table),
        ),
    ]
    if tables["held_out"]:
        intro = f"<p>{html.escape(meta['test_set'])}</p>" if meta.get("test_set") else ""
        sections.append(
            Section("held-out", "Held-out test set", intro + block("held_out", "held_out"))
        )
    sections += [
        Section("statistics", "Statistics", block("stats", "stats")),
        Section("cost", "Runtime and memory", block("cost", "cost")),
        Section("methods", "Methods", _methods(a, tables, meta, table)),
        Section("configuration", "Configuration, plan and environment", _appendix(meta), False),
    ]
    lead = paragraphs([_study_line(a)], "lead")
    return page_html(f"ablate report: {meta['name']}", lead, sections)


def _study_line(a: Analysis) -> str:
    n_cases = max(len(m) for m in a.matrices.values())
    targets = ", ".join(pd.unique(a.describe["target"]))
    return (
        f"{len(a.order)} variants, {n_cases} cross-validation cases, targets {targets}; "
        f"baseline: {a.baseline}."
    )
