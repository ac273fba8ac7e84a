"""The report's words match its numbers: the issue's three contradictions rebuilt, directions of
lower-is-better metrics, missing values, and the non-inferiority line."""

import numpy as np
import pandas as pd
import pytest

from ablate.report import synthetic_results
from ablate.report.analysis import analyse
from ablate.report.collect import Results
from ablate.report.held_out import _shipped, per_case
from ablate.report.html import build_tables
from ablate.report.stats import case_ranks, rank_then_aggregate
from ablate.report.summary import _compare_line, summary_lines
from ablate.report.tables import format_p

N = 40


def _two_variants(a_values, b_values, b_cases=None) -> Results:
    """Variants A (baseline) and B on one target; case i in fold i % 5; B only on `b_cases`."""
    rows = []
    cases = [f"c{i:02d}" for i in range(N)]
    for variant, values in (("A", a_values), ("B", b_values)):
        for i, (case, value) in enumerate(zip(cases, values, strict=True)):
            if variant == "B" and b_cases is not None and i not in b_cases:
                continue
            rows.append(
                {
                    "variant": variant,
                    "arch": variant,
                    "fold": i % 5,
                    "seed": 0,
                    "case": case,
                    "target": "kidney",
                    "metric": "dsc",
                    "value": value,
                }
            )
    tidy = pd.DataFrame(rows)
    return Results(tidy, pd.DataFrame(), pd.DataFrame(), ["arch"])


def _summary(results, meta=None):
    a = analyse(results, {"name": "s", "baseline": "A", **(meta or {})})
    return a, summary_lines(a)


def test_one_failed_fold_best_agrees_with_the_paired_test():
    """Issue: "Best mean DSC: B (83.8 %)" beside "B vs A: -0.8 points, p = 0.0056: significant".
    B's fold 0 failed, and fold 0 holds the hard cases, so B's own mean is the higher one."""
    rng = np.random.default_rng(0)
    base = np.where(np.arange(N) % 5 == 0, 0.70, 0.84) + rng.normal(0, 0.01, N)
    b = base - 0.008 + rng.normal(0, 0.001, N)
    results = _two_variants(base, b, b_cases={i for i in range(N) if i % 5})
    a, lines = _summary(results)
    own = a.describe.set_index("variant")["mean"]
    assert own["B"] > own["A"]  # the old "best"
    best = next(line for line in lines if line.startswith("Best mean DSC"))
    assert "over the 32 cases every variant has: A" in best and "absent cases: B 8" in best
    row = next(line for line in lines if line.startswith("B vs A"))
    assert "mean paired difference -0.8 points" in row and "significantly worse" in row
    table = build_tables(a)["accuracy"]["kidney"].frame.set_index("variant")
    assert table.loc["B", "absent cases"] == "8" and table.loc["B", "n"] == "32"


def test_failed_cases_the_summary_states_the_mean_and_labels_the_median():
    """Issue: "+0.8 points, 95% CI [0.4, 1.2], significant" while the mean paired difference was
    -3.5 points (5 of 40 cases failing)."""
    rng = np.random.default_rng(1)
    base = 0.8 + rng.normal(0, 0.03, N)
    b = base + 0.008 + rng.normal(0, 0.002, N)
    failed = [3, 11, 17, 24, 38]
    b[failed] = base[failed] - 0.35
    a, lines = _summary(_two_variants(base, b))
    row = next(line for line in lines if line.startswith("B vs A"))
    mean = (b - base).mean()
    assert f"mean paired difference {100 * mean:+.1f} points" in row
    assert "significantly better" not in row
    median = f"{100 * np.median(b - base):+.1f}"
    assert median.startswith("+") and mean < -0.03  # the two disagree in sign
    assert f"median paired difference {median} points" in row  # labelled, and only as a median
    assert row.count(median) == 1
    ci = a.compare.iloc[0]
    assert ci["ci_low"] <= mean <= ci["ci_high"]


def test_p_just_below_alpha_never_prints_as_0_05():
    """Issue: 0.0496 printed as "p = 0.05 ... significant"."""
    assert format_p(0.0496) == "0.0496" and format_p(0.0496, prefix=True) == "p = 0.0496"
    for p in np.linspace(0.0400, 0.0600, 201):
        text = format_p(p)
        assert (float(text) < 0.05) == (p < 0.05), (p, text)
    results = synthetic_results({"arch": ["A", "B"]}, n_cases=20, effects={"B": 0.05})
    a = analyse(results, {"name": "s", "baseline": "A"})
    row = a.compare.iloc[0].copy()
    row["p_holm"], row["significant"] = 0.0496, True
    line = _compare_line(pd.DataFrame([row]).itertuples(index=False).__next__())
    assert "p = 0.0496 after Holm" in line and "significantly better" in line


def test_lower_is_better_metrics_rank_bold_and_best():
    results = synthetic_results(
        {"arch": ["plain", "residual"]}, n_cases=20, effects={"residual": 0.05}, distances=True
    )
    a = analyse(results, {"name": "s", "baseline": "plain"})
    assert {"hd95", "assd", "abs_rvd"} <= set(a.metrics)
    hd = a.compare[a.compare["metric"] == "hd95"]
    assert (hd["mean_diff"] < 0).all() and hd["better"].all()
    tables = build_tables(a)
    bold = tables["accuracy"]["kidney"].bold
    frame = tables["accuracy"]["kidney"].frame
    col = frame.columns.get_loc("HD95 mean, common cases (mm)")
    assert bold.iloc[:, col].tolist() == [False, True]  # residual: the smaller distance
    m = a.matrices[("kidney", "hd95")]
    assert rank_then_aggregate(m, higher_is_better=False)["variant"].iat[0] == "residual"
    assert a.sig_maps[("kidney", "hd95")].loc["residual", "plain"]


def test_missing_values_rank_last():
    m = pd.DataFrame({"x": [0.9, np.nan, 0.7], "y": [0.5, 0.2, 0.6], "z": [np.nan] * 3})
    ranks = case_ranks(m)
    np.testing.assert_array_equal(ranks, [[1, 2, 3], [2, 1, 2], [1, 2, 3]])
    lower = case_ranks(m, higher_is_better=False)
    np.testing.assert_array_equal(lower[0], [2, 1, 3])


def test_a_missing_ensemble_value_stays_missing():
    idx = pd.MultiIndex.from_tuples(
        [("k", "dsc", "v", "c1"), ("k", "dsc", "v", "c2"), ("k", "dsc", "w", "c1")],
        names=["target", "metric", "variant", "case"],
    )
    cases = pd.DataFrame({"single": [0.7, 0.8, 0.6], "ensemble": [0.75, np.nan, np.nan]}, idx)
    shipped = _shipped(cases)
    assert shipped.iloc[0] == 0.75 and np.isnan(shipped.iloc[1])  # not the single-fold 0.8
    assert shipped.iloc[2] == 0.6  # w has no ensemble at all: its single-fold mean
    assert per_case is not None


def test_noninferiority_line_for_a_cheaper_inference_variant():
    results = synthetic_results(
        {"train.deep_supervision": ["nnunet"], "infer.tta": ["1", "2"]},
        n_cases=30,
        targets=("kidney",),
        noise=0.004,
    )
    cost = results.cost.copy()
    cost.loc[cost["infer.tta"] == "2", "infer_seconds_per_case"] = 8.0
    cost.loc[cost["infer.tta"] == "1", "infer_seconds_per_case"] = 4.0
    results = Results(results.tidy, cost, results.curves, results.axes)
    meta = {"baseline": "nnunet / 1", "analysis": {"noninferiority_margin": {"dsc": 0.01}}}
    a, lines = _summary(results, meta)
    assert (a.compare["kind"] == "inference-only").all()
    line = next(x for x in lines if x.startswith("Non-inferiority, kidney DSC"))
    assert "nnunet / 1 (saves 4 s of inference per case, 50%) vs nnunet / 2" in line
    assert "non-inferior within 1.0 points" in line and "one-sided 95% bound" in line
    row = a.noninferiority.iloc[0]
    assert row["candidate"] == "nnunet / 1" and row["noninferior"]
    assert row["bound"] > -0.01


@pytest.mark.parametrize("yaml_text", ["analysis:\n  noninferiority_margin: {dsc: 0.02}\n"])
def test_margins_read_from_the_study_yaml(yaml_text):
    from ablate.report.analysis import noninferiority_margins

    assert noninferiority_margins({"config_yaml": yaml_text}) == {"dsc": 0.02}
    assert noninferiority_margins({"analysis": {"noninferiority_margin": {"nsd": 0.01}}}) == {
        "nsd": 0.01
    }


def test_study_margins_and_a_demo_like_report(tmp_path):
    """studies/flare21.yaml and demo.yaml declare margins; a demo-shaped report (deep
    supervision x TTA 1/2, 3 folds) prints a non-inferiority line for TTA 1 vs 2 and names
    every Holm family in Methods."""
    from pathlib import Path

    from ablate.report import build_report
    from ablate.study_load import load_study

    root = Path(__file__).resolve().parents[1] / "studies"
    for name in ("flare21.yaml", "demo.yaml"):
        study = load_study(root / name, check_paths=False)
        assert study.analysis.noninferiority_margin == {"dsc": 0.01, "nsd": 0.01}
    results = synthetic_results(
        {"train.deep_supervision": ["nnunet", "none"], "infer.tta": ["1", "2"]},
        n_cases=12,
        folds=3,
        noise=0.005,
    )
    meta = {
        "name": "demo",
        "baseline": "nnunet / 1",
        "config_yaml": (root / "demo.yaml").read_text(),
    }
    page = build_report(results, meta, tmp_path).read_text()
    summary = page.split("<h2>Summary</h2>")[1].split("</section>")[0]
    assert "Non-inferiority, kidney DSC: " in summary
    tta = [
        x for x in summary.split("<li>") if x.startswith("Non-inferiority") and "nnunet / 2" in x
    ]
    assert tta and all("nnunet / 1" in x for x in tta)
    assert "(inference-only)" in summary and "(training)" in summary
    methods = page.split("<h2>Methods</h2>")[1].split("</section>")[0]
    for key in ("H-DSC", "W-DSC", "NI-DSC", "P-kidney-DSC", "S-kidney-DSC", "E"):
        assert f"Holm family {key}:" in methods
    assert "Non-inferiority of the cheaper variant" in page


def test_which_comparisons_share_their_trained_models():
    from ablate.report.analysis import inference_only_variants

    results = synthetic_results(
        {"train.loss": ["dice_ce", "dice_topk"], "infer.tta": ["8", "2"]}, n_cases=6
    )
    ensemble = results.tidy[results.tidy["variant"] == "dice_ce / 8"].assign(
        variant="ens", **{"train.loss": None, "infer.tta": None}
    )
    tidy = pd.concat([results.tidy, ensemble], ignore_index=True)
    flags = inference_only_variants(
        Results(tidy, results.cost, results.curves, results.axes), "dice_ce / 8"
    )
    assert flags == {
        "dice_ce / 8": True,
        "dice_ce / 2": True,  # TTA only: the same trained models
        "dice_topk / 8": False,
        "dice_topk / 2": False,
        "ens": False,  # an ensemble of cells: its own configuration
    }


def test_external_and_ensemble_variants_in_cross_validation(tmp_path):
    """An external folder (no axis values, fold -1) and a CV ensemble (no axis values, its
    folds) beside the grid: compared at configuration level on the cases' folds, no crash."""
    from ablate.report import build_report

    results = synthetic_results({"arch": ["plain", "residual"]}, n_cases=15, folds=3)
    plain = results.tidy[results.tidy["variant"] == "plain"]
    external = plain.assign(variant="oracle", arch=None, fold=-1, value=1.0)
    ensemble = plain.assign(variant="ens", arch=None, value=plain["value"] + 0.01)
    tidy = pd.concat([results.tidy, external, ensemble], ignore_index=True)
    results = Results(tidy, results.cost, results.curves, results.axes)
    page = build_report(results, {"name": "s", "baseline": "plain"}, tmp_path).read_text()
    a = analyse(results, {"name": "s", "baseline": "plain"})
    rows = a.compare[a.compare["metric"] == "dsc"].set_index(["variant", "target"])
    assert rows.loc[("oracle", "kidney"), "unit"] == "fold models"
    assert rows.loc[("ens", "kidney"), "kind"] == "training"
    assert "oracle vs plain, kidney DSC (training)" in page


def test_planning_lines_from_a_pilot():
    from ablate.report.summary import planning_lines

    results = synthetic_results(
        {"arch": ["plain", "residual"]}, n_cases=40, targets=("kidney",), run_sd=0.005
    )
    meta = {"name": "p", "baseline": "plain", "analysis": {"noninferiority_margin": {"dsc": 0.01}}}
    lines = planning_lines(analyse(results, meta))
    dsc = next(x for x in lines if "kidney DSC" in x)
    assert "(configuration level, 40 cases): minimum detectable difference" in dsc
    assert "to detect 1.0 points with 80% power" in dsc or "needs more seeds and more" in dsc
