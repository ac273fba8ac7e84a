"""The report's selection against nnU-Net's find_best_configuration score: the foreground mean
Dice of nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder on the same
predictions (both-empty cases left out), and the ranking rule (configurations, then ensembles;
the first on a tie)."""

from __future__ import annotations

from multiprocessing.pool import ThreadPool
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from nnunetv2.evaluation import evaluate_predictions
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from ablate.evaluate import evaluate_case
from ablate.imageio import Geometry, write_image
from ablate.report.selection import (
    case_dice,
    foreground_mean_dice,
    select_configuration,
    selection_html,
    selection_lines,
)

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
SPACING = (2.0, 1.0, 1.0)
TARGETS = {"organ": (1,), "core": (2,)}
AXIS = "plan.configuration"


def _case(rng, quality: float, with_core: bool):
    ref = np.zeros((8, 20, 20), np.uint8)
    ref[2:6, 4:16, 4:16] = 1
    if with_core:
        ref[3:5, 8:12, 8:12] = 2
    pred = ref.copy()
    flip = rng.uniform(size=ref.shape) > quality  # label noise, more with lower quality
    pred[flip & (ref > 0)] = 0
    pred[flip & (ref == 0) & (rng.uniform(size=ref.shape) > 0.8)] = 1
    return ref, pred


def _study(tmp_path, qualities: dict[str, float], n_cases=8, seed=0):
    """Per variant: predictions written for nnU-Net, and ablate's tidy rows of them. Case 0 has
    no core in reference or prediction (nnU-Net's Dice NaN)."""
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0), IDENTITY)
    rows, folders = [], {}
    for v, (variant, quality) in enumerate(qualities.items()):
        rng = np.random.default_rng(seed + v)
        folders[variant] = tmp_path / variant
        for c in range(n_cases):
            ref, pred = _case(rng, quality, with_core=c != 0)
            if c == 0:
                pred[pred == 2] = 0
            write_image(ref, geometry, tmp_path / "ref" / f"case{c}.nii.gz")
            write_image(pred, geometry, folders[variant] / f"case{c}.nii.gz")
            for row in evaluate_case(pred, ref, SPACING, TARGETS, 2.0):
                axis = np.nan if variant.startswith("ensemble") else variant
                rows.append(
                    {
                        "variant": variant,
                        AXIS: axis,
                        "fold": c % 4,
                        "seed": 0,
                        "case": f"case{c}",
                        **row,
                    }
                )
    return pd.DataFrame(rows), folders


@pytest.fixture
def threads(monkeypatch):
    context = SimpleNamespace(Pool=ThreadPool)
    monkeypatch.setattr(evaluate_predictions.multiprocessing, "get_context", lambda method: context)


def _nnunet_score(tmp_path, folder) -> float:
    summary = evaluate_predictions.compute_metrics_on_folder(
        str(tmp_path / "ref"), str(folder), None, SimpleITKIO(), ".nii.gz", [1, 2], None, 1
    )
    return float(summary["foreground_mean"]["Dice"])


def test_scores_equal_nnunets_foreground_mean_dice(tmp_path, threads):
    qualities = {"2d": 0.7, "3d_fullres": 0.9, "3d_lowres": 0.8, "ensemble 2d+3d_fullres": 0.85}
    tidy, folders = _study(tmp_path, qualities)
    dice = case_dice(tidy)
    assert dice[(dice["case"] == "case0") & (dice["target"] == "core")]["dsc"].isna().all()
    for variant, folder in folders.items():
        ours = foreground_mean_dice(dice[dice["variant"] == variant])
        assert ours == pytest.approx(_nnunet_score(tmp_path, folder), rel=1e-12)
    selection = select_configuration(tidy, [AXIS])
    scores = {c.variant: c.score for c in selection.ranking}
    assert [c.variant for c in selection.ranking] == sorted(scores, key=lambda v: -scores[v])
    assert selection.winner == "3d_fullres" and selection.runner_up == "ensemble 2d+3d_fullres"
    assert [c.ensemble for c in selection.ranking if c.variant.startswith("ensemble")] == [True]


def test_the_winner_and_its_significance_against_the_runner_up(tmp_path):
    tidy, _ = _study(tmp_path, {"2d": 0.6, "3d_fullres": 0.95}, n_cases=12)
    selection = select_configuration(tidy, [AXIS])
    assert selection.winner == "3d_fullres" and not selection.tie
    diff = selection.difference
    assert diff["mean"] > 0.05 and diff["ci_low"] > 0 and diff["p"] < 0.05
    assert diff["clusters"] == 4 and diff["n"] == 12
    assert selection.wilcoxon_p < 0.01
    lines = " ".join(selection_lines(selection))
    assert "3d_fullres" in lines and "significantly better" in lines
    assert "<table>" in selection_html(selection)


def test_a_tie_goes_to_the_first_candidate_in_nnunets_order(tmp_path):
    tidy, _ = _study(tmp_path, {"2d": 0.8}, n_cases=6)
    ensemble = tidy.assign(variant="ensemble a+b", **{AXIS: np.nan})
    twin = tidy.assign(variant="3d_fullres", **{AXIS: "3d_fullres"})
    # the ensemble comes first in the table but nnU-Net ranks configurations before ensembles
    selection = select_configuration(pd.concat([ensemble, tidy, twin]), [AXIS])
    assert selection.tie and selection.winner == "2d" and selection.runner_up == "3d_fullres"
    assert "either would do" in " ".join(selection_lines(selection))
    assert select_configuration(tidy, [AXIS]) is None  # one candidate: nothing to choose


def test_the_report_shows_the_selection_for_a_configuration_study(tmp_path):
    from ablate.report.collect import Results
    from ablate.report.html import build_report

    tidy, _ = _study(tmp_path, {"2d": 0.6, "3d_fullres": 0.95}, n_cases=8)
    results = Results(tidy, pd.DataFrame(), pd.DataFrame(), [AXIS])
    page = build_report(results, {"name": "cfg", "baseline": "2d"}, tmp_path / "report")
    text = page.read_text()
    assert "nnU-Net&#x27;s choice" in text or "nnU-Net's choice" in text
    assert "find_best_configuration): 3d_fullres" in text
    other = Results(
        tidy.rename(columns={AXIS: "train.loss"}), pd.DataFrame(), pd.DataFrame(), ["train.loss"]
    )
    assert (
        "find_best_configuration"
        not in build_report(other, {"name": "x"}, tmp_path / "r2").read_text()
    )
