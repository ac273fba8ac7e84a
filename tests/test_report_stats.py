"""Statistics of the report on small synthetic results with known effects."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate.report import comparisons, stats
from ablate.report.analysis import case_folds
from ablate.report.collect import Results, composite_dice, synthetic_results

ARCH = {"arch": ["plain", "residual"]}


def _matrices(results):
    return stats.case_matrices(results.tidy, ["dsc", "nsd"])


def _compare(results, baseline):
    return comparisons.compare_to_baseline(_matrices(results), baseline, case_folds(results.tidy))


def test_holm_matches_hand_computation():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.9, 0.8]).max() <= 1.0


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(3).uniform(0, 0.2, 12)
    expected = multitest.multipletests(p, method="holm")[1]
    np.testing.assert_allclose(stats.holm(p), expected)


def test_identical_variants_nothing_significant():
    results = synthetic_results(ARCH, n_cases=30, rng_seed=1)
    tidy = results.tidy
    plain = tidy[tidy["variant"] == "plain"]
    twin = plain.assign(variant="twin")
    tidy = pd.concat([plain, twin], ignore_index=True)
    twins = Results(tidy, results.cost, results.curves, ["arch"])
    table = _compare(twins, "plain")
    assert (table["p"] == 1.0).all() and not table["significant"].any()
    assert (table["wilcoxon_p"] == 1.0).all()
    assert (table["median_diff"] == 0).all() and (table["mean_diff"] == 0).all()


def test_no_effect_is_not_significant_after_holm():
    results = synthetic_results({"arch": ["a", "b", "c"]}, n_cases=30, rng_seed=2)
    table = _compare(results, "a")
    assert len(table) == 2 * 2 * 2  # 2 variants x 2 targets x 2 metrics
    assert not table["significant"].any()


def test_clear_shift_is_significant_after_holm():
    results = synthetic_results(ARCH, n_cases=30, effects={"residual": 0.05})
    table = _compare(results, "plain")
    assert table["significant"].all() and table["better"].all()
    # configuration level: 5 fold models, 4 degrees of freedom
    assert (table["p_holm"] < 0.01).all() and (table["unit"] == "fold models").all()
    assert (table["clusters"] == 5).all() and (table["df"] == 4).all()
    assert (table["n"] == 30).all()
    assert "30 cases" in table["pairs"].iat[0]


def test_wilcoxon_matches_scipy_small_and_vectorised():
    results = synthetic_results(ARCH, n_cases=20, effects={"residual": 0.01})
    m = _matrices(results)[("kidney", "dsc")]
    table = comparisons.compare_to_baseline({("kidney", "dsc"): m}, "plain")
    expected = sps.wilcoxon(m["residual"], m["plain"]).pvalue
    assert table["wilcoxon_p"].iat[0] == pytest.approx(expected)
    d = m["residual"] - m["plain"]
    assert table["p"].iat[0] == pytest.approx(sps.ttest_rel(m["residual"], m["plain"]).pvalue)
    assert table["mean_diff"].iat[0] == pytest.approx(d.mean())
    diffs = np.random.default_rng(5).normal(0.1, 1.0, (4, 80))
    expected = [sps.wilcoxon(d, alternative="greater").pvalue for d in diffs]
    np.testing.assert_allclose(stats.wilcoxon_p(diffs, "greater"), expected)


def test_too_few_cases_gives_a_note_not_a_p_value():
    results = synthetic_results(ARCH, n_cases=5, folds=5, effects={"residual": 0.2})
    table = _compare(results, "plain")
    assert table["p"].isna().all() and not table["significant"].any()
    assert table["wilcoxon_p"].isna().all()
    assert (table["note"] == "only 5 paired cases: too few for a test").all()


def test_friedman_matches_scipy():
    results = synthetic_results({"arch": ["a", "b", "c"]}, n_cases=12, effects={"c": 0.02})
    mats = _matrices(results)
    table = stats.friedman(mats)
    m = mats[("tumor", "nsd")]
    expected = sps.friedmanchisquare(m["a"], m["b"], m["c"])
    row = table[(table["target"] == "tumor") & (table["metric"] == "nsd")].iloc[0]
    assert row["p"] == pytest.approx(expected.pvalue) and row["n"] == 12 and row["k"] == 3


def test_ci_covers_true_shift():
    results = synthetic_results(ARCH, n_cases=40, effects={"residual": 0.03}, noise=0.01)
    table = _compare(results, "plain")
    assert ((table["ci_low"] < 0.03) & (table["ci_high"] > 0.03)).all()
    assert (table["ci_low"] > 0).all()  # and excludes no effect


def test_significance_map_direction():
    results = synthetic_results({"arch": ["a", "b", "c"]}, n_cases=20, effects={"c": 0.05})
    sig = stats.significance_map(_matrices(results)[("kidney", "dsc")])
    assert sig.loc["c", "a"] and sig.loc["c", "b"]
    assert not sig.loc["a", "c"] and not sig.loc["a", "b"] and not sig.loc["b", "a"]
    assert not np.diag(sig.to_numpy()).any()
    lower_better = stats.significance_map(_matrices(results)[("kidney", "dsc")], False)
    assert lower_better.loc["a", "c"] and not lower_better.loc["c", "a"]


def test_ranking_and_rank_stability():
    m = pd.DataFrame({"x": [0.9, 0.8, 0.7], "y": [0.5, 0.9, 0.6], "z": [0.1, 0.2, 0.3]})
    # per-case ranks: x 1,2,1 ; y 2,1,2 ; z 3,3,3
    ranking = stats.rank_then_aggregate(m)
    assert list(ranking["variant"]) == ["x", "y", "z"]
    np.testing.assert_allclose(ranking["mean_rank"], [4 / 3, 5 / 3, 3])
    results = synthetic_results({"arch": ["a", "b", "c"]}, n_cases=30, effects={"c": 0.05})
    freq, tau = stats.rank_stability(
        _matrices(results)[("kidney", "dsc")], np.random.default_rng(0)
    )
    np.testing.assert_allclose(freq.sum(axis=1), 1.0)
    assert freq.loc["c", 1] > 0.95 and tau.shape == (1000,)
    assert np.all((tau >= -1) & (tau <= 1))


def test_kendall_tau_matches_scipy():
    rng = np.random.default_rng(0)
    reference = rng.permutation(7) + 1
    rankings = np.stack([rng.permutation(7) + 1 for _ in range(5)])
    expected = [sps.kendalltau(reference, r).statistic for r in rankings]
    np.testing.assert_allclose(stats._kendall_tau(reference, rankings), expected)


def test_main_effect_recovers_axis_shift():
    axes = {"arch": ["plain", "residual"], "loss": ["dice", "topk"]}
    # seed_sd 0: the generator's per-(variant, seed) shift is one offset for every fold, a small
    # real difference between the loss levels rather than training-run noise
    results = synthetic_results(
        axes, n_cases=40, effects={"residual": 0.03}, noise=0.01, seed_sd=0.0
    )
    table = comparisons.main_effects(
        results.tidy, results.axes, ["dsc"], {}, case_folds(results.tidy)
    )
    arch = table[table["axis"] == "arch"]
    loss = table[table["axis"] == "loss"]
    assert np.allclose(arch["mean_diff"], 0.03, atol=0.008)  # coverage: test_report_calibration
    assert ((loss["ci_low"] < 0) & (loss["ci_high"] > 0)).all()
    assert (arch["reference"] == "plain").all() and (arch["n"] == 40).all()
    assert (arch["p"] < 0.01).all() and (arch["combinations"] == "2 of 2").all()


def test_main_effect_unbalanced_grid_and_none_level():
    """A cell missing for some cases leaves its combination out for every case (no mixed
    contrasts); a None level is a level, not a reason to drop the axis."""
    axes = {"arch": ["plain", "residual"], "post": ["none", "lcc"]}
    results = synthetic_results(axes, n_cases=20, effects={"residual": 0.03}, noise=0.01)
    tidy = results.tidy.copy()
    tidy["post"] = tidy["post"].map({"none": None, "lcc": "lcc"})
    drop = (tidy["variant"] == "residual / lcc") & (tidy["case"] == "case_00003")
    tidy = tidy[~drop]
    table = comparisons.main_effects(
        tidy, ["arch", "post"], ["dsc"], {"post": None}, case_folds(tidy)
    )
    arch = table[(table["axis"] == "arch") & (table["target"] == "kidney")].iloc[0]
    assert arch["combinations"] == "1 of 2" and arch["n"] == 20
    post = table[table["axis"] == "post"]
    assert set(post["reference"]) == {"None"} and set(post["level"]) == {"lcc"}


def test_seed_spread_beside_variant_spread():
    results = synthetic_results(ARCH, n_cases=20, seeds=(0, 1, 2), effects={"residual": 0.05})
    table = stats.seed_spread(results.tidy, ["dsc"])
    assert (table["n_seeds"] == 3).all()
    assert (table["sd_between_variants"] > table["sd_between_seeds"]).all()
    assert stats.seed_spread(synthetic_results(ARCH).tidy, ["dsc"]).empty


def test_pareto_front_and_composite_dice():
    front = stats.pareto_front([1.0, 2.0, 3.0, 2.0], [0.5, 0.7, 0.6, 0.4])
    assert list(front) == [True, True, False, False]
    tidy = pd.DataFrame(
        {
            "variant": "v",
            "seed": 0,
            "case": ["c1", "c1", "c2", "c2"],
            "target": ["kidney", "tumor"] * 2,
            "metric": "dsc",
            "value": [0.9, 0.5, 1.0, 0.8],
        }
    )
    out = composite_dice(tidy).sort_values("case")
    np.testing.assert_allclose(out["value"], [0.7, 0.9])
    assert composite_dice(tidy[tidy["target"] == "kidney"]).empty


def test_friedman_says_why_when_every_case_ties():
    import pandas as pd

    from ablate.report.stats import friedman

    tied = pd.DataFrame({"a": [1.0] * 8, "b": [1.0] * 8, "c": [1.0] * 8})
    out = friedman({("tumor", "dsc"): tied})
    assert out.loc[0, "note"] == "every case ties across variants: no ranking to test"
    assert np.isnan(out.loc[0, "p"])


def test_wilcoxon_zeros_dropped_exact_and_minimum_non_zero_pairs():
    """Issue: 15 zeros + 5 positives gave p = 0.043 (normal approximation); exact is 0.0625, and
    5 non-zero pairs are fewer than the minimum."""
    assert np.isnan(stats.wilcoxon_p(np.array([0.0] * 15 + [1, 2, 3, 4, 5]))[0])
    six = np.array([0.0] * 15 + [1, 2, 3, 4, 5, 6])
    assert stats.wilcoxon_p(six)[0] == pytest.approx(0.03125)  # 2 / 2^6, exact
    tied = np.array([1, 1, 2, 2, 3, -1, 4.0, 5])
    permutation = sps.wilcoxon(tied, method=sps.PermutationMethod(n_resamples=np.inf)).pvalue
    assert stats.wilcoxon_p(tied)[0] == pytest.approx(permutation)
    rng = np.random.default_rng(0)
    for n in (6, 13, 40):
        d = rng.normal(0.3, 1, (3, n))
        for alt in ("two-sided", "greater", "less"):
            expected = [sps.wilcoxon(x, alternative=alt, method="exact").pvalue for x in d]
            np.testing.assert_allclose(stats.wilcoxon_p(d, alt), expected)
    rounded = np.round(rng.normal(0.1, 1, (4, 80)), 1)  # ties and zeros above the exact range
    expected = [sps.wilcoxon(x[x != 0], method="approx").pvalue for x in rounded]
    np.testing.assert_allclose(stats.wilcoxon_p(rounded), expected)


def test_configuration_level_uses_fold_models_and_inference_only_uses_cases():
    """A run offset per fold model (sd 3 points) with no real difference: the interval holds the
    run variance (rates: test_report_calibration)."""
    results = synthetic_results(ARCH, n_cases=100, run_sd=0.03, noise=0.01, rng_seed=4)
    table = _compare(results, "plain")
    assert (table["unit"] == "fold models").all() and (table["df"] == 4).all()
    assert ((table["ci_high"] - table["ci_low"]) > 0.02).all()
    same = comparisons.compare_to_baseline(
        _matrices(results), "plain", case_folds(results.tidy), {"residual": True}
    )
    assert (same["unit"] == "cases").all() and (same["kind"] == "inference-only").all()
    assert (same["df"] == 99).all()


def test_too_few_fold_models_says_so():
    results = synthetic_results(ARCH, n_cases=20, folds=2)
    table = _compare(results, "plain")
    assert table["p"].isna().all() and not table["significant"].any()
    assert table["note"].str.contains("only 2 fold model\\(s\\) x 1 seed\\(s\\)").all()
    assert table["note"].str.contains("run at least 3 seeds").all()
    assert table["wilcoxon_p"].notna().all()  # the case-level test still speaks for the models


def test_with_few_folds_three_seeds_are_the_training_runs():
    results = synthetic_results(ARCH, n_cases=20, folds=2, seeds=(0, 1, 2), run_sd=0.01)
    tidy = results.tidy
    from ablate.report.analysis import seed_matrices

    table = comparisons.compare_to_baseline(
        _matrices(results),
        "plain",
        case_folds(tidy),
        n_seeds=3,
        seed_values=seed_matrices(tidy, ["dsc", "nsd"]),
    )
    assert (table["unit"] == "seeds").all() and (table["df"] == 2).all()
    assert (table["note"] == "").all() and table["p"].notna().all()
    m = _matrices(results)[("kidney", "dsc")]
    assert table["mean_diff"].iat[0] == pytest.approx((m["residual"] - m["plain"]).mean())


def test_no_variance_means_no_test():
    from ablate.report.paired import cases_needed, noninferiority, paired_mean

    same = paired_mean(np.full(12, 0.01), np.arange(12) % 3)
    assert np.isnan(same["p"]) and same["ci_low"] == same["ci_high"] == pytest.approx(0.01)
    assert paired_mean(np.zeros(12), np.arange(12) % 3)["p"] == 1.0
    assert np.isnan(noninferiority(0.0, 0.0, 2, 0.01, True)["p"])
    assert cases_needed(np.zeros(10), 0.01) is None
