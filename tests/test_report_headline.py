"""The answer the page leads with: forest panels, one sentence per variant with its cost, and
targets or metrics where the variants cannot differ collapsed into one line that says why."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from test_report_figures import _demo_with_a_tumour_nobody_learned, demo_like

from ablate.report import synthetic_results
from ablate.report.analysis import analyse
from ablate.report.headline import (
    BETTER,
    NO_DIFFERENCE,
    _cost_change,
    collapsed_comparisons,
    headline,
)
from ablate.report.labels import variant_labels
from ablate.report.summary import summary_lines


def _analysis(results, baseline, **meta):
    return analyse(results, {"name": "t", "baseline": baseline, **meta}, n_boot=100)


def test_a_tumour_no_variant_learned_is_one_line_with_its_numbers():
    a = _analysis(*_demo_with_a_tumour_nobody_learned())
    (line,) = collapsed_comparisons(a)
    assert line.target == "tumor" and line.metric is None
    assert line.text().startswith("No variant learned the tumor: every variant's prediction is")
    assert "all 12 cases" in line.text() and "DSC 1 on the 3 case(s) without tumor" in line.text()
    head = headline(a)
    assert list(head.panels) == ["kidney"]  # no forest panel for the tumour
    summary = summary_lines(a)
    assert sum("No variant learned the tumor" in s for s in summary) == 1
    assert not any("tumor DSC (" in s or "tumor NSD (" in s for s in summary), summary


def test_identical_values_without_empty_flags_and_a_metric_defined_nowhere():
    results, baseline = demo_like()
    tidy = results.tidy.copy()
    tumour = tidy["target"] == "tumor"
    tidy.loc[tumour, "value"] = (
        tidy.loc[tumour].groupby(["case", "metric"])["value"].transform("first")
    )  # every variant the same on every tumour case
    tidy.loc[(tidy["target"] == "kidney") & (tidy["metric"] == "assd"), "value"] = np.nan
    a = _analysis(dataclasses.replace(results, tidy=tidy), baseline)
    lines = {(c.target, c.metric): c.text() for c in collapsed_comparisons(a)}
    assert lines[("tumor", None)].startswith(
        "Every variant has the same value on every tumor case for every metric"
    )
    assert lines[("kidney", "assd")] == (
        "kidney ASSD: no value on any case (not defined where the reference or the prediction "
        "is empty)"
    )
    metrics = [p.metric for p in headline(a).panels["kidney"]]
    assert "assd" not in metrics and "dsc" in metrics


def test_forest_rows_and_sentences_state_the_verdict_and_the_cost():
    results = synthetic_results(
        {"arch": ["plain", "residual", "same"]}, n_cases=30, effects={"residual": 0.05}
    )
    cost = results.cost.copy()
    cost.loc[cost["variant"] == "same", "infer_seconds_per_case"] = cost.loc[
        cost["variant"] == "plain", "infer_seconds_per_case"
    ].to_numpy()
    a = _analysis(dataclasses.replace(results, cost=cost), "plain")
    head = headline(a)
    dsc = next(p for p in head.panels["kidney"] if p.metric == "dsc")
    verdicts = dict(zip(dsc.rows["variant"], dsc.rows["verdict"], strict=True))
    assert verdicts == {"residual": BETTER, "same": NO_DIFFERENCE}
    row = dsc.rows.set_index("variant").loc["residual"]
    assert 3 < row["mean_diff"] < 7 and row["ci_low"] < row["mean_diff"] < row["ci_high"]
    per_case = dsc.per_case[dsc.per_case["variant"] == "residual"]
    m = a.matrices[("kidney", "dsc")]
    expected = 100 * (m["residual"] - m["plain"])
    assert np.allclose(per_case.set_index("case")["diff"], expected.loc[per_case["case"]])
    sentences = head.verdicts.set_index("variant")["sentence"]
    assert "kidney DSC +" in sentences["residual"]
    assert "significantly better after Holm (configuration level)" in sentences["residual"]
    assert "not shown to differ after Holm (configuration level)" in sentences["same"]
    assert "about the same inference time per case" in sentences["same"]
    costs = head.verdicts.set_index("variant")
    assert costs.loc["same", "inference s / case"] == "same"
    assert costs.loc["residual", "parameters"].endswith("%)")


def test_cost_change_words():
    per = pd.DataFrame(
        {"infer_seconds_per_case": [2.0, 3.0, 2.005], "parameters": [2e7, 3e7, 2e7]},
        index=["base", "slow", "same"],
    )
    assert _cost_change(per, "slow", "base", "infer_seconds_per_case", "s") == "+1 s (+50%)"
    assert _cost_change(per, "same", "base", "infer_seconds_per_case", "s") == "same"
    assert _cost_change(per, "slow", "base", "parameters", "") == "+10.00 M (+50%)"
    assert _cost_change(None, "slow", "base", "parameters", "") == "n/a"


def test_short_labels_with_a_legend_only_when_labels_are_long():
    short = variant_labels(["ds=nnunet · tta=1", "ds=none · tta=2"])
    assert not short.abbreviated and short("ds=none · tta=2") == "ds=none · tta=2"
    assert short.legend() == []
    long = variant_labels(["residual · dice_topk · ds=last3", "plain · dice_ce · ds=none"])
    assert long.abbreviated and long.many(long.short) == ["V1", "V2"]
    assert long.legend() == [
        ("V1", "residual · dice_topk · ds=last3"),
        ("V2", "plain · dice_ce · ds=none"),
    ]
