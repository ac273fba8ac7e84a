"""Every figure of the report: drawn (no empty axes), legible (no two tick labels or titles
overlap, measured with matplotlib's renderer), and the training curves of a study with an
inference axis are found (its training runs carry the training variant's label)."""

from __future__ import annotations

import dataclasses
import itertools

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from ablate.report import synthetic_results
from ablate.report.analysis import analyse
from ablate.report.collect import Results
from ablate.report.figures import make_figures
from ablate.report.headline import headline
from ablate.report.labels import variant_labels
from ablate.study import variant_label

DEMO_AXES = {"train.deep_supervision": ["nnunet", "none"], "infer.tta": [1, 2]}


def with_study_labels(results: Results, axes: dict[str, list]) -> Results:
    """Relabel synthetic results as a study does: the variant is ablate.study.variant_label of
    its axis values (e.g. "ds=none · tta=2"), and the curves, logged on the training runs, carry
    the label of the training axes only ("ds=none"), as `ablate.expand` names a TrainJob."""
    full, trained = {}, {}
    for levels in itertools.product(*axes.values()):
        synthetic = " / ".join(map(str, levels))
        cell = dict(zip(axes, levels, strict=True))
        full[synthetic] = variant_label(cell)
        train = {a: v for a, v in cell.items() if not a.startswith("infer.")}
        trained[synthetic] = variant_label(train)
    tidy = results.tidy.assign(variant=results.tidy["variant"].map(full))
    cost = results.cost.assign(variant=results.cost["variant"].map(full))
    curves = results.curves.assign(variant=results.curves["variant"].map(trained))
    curves = curves.drop_duplicates(["variant", "fold", "seed", "epoch", "metric"])
    return dataclasses.replace(results, tidy=tidy, cost=cost, curves=curves)


def demo_like(n_cases: int = 12) -> tuple[Results, str]:
    axes = {a: [str(v) for v in levels] for a, levels in DEMO_AXES.items()}
    results = synthetic_results(
        axes, n_cases=n_cases, folds=3, effects={"none": 0.01}, epochs=4, distances=True
    )
    relabelled = with_study_labels(results, DEMO_AXES)
    return relabelled, variant_label({"train.deep_supervision": "nnunet", "infer.tta": 1})


def figures_of(results: Results, baseline: str, meta: dict | None = None):
    a = analyse(results, {"name": "t", "baseline": baseline, **(meta or {})}, n_boot=200)
    labels = variant_labels(a.order)
    figs = make_figures(a, "GPU memory", labels, headline(a))
    return a, [
        (section, caption, fig) for section, entries in figs.items() for caption, fig in entries
    ]


def drawn_artists(ax) -> int:
    """Artists that put ink on the axes: lines with points, scatters with points, other
    collections (violins, contours, error bars) with vertices, bars of non-zero size, images."""
    lines = sum(len(line.get_xdata()) > 0 for line in ax.lines)
    collections = 0
    for c in ax.collections:
        if isinstance(c, PathCollection):  # a scatter: one marker path, drawn at each offset
            collections += len(c.get_offsets()) > 0
        else:
            collections += any(len(p.vertices) > 0 for p in c.get_paths())
    bars = sum(
        p.get_width() != 0 and p.get_height() != 0 for p in ax.patches if hasattr(p, "get_width")
    )
    return lines + collections + bars + len(ax.images)


def text_boxes(fig):
    """(name, window extent) of every visible tick label, title and axis label of the figure."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    out = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        texts = [*_drawn_tick_labels(ax.xaxis), *_drawn_tick_labels(ax.yaxis)]
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for t in texts:
            if t.get_visible() and t.get_text().strip():
                out.append((f"axes {i}: {t.get_text()!r}", t.get_window_extent(renderer)))
    return out


def _drawn_tick_labels(axis) -> list:
    """The labels of the ticks inside the view (matplotlib keeps, and does not draw, the rest)."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(1.0, abs(high - low))
    return [
        label
        for tick in axis.get_major_ticks()
        if low - slack <= tick.get_loc() <= high + slack
        for label in (tick.label1, tick.label2)
        if label.get_visible()
    ]


def overlaps(fig) -> list[str]:
    boxes = text_boxes(fig)
    clashes = []
    for (name_a, a), (name_b, b) in itertools.combinations(boxes, 2):
        a_in, b_in = a.shrunk(0.96, 0.9), b.shrunk(0.96, 0.9)  # touching is not overlapping
        if a_in.overlaps(b_in):
            clashes.append(f"{name_a} / {name_b}")
    return clashes


def test_training_curves_of_a_study_with_an_inference_axis_are_drawn():
    results, baseline = demo_like()
    assert set(results.curves["variant"]) == {"ds=nnunet", "ds=none"}  # training labels
    assert "ds=none · tta=2" in set(results.tidy["variant"])
    a, figs = figures_of(results, baseline)
    assert a.trained_as["ds=none · tta=2"] == "ds=none"
    (curves,) = [fig for _, caption, fig in figs if caption.startswith("Training curves")]
    for ax in [ax for ax in curves.axes if ax.axison]:
        drawn = {line.get_label() for line in ax.lines if len(line.get_xdata()) == 4}
        assert drawn == {"ds=nnunet", "ds=none"}, ax.get_title()


def test_a_figure_with_nothing_drawn_is_caught():
    from ablate.report.plots import subplots

    fig, ax = subplots(figsize=(3, 2))
    ax.scatter([], [])
    assert drawn_artists(ax) == 0
    ax.plot([0, 1], [0, 1])
    assert drawn_artists(ax) == 1


def test_overlapping_labels_are_caught():
    from ablate.report.plots import subplots

    fig, ax = subplots(figsize=(3, 2))
    ax.bar(range(12), range(12))
    ax.set_xticks(range(12), [f"a long variant label {i}" for i in range(12)])
    assert overlaps(fig)
    ax.tick_params(axis="x", rotation=90)
    assert not overlaps(fig)


def _bench_like() -> tuple[Results, str]:
    axes = {a: [f"{a}{i}" for i in range(3)] for a in ("arch", "loss", "tta")}
    results = synthetic_results(axes, n_cases=30, targets=("kidney", "tumor", "cyst"), epochs=5)
    return results, "arch0 / loss0 / tta0"


def _demo_with_a_tumour_nobody_learned() -> tuple[Results, str]:
    """The demo's shape: tumour DSC is the empty-case score everywhere, distances NaN there."""
    results, baseline = demo_like()
    tidy = results.tidy.copy()
    tumour = tidy["target"] == "tumor"
    empty_ref = tidy["case"].isin(["case_00000", "case_00005", "case_00007"])
    tidy.loc[tumour & tidy["metric"].isin(["dsc", "nsd"]), "value"] = 0.0
    tidy.loc[tumour & empty_ref & tidy["metric"].isin(["dsc", "nsd"]), "value"] = 1.0
    tidy.loc[tumour & tidy["metric"].isin(["hd95", "assd"]), "value"] = float("nan")
    tidy.loc[tumour & (tidy["metric"] == "rvd"), "value"] = -1.0
    flags = tidy[tidy["metric"] == "dsc"].assign(metric="empty", value=0.0)
    is_tumour = flags["target"] == "tumor"
    flags.loc[is_tumour, "value"] = 2.0
    flags.loc[
        is_tumour & flags["case"].isin(["case_00000", "case_00005", "case_00007"]), "value"
    ] = 3.0
    tidy = pd.concat([tidy, flags], ignore_index=True)
    return dataclasses.replace(results, tidy=tidy), baseline


@pytest.mark.parametrize(
    "make",
    [demo_like, _bench_like, _demo_with_a_tumour_nobody_learned],
    ids=["demo-like", "27-variants", "tumour-not-learned"],
)
def test_every_figure_has_ink_and_no_overlapping_labels(make):
    results, baseline = make()
    _, figs = figures_of(results, baseline, {"analysis": {"noninferiority_margin": {"dsc": 0.01}}})
    assert len(figs) >= 6
    for section, caption, fig in figs:
        assert caption.strip().endswith(".") and "one " in caption.lower(), caption
        for i, ax in enumerate(fig.axes):
            if ax.axison:
                assert drawn_artists(ax) > 0, f"{section}: {caption[:60]}: axes {i} is empty"
        clashes = overlaps(fig)
        assert not clashes, f"{section}: {caption[:60]}: {clashes[:4]}"


def test_a_collapsed_target_gets_no_forest_violin_or_map():
    results, baseline = _demo_with_a_tumour_nobody_learned()
    _, figs = figures_of(results, baseline)
    captions = [c for _, c, _ in figs]
    assert any(c.startswith("kidney: each variant minus") for c in captions)
    assert not any(c.startswith("tumor") for c in captions)
    answer = [fig for section, _, fig in figs if section == "answer"]
    assert len(answer) == 1 and len([ax for ax in answer[0].axes if ax.axison]) == 5
