import math
import warnings

import numpy as np
import pytest
import surface_distance

from ablate.errors import ConfigError, DataError
from ablate.evaluate import (
    bounding_box,
    evaluate_case,
    evaluate_files,
    evaluate_folder,
    mask_metrics,
)
from ablate.imageio import Geometry, write_image

SPACING = (2.0, 1.0, 0.5)  # (z, y, x): anisotropic so a transposed axis fails


def cube(shape=(12, 14, 16), z=(2, 6), y=(3, 8), x=(4, 9)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = True
    return mask


def ball(radius: float, shape=(20, 20, 20)) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    c = [s // 2 for s in shape]
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2


def as_dict(rows, target):
    return {r["metric"]: r["value"] for r in rows if r["target"] == target}


def test_identical_masks_are_perfect():
    m = mask_metrics(cube(), cube(), SPACING, 1.0)
    assert m["dsc"] == 1.0 and m["nsd"] == 1.0
    assert m["hd95"] == 0.0 and m["assd"] == 0.0 and m["rvd"] == 0.0
    assert m["empty"] == 0
    assert m["vol_ref_ml"] == pytest.approx(4 * 5 * 5 * 2.0 * 1.0 * 0.5 / 1000)


def test_cube_shifted_one_voxel_in_z_is_two_mm_off():
    # 4x5x5 cube shifted by one z voxel: overlap 3x5x5 -> DSC 2*75/200; every surface point is
    # at most one z spacing (2 mm) away, and the z faces (>5% of the area) are exactly 2 mm away.
    m = mask_metrics(cube(), cube(z=(3, 7)), SPACING, 2.0)
    assert m["dsc"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["nsd"] == pytest.approx(1.0)
    assert 0 < mask_metrics(cube(), cube(z=(3, 7)), SPACING, 1.9)["nsd"] < 1
    assert m["rvd"] == 0.0


def test_cube_shifted_two_voxels_in_x_is_one_mm_off():
    m = mask_metrics(cube(), cube(x=(6, 11)), SPACING, 1.0)
    assert m["dsc"] == pytest.approx(2 * 4 * 5 * 3 / 200)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["nsd"] == pytest.approx(1.0)


def test_sphere_against_larger_sphere():
    small, large = ball(6), ball(7)
    m = mask_metrics(small, large, (1.0, 1.0, 1.0), 1.5)
    assert m["dsc"] == pytest.approx(2 * small.sum() / (small.sum() + large.sum()))
    assert abs(m["hd95"] - 1.0) <= 0.5  # radius difference 1 mm, up to voxelisation
    assert abs(m["assd"] - 1.0) <= 0.5
    assert m["nsd"] > 0.95
    assert m["vol_ref_ml"] == pytest.approx(4 / 3 * math.pi * 6**3 / 1000, rel=0.05)
    assert m["rvd"] == pytest.approx((large.sum() - small.sum()) / small.sum())


@pytest.mark.parametrize(
    "ref_empty, pred_empty, expected",
    [
        (True, True, {"dsc": 1.0, "nsd": 1.0, "rvd": math.nan, "empty": 3}),
        (True, False, {"dsc": 0.0, "nsd": 0.0, "rvd": math.nan, "empty": 1}),
        (False, True, {"dsc": 0.0, "nsd": 0.0, "rvd": -1.0, "empty": 2}),
    ],
)
def test_empty_mask_policy(ref_empty, pred_empty, expected):
    empty = np.zeros((12, 14, 16), dtype=bool)
    m = mask_metrics(empty if ref_empty else cube(), empty if pred_empty else cube(), SPACING, 1.0)
    for metric, value in expected.items():
        np.testing.assert_equal(m[metric], value)
    assert math.isnan(m["hd95"]) and math.isnan(m["assd"])


def test_cropped_equals_surface_distance_on_full_volume():
    rng = np.random.default_rng(0)
    ref = cube(shape=(10, 12, 14), z=(0, 5), y=(2, 12), x=(3, 9))  # touches the border
    pred = ref.copy()
    pred[rng.random(ref.shape) < 0.1] ^= True  # noisy surface, also far from the ref
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        full = surface_distance.compute_surface_distances(ref, pred, list(SPACING))
    m = mask_metrics(ref, pred, SPACING, 1.0)
    assert m["nsd"] == surface_distance.compute_surface_dice_at_tolerance(full, 1.0)
    assert m["hd95"] == surface_distance.compute_robust_hausdorff(full, 95)
    a, b = surface_distance.compute_average_surface_distance(full)
    assert m["assd"] == pytest.approx((a + b) / 2, rel=1e-12)


def test_matches_monai_dice_and_subvoxel_surface_dice():
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    zz, yy, xx = np.mgrid[:16, :20, :24]
    ref = ((zz - 8) ** 2 / 25 + (yy - 10) ** 2 / 49 + (xx - 12) ** 2 / 81) < 1
    pred = ((zz - 7) ** 2 / 25 + (yy - 10) ** 2 / 36 + (xx - 13) ** 2 / 81) < 1
    m = mask_metrics(ref, pred, SPACING, 1.5)

    def onehot(a):
        return torch.from_numpy(np.stack([~a, a])[None].astype(np.float32))  # (1, 2, Z, Y, X)

    dsc = metrics.compute_dice(onehot(pred), onehot(ref), include_background=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nsd = metrics.compute_surface_dice(
            onehot(pred),
            onehot(ref),
            [1.5],
            spacing=SPACING,
            include_background=False,
            use_subvoxels=True,
        )
    assert m["dsc"] == pytest.approx(float(dsc), abs=1e-6)
    assert m["nsd"] == pytest.approx(float(nsd), abs=1e-6)


def test_evaluate_case_regions_and_rows():
    ref = cube().astype(np.uint8)
    ref[2:4] *= 2  # labels 1 and 2
    pred = ref.copy()
    pred[pred == 2] = 1  # label 2 predicted as 1: region (1, 2) perfect, label 2 missed
    rows = evaluate_case(pred, ref, SPACING, {"whole": (1, 2), "two": (2,)}, {"whole": 1, "two": 1})
    assert {r["metric"] for r in rows} == {
        "dsc",
        "nsd",
        "hd95",
        "assd",
        "rvd",
        "vol_ref_ml",
        "vol_pred_ml",
        "empty",
    }
    assert as_dict(rows, "whole")["dsc"] == 1.0
    two = as_dict(rows, "two")
    assert two["dsc"] == 0.0 and two["empty"] == 2 and two["rvd"] == -1.0


def test_ignore_label_voxels_are_in_no_mask():
    ref = cube().astype(np.uint8)  # 4 x 5 x 5 = 100 voxels of label 1
    ref[2:4, 3:8, 4:9] = 3  # half of it unannotated: nnU-Net's ignore label 3
    pred = cube().astype(np.uint8) + cube(z=(8, 10)).astype(np.uint8)  # + 50 voxels elsewhere
    rows = evaluate_case(pred, ref, SPACING, {"one": (1,)}, 1.0, ignore_label=3)
    # ref 50 voxels; pred 150 minus the 50 under ignore = 100, 50 of them overlapping
    assert as_dict(rows, "one")["dsc"] == pytest.approx(2 * 50 / (50 + 100))
    assert as_dict(rows, "one")["vol_ref_ml"] == pytest.approx(50 * 1.0 / 1000)
    with pytest.raises(ConfigError, match=r"the ignore label 3 is never scored"):
        evaluate_case(pred, ref, SPACING, {"three": (3,)}, 1.0, ignore_label=3)


def test_a_prediction_on_a_reoriented_grid_is_scored_against_the_reference(tmp_path):
    kits = Geometry((0.8, 0.8, 3.0), (10.0, -5.0, 40.0), (0, 0, -1, 0, 1, 0, -1, 0, 0))
    ref = cube(shape=(6, 7, 5), z=(1, 4), y=(2, 5), x=(1, 3)).astype(np.uint8)
    write_image(ref, kits, tmp_path / "ref.nii.gz")
    from ablate.data.orient import reorient_to_identity

    write_image(*reorient_to_identity(ref, kits), tmp_path / "pred.nii.gz")
    table = evaluate_files(
        [("a", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")], {"one": (1,)}, 1.0
    )
    assert table[table.metric == "dsc"].value.item() == 1.0


def test_bounding_box_margin_is_clipped():
    assert bounding_box(cube()) == (slice(1, 7), slice(2, 9), slice(3, 10))
    assert bounding_box(cube(z=(0, 12)))[0] == slice(0, 12)
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def _write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    geometry = Geometry(spacing, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_image(array.astype(np.uint8), geometry, path)


def test_evaluate_folder_reads_and_checks_geometry(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    _write(ref_dir / "case_a.nii.gz", cube())
    _write(pred_dir / "case_a.nii.gz", cube(z=(3, 7)))
    df = evaluate_folder(pred_dir, ref_dir, {"fg": (1,)}, {"fg": 2.0})
    assert list(df.columns) == ["case", "target", "metric", "value"]
    values = df.set_index("metric")["value"]
    assert set(df["case"]) == {"case_a"}
    assert values["dsc"] == pytest.approx(0.75) and values["hd95"] == pytest.approx(2.0)

    _write(pred_dir / "case_a.nii.gz", cube(), spacing=(1.0, 1.0, 0.5))
    with pytest.raises(DataError, match=r"case_a.nii.gz: spacing"):
        evaluate_folder(pred_dir, ref_dir, {"fg": (1,)}, {"fg": 2.0})
    _write(pred_dir / "case_a.nii.gz", cube(), origin=(0.0, 5.0, 0.0))
    with pytest.raises(DataError, match=r"case_a.nii.gz: origin"):
        evaluate_folder(pred_dir, ref_dir, {"fg": (1,)}, {"fg": 2.0})
    _write(ref_dir / "case_b.nii.gz", cube())
    with pytest.raises(DataError, match=r"case_b.nii.gz: prediction missing"):
        evaluate_folder(pred_dir, ref_dir, {"fg": (1,)}, {"fg": 2.0})
