"""The per-case table of each target: every case's value per variant (or, with many variants,
the baseline, the best variant and the spread), its fold, and a link to its picture."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.analysis import Analysis
from ablate.report.headline import collapsed_comparisons, collapsed_keys
from ablate.report.pictures import CasePicture
from ablate.report.stats import HIGHER_IS_BETTER
from ablate.report.tables import Table, metric_label, metric_unit, value_text

EVERY_VARIANT_UP_TO = 8  # more variants: summary columns instead of one column each


def case_tables(a: Analysis, pictures: list[CasePicture], labels) -> dict[str, Table]:
    """target -> its per-case table on the first metric, worst spread first."""
    metric = a.metrics[0]
    shown = {(p.target, p.case): p for p in pictures}
    skip = collapsed_keys(a, collapsed_comparisons(a))  # said in one line under The answer
    out = {}
    for (target, mt), m in a.matrices.items():
        if mt != metric or target == "composite" or (target, mt) in skip:
            continue
        out[target] = _table(a, target, metric, m, shown, labels)
    return out


def _table(a: Analysis, target, metric, m: pd.DataFrame, shown, labels) -> Table:
    hib = HIGHER_IS_BETTER[metric]
    unit = metric_unit(metric)
    spread = m.max(axis=1) - m.min(axis=1)
    order = spread.fillna(-np.inf).sort_values(ascending=False, kind="stable").index
    m = m.loc[order]
    frame = pd.DataFrame({"case": [str(c) for c in m.index]})
    if a.case_folds is not None:
        folds = a.case_folds.reindex(m.index)
        frame["fold"] = ["n/a" if pd.isna(f) else str(int(f)) for f in folds]
    name = metric_label(metric)
    if len(m.columns) <= EVERY_VARIANT_UP_TO:
        for v in m.columns:
            frame[f"{labels(v)} {name} ({unit})"] = [value_text(x, metric) for x in m[v]]
    else:
        best = (m.mean() if hib else -m.mean()).idxmax()
        frame[f"{labels(a.baseline)} (baseline)"] = [value_text(x, metric) for x in m[a.baseline]]
        frame[f"{labels(best)} (best mean)"] = [value_text(x, metric) for x in m[best]]
        frame["lowest"] = [value_text(x, metric) for x in m.min(axis=1)]
        frame["highest"] = [value_text(x, metric) for x in m.max(axis=1)]
        worst = m.idxmin(axis=1) if hib else m.idxmax(axis=1)
        frame["worst variant"] = [labels(v) if isinstance(v, str) else "n/a" for v in worst]
    frame[f"spread ({'points' if unit == '%' else 'mm'})"] = [
        value_text(x, metric) for x in spread.loc[order]
    ]
    frame["picture"] = ["picture" if (target, c) in shown else "" for c in m.index]
    column = len(frame.columns) - 1
    links = {
        (i, column): f"#{shown[(target, c)].anchor}"
        for i, c in enumerate(m.index)
        if (target, c) in shown
    }
    note = (
        f"{name} per case (averaged over seeds), the case with the widest spread between "
        "variants first; fold: the cross-validation fold whose model predicted the case. "
        "'picture' links to the case's slices under the pictures."
    )
    return Table(f"{target}: every case ({name})", frame, note=note, links=links)
