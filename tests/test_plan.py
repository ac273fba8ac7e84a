import json
from types import SimpleNamespace

import numpy as np
import pytest

from ablate.config import CTWindow, PlanConfig
from ablate.plan import Fingerprint, Plan, fingerprint, make_plan, target_spacing
from ablate.topology import plain_unet_feature_map_size

CT = [dict(mean=50.0, median=50.0, std=20.0, min=0.0, max=100.0, percentile_00_5=1.0,
           percentile_99_5=99.0)]
DS3 = SimpleNamespace(channels=("CT",), num_classes=3)


def _fp(spacings, shapes, rel=1.0):
    return Fingerprint(spacings, shapes, CT, {0: 10, 1: 1}, rel)


def _kits_like():
    z = [2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    return _fp([(s, 0.78, 0.78) for s in z], [(100, 512, 512)] * 6)


def test_kits_like_target_spacing_uses_10th_percentile_of_coarse_axis():
    # median z 3.75 > 3 * 0.78 and 100 * 3 < 512 -> z = 10th percentile = 2.5 + 0.5 * 0.5
    assert target_spacing(_kits_like()) == pytest.approx((2.75, 0.78, 0.78))


def test_coarse_axis_clamped_just_above_in_plane():
    fp = _fp([(0.5, 0.78, 0.78)] * 2 + [(3.0, 0.78, 0.78)] * 8, [(100, 512, 512)] * 10)
    assert target_spacing(fp)[0] == pytest.approx(0.78 + 1e-5)


def test_kits_like_plan_pools_in_plane_first():
    plan = make_plan(_kits_like(), DS3, PlanConfig())
    # z/in-plane = 2.75/0.78 = 3.5: in-plane pools alone, kernel (1, 3, 3); after one pool
    # 2.75/1.56 < 2 so z joins and its kernel becomes 3
    assert plan.pool_kernel_sizes[:3] == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
    assert plan.conv_kernel_sizes[:2] == [(1, 3, 3), (3, 3, 3)]
    assert plan.conv_kernel_sizes[-1] == (3, 3, 3)
    pools = np.array(plan.pool_kernel_sizes).prod(axis=0)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, pools, strict=True))
    # median shape: round(z * 100 / 2.75) -> 91 109 127 145 164 182, median 136
    assert plan.median_shape == (136, 512, 512) and plan.anisotropic
    est = plain_unet_feature_map_size(plan.patch_size, plan.pool_kernel_sizes,
                                      plan.features_per_stage, 3)
    assert est <= 560e6 and plan.batch_size == 2
    assert plan.cascade_recommended  # the patch is far below 25 % of 136 x 512 x 512


def test_isotropic_160_cube_shrinks_to_128_cube():
    # 160^3 (886M) -> x to 128 (709M) -> y (567M) -> z (453.7M <= 560M): nnU-Net's order
    plan = make_plan(_fp([(1.0, 1.0, 1.0)] * 100, [(160, 160, 160)] * 100), DS3, PlanConfig())
    assert plan.target_spacing_mm == (1.0, 1.0, 1.0)
    assert plan.patch_size == (128, 128, 128)
    assert plan.pool_kernel_sizes == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert plan.conv_kernel_sizes == [(3, 3, 3)] * 6
    assert plan.features_per_stage == [32, 64, 128, 256, 320, 320]
    assert plan.batch_size == 2  # round(560e6 / 453,694,976 * 2) = round(2.47)
    assert not plan.cascade_recommended and not plan.anisotropic  # 0.512 of the median


def test_tiny_budget_gives_small_plan_for_cpu_demo():
    fp = _fp([(3.0, 1.0, 1.0)] * 8, [(30, 130, 130)] * 8)
    plan = make_plan(fp, DS3, PlanConfig(gpu_memory_gb=0.05, base_features=8, max_features=64))
    assert plan.patch_size == (14, 56, 56) and plan.num_stages == 4
    assert plan.features_per_stage == [8, 16, 32, 64] and plan.batch_size == 2


def test_overrides_and_json_roundtrip():
    cfg = PlanConfig(target_spacing_mm=(2.0, 1.0, 1.0), patch_size=(20, 48, 48))
    plan = make_plan(_kits_like(), DS3, cfg)
    assert plan.target_spacing_mm == (2.0, 1.0, 1.0)
    assert plan.patch_size == (20, 48, 48)  # 20 = 4 * 5: z pools twice
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_zscore_mask_rule_from_relative_size():
    mr = SimpleNamespace(channels=("T2",), num_classes=2)
    fp = _fp([(1.0, 1.0, 1.0)] * 2, [(40, 40, 40)] * 2, rel=0.7)
    assert make_plan(fp, mr, PlanConfig()).normalization[0].use_mask
    fp = _fp([(1.0, 1.0, 1.0)] * 2, [(40, 40, 40)] * 2, rel=0.8)
    norm = make_plan(fp, mr, PlanConfig()).normalization[0]
    assert norm.scheme == "zscore" and not norm.use_mask


def test_fingerprint_and_ct_window_on_files(tmp_path):
    from test_preprocess import SPACING, _make_dataset  # tests/ is on sys.path under pytest

    ds = _make_dataset(tmp_path / "raw", n=2)
    fp = fingerprint(ds, workers=0, total_samples=2000)
    assert fp.spacings_mm == [SPACING] * 2 and fp.shapes_after_crop == [(6, 16, 18)] * 2
    assert fp.class_voxel_counts == {0: 2 * (8 * 20 * 24 - 144), 1: 2 * 144}
    assert fp.median_relative_size_after_cropping == pytest.approx(6 * 16 * 18 / (8 * 20 * 24))
    assert fp.intensity_properties[0]["mean"] == 100.0
    assert Fingerprint.from_json(json.loads(json.dumps(fp.to_json()))) == fp
    cfg = PlanConfig(gpu_memory_gb=0.05, ct_window=CTWindow(level=40, width=100))
    norm = make_plan(fp, ds, cfg, workers=0).normalization[0]
    # window [-10, 90]; every foreground sample is 100 -> windowed mean 90, sd 0
    assert (norm.lower, norm.upper) == (-10.0, 90.0)
    assert norm.mean == pytest.approx(90.0) and norm.std == pytest.approx(0.0, abs=1e-4)
