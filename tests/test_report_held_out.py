"""The report's held-out test set: fold ensemble vs single fold models on hand-made values, the
variant comparison on test cases, and the section of the HTML page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate.report import build_report, synthetic_results
from ablate.report.collect import Results
from ablate.report.held_out import analyse_held_out, ensemble_vs_single

CASES = [f"t{i}" for i in range(8)]
BASE = np.linspace(0.6, 0.9, len(CASES))
NOISE = np.array([0.004, -0.003, 0.011, 0.0, 0.007, -0.006, 0.002, 0.009])


def held_out_frames(variants=("plain", "residual"), ensemble=True, shift=0.05):
    """3 fold models scoring BASE + 0.00 / 0.01 / 0.02, the ensemble BASE + 0.03 + NOISE; every
    value of the second variant is `shift` higher."""
    rows, cost = [], []
    for v, variant in enumerate(variants):
        models = [(f"fold {f}", f, BASE + 0.01 * f) for f in range(3)]
        if ensemble:
            models.append(("ensemble", -1, BASE + 0.03 + NOISE))
        for model, fold, values in models:
            for case, value in zip(CASES, values + v * shift, strict=True):
                for metric in ("dsc", "nsd"):
                    rows.append(
                        {
                            "variant": variant,
                            "arch": variant,
                            "model": model,
                            "fold": fold,
                            "seed": 0,
                            "case": case,
                            "target": "kidney",
                            "metric": metric,
                            "value": value,
                        }
                    )
        for model in ("single", "ensemble") if ensemble else ("single",):
            cost.append(
                {
                    "variant": variant,
                    "arch": variant,
                    "model": model,
                    "fold": -1,
                    "seed": 0,
                    "infer_seconds_per_case": 3.0 if model == "ensemble" else 1.0,
                    "peak_infer_memory_mb": 500.0,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(cost)


def test_ensemble_vs_single_on_hand_made_values():
    test, _ = held_out_frames()
    table = ensemble_vs_single(test, ["dsc"], np.random.default_rng(0))
    assert len(table) == 2
    row = table[table["variant"] == "plain"].iloc[0]
    assert row["n"] == len(CASES)
    assert row["single"] == pytest.approx(BASE.mean() + 0.01)  # the mean of the three folds
    assert (row["fold_min"], row["fold_max"]) == pytest.approx((BASE.mean(), BASE.mean() + 0.02))
    assert row["ensemble"] == pytest.approx(BASE.mean() + 0.03 + NOISE.mean())
    diff = 0.02 + NOISE
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["ci_low"] <= diff.mean() <= row["ci_high"]
    assert row["p"] == pytest.approx(sps.ttest_1samp(diff, 0.0).pvalue)  # same models: cases
    assert row["wilcoxon_p"] == pytest.approx(sps.wilcoxon(diff).pvalue)
    assert row["p_holm"] == pytest.approx(min(1.0, 2 * max(table["p"])))  # equal p: Holm 2x


def test_variants_compared_on_the_ensemble_else_on_single_fold_means():
    rng = np.random.default_rng(0)
    test, cost = held_out_frames()
    h = analyse_held_out(test, cost, ["dsc", "nsd"], "plain", rng, n_seeds=1)
    assert (h.n_cases, h.n_models) == (8, 3)
    row = h.compare[(h.compare["metric"] == "dsc")].iloc[0]
    assert row["variant"] == "residual" and row["median_diff"] == pytest.approx(0.05)
    assert "test-set (ensemble) DSC" in row["pairs"]
    seconds = h.cost.set_index(["variant", "kind"])["infer_seconds_per_case"]
    assert seconds[("plain", "ensemble")] == 3.0 and seconds[("plain", "single")] == 1.0

    test, cost = held_out_frames(ensemble=False, shift=0.02)
    h = analyse_held_out(test, cost, ["dsc"], "plain", rng, n_seeds=1)
    assert h.ensemble_vs_single["ensemble"].isna().all()
    row = h.compare.iloc[0]
    assert row["median_diff"] == pytest.approx(0.02) and "(single-fold mean) DSC" in row["pairs"]
    assert analyse_held_out(test.iloc[:0], cost.iloc[:0], ["dsc"], "plain", rng, 1) is None


def test_report_has_a_held_out_section(tmp_path):
    results = synthetic_results(
        {"arch": ["plain", "residual"]}, n_cases=10, targets=("kidney",), epochs=2
    )
    test, cost = held_out_frames()
    results = Results(results.tidy, results.cost, results.curves, results.axes, [], test, cost)
    meta = {"name": "held", "baseline": "plain", "test_set": "Test set: 8 cases held out."}
    page = build_report(results, meta, tmp_path).read_text()
    section = page.split("<h2>Held-out test set</h2>")[1].split("</section>")[0]
    assert "Test set: 8 cases held out." in section
    assert "fold ensemble vs single fold models" in section
    assert "each variant vs plain" in section and "inference cost per case" in section
    assert section.count("<img") == 2  # kidney DSC and NSD per case, single vs ensemble
    summary = page.split("<h2>Summary</h2>")[1].split("</section>")[0]
    assert (
        "Held-out test set (8 cases), kidney DSC: best ensemble over the 8 cases every variant "
        "has: residual" in summary
    )
    exported = pd.read_csv(tmp_path / "test.csv")
    assert len(exported) == len(test) and set(exported["model"]) == {
        "fold 0",
        "fold 1",
        "fold 2",
        "ensemble",
    }
    assert "Held-out test set" in (tmp_path / "tables.md").read_text()


def test_an_external_folder_is_compared_on_its_own_predictions():
    test, cost = held_out_frames()
    external = test[(test["variant"] == "plain") & (test["model"] == "ensemble")].assign(
        variant="nnunet", arch=None, model="external", value=lambda f: f["value"] - 0.01
    )
    test = pd.concat([test, external], ignore_index=True)
    h = analyse_held_out(test, cost, ["dsc"], "plain", np.random.default_rng(0), n_seeds=1)
    assert set(h.ensemble_vs_single["variant"]) == {"plain", "residual"}  # no fold models
    row = h.compare[h.compare["variant"] == "nnunet"].iloc[0]
    assert row["median_diff"] == pytest.approx(-0.01)  # against plain's ensemble
    assert "external" not in set(h.cost["kind"])


def test_a_target_every_variant_scores_alike_is_one_line_in_the_summary():
    """A tumour no model predicts scores the same everywhere on the test set: one line that
    says so, no "best" and no "+0.0 points over its single fold models"."""
    from ablate.report.held_out import held_out_summary

    test, cost = held_out_frames(shift=0.0)
    test["value"] = 0.25  # every model's empty prediction: the same empty-case score
    h = analyse_held_out(test, cost, ["dsc"], "plain", np.random.default_rng(0), n_seeds=1)
    (line,) = held_out_summary(h, "dsc")
    assert "every variant scores the same on every case" in line and "25.0%" in line
    assert "best" not in line and "points" not in line
    test, cost = held_out_frames()
    h = analyse_held_out(test, cost, ["dsc"], "plain", np.random.default_rng(0), n_seeds=1)
    assert "best ensemble" in held_out_summary(h, "dsc")[0]
