import json
from types import SimpleNamespace

import numpy as np
import pytest

from ablate.config import CTWindow, PlanConfig
from ablate.plan import (
    Fingerprint,
    Plan,
    fingerprint,
    make_plan,
    target_spacing,
)

CT = [
    dict(
        mean=50.0,
        median=50.0,
        std=20.0,
        min=0.0,
        max=100.0,
        percentile_00_5=1.0,
        percentile_99_5=99.0,
    )
]
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


def test_sagittal_plan_is_in_the_transposed_frame_and_overrides_in_the_image_frame():
    fp = _fp([(0.9, 0.9, 4.0)] * 4, [(60, 64, 14)] * 4)
    plan = make_plan(fp, DS3, PlanConfig())
    assert plan.transpose_forward == (2, 0, 1) and plan.transpose_backward == (1, 2, 0)
    assert plan.target_spacing_mm == (4.0, 0.9, 0.9) and plan.median_shape == (14, 60, 64)
    cfg = PlanConfig(target_spacing_mm=(1.0, 1.0, 2.0), patch_size=(32, 48, 16))
    plan = make_plan(fp, DS3, cfg)
    assert plan.target_spacing_mm == (2.0, 1.0, 1.0) and plan.patch_size == (16, 32, 48)
    back = np.zeros(plan.patch_size).transpose(plan.transpose_backward)
    assert back.shape == (32, 48, 16)  # export: plan frame -> image frame


def test_overrides_and_json_roundtrip():
    cfg = PlanConfig(target_spacing_mm=(2.0, 1.0, 1.0), patch_size=(20, 48, 48))
    plan = make_plan(_kits_like(), DS3, cfg)
    assert plan.target_spacing_mm == (2.0, 1.0, 1.0)
    assert plan.patch_size == (20, 48, 48)  # 20 = 4 * 5: z pools twice
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    # a plan.json written before the transpose/batch-Dice fields reads with nnU-Net's identity
    old = {
        k: v
        for k, v in plan.to_json().items()
        if k not in ("transpose_forward", "transpose_backward", "batch_dice")
    }
    old_plan = Plan.from_json(json.loads(json.dumps(old)))
    assert old_plan.transpose_forward == (0, 1, 2) and old_plan.batch_dice is False


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
    # window [-10, 90]; every foreground sample is 100 -> windowed 90: mean 90, sd 0, and the
    # 0.5 / 99.5 percentile clip of the windowed foreground is [90, 90]
    assert (norm.lower, norm.upper) == (90.0, 90.0)
    assert norm.mean == pytest.approx(90.0) and norm.std == pytest.approx(0.0, abs=1e-4)


def test_ct_window_then_nnunets_percentile_clip_with_the_plans_sample_budget(monkeypatch):
    """Seed 003 windows the CT, then runs nnU-Net: its statistics and 0.5 / 99.5 percentile
    clip are those of the windowed foreground, sampled with plan.intensity_samples."""
    import ablate.plan as plan_module

    samples = np.random.default_rng(0).normal(96.0, 10.0, 20000)
    budgets = []

    def fake_samples(dataset, workers, total_samples):
        budgets.append(total_samples)
        return [samples]

    monkeypatch.setattr(plan_module, "foreground_samples", fake_samples)
    ct = SimpleNamespace(channels=["CT"])
    fp = _fp([(1.0, 1.0, 1.0)] * 2, [(40, 40, 40)] * 2)
    cfg = PlanConfig(ct_window=CTWindow(level=96, width=59), intensity_samples=5000)
    norm = plan_module._normalizations(fp, ct, cfg, workers=0)[0]
    windowed = np.clip(samples, 96 - 29.5, 96 + 29.5)
    assert budgets == [5000]
    assert (norm.lower, norm.upper) == tuple(np.percentile(windowed, (0.5, 99.5)))
    assert 66.5 < norm.lower < norm.upper < 125.5  # inside the window: the clip still acts
    assert (norm.mean, norm.std) == (pytest.approx(windowed.mean()), pytest.approx(windowed.std()))


def test_batch_dice_override_and_preset_recorded():
    # KiTS-like: nnU-Net's rule turns batch Dice on (3d_lowres survives); plan.batch_dice wins
    assert make_plan(_kits_like(), DS3, PlanConfig()).batch_dice is True
    plan = make_plan(_kits_like(), DS3, PlanConfig(batch_dice=False))
    assert plan.batch_dice is False and plan.cascade_recommended is True
    assert plan.preset == "nnunet"
    resenc = make_plan(_kits_like(), DS3, PlanConfig(preset="resenc_l"))
    assert (resenc.preset, resenc.memory_budget_gb) == ("resenc_l", 24.0)
    assert Plan.from_json(json.loads(json.dumps(resenc.to_json()))) == resenc
