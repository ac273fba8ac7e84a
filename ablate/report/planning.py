"""Power planning for a study not yet run, from a finished pilot's variances (`ablate validate
--power-from`).

The report's headline test compares two trained configurations on fold clusters
(ablate.report.paired): with K fold models per seed, S seeds averaged per case and m cases per
fold, the mean paired difference has variance (run / S + within / m) / K on K - 1 degrees of
freedom, where `run` is the variance one training run (fold model) adds to a fold's mean
difference and `within` the variance of paired differences between cases of a fold. A pilot gives
both (`paired.variance_components` on its seed-averaged differences; the run share is scaled back
to one seed). Inference-only comparisons (TTA, postprocessing) share their trained models and are
tested case by case: variance `sd^2 / n` on n - 1 degrees of freedom. The minimum detectable
difference is the report's own (`paired.minimum_detectable`). As in the report, the case scatter is
taken as measured: it is not assumed to shrink with more seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.errors import DataError
from ablate.report.analysis import REPORT_METRICS, case_folds, inference_only_variants, report_rows
from ablate.report.collect import Results, variant_order
from ablate.report.paired import MIN_RUNS, NO_VARIANCE, minimum_detectable, variance_components
from ablate.report.stats import case_matrices
from ablate.report.tables import diff_text, diff_unit, metric_label

POWER = 0.8
ALPHA = 0.05
MAX_SEEDS = 20
MAX_CASES = 5000

TRAINING = "training"
INFERENCE = "inference-only"


@dataclass(frozen=True)
class Design:
    """The planned study's size: cross-validation cases scored, fold models per seed, seeds."""

    cases: int
    folds: int
    seeds: int


@dataclass(frozen=True)
class PilotVariance:
    """One (target, metric, kind) of a pilot: the variances its comparisons share.

    within: variance of paired differences between cases (inside a fold for the training kind);
    run: variance one training run (one seed) adds to a fold's mean difference, NaN for the
    inference-only kind. Both are means over the pilot's `comparisons` of that kind."""

    target: str
    metric: str
    kind: str
    within: float
    run: float
    comparisons: int
    cases: int
    folds: int
    seeds: int


@dataclass(frozen=True)
class PowerPlan:
    """What the planned design detects for one (target, metric, kind)."""

    pilot: PilotVariance
    design: Design
    mdd: float  # minimum detectable difference at POWER, two-sided ALPHA
    detect: float | None  # the stated difference, if any
    seeds_needed: int | None  # seeds (planned cases) for `detect`; None: none up to MAX_SEEDS
    cases_needed: int | None  # cases (planned seeds) for `detect`; None: none up to MAX_CASES


def pilot_variances(results: Results, reference: str | None = None) -> list[PilotVariance]:
    """Variance components of a finished study's paired differences, pooled per target, metric
    and kind over its comparisons with `reference` (its baseline; default the first variant).

    Any reference serves: under the random-effects model each training run's offset is its own,
    so every difference of two trained configurations carries the same run variance. A pilot of
    one variant with two or more seeds compares seed 1 with seed 0 (two runs of one
    configuration: its differences hold exactly the run and case variances)."""
    tidy = report_rows(results.tidy)
    metrics = [m for m in REPORT_METRICS if (tidy["metric"] == m).any()]
    if not metrics:
        raise DataError("pilot results: no dsc, nsd, hd95, assd or rvd rows to estimate from")
    order = variant_order(results, reference)
    reference = order[0]
    folds = case_folds(tidy)
    seeds = int(tidy["seed"].nunique())
    if len(order) == 1:
        return _seed_pair_variances(tidy, metrics, folds)
    same_models = inference_only_variants(results, reference)
    out = []
    for (target, metric), m in case_matrices(tidy, metrics).items():
        parts: dict[str, list[tuple[float, float]]] = {TRAINING: [], INFERENCE: []}
        for variant in order[1:]:
            if variant not in m or reference not in m:
                continue
            d = (m[variant] - m[reference]).dropna()
            kind = INFERENCE if same_models.get(variant, False) else TRAINING
            parts[kind].append(_components(d, folds, kind, seeds))
        for kind, comps in parts.items():
            comps = [c for c in comps if np.isfinite(c[0])]
            if comps:
                out.append(_pooled(target, metric, kind, comps, m, folds, seeds))
    return out


def _components(d: pd.Series, folds: pd.Series | None, kind: str, seeds: int):
    """(within, run for one seed) of one comparison's per-case differences."""
    if kind == INFERENCE:
        return (float(d.var(ddof=1)) if d.size > 1 else np.nan), np.nan
    if folds is None:
        return np.nan, np.nan
    groups = folds.reindex(d.index).to_numpy()
    if np.unique(groups).size < 2:
        return np.nan, np.nan
    within, run, _ = variance_components(d.to_numpy(dtype=float), groups)
    return within, run * seeds  # seeds were averaged per case: one run's share is S times


def _pooled(target, metric, kind, comps, m, folds, seeds) -> PilotVariance:
    within = float(np.mean([c[0] for c in comps]))
    runs = [c[1] for c in comps if np.isfinite(c[1])]
    return PilotVariance(
        target=target,
        metric=metric,
        kind=kind,
        within=within,
        run=float(np.mean(runs)) if runs else np.nan,
        comparisons=len(comps),
        cases=int(m.notna().any(axis=1).sum()),
        folds=0 if folds is None else int(folds.nunique()),
        seeds=seeds,
    )


def _seed_pair_variances(tidy: pd.DataFrame, metrics, folds) -> list[PilotVariance]:
    seed_ids = sorted(pd.unique(tidy["seed"]))
    if len(seed_ids) < 2:
        raise DataError(
            "pilot results: one variant and one seed hold no paired differences; plan from a "
            "pilot with two or more variants or seeds"
        )
    sub = tidy[tidy["metric"].isin(metrics) & tidy["seed"].isin(seed_ids[:2])]
    wide = sub.groupby(["target", "metric", "case", "seed"])["value"].mean().unstack("seed")
    out = []
    for (target, metric), m in wide.groupby(level=[0, 1], sort=False):
        m = m.droplevel([0, 1])
        d = (m[seed_ids[1]] - m[seed_ids[0]]).dropna()
        within, run = _components(d, folds, TRAINING, 1)
        if np.isfinite(within):
            pair = pd.DataFrame({"a": m[seed_ids[0]], "b": m[seed_ids[1]]})
            out.append(_pooled(target, metric, TRAINING, [(within, run)], pair, folds, 1))
    return out


def standard_error(pilot: PilotVariance, design: Design) -> tuple[float, int]:
    """(se, df) of the planned study's headline test for this kind of comparison."""
    if pilot.kind == INFERENCE:
        return math.sqrt(pilot.within / design.cases), design.cases - 1
    per_fold = design.cases / design.folds
    run = 0.0 if not np.isfinite(pilot.run) else pilot.run
    var = (run / design.seeds + pilot.within / per_fold) / design.folds
    return math.sqrt(var), design.folds - 1


def _smallest(pilot: PilotVariance, designs, difference: float):
    """The first design (of an increasing sequence) whose MDD reaches `difference`, or None."""
    for design in designs:
        se, df = standard_error(pilot, design)
        if minimum_detectable(se, df, ALPHA, POWER) <= abs(difference):
            return design
    return None


def plan_power(pilot: PilotVariance, design: Design, detect: float | None = None) -> PowerPlan:
    """The planned design's minimum detectable difference, and the seeds or cases it would need
    to detect `detect` (seeds only for training comparisons: seeds do not change the models an
    inference-only comparison shares)."""
    se, df = standard_error(pilot, design)
    seeds = cases = None
    if detect:
        step = design.folds if pilot.kind == TRAINING else 1
        start = max(2 * design.folds, MIN_RUNS) if pilot.kind == TRAINING else MIN_RUNS
        more_cases = (_with(design, cases=n) for n in range(start, MAX_CASES + 1, step))
        found = _smallest(pilot, more_cases, detect)
        cases = found.cases if found else None
        if pilot.kind == TRAINING:
            more_seeds = (_with(design, seeds=s) for s in range(1, MAX_SEEDS + 1))
            found = _smallest(pilot, more_seeds, detect)
            seeds = found.seeds if found else None
    return PowerPlan(pilot, design, minimum_detectable(se, df, ALPHA, POWER), detect, seeds, cases)


def _with(design: Design, **changes) -> Design:
    return Design(**{**design.__dict__, **changes})


def plan_study(
    pilots: list[PilotVariance],
    design: Design,
    kinds: set[str],
    detect: dict[str, float] | None = None,
) -> list[PowerPlan]:
    """A PowerPlan per pilot (target, metric) for each kind of comparison the planned study has."""
    detect = detect or {}
    return [plan_power(p, design, detect.get(p.metric)) for p in pilots if p.kind in kinds]


def planning_text(
    plans: list[PowerPlan],
    pilot_name: str,
    design: Design,
    kinds: set[str],
    pilots: list[PilotVariance],
) -> list[str]:
    """The lines `ablate validate --power-from` prints: a heading with both designs, a line per
    kind the pilot cannot estimate, then one per target, metric and kind."""
    first = pilots[0] if pilots else None
    head = (
        f"Power from pilot {pilot_name}"
        + (
            f" ({first.cases} cases, {first.folds} fold models x {first.seeds} seed(s))"
            if first
            else ""
        )
        + f" for this study ({design.cases} cases, {design.folds} fold models x "
        f"{design.seeds} seed(s)); two-sided alpha {ALPHA}, {POWER:.0%} power:"
    )
    lines = [head]
    if not kinds:
        lines.append("  this study has no axes: no comparison with a baseline to plan")
    for kind in sorted(kinds):
        if not any(p.kind == kind for p in pilots):
            lines.append(f"  {kind} comparisons: none in the pilot to estimate their variance")
    for plan in plans:
        lines.append("  " + _plan_line(plan))
    return lines


def _plan_line(plan: PowerPlan) -> str:
    p, metric = plan.pilot, plan.pilot.metric
    unit = diff_unit(metric)

    def size(x: float) -> str:
        return f"{diff_text(x, metric, 2).lstrip('+')} {unit}"

    name = f"{p.target} {metric_label(metric)}, {p.kind} comparisons"
    run = p.run if np.isfinite(p.run) else 0.0
    if p.within + run < NO_VARIANCE**2:
        return f"{name}: every paired difference of the pilot is the same; nothing to plan from."
    if p.kind == TRAINING:
        source = (
            f"pilot run sd {size(math.sqrt(run))} from {p.folds} fold models x {p.seeds} "
            f"seed(s), case sd {size(math.sqrt(p.within))}"
        )
        level = "configuration level"
    else:
        source = f"pilot case sd {size(math.sqrt(p.within))}"
        level = "case level, the same trained models"
    text = (
        f"{name} ({level}; {source}; {p.comparisons} comparison(s)): minimum detectable "
        f"difference {size(plan.mdd)}"
    )
    if plan.detect:
        text += f"; to detect {size(plan.detect)}: " + _needed(plan)
    return text + "."


def _needed(plan: PowerPlan) -> str:
    if plan.pilot.kind == INFERENCE:
        return f"{plan.cases_needed} cases" if plan.cases_needed else f"over {MAX_CASES} cases"
    options = []
    if plan.seeds_needed:
        options.append(f"{plan.seeds_needed} seed(s) with {plan.design.cases} cases")
    if plan.cases_needed:
        options.append(f"{plan.cases_needed} cases with {plan.design.seeds} seed(s)")
    return ", or ".join(options) if options else "more seeds and more cases together"


def study_design(study, cases: int | None = None) -> Design:
    """The planned study's Design: its cross-validation cases (`cases`, else counted from its
    dataset without writing anything), the fold models it trains per seed, its seeds."""
    runs = len(study.folds.run) if study.folds.run else study.folds.k
    total = cross_validation_cases(study) if cases is None else cases
    scored = round(total * runs / study.folds.k)  # only the validation cases of folds that run
    if scored < MIN_RUNS or runs < 1:
        raise DataError(
            f"study {study.name}: {scored} cross-validation cases scored; power planning needs "
            f"at least {MIN_RUNS}"
        )
    return Design(cases=scored, folds=runs, seeds=len(study.seeds))


def cross_validation_cases(study) -> int:
    """Cases of the study's dataset left for cross-validation (its held-out cases removed)."""
    spec = study.dataset
    holdout = spec.test.holdout if spec.test is not None and spec.test.holdout else 0
    if spec.synthetic is not None:
        total = spec.synthetic.cases
    else:
        from ablate.data.formats import read_dataset

        fmt = None if spec.format == "auto" else spec.format
        total = len(read_dataset(spec.path, fmt, spec.labels).cases)
    return total - holdout


def comparison_kinds(study) -> set[str]:
    """The kinds of comparison with the baseline the study's grid makes: training (a training
    axis, an ensemble or an external folder differs) and inference-only (an `infer.` axis)."""
    from ablate.report.comparisons import inference_axis

    kinds = {INFERENCE if inference_axis(axis) else TRAINING for axis in study.axes}
    if study.ensembles or study.external:
        kinds.add(TRAINING)
    return kinds
