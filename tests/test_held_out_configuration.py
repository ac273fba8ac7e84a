"""The held-out test set at configuration level: training runs (fold models x seeds) crossed with
the test cases (ablate.report.crossed), calibrated by simulation as the cross-validation test is
(tests/test_report_calibration.py), and its rows and words in the report's held-out analysis."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate.report.collect import Results
from ablate.report.crossed import crossed_mean, crossed_mean_rows
from ablate.report.held_out import analyse_held_out, held_out_tables
from ablate.report.held_out_configuration import configuration_compare

NOISE = 0.02  # per run and case, 2 DSC points


def _null(rng, sims, runs, cases, run_sd, case_sd, shift=0.0):
    """(sims, runs, cases) paired differences: run offsets, case x configuration effects, noise."""
    return (
        shift
        + rng.normal(0, run_sd, (sims, runs, 1))
        + rng.normal(0, case_sd, (sims, 1, cases))
        + rng.normal(0, NOISE, (sims, runs, cases))
    )


def _rejects(d) -> np.ndarray:
    mean, se, df = crossed_mean_rows(d)
    return 2 * sps.t.sf(np.abs(mean / se), df) < 0.05


@pytest.mark.parametrize("runs", [3, 5, 15])  # 3 folds x 1 seed, 5 x 1, 5 x 3
@pytest.mark.parametrize("cases", [6, 20, 100])
def test_false_positive_rate_is_at_most_nominal_under_null(runs, cases):
    rng = np.random.default_rng(runs * 1000 + cases)
    sims = 4000
    worst = 0.0
    for run_sd, case_sd in [(0.0025, 0.0), (0.01, 0.0), (0.01, 0.01), (0.0025, 0.01)]:
        rate = _rejects(_null(rng, sims, runs, cases, run_sd, case_sd)).mean()
        worst = max(worst, rate)
    assert worst <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims)  # 5% plus Monte-Carlo error


def test_clustering_on_runs_alone_would_not_hold_the_level():
    """Why not the cross-validation clusters: with a case x configuration term shared by every
    run, the run means' scatter misses it."""
    rng = np.random.default_rng(1)
    d = _null(rng, 4000, 15, 20, 0.0025, 0.01)
    runs = d.mean(axis=2)  # (sims, runs)
    t = runs.mean(axis=1) / (runs.std(axis=1, ddof=1) / np.sqrt(15))
    assert (2 * sps.t.sf(np.abs(t), 14) < 0.05).mean() > 0.2
    assert _rejects(d).mean() <= 0.06


def test_interval_covers_and_a_real_shift_is_found():
    rng = np.random.default_rng(2)
    d = _null(rng, 4000, 10, 40, 0.005, 0.005, shift=0.01)
    mean, se, df = crossed_mean_rows(d)
    half = sps.t.ppf(0.975, df) * se
    coverage = ((mean - half <= 0.01) & (0.01 <= mean + half)).mean()
    assert abs(coverage - 0.95) < 0.015
    assert _rejects(d).mean() > 0.8  # 1 point over 10 runs x 40 cases
    one = crossed_mean(d[0])
    assert one["runs"] == 10 and one["n"] == 40 and one["ci_low"] < one["mean"] < one["ci_high"]


def _test_table(rng, folds=3, seeds=(0, 1), cases=12, shift=0.0, ensemble=True) -> pd.DataFrame:
    """A held-out table: two training variants (A baseline, B) and an inference-only C (B's
    models with TTA); every fold model of every seed predicts every case."""
    case_ids = [f"t{i:02d}" for i in range(cases)]
    base = rng.normal(0.85, 0.04, cases)
    rows = []
    for variant, effect in (("A", 0.0), ("B", shift), ("C", shift + 0.001)):
        trained = "B" if variant == "C" else variant
        for seed in seeds:
            for fold in range(folds):
                offset = np.random.default_rng([seed, fold, ord(trained)]).normal(0, 0.005)
                values = base + effect + offset + rng.normal(0, 0.01, cases)
                models = [(f"fold {fold}", fold, values)]
                if ensemble and fold == 0:
                    models.append(("ensemble", -1, base + effect + rng.normal(0, 0.01, cases)))
                for model, fold_id, vals in models:
                    rows.append(
                        pd.DataFrame(
                            {
                                "variant": variant,
                                "model": model,
                                "fold": fold_id,
                                "seed": seed,
                                "case": case_ids,
                                "target": "kidney",
                                "metric": "dsc",
                                "value": vals,
                            }
                        )
                    )
    return pd.concat(rows, ignore_index=True)


def test_configuration_rows_pair_runs_and_leave_inference_only_variants_to_the_case_level():
    rng = np.random.default_rng(3)
    test = _test_table(rng, shift=0.03)
    out = configuration_compare(test, ["dsc"], "A", {"B": False, "C": True})
    assert list(out["variant"]) == ["B"]
    row = out.iloc[0]
    assert row["runs"] == 6 and row["n"] == 12 and row["note"] == ""
    assert row["mean"] == pytest.approx(0.03, abs=0.01) and row["significant"] and row["better"]
    # without the inference-only map every variant is compared (conservatively) as trained
    assert set(configuration_compare(test, ["dsc"], "A")["variant"]) == {"B", "C"}


def test_one_trained_model_per_variant_is_said_in_words():
    rng = np.random.default_rng(4)
    test = _test_table(rng, folds=1, seeds=(0,))
    row = configuration_compare(test, ["dsc"], "A", {"C": True}).iloc[0]
    assert np.isnan(row["p"]) and not row["significant"]
    assert row["note"].startswith("only one trained model per variant on the test set")
    two = configuration_compare(_test_table(rng, folds=2, seeds=(0,)), ["dsc"], "A").iloc[0]
    assert "only 2 trained models per variant" in two["note"]


def test_held_out_analysis_carries_the_configuration_table():
    rng = np.random.default_rng(5)
    test = _test_table(rng, shift=0.0)
    cost = pd.DataFrame(
        {
            "variant": ["A", "B", "C"],
            "model": ["fold 0"] * 3,
            "infer_seconds_per_case": [1.0, 1.0, 2.0],
            "peak_infer_memory_mb": [10.0, 10.0, 10.0],
        }
    )
    h = analyse_held_out(test, cost, ["dsc"], "A", rng, 2, 200, {"C": True})
    assert list(h.configuration["variant"]) == ["B"]
    tables = held_out_tables(h, ["A", "B", "C"], "GPU memory")
    table = tables["configuration"]
    assert table.title == "Held-out test set: configuration level (training runs x test cases)"
    assert list(table.frame["runs x cases"]) == ["6 x 12"]
    assert "Holm families T-cfg-<metric>" in table.note
    from ablate.report.families import report_families

    families = {f.key: f for f in report_families(None, None, {}, None, h, "A")}
    assert families["T-cfg-DSC"].m == 1  # B's row; C shares A's models


def test_the_report_leaves_inference_only_variants_to_the_case_level_on_the_test_set():
    """analyse() tells analyse_held_out which variants share the baseline's trained models:
    a TTA variant gets no configuration-level row, an architecture variant does."""
    from ablate.report import synthetic_results
    from ablate.report.analysis import analyse

    grid = {"arch": ["plain", "res"], "infer.tta": ["1", "8"]}
    results = synthetic_results(grid, n_cases=6, targets=("kidney",), epochs=2)
    rng = np.random.default_rng(2)
    rows = []
    for variant in ("plain / 1", "plain / 8", "res / 1", "res / 8"):
        arch, tta = variant.split(" / ")
        for fold in range(3):
            for case in range(10):
                rows.append(
                    {
                        "variant": variant,
                        "arch": arch,
                        "infer.tta": tta,
                        "model": f"fold {fold}",
                        "fold": fold,
                        "seed": 0,
                        "case": f"t{case}",
                        "target": "kidney",
                        "metric": "dsc",
                        "value": 0.8 + rng.normal(0, 0.02),
                    }
                )
    cost = pd.DataFrame(
        {
            "variant": ["plain / 1"],
            "model": ["single"],
            "infer_seconds_per_case": [1.0],
            "peak_infer_memory_mb": [10.0],
        }
    )
    results = Results(
        results.tidy, results.cost, results.curves, results.axes, [], pd.DataFrame(rows), cost
    )
    held_out = analyse(results, {"baseline": "plain / 1"}, n_boot=50).held_out
    assert sorted(held_out.configuration["variant"].unique()) == ["res / 1", "res / 8"]
