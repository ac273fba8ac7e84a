"""One function per figure: data in (already computed), a matplotlib Figure out; `png` renders
it. No statistics here.

Variants sit on the y axis wherever there is one label per variant, so long labels never
overlap (tests/test_report_figures.py measures every tick label's box); figures take short labels
(ablate.report.labels) when the full ones are long.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablate.report.headline import BETTER, NO_DIFFERENCE, NO_TEST, WORSE, ForestPanel

DPI = 80
# Okabe-Ito: told apart with every common colour-vision deficiency
OKABE_ITO = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#000000",
)
VERDICT_STYLE = {  # colour and marker: the shape tells the verdict without colour too
    BETTER: ("#0072B2", "^"),
    WORSE: ("#D55E00", "v"),
    NO_DIFFERENCE: ("#000000", "o"),
    NO_TEST: ("#999999", "x"),
}
ROW_INCHES = 0.3  # per variant on a y axis: room for a 9-pt label


def subplots(nrows: int = 1, ncols: int = 1, *, figsize, layout="constrained", **kwargs):
    """A figure and its axes without pyplot: figures are only written as PNG (Figure.savefig
    renders with Agg), so no GUI backend is needed and none is chosen for the whole process."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG; its constrained layout keeps every label and legend inside, so it is
    drawn once (bbox_inches="tight" would draw it twice)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _height(n_rows: int, extra: float = 1.3) -> float:
    return max(2.4, ROW_INCHES * n_rows + extra)


def violin_figure(values: pd.DataFrame, order: list[str], title: str, xlabel: str) -> Figure:
    """Violin per variant (one row each) over cases with every case drawn as a jittered point.

    values: columns variant, value (one row per case and variant); `order`: the labels drawn.
    """
    fig, ax = subplots(figsize=(6.5, _height(len(order))))
    sns.violinplot(
        data=values,
        y="variant",
        x="value",
        order=order,
        orient="h",
        inner=None,
        cut=0,
        density_norm="width",
        color="#c6dbef",
        linewidth=0.8,
        ax=ax,
    )
    position = {v: i for i, v in enumerate(order)}
    y = values["variant"].map(position).to_numpy(dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, y.size)  # fixed: same figure each run
    ax.scatter(values["value"], y + jitter, s=5, color="#08306b", alpha=0.5, linewidths=0)
    ax.set(title=title, ylabel="", xlabel=xlabel)
    return fig


def violin(values: pd.DataFrame, order: list[str], title: str, ylabel: str) -> bytes:
    """violin_figure as PNG bytes (`ylabel` names the value axis, now horizontal)."""
    return png(violin_figure(values, order, title, ylabel))


def forest(panels: list[ForestPanel], labels, baseline: str) -> Figure:
    """The headline of one target: per metric a panel, per variant a row with the per-case paired
    differences (grey dots) and the mean paired difference with its 95% CI (marker and bar,
    styled by verdict); dashed: the non-inferiority margin on the worse side."""
    variants = list(pd.unique(pd.concat([p.rows["variant"] for p in panels])))
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = subplots(
        rows, cols, figsize=(4.3 * cols + 1.4, _height(len(variants), 1.4) * rows), squeeze=False
    )
    y_of = {v: i for i, v in enumerate(variants)}
    jitter = np.random.default_rng(0)
    for ax, panel in zip(axes.flat, panels, strict=False):
        dots = panel.per_case
        low, high = _limits(panel)
        y = dots["variant"].map(y_of).to_numpy(float) + jitter.uniform(-0.22, 0.22, len(dots))
        many = len(dots) > 50 * len(variants)  # lighter dots where they would hide the marks
        ax.scatter(
            np.clip(dots["diff"], low, high),
            y,
            s=7 if many else 12,
            color="#777777",
            alpha=0.25 if many else 0.45,
            lw=0,
        )
        for r in panel.rows.itertuples(index=False):
            color, marker = VERDICT_STYLE[r.verdict]
            yy = y_of[r.variant]
            if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
                ax.plot([r.ci_low, r.ci_high], [yy, yy], color=color, lw=2.4, zorder=3)
            ax.scatter([r.mean_diff], [yy], color=color, marker=marker, s=46, zorder=4)
        ax.axvline(0, color="black", lw=0.7)
        if panel.margin is not None:
            edge = -panel.margin if panel.higher_is_better else panel.margin
            ax.axvline(edge, ls="--", lw=0.9, color="#555555")
        ax.set_xlim(low, high)
        ax.set_yticks(range(len(variants)), labels.many(variants))
        ax.set_ylim(len(variants) - 0.5, -0.5)
        better = "higher" if panel.higher_is_better else "lower"
        ax.set_title(f"{panel.target} {_label(panel.metric)} ({better} is better)", fontsize=10)
        ax.set_xlabel(f"minus {labels(baseline)} ({panel.unit})")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [
        axes.flat[0].scatter([], [], color=c, marker=m, label=v)
        for v, (c, m) in VERDICT_STYLE.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.get_layout_engine().set(h_pad=0.12)  # a row's title clear of the x label above it
    return fig


def _label(metric: str) -> str:
    return {"abs_rvd": "|RVD|"}.get(metric, metric.upper())


def _limits(panel: ForestPanel) -> tuple[float, float]:
    """The intervals, zero and the margin in full; the per-case dots from their 2nd to 98th
    percentile (dots beyond sit on the edge)."""
    keep = [0.0, *panel.rows["ci_low"], *panel.rows["ci_high"], *panel.rows["mean_diff"]]
    if panel.margin is not None:
        keep += [panel.margin, -panel.margin]
    if len(panel.per_case):
        keep += list(np.nanpercentile(panel.per_case["diff"], [2, 98]))
    finite = np.asarray([k for k in keep if np.isfinite(k)], float)
    low, high = float(finite.min()), float(finite.max())
    pad = 0.08 * (high - low) or 1.0
    return low - pad, high + pad


def significance_maps(maps: dict[tuple[str, str], pd.DataFrame], labels) -> Figure:
    """challengeR significance maps: dark cell (row a, column b) = a significantly better than b."""
    n = len(maps)
    k = max(len(m) for m in maps.values())
    side = max(3.2, 0.22 * k + 2.0)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    for ax, ((target, metric), table) in zip(axes.flat, maps.items(), strict=False):
        ax.imshow(table.to_numpy(dtype=float), cmap="YlGnBu", vmin=0, vmax=1)
        ticks = np.arange(len(table))
        ax.set_xticks(ticks, labels.many(table.columns), rotation=90, fontsize=8)
        ax.set_yticks(ticks, labels.many(table.index), fontsize=8)
        ax.set_title(f"{target} {_label(metric)}: row better than column", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig


def rank_stability(freqs: dict[str, pd.DataFrame], taus: dict[str, np.ndarray], labels) -> Figure:
    """Blob plot (bootstrap rank frequency per variant) per target, plus Kendall's tau violins."""
    n = len(freqs)
    k = max(len(f) for f in freqs.values())
    fig, axes = subplots(
        1, n + 1, figsize=(max(4.5, 0.3 * k + 3) * n + 3, _height(k, 2.0)), squeeze=False
    )
    for ax, (target, freq) in zip(axes[0], freqs.items(), strict=False):
        yy, xx = np.meshgrid(np.arange(len(freq)), freq.columns.to_numpy(), indexing="ij")
        sizes = freq.to_numpy() * 250
        ax.scatter(xx.ravel(), yy.ravel(), s=sizes.ravel(), color="#0072B2", alpha=0.8)
        ax.set_yticks(np.arange(len(freq)), labels.many(freq.index), fontsize=8)
        ax.set_xticks(freq.columns.to_numpy()[:: max(1, len(freq.columns) // 10)])
        ax.invert_yaxis()
        ax.set(title=f"{target}: bootstrap ranks", xlabel="rank (1 = best)")
    tau_ax = axes[0, -1]
    tau_ax.violinplot([t[~np.isnan(t)] for t in taus.values()], showmedians=True)
    tau_ax.set_xticks(np.arange(1, n + 1), list(taus), rotation=45)
    tau_ax.set(title="Kendall's tau vs full ranking", ylim=(-1.05, 1.05))
    return fig


def pareto(points: pd.DataFrame, xlabel: str, ylabel: str, labels) -> Figure:
    """Accuracy vs cost per variant, the Pareto front joined by a line.

    points: variant, cost, accuracy, front (bool).
    """
    fig, ax = subplots(figsize=(6.5, 4.4))
    ax.scatter(
        points["cost"], points["accuracy"], c=np.where(points["front"], "#D55E00", "#888888")
    )
    front = points[points["front"]].sort_values("cost")
    ax.plot(front["cost"], front["accuracy"], color="#D55E00", lw=1, label="Pareto front")
    for row in points.itertuples(index=False):
        ax.annotate(
            labels(str(row.variant)),
            (row.cost, row.accuracy),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.margins(0.15)  # room for the labels; the legend sits outside the data
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def cost_per_variant(cost: pd.DataFrame, order: list[str], memory_label: str, labels) -> Figure:
    """Bars (mean over runs, a point for each run) of training s/epoch, inference s/case and
    peak training memory, one row per variant.

    cost: variant, seconds_per_epoch, infer_seconds_per_case, peak_train_memory_mb.
    """
    panels = [
        ("seconds_per_epoch", "training s / epoch"),
        ("infer_seconds_per_case", "inference s / case"),
        ("peak_train_memory_mb", f"{memory_label}, training (MB)"),
    ]
    panels = [(c, t) for c, t in panels if cost[c].notna().any()]
    fig, axes = subplots(
        1, max(len(panels), 1), figsize=(10, _height(len(order))), squeeze=False, sharey=True
    )
    shown = cost.assign(variant=cost["variant"].map(labels))
    for ax, (column, label) in zip(axes[0], panels, strict=False):
        data = shown[["variant", column]].dropna()
        kw = {"data": data, "y": "variant", "x": column, "order": labels.many(order), "ax": ax}
        sns.barplot(**kw, color="#9ecae1", errorbar=None, orient="h")
        sns.stripplot(**kw, color="#08306b", size=3, orient="h")
        ax.set(title=label, xlabel="", ylabel="")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    fig.get_layout_engine().set(w_pad=0.3)  # the panels' end ticks must not touch
    return fig


def training_curves(curves: pd.DataFrame, order: list[str]) -> Figure:
    """Per metric, the mean over folds and seeds per epoch, one line per trained variant (in
    `order`; variants of `curves` not in it follow).

    curves: variant, epoch, metric, value.
    """
    metrics = list(pd.unique(curves["metric"]))
    mean = curves.groupby(["metric", "variant", "epoch"], sort=False)["value"].mean()
    variants = [v for v in order if v in set(curves["variant"])]
    variants += [v for v in pd.unique(curves["variant"]) if v not in variants]
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig, axes = subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    colors = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(variants))]
    styles = ["-", "--", ":", "-."]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        lines = dict(tuple(mean.loc[metric].groupby(level=0, sort=False)))
        for i, (color, variant) in enumerate(zip(colors, variants, strict=True)):
            if variant in lines:
                line = lines[variant].droplevel(0)
                style = styles[(i // len(OKABE_ITO)) % len(styles)]
                ax.plot(line.index, line.to_numpy(), color=color, ls=style, lw=1.2, label=variant)
        ax.set(title=metric, xlabel="epoch")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles and len(variants) <= 12:
        fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8)
    return fig
