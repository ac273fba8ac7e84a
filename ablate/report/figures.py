"""The report's figures: which are drawn for which section, each with a caption that says what
one mark is (ablate.report.plots draws them)."""

from __future__ import annotations

from matplotlib.figure import Figure

from ablate.report import plots
from ablate.report.analysis import Analysis
from ablate.report.headline import Headline, collapsed_keys
from ablate.report.held_out import held_out_figures
from ablate.report.labels import VariantLabels
from ablate.report.tables import metric_label, metric_unit


def make_figures(
    a: Analysis, memory_label: str, labels: VariantLabels, head: Headline
) -> dict[str, list[tuple[str, Figure]]]:
    """Section name -> list of (caption, Figure); every caption says what one mark is."""
    figs: dict[str, list[tuple[str, Figure]]] = {
        "answer": [],
        "violins": [],
        "stats": [],
        "cost": [],
    }
    named = " (V1, V2, ...: the variant labels under The answer)" if labels.abbreviated else ""
    for target, panels in head.panels.items():
        figs["answer"].append(
            (_forest_caption(a, target), plots.forest(panels, labels, a.baseline))
        )
    skip = collapsed_keys(a, head.collapsed)
    for (target, metric), m in a.matrices.items():
        if (target, metric) in skip or m.isna().all().all():
            continue
        long = m[a.order].melt(var_name="variant", value_name="value").dropna()
        long["variant"] = long["variant"].map(labels)
        if metric_unit(metric) == "%":
            long["value"] *= 100
        title = f"{target} {metric_label(metric)} per case"
        xlabel = f"{metric_label(metric)} ({metric_unit(metric)})"
        caption = (
            f"{title}: one dot = one case (its value averaged over seeds); one violin = the "
            f"distribution of a variant's cases{named}."
        )
        figs["violins"].append(
            (caption, plots.violin_figure(long, labels.many(a.order), title, xlabel))
        )
    maps = {k: v for k, v in a.sig_maps.items() if k not in skip}
    if maps:
        caption = (
            "Significance maps: one cell = one ordered pair, dark when the row variant is "
            "significantly better than the column variant (one-sided case-level Wilcoxon: these "
            "trained models; Holm per map, families S-<target>-<metric>; alpha 0.05; lower is "
            f"better for distances){named}."
        )
        figs["stats"].append((caption, plots.significance_maps(maps, labels)))
    if a.stability:
        freqs = {t: f for t, (f, _) in a.stability.items() if (t, a.metrics[0]) not in skip}
        taus = {t: tau for t, (_, tau) in a.stability.items() if t in freqs}
        if freqs:
            caption = (
                "Rank stability (first metric, rank-then-aggregate): one blob = how often a "
                "variant took that rank in 1000 bootstrap samples of the cases (area: share); "
                "right, one violin per target = Kendall's tau between the bootstrap rankings and "
                f"the full ranking{named}."
            )
            figs["stats"].append((caption, plots.rank_stability(freqs, taus, labels)))
    if not a.cost.empty:
        caption = (
            "Runtime and peak memory: one bar = a variant's mean over its runs; one dot = one "
            f"run (fold and seed){named}."
        )
        figs["cost"].append(
            (caption, plots.cost_per_variant(a.cost, a.order, memory_label, labels))
        )
    if a.pareto is not None:
        caption = (
            "Accuracy against inference time: one point = one variant (mean over targets on the "
            "cases every variant has, against its mean inference seconds per case); orange-red "
            f"line and points: the Pareto front{named}."
        )
        ylabel = f"mean {metric_label(a.metrics[0])} over targets"
        figs["cost"].append(
            (caption, plots.pareto(a.pareto, "inference seconds per case", ylabel, labels))
        )
    if not a.curves.empty:
        trained = list(dict.fromkeys(a.trained_as.get(v, v) for v in a.order))
        caption = (
            "Training curves: one line = one trained configuration (its training-axis values; "
            "inference axes reuse the same models), the mean over its folds and seeds per epoch."
        )
        figs["cost"].append((caption, plots.training_curves(a.curves, trained)))
    return figs


def _forest_caption(a: Analysis, target: str) -> str:
    margins = ", ".join(f"{metric_label(k)} {100 * v:g} points" for k, v in a.margins.items())
    margin = f"; dashed line: the non-inferiority margin ({margins})" if margins else ""
    return (
        f"{target}: each variant minus {a.baseline}. One grey dot = one case's paired "
        "difference (seeds averaged); marker and bar = the mean paired difference and its "
        "95% CI (unadjusted); marker shape and colour = the Holm-adjusted verdict (family "
        "H-<metric>: configuration level for variants that train their own models, case level "
        f"for inference-only ones){margin}. Dots beyond the axis sit on its edge."
    )


def render_figures(
    a: Analysis, memory_label: str, labels: VariantLabels, head: Headline
) -> dict[str, list[tuple[str, bytes]]]:
    """Section name -> list of (caption, PNG bytes), the held-out figures included."""
    figs = {
        key: [(caption, plots.png(fig)) for caption, fig in entries]
        for key, entries in make_figures(a, memory_label, labels, head).items()
    }
    figs["held_out"] = held_out_figures(a.held_out, a.order) if a.held_out is not None else []
    return figs
