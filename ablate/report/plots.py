"""One function per figure: data in (already computed), PNG bytes out. No statistics here."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

DPI = 80


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, layout=None, **kwargs):
    """A figure and its axes without pyplot: figures are only written as PNG (Figure.savefig
    renders with Agg), so no GUI backend is needed and none is chosen for the whole process."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _width(n_items: int, per_item: float = 0.45, minimum: float = 5.0) -> float:
    return max(minimum, per_item * n_items + 1.5)


def violin(values: pd.DataFrame, order: list[str], title: str, ylabel: str) -> bytes:
    """Violin per variant over cases with every case drawn as a jittered point.

    values: columns variant, value (one row per case and variant).
    """
    fig, ax = _subplots(figsize=(_width(len(order)), 3.6))
    sns.violinplot(
        data=values,
        x="variant",
        y="value",
        order=order,
        inner=None,
        cut=0,
        density_norm="width",
        color="#c6dbef",
        linewidth=0.8,
        ax=ax,
    )
    position = {v: i for i, v in enumerate(order)}
    x = values["variant"].map(position).to_numpy(dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, x.size)  # fixed: same figure each run
    ax.scatter(x + jitter, values["value"], s=4, color="#08306b", alpha=0.5, linewidths=0)
    ax.set(title=title, xlabel="", ylabel=ylabel)
    ax.tick_params(axis="x", rotation=60 if len(order) > 4 else 0)
    return _png(fig)


def paired_differences(table: pd.DataFrame, baseline: str) -> bytes:
    """Mean paired difference to the baseline with its 95% CI, one panel per target x metric.

    table: target, metric, variant, mean_diff, ci_low, ci_high, significant (display units).
    """
    panels = list(table.groupby(["target", "metric"], sort=False))
    n_variants = table["variant"].nunique()
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = _subplots(
        rows,
        cols,
        figsize=(4.2 * cols, 0.3 * n_variants * rows + 1.5),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, ((target, metric), part) in zip(axes.flat, panels, strict=False):
        y = np.arange(len(part))
        mean = part["mean_diff"]
        err = np.abs([mean - part["ci_low"], part["ci_high"] - mean]).astype(float)
        err = np.nan_to_num(err)  # no interval (too few runs): the point alone
        colors = np.where(part["significant"], "#b30000", "#555555")
        ax.errorbar(mean, y, xerr=err, fmt="none", ecolor=colors, lw=1)
        ax.scatter(mean, y, c=colors, s=14, zorder=3)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(y, part["variant"])
        unit = "points" if metric in ("dsc", "nsd", "abs_rvd") else "mm"
        ax.set(title=f"{target} {metric.upper()}", xlabel=f"difference to {baseline} ({unit})")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0, 0].invert_yaxis()
    return _png(fig)


def significance_maps(maps: dict[tuple[str, str], pd.DataFrame]) -> bytes:
    """challengeR significance maps: dark cell (row a, column b) = a significantly better than b."""
    n = len(maps)
    k = max(len(m) for m in maps.values())
    side = max(3.0, 0.28 * k + 1.5)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = _subplots(
        rows, cols, figsize=(side * cols, side * rows), squeeze=False, layout="constrained"
    )
    for ax, ((target, metric), table) in zip(axes.flat, maps.items(), strict=False):
        ax.imshow(table.to_numpy(dtype=float), cmap="YlGnBu", vmin=0, vmax=1)
        ticks = np.arange(len(table))
        ax.set_xticks(ticks, table.columns, rotation=90, fontsize=7)
        ax.set_yticks(ticks, table.index, fontsize=7)
        ax.set_title(f"{target} {metric.upper()}: row better than column", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _png(fig)


def rank_stability(freqs: dict[str, pd.DataFrame], taus: dict[str, np.ndarray]) -> bytes:
    """Blob plot (bootstrap rank frequency per variant) per target, plus Kendall's tau violins."""
    n = len(freqs)
    k = max(len(f) for f in freqs.values())
    fig, axes = _subplots(
        1,
        n + 1,
        figsize=(max(4.5, 0.3 * k + 3) * n + 3, 0.3 * k + 2),
        squeeze=False,
        layout="constrained",
    )
    for ax, (target, freq) in zip(axes[0], freqs.items(), strict=False):
        yy, xx = np.meshgrid(np.arange(len(freq)), freq.columns.to_numpy(), indexing="ij")
        sizes = freq.to_numpy() * 250
        ax.scatter(xx.ravel(), yy.ravel(), s=sizes.ravel(), color="#2171b5", alpha=0.8)
        ax.set_yticks(np.arange(len(freq)), freq.index, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=f"{target}: bootstrap ranks", xlabel="rank (1 = best)")
    tau_ax = axes[0, -1]
    tau_ax.violinplot([t[~np.isnan(t)] for t in taus.values()], showmedians=True)
    tau_ax.set_xticks(np.arange(1, n + 1), list(taus), rotation=45)
    tau_ax.set(title="Kendall's tau vs full ranking", ylim=(-1.05, 1.05))
    return _png(fig)


def pareto(points: pd.DataFrame, xlabel: str, ylabel: str) -> bytes:
    """Accuracy vs cost per variant, the Pareto front joined by a line.

    points: variant, cost, accuracy, front (bool).
    """
    fig, ax = _subplots(figsize=(6, 4.2))
    ax.scatter(points["cost"], points["accuracy"], c=np.where(points["front"], "#b30000", "#888"))
    front = points[points["front"]].sort_values("cost")
    ax.plot(front["cost"], front["accuracy"], color="#b30000", lw=1, label="Pareto front")
    for row in points.itertuples(index=False):
        ax.annotate(
            str(row.variant),
            (row.cost, row.accuracy),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.margins(0.15)  # room for the labels; the legend sits outside the data
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def cost_per_variant(cost: pd.DataFrame, order: list[str], memory_label: str) -> bytes:
    """Bars (mean over runs, points for each run) of training s/epoch, inference s/case and peak
    training memory per variant.

    cost: variant, seconds_per_epoch, infer_seconds_per_case, peak_train_memory_mb.
    """
    panels = [
        ("seconds_per_epoch", "training s / epoch"),
        ("infer_seconds_per_case", "inference s / case"),
        ("peak_train_memory_mb", f"{memory_label}, training (MB)"),
    ]
    fig, axes = _subplots(
        1, 3, figsize=(max(9.0, 3 * _width(len(order), 0.35, 3.0)), 3.6), layout="constrained"
    )
    for ax, (column, label) in zip(axes, panels, strict=True):
        data = cost[["variant", column]].dropna()
        if not data.empty:
            sns.barplot(
                data=data, x="variant", y=column, order=order, ax=ax, color="#9ecae1", errorbar=None
            )
            sns.stripplot(
                data=data, x="variant", y=column, order=order, ax=ax, color="#08306b", size=3
            )
        ax.set(title=label, xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    return _png(fig)


def training_curves(curves: pd.DataFrame, order: list[str]) -> bytes:
    """Per metric, the mean over folds and seeds per epoch, one line per variant.

    curves: variant, epoch, metric, value.
    """
    metrics = list(pd.unique(curves["metric"]))
    mean = curves.groupby(["metric", "variant", "epoch"], sort=False)["value"].mean()
    fig, axes = _subplots(
        1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained"
    )
    colors = sns.color_palette("husl", len(order))
    for ax, metric in zip(axes[0], metrics, strict=True):
        lines = dict(tuple(mean.loc[metric].groupby(level=0, sort=False)))
        for color, variant in zip(colors, order, strict=True):
            if variant in lines:
                line = lines[variant].droplevel(0)
                ax.plot(line.index, line.to_numpy(), color=color, lw=1, label=variant)
        ax.set(title=metric, xlabel="epoch")
    if len(order) <= 12 and axes[0, -1].get_legend_handles_labels()[0]:
        axes[0, -1].legend(fontsize=7)
    return _png(fig)
