"""The answer first: what the page leads with, computed from the analysis (no formatting of
tables, no plotting).

Per target and metric, a forest panel: every variant's mean paired difference to the baseline
with its CI and verdict (the headline test of ablate.report.comparisons: configuration level for
training variants, case level for inference-only ones) over the per-case differences it rests
on. Per variant, one sentence in plain words and its cost beside the baseline's. Targets or
metrics where every variant scores the same on every case (a structure no variant learned, a
distance defined on no case) collapse into one line that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ablate.report.paired import NO_VARIANCE
from ablate.report.tables import FRACTION_METRICS, LEVELS, diff_text, diff_unit, metric_label

if TYPE_CHECKING:  # analysis imports held_out, which draws with plots, which reads ForestPanel
    from ablate.report.analysis import Analysis

# verdicts of the headline test, in the order the legend lists them
BETTER, WORSE, NO_DIFFERENCE, NO_TEST = "better", "worse", "no difference shown", "no test"
COST_COLUMNS = {
    "infer_seconds_per_case": ("inference s / case", "s"),
    "peak_train_memory_mb": ("peak training memory", "MB"),
    "peak_infer_memory_mb": ("peak inference memory", "MB"),
    "parameters": ("parameters", ""),
}


@dataclass(frozen=True)
class Collapsed:
    """A target (metric None) or one metric of a target left out of the comparison, and why."""

    target: str
    metric: str | None
    reason: str

    def text(self) -> str:
        if self.metric is None:  # the reason names the target
            return self.reason[:1].upper() + self.reason[1:]
        return f"{self.target} {metric_label(self.metric)}: {self.reason}"


@dataclass(frozen=True)
class ForestPanel:
    """One target and metric: rows variant, mean_diff, ci_low, ci_high, verdict, level; per_case
    variant, case, diff. Display units (points for DSC/NSD/|RVD|, mm for distances)."""

    target: str
    metric: str
    rows: pd.DataFrame
    per_case: pd.DataFrame
    margin: float | None  # the non-inferiority margin in display units, when declared
    higher_is_better: bool

    @property
    def unit(self) -> str:
        return diff_unit(self.metric)


@dataclass(frozen=True)
class Headline:
    collapsed: list[Collapsed]
    panels: dict[str, list[ForestPanel]]  # target -> one panel per compared metric
    verdicts: pd.DataFrame  # variant, sentence, one column per COST_COLUMNS label


def _scale(metric: str) -> float:
    return 100.0 if metric in FRACTION_METRICS else 1.0


def collapsed_comparisons(a: Analysis) -> list[Collapsed]:
    """Targets and metrics where the variants cannot differ: every variant has the same value on
    every case (or no value at all). A target whose metrics all collapse is one line."""
    per_target: dict[str, list[Collapsed]] = {}
    metrics_of: dict[str, int] = {}
    for (target, metric), m in a.matrices.items():
        metrics_of[target] = metrics_of.get(target, 0) + 1
        reason = _why_identical(m)
        if reason:
            per_target.setdefault(target, []).append(Collapsed(target, metric, reason))
    out = []
    for target, lines in per_target.items():
        if len(lines) == metrics_of[target] and len(a.order) > 1:
            out.append(Collapsed(target, None, _why_target(a, target)))
        else:
            out += lines
    return out


def _why_identical(m: pd.DataFrame) -> str:
    values = m.to_numpy(dtype=float)
    if values.size == 0 or np.isnan(values).all():
        return "no value on any case (not defined where the reference or the prediction is empty)"
    if m.shape[1] < 2:
        return ""
    first = values[:, :1]
    same = np.isclose(values, first, atol=NO_VARIANCE, rtol=0) | (
        np.isnan(values) & np.isnan(first)
    )
    return "every variant has the same value on every case" if same.all() else ""


def _why_target(a: Analysis, target: str) -> str:
    empty = a.empty_predictions
    part = empty[empty["target"] == target] if not empty.empty else empty
    if not part.empty and (part["empty_prediction"] == part["cases"]).all():
        n = int(part["cases"].max())
        without = int(part["empty_reference"].max())
        return (
            f"no variant learned the {target}: every variant's prediction is empty on all {n} "
            f"cases, so each scores the empty-case value (DSC 1 on the {without} case(s) "
            f"without {target}, 0 on the {n - without} with it; distances n/a); nothing to "
            "compare"
        )
    return (
        f"every variant has the same value on every {target} case for every metric; nothing "
        "to compare"
    )


def headline(a: Analysis) -> Headline:
    """The forest panels, the collapsed lines and one sentence (with costs) per variant."""
    collapsed = collapsed_comparisons(a)
    skip = collapsed_keys(a, collapsed)
    panels: dict[str, list[ForestPanel]] = {}
    compare = a.compare
    if not compare.empty:
        keep = [k not in skip for k in zip(compare["target"], compare["metric"], strict=True)]
        compare = compare[keep]
        for (target, metric), rows in compare.groupby(["target", "metric"], sort=False):
            panels.setdefault(target, []).append(_panel(a, target, metric, rows))
    return Headline(collapsed, panels, _verdicts(a, compare))


def collapsed_keys(a: Analysis, collapsed: list[Collapsed]) -> set[tuple[str, str]]:
    """The (target, metric) pairs the collapsed lines cover (a whole target: all its metrics)."""
    return {
        (t, m)
        for t, m in a.matrices
        if any(c.target == t and c.metric in (None, m) for c in collapsed)
    }


def _panel(a: Analysis, target: str, metric: str, rows: pd.DataFrame) -> ForestPanel:
    scale = _scale(metric)
    m = a.matrices[(target, metric)]
    table = pd.DataFrame(
        {
            "variant": rows["variant"].to_numpy(),
            "mean_diff": rows["mean_diff"].to_numpy() * scale,
            "ci_low": rows["ci_low"].to_numpy() * scale,
            "ci_high": rows["ci_high"].to_numpy() * scale,
            "verdict": [verdict(r) for r in rows.itertuples(index=False)],
            "level": rows["unit"].map(LEVELS).fillna("case level").to_numpy(),
        }
    )
    per_case = []
    for variant in table["variant"]:
        d = (m[variant] - m[a.baseline]).dropna() * scale
        per_case.append(pd.DataFrame({"variant": variant, "case": d.index, "diff": d.to_numpy()}))
    margin = a.margins.get(metric)
    return ForestPanel(
        target,
        metric,
        table,
        pd.concat(per_case, ignore_index=True),
        None if margin is None else margin * scale,
        metric not in ("hd95", "assd", "abs_rvd"),
    )


def verdict(r) -> str:
    """The headline verdict of one comparison row, in one of four words."""
    if r.note or pd.isna(r.p_holm):
        return NO_TEST
    if r.significant:
        return BETTER if r.better else WORSE
    return NO_DIFFERENCE


def _verdicts(a: Analysis, compare: pd.DataFrame) -> pd.DataFrame:
    per = a.cost.groupby("variant").mean(numeric_only=True) if not a.cost.empty else None
    rows = []
    for variant in a.order[1:]:
        mine = compare[compare["variant"] == variant] if not compare.empty else compare
        row = {"variant": variant, "sentence": _sentence(a, variant, mine)}
        for col, (label, unit) in COST_COLUMNS.items():
            row[label] = _cost_change(per, variant, a.baseline, col, unit)
        rows.append(row)
    columns = ["variant", "sentence", *(label for label, _ in COST_COLUMNS.values())]
    return pd.DataFrame(rows, columns=columns)


def _sentence(a: Analysis, variant: str, rows: pd.DataFrame) -> str:
    """The first metric on every compared target, other metrics only where the verdict is not
    'no difference shown', non-inferiority on the first metric, and the inference time."""
    if rows.empty:
        return f"Not compared with {a.baseline} (no case both have a value for, or all collapsed)."
    first = a.metrics[0] if a.metrics[0] in set(rows["metric"]) else rows["metric"].iat[0]
    parts = []
    for r in rows.itertuples(index=False):
        if r.metric == first or verdict(r) in (BETTER, WORSE):
            parts.append(_effect_words(r))
    text = "; ".join(parts)  # starts with a target name: left as the data spells it
    ni = a.noninferiority
    if not ni.empty:
        mine = ni[(ni["candidate"] == variant) & (ni["metric"] == first) & (ni["note"] == "")]
        for r in mine.itertuples(index=False):
            margin = f"{diff_text(r.margin, r.metric, 1).lstrip('+')} {diff_unit(r.metric)}"
            claim = "non-inferior" if r.noninferior else "cannot claim non-inferiority"
            text += f"; {claim} within {margin} on {r.target} {metric_label(r.metric)}"
    cost = _cost_words(a, variant)
    return text + (f"; {cost}" if cost else "") + "."


def _effect_words(r) -> str:
    unit = diff_unit(r.metric)
    size = f"{diff_text(r.mean_diff, r.metric, 1)} {unit}"
    what = f"{r.target} {metric_label(r.metric)} {size}"
    v = verdict(r)
    if v == NO_TEST:
        return f"{what}, no test ({str(r.note).split(':')[0] or 'too few cases'})"
    ci = f"95% CI {diff_text(r.ci_low, r.metric, 1)} to {diff_text(r.ci_high, r.metric, 1)}"
    level = LEVELS.get(r.unit, "case level")
    if v == NO_DIFFERENCE:
        return f"{what} ({ci}), not shown to differ after Holm ({level})"
    return f"{what} ({ci}), significantly {v} after Holm ({level})"


def _cost_words(a: Analysis, variant: str) -> str:
    if a.cost.empty:
        return ""
    per = a.cost.groupby("variant")["infer_seconds_per_case"].mean()
    if variant not in per or a.baseline not in per or not per[a.baseline] > 0:
        return ""
    change = per[variant] / per[a.baseline] - 1
    if pd.isna(change):
        return ""
    if abs(change) < 0.02:
        return "about the same inference time per case"
    return f"{abs(change):.0%} {'more' if change > 0 else 'less'} inference time per case"


def _cost_change(per, variant: str, baseline: str, col: str, unit: str) -> str:
    """ "+0.08 s (+5%)", "same", or "n/a" for a cost the runs did not record."""
    if per is None or col not in per or variant not in per.index or baseline not in per.index:
        return "n/a"
    value, base = per.at[variant, col], per.at[baseline, col]
    if pd.isna(value) or pd.isna(base):
        return "n/a"
    diff = value - base
    if abs(diff) <= 0.005 * abs(base) or diff == 0:
        return "same"
    share = f" ({100 * diff / base:+.0f}%)" if base else ""
    if col == "parameters":
        return f"{diff / 1e6:+.2f} M{share}"
    number = f"{diff:+,.0f}" if abs(diff) >= 100 else f"{diff:+.2g}"
    return f"{number} {unit}{share}".replace("  ", " ")
