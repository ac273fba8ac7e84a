"""Power planning from a pilot (ablate.report.planning), checked by simulation: pilots drawn with
known variance components, the planned study simulated at the predicted minimum detectable
difference and tested as the report tests it."""

import numpy as np
import pandas as pd
import pytest

from ablate.errors import DataError
from ablate.report.collect import Results
from ablate.report.paired import cluster_mean_rows, t_test_rows
from ablate.report.planning import (
    INFERENCE,
    TRAINING,
    Design,
    PilotVariance,
    pilot_variances,
    plan_power,
    plan_study,
    planning_text,
)

RUN_SD = 0.01  # one training run's offset (fold model x seed), 1 DSC point
CASE_SD = 0.02  # a case's configuration-specific deviation (kept across seeds)
TRAIN = ["nnunet", "none"]  # train.deep_supervision
TTA = [1, 2]  # infer.tta


def _pilot(rng, cases=60, folds=5, seeds=2, shift=0.0) -> Results:
    """A 2 x 2 study (deep supervision x TTA) under value = case + run(training variant, fold,
    seed) + case x variant deviation; TTA reuses its training variant's runs (same models)."""
    case_ids = [f"c{i:03d}" for i in range(cases)]
    fold_of = np.arange(cases) % folds
    base = rng.normal(0.85, 0.05, cases)
    runs = {t: rng.normal(0, RUN_SD, (seeds, folds)) for t in TRAIN}
    rows = []
    for ds in TRAIN:
        for tta in TTA:
            own = rng.normal(0, CASE_SD, cases)
            effect = shift if (ds, tta) != (TRAIN[0], TTA[0]) else 0.0
            for seed in range(seeds):
                value = base + effect + runs[ds][seed, fold_of] + own
                rows.append(
                    pd.DataFrame(
                        {
                            "variant": f"ds={ds} · tta={tta}",
                            "train.deep_supervision": ds,
                            "infer.tta": tta,
                            "fold": fold_of,
                            "seed": seed,
                            "case": case_ids,
                            "target": "kidney",
                            "metric": "dsc",
                            "value": value,
                        }
                    )
                )
    tidy = pd.concat(rows, ignore_index=True)
    return Results(tidy, pd.DataFrame(), pd.DataFrame(), ["train.deep_supervision", "infer.tta"])


def _truth(kind: str) -> PilotVariance:
    run = 2 * RUN_SD**2 if kind == TRAINING else np.nan
    return PilotVariance("kidney", "dsc", kind, 2 * CASE_SD**2, run, 1, 0, 5, 1)


def _simulated_power(rng, kind: str, design: Design, difference: float, n_sim=4000) -> float:
    """The planned study, simulated n_sim times with a true paired difference `difference`, and
    tested as the report does: fold clusters for training, cases for inference-only."""
    n, k, s = design.cases, design.folds, design.seeds
    fold_of = np.arange(n) % k
    case_part = rng.normal(0, np.sqrt(2) * CASE_SD, (n_sim, n))
    if kind == TRAINING:
        runs = rng.normal(0, np.sqrt(2) * RUN_SD, (n_sim, s, k)).mean(axis=1)  # seeds averaged
        d = difference + runs[:, fold_of] + case_part
        mean, se, df = cluster_mean_rows(d, fold_of)
    else:
        d = difference + case_part
        mean, se, df = cluster_mean_rows(d, np.arange(n))
    return float((t_test_rows(mean, se, df) < 0.05).mean())


@pytest.mark.parametrize(
    "kind, design, expected",
    [
        (TRAINING, Design(cases=40, folds=5, seeds=1), 0.79),
        (TRAINING, Design(cases=100, folds=5, seeds=3), 0.79),
        # 3 fold models, 2 df: the report's (t + t) * se formula is short of the exact noncentral
        # t answer by 5%, which leaves 76.6% power
        (TRAINING, Design(cases=30, folds=3, seeds=2), 0.766),
        (INFERENCE, Design(cases=20, folds=5, seeds=1), 0.80),
    ],
)
def test_predicted_mdd_has_80_percent_power_in_simulation(kind, design, expected):
    rng = np.random.default_rng(1)
    plan = plan_power(_truth(kind), design)
    power = _simulated_power(rng, kind, design, plan.mdd)
    assert abs(power - expected) < 0.02  # MC sd at 4000 simulations: 0.0065
    # and half the difference is detected far less often
    assert _simulated_power(rng, kind, design, plan.mdd / 2) < 0.45


def test_seeds_and_cases_needed_reach_the_stated_difference_and_no_fewer_do():
    truth, design = _truth(TRAINING), Design(cases=40, folds=5, seeds=1)
    plan = plan_power(truth, design, detect=0.025)
    assert plan.mdd > 0.025 and plan.seeds_needed == 2 and plan.cases_needed == 155
    rng = np.random.default_rng(2)
    assert _simulated_power(rng, TRAINING, Design(40, 5, 2), 0.025) >= 0.78
    assert _simulated_power(rng, TRAINING, Design(155, 5, 1), 0.025) >= 0.78
    assert plan_power(truth, Design(150, 5, 1)).mdd > 0.025
    # one seed's run variance does not shrink with cases: 2 points need seeds, 1.2 need both
    assert plan_power(truth, design, detect=0.02).cases_needed is None
    assert plan_power(truth, design, detect=0.02).seeds_needed == 5
    both = plan_power(truth, design, detect=0.012)
    assert both.seeds_needed is None and both.cases_needed is None


def test_pilot_estimates_are_unbiased_over_pilots():
    rng = np.random.default_rng(3)
    found = {TRAINING: [], INFERENCE: []}
    for _ in range(60):
        for p in pilot_variances(_pilot(rng), reference="ds=nnunet · tta=1"):
            found[p.kind].append((p.within, p.run))
    train = np.array(found[TRAINING])
    infer = np.array(found[INFERENCE])
    assert train.shape == (60, 2) and infer.shape == (60, 2)
    assert train[:, 0].mean() == pytest.approx(2 * CASE_SD**2, rel=0.05)
    assert train[:, 1].mean() == pytest.approx(2 * RUN_SD**2, rel=0.2)
    assert infer[:, 0].mean() == pytest.approx(2 * CASE_SD**2, rel=0.05)
    assert np.isnan(infer[:, 1]).all()


def test_power_from_a_drawn_pilot_holds_in_the_planned_study():
    """End to end: one large pilot's estimates give the planned study about 80% power."""
    rng = np.random.default_rng(4)
    pilots = pilot_variances(_pilot(rng, cases=200, folds=10, seeds=3))
    design = Design(cases=60, folds=5, seeds=2)
    plans = {p.pilot.kind: p for p in plan_study(pilots, design, {TRAINING, INFERENCE})}
    for kind, plan in plans.items():
        power = _simulated_power(rng, kind, design, plan.mdd)
        assert 0.65 < power < 0.92, (kind, power)


def test_a_real_shift_in_the_pilot_does_not_inflate_its_variances():
    rng = np.random.default_rng(5)
    null = pilot_variances(_pilot(rng, cases=200, folds=10))
    rng = np.random.default_rng(5)
    shifted = pilot_variances(_pilot(rng, cases=200, folds=10, shift=0.03))
    for a, b in zip(null, shifted, strict=True):
        assert a.kind == b.kind
        assert a.within == pytest.approx(b.within) and a.run == pytest.approx(b.run, nan_ok=True)


def test_one_variant_with_two_seeds_plans_from_the_seed_pair():
    rng = np.random.default_rng(6)
    results = _pilot(rng, cases=100, folds=5, seeds=2)
    one = results.tidy[results.tidy["variant"] == "ds=nnunet · tta=1"]
    pilots = pilot_variances(Results(one, pd.DataFrame(), pd.DataFrame(), results.axes))
    assert [p.kind for p in pilots] == [TRAINING] and pilots[0].seeds == 1
    assert pilots[0].run > 0  # two seeds' runs differ; their case deviations are shared
    with pytest.raises(DataError, match="one variant and one seed hold no paired differences"):
        single = one[one["seed"] == 0]
        pilot_variances(Results(single, pd.DataFrame(), pd.DataFrame(), results.axes))


def test_planning_text_names_designs_kinds_and_needs():
    rng = np.random.default_rng(7)
    pilots = pilot_variances(_pilot(rng))
    design = Design(cases=40, folds=5, seeds=1)
    plans = plan_study(pilots, design, {TRAINING}, {"dsc": 0.01})
    lines = planning_text(plans, "pilot", design, {TRAINING}, pilots)
    assert lines[0].startswith("Power from pilot pilot (60 cases, 5 fold models x 2 seed(s))")
    assert "this study (40 cases, 5 fold models x 1 seed(s))" in lines[0]
    assert len(lines) == 2 and "kidney DSC, training comparisons (configuration level" in lines[1]
    assert "minimum detectable difference" in lines[1] and "to detect 1.00 points:" in lines[1]
    # a planned kind the pilot cannot estimate is said so
    tta_only = [p for p in pilots if p.kind == INFERENCE]
    lines = planning_text([], "pilot", design, {TRAINING}, tta_only)
    assert "training comparisons: none in the pilot to estimate their variance" in lines[1]
