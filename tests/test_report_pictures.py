"""Pictures of the cases: the cases picked (widest spread between variants, worst of the best
variant), the slices drawn with the reference and each variant's contour in Okabe-Ito colours,
embedded in the page, written beside it, and linked from the per-case table."""

from __future__ import annotations

import base64
import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from ablate.data.dataset import Case
from ablate.evaluate import evaluate_case
from ablate.imageio import Geometry, write_image
from ablate.report import build_report
from ablate.report.analysis import analyse
from ablate.report.collect import Results
from ablate.report.labels import variant_labels
from ablate.report.pictures import (
    REFERENCE_STYLE,
    VARIANT_STYLES,
    anchor,
    case_figure,
    case_files,
    pick_cases,
)

SPACING = (3.0, 0.8, 0.7)  # anisotropic: a transposed axis would show
SHAPE = (8, 40, 48)
TARGETS = {"kidney": (1, 2), "tumor": (2,)}


def _ellipsoid(center, radii) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    d = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), center, radii, strict=True))
    return d <= 1.0


def _reference(i: int) -> np.ndarray:
    label = _ellipsoid((4, 20, 20 + i), (3, 9, 8)).astype(np.uint8)
    label[_ellipsoid((4, 20, 23 + i), (2, 3, 3))] = 2
    return label


def _residual(i: int, ref: np.ndarray) -> np.ndarray:
    """Off on case 2: shifted, and a false positive on slice 1, away from the reference."""
    if i != 2:
        return ref
    pred = np.roll(ref, 4, axis=2)
    pred[_ellipsoid((1, 30, 38), (0.5, 9, 9))] = 1
    return pred


PREDICT = {  # variant -> (case index, reference) -> its label map
    "plain": lambda i, ref: ref,
    "residual": _residual,
    "nnunet": lambda i, ref: np.roll(ref, 1, axis=1),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    return write_case_study(root)


def write_case_study(root):
    """4 cases of image, reference and 3 variants' predictions written under `root`; returns
    (Results with their evaluate_case rows, CaseFiles, root)."""
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rng = np.random.default_rng(0)
    cases, rows, folders = [], [], {}
    for i in range(4):
        case_id = f"case_{i}"
        ref = _reference(i)
        image = rng.normal(0, 20, SHAPE) + 100 * (ref > 0) + 60 * (ref == 2)
        write_image(image.astype(np.float32), geometry, root / f"{case_id}_0000.nii.gz")
        write_image(ref, geometry, root / f"{case_id}.nii.gz")
        cases.append(Case(case_id, (root / f"{case_id}_0000.nii.gz",), root / f"{case_id}.nii.gz"))
        for variant, predict in PREDICT.items():
            folder = root / variant / f"fold_{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            folders.setdefault(variant, [])
            if folder not in folders[variant]:
                folders[variant].append(folder)
            pred = predict(i, ref).astype(np.uint8)
            write_image(pred, geometry, folder / f"{case_id}.nii.gz")
            for row in evaluate_case(pred, ref, SPACING, TARGETS, 1.0):
                rows.append(
                    {"variant": variant, "arch": variant, "fold": i % 2, "seed": 0}
                    | {"case": case_id, **row}
                )
    tidy = pd.DataFrame(rows)
    results = Results(tidy, pd.DataFrame(), pd.DataFrame(), ["arch"])
    files = case_files(cases, TARGETS, folders)
    return results, files, root


def test_case_files_find_each_variants_predictions(study):
    _, files, root = study
    assert set(files.predictions) == set(PREDICT)
    assert files.predictions["residual"]["case_2"] == root / "residual" / "fold_0" / "case_2.nii.gz"
    assert files.images["case_3"].name == "case_3_0000.nii.gz"
    assert files.targets == TARGETS


def test_the_widest_spread_and_the_best_variants_worst_cases_are_picked(study):
    results, files, _ = study
    a = analyse(results, {"name": "p", "baseline": "plain"}, n_boot=50)
    picks = pick_cases(a, files)
    kidney = [p for p in picks if p.target == "kidney"]
    assert kidney[0].case == "case_2" and "disagree most" in kidney[0].why  # residual's miss
    worst = [p for p in kidney if p.why.startswith("worst case of the best variant")]
    assert worst and all("plain" in p.why for p in worst)  # plain equals the reference
    assert all(p.variants[0] == "plain" for p in picks)  # the baseline is always drawn
    assert all(1 <= len(p.variants) <= 4 for p in picks)


def test_slices_show_the_reference_and_each_variant_in_okabe_ito(study):
    results, files, _ = study
    a = analyse(results, {"name": "p", "baseline": "plain"}, n_boot=50)
    pick = pick_cases(a, files)[0]
    fig = case_figure(files, pick, variant_labels(a.order))
    colours = {
        to_hex(c.get_edgecolor()[0])
        for ax in fig.axes
        for c in ax.collections
        if len(c.get_paths())
    }
    expected = {REFERENCE_STYLE[0].lower()} | {
        VARIANT_STYLES[i][0].lower() for i in range(len(pick.variants))
    }
    # a variant identical to the reference draws on top of it, so every colour is present
    assert expected <= colours
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "reference" and any(t.startswith("residual (") for t in legend)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("most reference" in t for t in titles)
    assert any("slice 1, most disagreement" in t for t in titles)  # residual's false positive


def test_pictures_are_embedded_written_and_linked(study, tmp_path):
    results, files, _ = study
    page = build_report(results, {"name": "p", "baseline": "plain"}, tmp_path, cases=files)
    text = page.read_text(encoding="utf-8")
    ident = anchor("kidney", "case_2")
    figure = re.search(
        rf'<figure id="{ident}"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', text
    )
    assert figure, "the picked case's picture is not in the page"
    written = (tmp_path / "cases" / f"{ident}.png").read_bytes()
    assert base64.b64decode(figure.group(1)) == written and written[:4] == b"\x89PNG"
    links = set(re.findall(r'<a href="#(case-[^"]+)">picture</a>', text))
    ids = set(re.findall(r'<figure id="(case-[^"]+)"', text))
    assert ident in links and links == ids  # every picture is linked, every link lands
    assert "kidney: every case (DSC)" in text


def test_a_missing_prediction_is_left_out_not_fatal(study):
    results, files, _ = study
    residual = {c: p for c, p in files.predictions["residual"].items() if c != "case_2"}
    fewer = dataclasses.replace(files, predictions={**files.predictions, "residual": residual})
    a = analyse(results, {"name": "p", "baseline": "plain"}, n_boot=50)
    picks = pick_cases(a, fewer)
    assert picks and all("residual" not in p.variants for p in picks if p.case == "case_2")


def test_no_case_files_no_pictures_and_the_page_says_why(tmp_path):
    from ablate.report import synthetic_results

    page = build_report(synthetic_results(n_cases=6), {"name": "p"}, tmp_path).read_text()
    assert "No pictures: the report was built without the images and predictions" in page
    assert not (tmp_path / "cases").exists()
