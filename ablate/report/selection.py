"""The choice nnU-Net makes at the end of a study (Nikbakht's nnU-Net overview): rank the
configurations and the ensembles of pairs of them on cross-validation, as
`nnUNetv2_find_best_configuration` does, name the best, and say how sure the choice is.

nnU-Net's rule (nnunetv2/evaluation/find_best_configuration.py): each candidate's score is the
`foreground_mean` Dice of its cross-validation predictions of every training case: per label
(or region) the mean Dice over cases, a case where reference and prediction are both empty left
out (nnU-Net's Dice is NaN there), then the mean over labels. Candidates are the
configurations in their order, then the ensembles; the highest score wins, the first on a tie.

What nnU-Net does not do and this adds: the winner's paired difference from the runner-up on
the same cases (per case, the mean Dice over its targets), with a 95 % interval and p from the
fold-clustered t test of ablate.report.paired, and the case-level Wilcoxon signed-rank p.
Computes only; rendering is `selection_html`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.report.paired import paired_mean
from ablate.report.stats import wilcoxon_p

BOTH_EMPTY = 3.0  # ablate.evaluate's `empty` flag when reference and prediction are empty


@dataclass(frozen=True)
class Candidate:
    variant: str
    score: float  # nnU-Net's foreground mean Dice on cross-validation
    cases: int
    ensemble: bool  # a study ensemble (no axis values), as nnU-Net's ensembles of pairs


@dataclass(frozen=True)
class Selection:
    ranking: list[Candidate]  # best first; ties keep nnU-Net's candidate order
    winner: str
    runner_up: str | None
    difference: dict  # paired_mean of winner - runner-up per case: mean, ci_low, ci_high, p, n
    wilcoxon_p: float
    tie: bool  # the runner-up scored the same


def case_dice(tidy: pd.DataFrame) -> pd.DataFrame:
    """(case x target) rows per variant of the seed-averaged Dice, NaN where both masks are
    empty (nnU-Net's Dice); columns variant, fold, case, target, dsc."""
    keys = ["variant", "fold", "case", "target"]
    dsc = tidy[tidy["metric"] == "dsc"].groupby(keys, sort=False)["value"].mean()
    empty = tidy[tidy["metric"] == "empty"].groupby(keys, sort=False)["value"].max()
    frame = dsc.rename("dsc").to_frame().join(empty.rename("empty"), how="left")
    frame.loc[frame["empty"] == BOTH_EMPTY, "dsc"] = np.nan
    return frame.reset_index()[[*keys, "dsc"]]


def foreground_mean_dice(per_case: pd.DataFrame) -> float:
    """nnU-Net's summary.json foreground_mean Dice: per target the nan-mean over cases, then
    the mean over targets."""
    per_target = per_case.groupby("target", sort=False)["dsc"].mean()  # skips NaN
    return float(per_target.mean())


def select_configuration(tidy: pd.DataFrame, axes: list[str]) -> Selection | None:
    """Rank every variant of the cross-validation results (cells, then the study's ensembles,
    each in order of appearance) by nnU-Net's rule; None with fewer than two."""
    dice = case_dice(tidy)
    variants = [str(v) for v in pd.unique(dice["variant"])]
    if len(variants) < 2:
        return None
    axis_values = tidy.drop_duplicates("variant").set_index("variant")[axes] if axes else None
    is_ensemble = {
        v: axis_values is not None and bool(axis_values.loc[v].isna().all()) for v in variants
    }
    variants.sort(key=lambda v: is_ensemble[v])  # nnU-Net: configurations, then ensembles
    candidates = []
    for v in variants:
        mine = dice[dice["variant"] == v]
        candidates.append(
            Candidate(v, foreground_mean_dice(mine), mine["case"].nunique(), is_ensemble[v])
        )
    ranking = sorted(candidates, key=lambda c: -c.score if np.isfinite(c.score) else np.inf)
    winner, runner_up = ranking[0], ranking[1]
    d, folds = _paired_case_differences(dice, winner.variant, runner_up.variant)
    return Selection(
        ranking=ranking,
        winner=winner.variant,
        runner_up=runner_up.variant,
        difference=paired_mean(d, folds),
        wilcoxon_p=float(wilcoxon_p(d)[0]),
        tie=winner.score == runner_up.score,
    )


def _paired_case_differences(dice: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Per case present for both, mean Dice over its targets of a minus that of b; the case's
    fold (the cluster of the paired test)."""
    per_case = dice.groupby(["variant", "case"], sort=False).agg(
        dsc=("dsc", "mean"), fold=("fold", "first")
    )
    left, right = per_case.loc[a], per_case.loc[b]
    cases = left.index.intersection(right.index)
    d = (left.loc[cases, "dsc"] - right.loc[cases, "dsc"]).to_numpy(dtype=float)
    return d, left.loc[cases, "fold"].to_numpy()


def selection_lines(s: Selection) -> list[str]:
    """The choice in words: winner, its score, the runner-up and the paired difference."""
    best = s.ranking[0]
    lines = [
        f"nnU-Net's choice (find_best_configuration): {s.winner}, cross-validation "
        f"foreground mean Dice {best.score:.4f} on {best.cases} cases."
    ]
    if s.runner_up is None:
        return lines
    second = s.ranking[1]
    diff = s.difference
    if s.tie:
        lines.append(f"It ties with {s.runner_up}; nnU-Net keeps the first in its order.")
    interval = (
        f"95 % CI {diff['ci_low']:+.4f} to {diff['ci_high']:+.4f}, p {diff['p']:.3g} "
        f"(t test on {diff['clusters']} folds)"
        if np.isfinite(diff["p"])
        else "too few folds for an interval"
    )
    wilcoxon = (
        f"Wilcoxon signed-rank p {s.wilcoxon_p:.3g}"
        if np.isfinite(s.wilcoxon_p)
        else "too few cases for the Wilcoxon test"
    )
    lines.append(
        f"Runner-up {s.runner_up} ({second.score:.4f}): per-case difference "
        f"{diff['mean']:+.4f} Dice ({interval}); {wilcoxon} on {diff['n']} cases."
    )
    significant = np.isfinite(diff["p"]) and diff["p"] < 0.05
    lines.append(
        "The winner is significantly better than the runner-up at 5 %."
        if significant
        else "The data do not show the winner better than the runner-up at 5 %: either would do."
    )
    return lines


def selection_html(s: Selection | None) -> str:
    """The section body: the ranking table and the lines above ('' without a selection)."""
    if s is None:
        return ""
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(c.variant)}</td>"
        f"<td>{'ensemble' if c.ensemble else 'configuration'}</td>"
        f"<td>{c.score:.4f}</td><td>{c.cases}</td></tr>"
        for i, c in enumerate(s.ranking, start=1)
    )
    table = (
        "<table><thead><tr><th>rank</th><th>candidate</th><th>kind</th>"
        "<th>foreground mean Dice (CV)</th><th>cases</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    text = "".join(f"<p>{html.escape(line)}</p>" for line in selection_lines(s))
    return text + table


CONFIGURATION_AXIS = "plan.configuration"


def selection_section(results) -> str:
    """The report's selection section for a study with a `plan.configuration` axis ('' for
    any other study): nnU-Net's choice among its cells and ensembles on cross-validation."""
    if CONFIGURATION_AXIS not in results.axes:
        return ""
    return selection_html(select_configuration(results.tidy, list(results.axes)))
