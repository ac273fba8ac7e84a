"""The report in words: the summary's lines and the Methods text, from the analysis. Each line
states the number its verdict rests on (mean paired difference, its interval, the Holm-adjusted
p of the same test) and labels any other estimate (a median belongs to the case-level Wilcoxon).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.analysis import Analysis
from ablate.report.headline import collapsed_comparisons, collapsed_keys
from ablate.report.held_out import held_out_summary
from ablate.report.paired import MIN_RUNS, NO_VARIANCE
from ablate.report.stats import HIGHER_IS_BETTER, MIN_PAIRS
from ablate.report.tables import (
    LEVELS,
    diff_text,
    diff_unit,
    format_p,
    metric_label,
    metric_unit,
    value_text,
)


def summary_lines(a: Analysis, max_lines: int = 12) -> list[str]:
    """Plain-words summary: study size, best variant per target (on the cases every variant has),
    the comparisons with the baseline (mean paired difference, its CI and the verdict of the same
    test), non-inferiority of cheaper variants."""
    n_cases = max(len(m) for m in a.matrices.values())
    targets = list(pd.unique(a.describe["target"]))
    runs = (
        f"{a.n_folds} fold model(s) x {a.n_seeds} seed(s) = {a.n_folds * a.n_seeds} "
        "training runs per trained variant"
        if a.n_folds
        else f"{a.n_seeds} seed(s)"
    )
    lines = [
        f"{len(a.order)} variants, {n_cases} cases, targets {', '.join(targets)}, {runs}; "
        f"baseline: {a.baseline}."
    ]
    collapsed = collapsed_comparisons(a)
    skip = collapsed_keys(a, collapsed)
    lines += [c.text() + "." for c in collapsed]
    lines += _best_lines(a, skip)
    compare = a.compare
    if not compare.empty:
        keep = [k not in skip for k in zip(compare["target"], compare["metric"], strict=True)]
        compare = compare[keep]
    rows = (
        compare.assign(_m=compare["metric"].map({m: i for i, m in enumerate(a.metrics)}))
        .sort_values(["_m", "significant", "p_holm"], ascending=[True, False, True])
        .drop(columns="_m")
        if not compare.empty
        else compare
    )
    for r in rows.head(max_lines).itertuples(index=False):
        lines.append(_compare_line(r))
    if len(rows) > max_lines:
        lines.append(f"... and {len(rows) - max_lines} more comparisons under Statistics.")
    ni = a.noninferiority
    if not ni.empty:  # the first metric's lines; the rest under Statistics
        keep = np.array([k not in skip for k in zip(ni["target"], ni["metric"], strict=True)])
        shown = ni[(ni["metric"] == a.metrics[0]) & keep].head(max_lines)
        lines += [_noninferiority_line(r) for r in shown.itertuples(index=False)]
        if int(keep.sum()) > len(shown):  # collapsed targets and metrics are not counted
            lines.append(
                f"... and {int(keep.sum()) - len(shown)} more non-inferiority tests under "
                "Statistics."
            )
    if a.held_out is not None:
        lines += held_out_summary(a.held_out, a.metrics[0])
    if a.missing:
        lines.append(f"{len(a.missing)} job(s) have no results; see Methods.")
    return lines


def _best_lines(a: Analysis, skip: set[tuple[str, str]] = frozenset()) -> list[str]:
    metric = a.metrics[0]
    lines = []
    first = a.common[(a.common["metric"] == metric) & (a.common["target"] != "composite")]
    for target, part in first.groupby("target", sort=False):
        if (target, metric) in skip:
            continue
        values = part["common_mean"] if HIGHER_IS_BETTER[metric] else -part["common_mean"]
        if values.isna().all():
            continue
        best = part.loc[values.idxmax()]
        absent = [f"{v} {n}" for v, n in zip(part["variant"], part["absent"], strict=True) if n]
        tied = part.loc[(values.max() - values).abs() < NO_VARIANCE, "variant"].tolist()
        who = best["variant"] if len(tied) == 1 else f"tied, {', '.join(map(str, tied))}"
        text = (
            f"Best mean {metric_label(metric)} on {target} over the {best['n_common']} cases "
            f"every variant has: {who} "
            f"({value_text(best['common_mean'], metric)}"
            f"{'%' if metric_unit(metric) == '%' else ' mm'})"
        )
        if absent:
            text += f"; absent cases: {', '.join(absent)}"
        lines.append(text + ".")
    comp = a.common[a.common["target"] == "composite"]
    if not comp.empty and comp["common_mean"].notna().any():
        best = comp.loc[comp["common_mean"].idxmax()]
        lines.append(
            f"Best composite Dice over the {best['n_common']} cases every variant has: "
            f"{best['variant']} ({100 * best['common_mean']:.1f}%)."
        )
    return lines


def _compare_line(r) -> str:
    unit = diff_unit(r.metric)
    head = f"{r.variant} vs {r.baseline}, {r.target} {metric_label(r.metric)} ({r.kind})"
    if r.n < MIN_PAIRS:
        return f"{head}: only {r.n} paired cases, too few for a test."
    level = LEVELS.get(r.unit, "case level")
    text = f"{head}: mean paired difference {diff_text(r.mean_diff, r.metric, 1)} {unit}"
    if r.note:
        text += f"; {r.note}"
    else:
        verdict = (
            ("significantly " + ("better" if r.better else "worse"))
            if r.significant
            else "not significant"
        )
        text += (
            f", 95% CI [{diff_text(r.ci_low, r.metric, 1)}, "
            f"{diff_text(r.ci_high, r.metric, 1)}] (unadjusted), "
            f"{format_p(r.p_holm, prefix=True)} after Holm ({level}, family "
            f"H-{r.metric.upper()}): {verdict}"
        )
    plan = _planning_text(r)
    if plan:
        text += f"; {plan}"
    if not np.isnan(r.wilcoxon_p_holm):
        differ = "differ" if r.wilcoxon_significant else "no difference shown"
        text += (
            f". Case level, these trained models: Wilcoxon "
            f"{format_p(r.wilcoxon_p_holm, prefix=True)} after Holm ({differ}), median "
            f"paired difference {diff_text(r.median_diff, r.metric, 1)} {unit}"
        )
    return text + "."


def _planning_text(r) -> str:
    """Seeds or cases the headline test would need to detect the study's stated difference (its
    non-inferiority margin) with 80% power; empty when none is stated or the row is significant."""
    detect = getattr(r, "detect", np.nan)
    if pd.isna(detect) or r.significant or r.note or not r.se >= NO_VARIANCE:
        return ""
    size = f"{diff_text(detect, r.metric, 1).lstrip('+')} {diff_unit(r.metric)}"
    seeds, cases = getattr(r, "seeds_needed", None), getattr(r, "cases_needed", None)
    seeds = None if seeds is None or pd.isna(seeds) else int(seeds)
    cases = None if cases is None or pd.isna(cases) else int(cases)
    if r.unit != "fold models":
        return f"to detect {size} with 80% power: {cases} paired cases" if cases else ""
    options = []
    if seeds:
        options.append(f"{seeds} seed(s) per fold on these cases")
    if cases:
        options.append(f"{cases} cases with the present seeds")
    if not options:
        return f"detecting {size} with 80% power needs more seeds and more cases together"
    return f"to detect {size} with 80% power: " + ", or ".join(options)


def _noninferiority_line(r) -> str:
    unit = diff_unit(r.metric)
    margin = f"{diff_text(r.margin, r.metric, 1).lstrip('+')} {unit}"
    parts = []
    sec = getattr(r, "infer_seconds_per_case_saved", np.nan)
    ref = getattr(r, "infer_seconds_per_case_ref", np.nan)
    if pd.notna(sec) and sec > 0 and pd.notna(ref) and ref > 0:
        parts.append(f"saves {sec:.2g} s of inference per case, {100 * sec / ref:.0f}%")
    mem = getattr(r, "peak_infer_memory_mb_saved", np.nan)
    if pd.notna(mem) and mem > 0:
        parts.append(f"{mem:,.0f} MB less inference memory")
    params = getattr(r, "parameters_saved", np.nan)
    if pd.notna(params) and params > 0:
        parts.append(f"{params / 1e6:.2f} M fewer parameters")
    saved = f" ({'; '.join(parts)})" if parts else ""
    head = (
        f"Non-inferiority, {r.target} {metric_label(r.metric)}: {r.candidate}{saved} vs "
        f"{r.reference}"
    )
    if r.note or np.isnan(r.p):
        return f"{head}: no test ({r.note or 'too few pairs'})."
    numbers = (
        f"mean difference {diff_text(r.mean_diff, r.metric, 1)} {unit}, one-sided 95% "
        f"bound {diff_text(r.bound, r.metric, 1)} {unit} (unadjusted), "
        f"{format_p(r.p_holm, prefix=True)} after Holm (family NI-{r.metric.upper()})"
    )
    if r.noninferior:
        return f"{head}: non-inferior within {margin} ({numbers})."
    return f"{head}: cannot claim non-inferiority within {margin} ({numbers})."


def methods_text(a: Analysis) -> list[str]:
    """The statistical methods in words; the Holm families follow as a list."""
    runs = f"{a.n_folds} folds" if a.n_folds else "no fold information"
    margins = (
        ", ".join(
            f"{metric_label(k)} {diff_text(v, k).lstrip('+')} {diff_unit(k)}"
            for k, v in a.margins.items()
        )
        or "none declared"
    )
    return [
        "Unit of analysis: one case; each case lies in one validation fold and a variant's value "
        "for a case is the mean over its seeds. Variants are paired by case on the cases both "
        "have; absent cases are counted per variant, and 'best' and bold use only the cases "
        "every compared variant has.",
        "Configuration level (the headline for variants that train their own models): fold "
        "models and seeds are training runs, and every case a fold model predicts shares its "
        "offset, so the mean paired difference is tested with a cluster-robust t-test whose "
        f"clusters are the folds ({runs}; K - 1 degrees of freedom; with equal folds the paired "
        "t-test on the fold means). Chosen by calibration against the case-level Wilcoxon, a "
        "hierarchical bootstrap over folds and cases and Nadeau and Bengio's corrected t-test "
        "(docs/STATISTICS.md); it does not model the overlap of the folds' training sets. With "
        f"fewer than {MIN_RUNS} folds, {MIN_RUNS} or more seeds are the training runs instead "
        "(t-test over the per-seed mean differences on the common cases, which then stay "
        "fixed); with fewer runs there is no configuration-level verdict and the report says so.",
        "Inference-only variants (differing from the baseline only on infer. axes such as TTA "
        "and postprocessing: the same trained models) and the held-out test set use the cases "
        "as the unit: paired t-test on the mean difference.",
        "Case level (these trained models differ): two-sided paired Wilcoxon signed-rank; zero "
        f"differences dropped, at least {MIN_PAIRS} non-zero pairs, exact permutation p (ties "
        "by midranks) up to 50 non-zero pairs, normal approximation above. The median paired "
        "difference shown with it is labelled as a median.",
        f"Non-inferiority (margins from the study's analysis.noninferiority_margin: {margins}): "
        "one-sided t-test (Schuirmann) of the cheaper variant against the margin, with the "
        "headline's error term; the equivalence p of both one-sided tests is exported.",
        "Intervals beside verdicts are 95% t intervals, not adjusted for multiplicity (labelled "
        "unadjusted); verdicts use Holm-adjusted p at alpha 0.05. p-values print with as many "
        "digits as needed to sit on the same side of 0.05 as the verdict. Ranking: "
        "rank-then-aggregate (challengeR) with missing values ranked last, 1000 case bootstrap "
        "samples, Kendall's tau. Lower is better for HD95, ASSD and |RVD| in every ranking, "
        "bold, 'best', Pareto front and significance map.",
        "Cost is measured per job: seconds on the wall clock (synchronised with the GPU); peak "
        "memory per measured step (the training loop, each step of a case's prediction) from a "
        "reset at its start, so equal numbers mean equal use. On CUDA: the allocator's peak "
        "allocated memory after torch.cuda.reset_peak_memory_stats. On a CPU: the process's "
        "peak resident memory during the step (Linux's VmHWM, reset through "
        "/proc/self/clear_refs) minus its resident memory at the job's start, after garbage "
        "collection and malloc_trim: what the job holds, weights and data included, and "
        "nothing an earlier job of the same worker left.",
        "Holm families (each adjusts only within itself):",
    ]


def planning_lines(a: Analysis) -> list[str]:
    """Power planning from a finished (pilot or previous) study, for `ablate validate`: per
    comparison with the baseline, the minimum detectable difference at 80% power with the
    study's cases and runs, and the seeds or cases that would detect its non-inferiority margin
    (from the study's own variance components)."""
    lines = []
    for r in a.compare.itertuples(index=False):
        if r.note or not r.se >= NO_VARIANCE:
            continue
        unit = diff_unit(r.metric)
        text = (
            f"{r.variant} vs {r.baseline}, {r.target} {metric_label(r.metric)} "
            f"({LEVELS.get(r.unit, 'case level')}, {r.n} cases): minimum detectable difference "
            f"{diff_text(r.mdd, r.metric, 1).lstrip('+')} {unit} at 80% power"
        )
        plan = _planning_text(r._replace(significant=False))
        lines.append(text + (f"; {plan}" if plan else "") + ".")
    return lines
