"""Differential tests: ablate's fingerprint and 3d_fullres plan against nnU-Net v2.8.1's own
`DatasetFingerprintExtractor` and `ExperimentPlanner` on the same generated datasets.

Two kinds of test: small generated image datasets in nnU-Net's raw layout go through both
fingerprint extractors and both planners; realistic fingerprints (KiTS-like, 512 x 512 slices)
that would be too large to write as images go to both planners only, nnU-Net's reading them from
the dataset_fingerprint.json it would have written.
"""

import json
from multiprocessing.pool import ThreadPool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
    ExperimentPlanner,
)
from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
    residual_encoder_unet_planners as resenc,
)
from nnunetv2.utilities import utils as nnunet_utils

from ablate.config import PRESET_GPU_MEMORY_GB, PlanConfig
from ablate.configurations import CONFIGURATIONS
from ablate.data.dataset import read_nnunet_raw
from ablate.errors import ConfigError
from ablate.imageio import Geometry, write_image
from ablate.plan import Fingerprint, fingerprint, make_plan
from ablate.topology import PLANNER_PRESETS

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SAMPLES = 1e5  # foreground intensity samples in all (nnU-Net's 1e8 only makes this slower)
NNUNET_SCHEME = {
    "ct": "CTNormalization",
    "zscore": "ZScoreNormalization",
    "noNorm": "NoNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """nnU-Net's raw/preprocessed folders under tmp_path (nnunetv2.paths reads the environment
    at each use); its fingerprint pool runs in threads, so no process is spawned, and the networks
    its memory proxy instantiates live on the meta device (no weights allocated: the proxy is
    arithmetic on shapes)."""
    dirs = SimpleNamespace(raw=tmp_path / "nnUNet_raw", pre=tmp_path / "nnUNet_preprocessed")
    for name, path in (("nnUNet_raw", dirs.raw), ("nnUNet_preprocessed", dirs.pre)):
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    threads = SimpleNamespace(get_context=lambda _method: SimpleNamespace(Pool=ThreadPool))
    monkeypatch.setattr(fingerprint_extractor, "multiprocessing", threads)
    # the planner lists the dataset's files in a forked Pool, which deadlocks once other tests
    # have left threads running in this process (Ray, MLflow): threads here too
    monkeypatch.setattr(nnunet_utils, "Pool", ThreadPool)
    estimate = ExperimentPlanner.static_estimate_VRAM_usage

    def estimate_on_meta(*args, **kwargs):
        with torch.device("meta"):
            return estimate(*args, **kwargs)

    monkeypatch.setattr(
        ExperimentPlanner, "static_estimate_VRAM_usage", staticmethod(estimate_on_meta)
    )
    return dirs


# ----------------------------------------------------------------------------------------------
# generated datasets
# ----------------------------------------------------------------------------------------------


def _ball(shape, center_frac, radius_frac):
    """Boolean ellipsoid in a (Z, Y, X) grid, centre and semi-axes as fractions of the shape."""
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = sum(
        ((g - c * n) / max(rad * n, 1.0)) ** 2
        for g, c, rad, n in zip(grid, center_frac, radius_frac, shape, strict=True)
    )
    return r2 <= 1.0


def _ct_case(rng, shape):
    """Body (ellipsoid, -1000 HU air outside, so the crop removes a margin) with a two-label
    organ inside; integer HU plus noise."""
    body = _ball(shape, (0.5, 0.5, 0.5), (0.48, 0.45, 0.42))
    organ = _ball(shape, (0.5, 0.45, 0.55), (0.25, 0.2, 0.2))
    core = _ball(shape, (0.5, 0.45, 0.55), (0.12, 0.1, 0.1))
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    image[organ] += 120
    image[core] -= 60
    label = organ.astype(np.uint8) + core.astype(np.uint8)
    return [np.rint(image).astype(np.int16)], label


def _mr_case(rng, shape, lesion_radius=0.1):
    """Two MR channels, exactly 0 outside a head-like ellipsoid (nonzero bbox < 75 % of the
    volume, so nnU-Net normalises inside the mask); one foreground label (none at radius 0)."""
    head = _ball(shape, (0.5, 0.5, 0.5), (0.3, 0.32, 0.34))
    lesion = _ball(shape, (0.55, 0.5, 0.45), (lesion_radius, 0.12, 0.12))
    lesion &= lesion_radius > 0
    t2 = np.where(head, 300 + rng.normal(0, 30, shape), 0) + np.where(lesion, 250, 0)
    adc = np.where(head, 900 + rng.normal(0, 80, shape), 0) - np.where(lesion, 400, 0)
    images = [np.where(head, t2, 0).astype(np.float32), np.where(head, adc, 0).astype(np.float32)]
    return images, lesion.astype(np.uint8)


def _write_dataset(raw: Path, name: str, cases, channels: dict, labels: dict, **extra) -> Path:
    """cases: [(images, label, spacing_mm (z, y, x))]; writes nnU-Net's raw layout."""
    root = raw / name
    for i, (images, label, spacing) in enumerate(cases):
        geometry = Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), IDENTITY)
        for c, image in enumerate(images):
            write_image(image, geometry, root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz")
        write_image(label, geometry, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    meta = {
        "channel_names": channels,
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _ct_dataset(raw, name, shapes, spacings, seed=0, **kw):
    rng = np.random.default_rng(seed)
    cases = [
        (*_ct_case(rng, shape), spacing) for shape, spacing in zip(shapes, spacings, strict=True)
    ]
    return _write_dataset(
        raw,
        name,
        cases,
        {"0": "CT"},
        kw.pop("labels", None) or {"background": 0, "organ": 1, "core": 2},
        **kw,
    )


def _isotropic(raw):
    # four cases with different shapes: the median x is 40.5, which nnU-Net keeps fractional in
    # the initial patch: 40.5 pools three times and pads up to 48 (40 would stay 40)
    shapes = [(36, 44, 38), (40, 48, 40), (42, 46, 41), (38, 52, 44)]
    return _ct_dataset(raw, "Dataset901_Iso", shapes, [(1.0, 1.0, 1.0)] * 4)


def _anisotropic_axial(raw):
    # z 3-5 mm at 0.8 mm in-plane, few slices: the target z is the 10th percentile of z
    spacings = [(3.0, 0.8, 0.8), (4.0, 0.78, 0.78), (5.0, 0.8, 0.8), (3.6, 0.82, 0.82)]
    shapes = [(14, 72, 70), (12, 68, 72), (10, 70, 66), (13, 74, 70)]
    return _ct_dataset(raw, "Dataset902_Axial", shapes, spacings, seed=1)


def _sagittal(raw):
    # acquired sagittally: x (the last numpy axis) is the coarse one, so nnU-Net transposes
    spacings = [(0.9, 0.9, 4.0), (0.9, 0.9, 4.5), (0.95, 0.95, 3.5)]
    shapes = [(60, 64, 14), (58, 66, 12), (62, 60, 15)]
    return _ct_dataset(raw, "Dataset903_Sagittal", shapes, spacings, seed=2)


def _two_channel_mr(raw):
    rng = np.random.default_rng(3)
    cases = [
        (*_mr_case(rng, shape), (1.2, 1.0, 1.0))
        for shape in [(30, 40, 38), (32, 42, 40), (28, 38, 40)]
    ]
    return _write_dataset(
        raw, "Dataset904_MR", cases, {"0": "T2", "1": "ADC"}, {"background": 0, "lesion": 1}
    )


def _regions(raw):
    # region-based (sigmoid) labels as nnU-Net declares them: nested regions, paint order
    labels = {"background": 0, "organ": [1, 2], "core": 2}
    shapes = [(24, 50, 48), (26, 48, 50), (22, 52, 46)]
    return _ct_dataset(
        raw,
        "Dataset905_Regions",
        shapes,
        [(2.0, 1.0, 1.0)] * 3,
        seed=4,
        labels=labels,
        regions_class_order=[1, 2],
    )


def _lowres_rule(raw):
    # isotropic and large enough that a small budget leaves the patch under 25 % of the median
    shapes = [(56, 60, 58), (60, 64, 60), (58, 62, 64)]
    return _ct_dataset(raw, "Dataset906_Lowres", shapes, [(1.0, 1.0, 1.0)] * 3, seed=5)


# ----------------------------------------------------------------------------------------------
# running both sides
# ----------------------------------------------------------------------------------------------


# ablate's plan presets and nnU-Net's planners (the installed classes are the reference)
PLANNERS = {
    "nnunet": ExperimentPlanner,
    "resenc_m": resenc.nnUNetPlannerResEncM,
    "resenc_l": resenc.nnUNetPlannerResEncL,
    "resenc_xl": resenc.nnUNetPlannerResEncXL,
}


def _planner(name: str, gpu_memory_gb: float | None, preset: str):
    """nnU-Net's planner of the preset; gpu_memory_gb None = the planner's default target."""
    kwargs = {} if gpu_memory_gb is None else {"gpu_memory_target_in_gb": gpu_memory_gb}
    return PLANNERS[preset](name, **kwargs)


def _plan_config(gpu_memory_gb: float | None, preset: str, **kw) -> PlanConfig:
    memory = {} if gpu_memory_gb is None else {"gpu_memory_gb": gpu_memory_gb}
    return PlanConfig(preset=preset, **memory, **kw)


def _nnunet_fingerprint_and_plans(
    name: str, gpu_memory_gb: float | None, preset: str = "nnunet"
) -> tuple[dict, dict]:
    extractor = fingerprint_extractor.DatasetFingerprintExtractor(name, num_processes=1)
    extractor.show_progress_bar = False
    extractor.num_foreground_voxels_for_intensitystats = SAMPLES
    fp = extractor.run(overwrite_existing=True)
    return fp, _planner(name, gpu_memory_gb, preset).plan_experiment()


def _assert_fingerprints_equal(ours: Fingerprint, theirs: dict):
    assert ours.spacings_mm == [tuple(float(v) for v in s) for s in theirs["spacings"]]
    assert ours.shapes_after_crop == [tuple(int(v) for v in s) for s in theirs["shapes_after_crop"]]
    assert ours.median_relative_size_after_cropping == pytest.approx(
        float(theirs["median_relative_size_after_cropping"]), rel=1e-12
    )
    props = theirs["foreground_intensity_properties_per_channel"]
    assert len(ours.intensity_properties) == len(props)
    for c, mine in enumerate(ours.intensity_properties):
        for key, value in props[c].items():
            # equal today to the last bit; 1e-9 still tells float32 from float64 pooling
            assert mine[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (c, key)


def _nnunet_configuration(plans: dict, name: str) -> dict:
    """nnU-Net's configuration `name`, the cascade's resolved through its inherits_from."""
    config = plans["configurations"][name]
    if "inherits_from" in config:
        config = {**plans["configurations"][config["inherits_from"]], **config}
    return config


def _assert_plans_equal(plan, plans: dict, name: str = "3d_fullres"):
    """Every field of nnU-Net's configuration `name` that ablate's Plan carries (a 2d plan is
    ablate's flat 3D plan: its in-plane axes are nnU-Net's 2D ones)."""
    full = _nnunet_configuration(plans, name)
    arch = full["architecture"]["arch_kwargs"]
    flat = slice(1, None) if name == "2d" else slice(None)
    assert plan.configuration == name
    assert plans["transpose_forward"] == list(plan.transpose_forward)
    assert plans["transpose_backward"] == list(plan.transpose_backward)
    assert list(plan.target_spacing_mm[flat]) == pytest.approx(list(full["spacing"]), rel=1e-12)
    assert list(plan.median_shape[flat]) == [round(v) for v in full["median_image_size_in_voxels"]]
    assert list(plan.patch_size[flat]) == list(full["patch_size"])
    assert plan.batch_size == full["batch_size"]
    assert plan.num_stages == arch["n_stages"]
    assert [list(p[flat]) for p in plan.pool_kernel_sizes] == [list(p) for p in arch["strides"]]
    assert [list(k[flat]) for k in plan.conv_kernel_sizes] == [
        list(k) for k in arch["kernel_sizes"]
    ]
    if name == "2d":  # the slice axis is never pooled nor convolved across
        assert (
            {p[0] for p in plan.pool_kernel_sizes} == {1} == {k[0] for k in plan.conv_kernel_sizes}
        )
        assert plan.patch_size[0] == 1
    cascade = full.get("previous_stage") == "3d_lowres"
    assert (len(plan.previous_stage_labels) > 0) is cascade
    assert list(plan.features_per_stage) == list(arch["features_per_stage"])
    assert [NNUNET_SCHEME[n.scheme] for n in plan.normalization] == full["normalization_schemes"]
    assert [n.use_mask for n in plan.normalization] == list(full["use_mask_for_norm"])
    assert plan.batch_dice is full["batch_dice"]
    assert plan.cascade_recommended is ("3d_lowres" in plans["configurations"])
    # the resampling ablate implements: cubic data, linear labels, order 0 along a separate z
    assert full["resampling_fn_data_kwargs"] == {
        "is_seg": False,
        "order": 3,
        "order_z": 0,
        "force_separate_z": None,
    }
    assert full["resampling_fn_seg_kwargs"] == {
        "is_seg": True,
        "order": 1,
        "order_z": 0,
        "force_separate_z": None,
    }
    # the network the plan is for: PlainConvUNet (2 convs per stage) or ResidualEncoderUNet
    # (ResEnc's blocks per stage, 1 decoder conv), cut to the plan's depth
    preset = PLANNER_PRESETS[plan.preset]
    network = {"plain": "PlainConvUNet", "residual": "ResidualEncoderUNet"}[preset.network]
    assert full["architecture"]["network_class_name"].endswith("." + network)
    blocks = "n_conv_per_stage" if preset.network == "plain" else "n_blocks_per_stage"
    assert list(arch[blocks]) == list(preset.encoder_blocks[: plan.num_stages])
    assert list(arch["n_conv_per_stage_decoder"]) == [preset.decoder_convs] * (plan.num_stages - 1)


def _assert_every_configuration(fp, dataset, cfg: PlanConfig, plans: dict) -> None:
    """ablate's plan of each configuration nnU-Net created equals nnU-Net's; each one it did
    not create (3d_lowres and the cascade when its drop rule removed them) is refused."""
    for name in CONFIGURATIONS:
        config = cfg.model_copy(update={"configuration": name})
        if name in plans["configurations"]:
            _assert_plans_equal(make_plan(fp, dataset, config, workers=0), plans, name)
        else:
            with pytest.raises(ConfigError, match=f"plan.configuration: {name}: .*3d_lowres"):
                make_plan(fp, dataset, config, workers=0)


def _compare(raw_root: Path, gpu_memory_gb: float | None = 8.0, preset: str = "nnunet"):
    theirs_fp, theirs = _nnunet_fingerprint_and_plans(raw_root.name, gpu_memory_gb, preset)
    dataset = read_nnunet_raw(raw_root)
    ours_fp = fingerprint(dataset, workers=0, total_samples=SAMPLES)
    _assert_fingerprints_equal(ours_fp, theirs_fp)
    plan = make_plan(ours_fp, dataset, _plan_config(gpu_memory_gb, preset), workers=0)
    _assert_plans_equal(plan, theirs)
    _assert_every_configuration(ours_fp, dataset, _plan_config(gpu_memory_gb, preset), theirs)
    assert plan.num_input_channels == len(theirs_fp["foreground_intensity_properties_per_channel"])
    return plan, theirs


# ----------------------------------------------------------------------------------------------
# image datasets: both fingerprints, both planners
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu_memory_gb", [8.0, 0.3])
def test_isotropic_matches_nnunet(nnunet_dirs, gpu_memory_gb):
    plan, theirs = _compare(_isotropic(nnunet_dirs.raw), gpu_memory_gb)
    assert plan.transpose_forward == (0, 1, 2)
    assert theirs["configurations"]["3d_fullres"]["median_image_size_in_voxels"][2] == 40.5


@pytest.mark.parametrize("gpu_memory_gb", [8.0, 0.2])
def test_anisotropic_axial_matches_nnunet(nnunet_dirs, gpu_memory_gb):
    plan, _ = _compare(_anisotropic_axial(nnunet_dirs.raw), gpu_memory_gb)
    assert plan.transpose_forward == (0, 1, 2) and plan.conv_kernel_sizes[0] == (1, 3, 3)


@pytest.mark.parametrize("gpu_memory_gb", [8.0, 0.2])
def test_sagittal_acquisition_is_transposed_as_nnunet(nnunet_dirs, gpu_memory_gb):
    plan, _ = _compare(_sagittal(nnunet_dirs.raw), gpu_memory_gb)
    # x is the coarse axis: plan axis 0 is image axis 2, and image axis 0 sits at plan axis 1
    assert plan.transpose_forward == (2, 0, 1) and plan.transpose_backward == (1, 2, 0)
    assert plan.target_spacing_mm[0] == max(plan.target_spacing_mm)
    assert plan.conv_kernel_sizes[0] == (1, 3, 3)


def test_two_channel_mr_uses_the_mask_as_nnunet(nnunet_dirs):
    plan, _ = _compare(_two_channel_mr(nnunet_dirs.raw), 0.3)
    assert [(n.scheme, n.use_mask) for n in plan.normalization] == [("zscore", True)] * 2


def test_region_labels_match_nnunet(nnunet_dirs):
    plan, theirs = _compare(_regions(nnunet_dirs.raw), 0.3)
    # nnU-Net's memory proxy counts one output per dataset.json label entry
    assert plan.num_classes == len(
        json.loads((nnunet_dirs.raw / "Dataset905_Regions" / "dataset.json").read_text())["labels"]
    )
    assert theirs["configurations"]["3d_fullres"]["batch_dice"] is plan.batch_dice


@pytest.mark.parametrize("gpu_memory_gb, lowres", [(0.14, False), (0.06, True)])
def test_batch_dice_follows_nnunet_lowres_rule(nnunet_dirs, gpu_memory_gb, lowres):
    # 0.14 GB: the patch covers 19 % of the median, so a 3d_lowres stage is tried, but dropped
    # (it removes less than half the voxels): no batch Dice although coverage < 25 %.
    # 0.06 GB: 9 % coverage; the lowres stage survives and 3d_fullres trains with batch Dice.
    plan, theirs = _compare(_lowres_rule(nnunet_dirs.raw), gpu_memory_gb)
    coverage = np.prod(plan.patch_size) / np.prod(plan.median_shape)
    assert coverage < 0.25
    assert plan.batch_dice is lowres and plan.cascade_recommended is lowres


# ----------------------------------------------------------------------------------------------
# realistic fingerprints: both planners (nnU-Net reads the fingerprint file it would have written)
# ----------------------------------------------------------------------------------------------

CT_PROPS = {
    "mean": 50.0,
    "median": 50.0,
    "std": 20.0,
    "min": -100.0,
    "max": 300.0,
    "percentile_00_5": -80.0,
    "percentile_99_5": 250.0,
}


def _fingerprint(spacings, shapes, channels=1, relative_size=1.0) -> Fingerprint:
    return Fingerprint(
        [tuple(s) for s in spacings],
        [tuple(s) for s in shapes],
        [dict(CT_PROPS) for _ in range(channels)],
        {0: 1, 1: 1},
        relative_size,
    )


def _plan_both(
    dirs,
    name,
    fp: Fingerprint,
    channels: dict,
    labels: dict,
    gpu_memory_gb,
    base_features: int = 32,
    max_features: int = 320,
    preset: str = "nnunet",
    max_features_2d: int = 512,
):
    """ablate's plan and nnU-Net's plans for the same fingerprint. nnU-Net's raw folder holds one
    tiny case only for its reader detection; numTraining is the fingerprint's case count.
    Other feature widths are set on nnU-Net's planner as attributes (as a subclass would)."""
    _write_fingerprint_dataset(dirs, name, fp, channels, labels)
    planner = _planner(name, gpu_memory_gb, preset)
    planner.UNet_base_num_features, planner.UNet_max_features_3d = base_features, max_features
    planner.UNet_max_features_2d = max_features_2d
    theirs = planner.plan_experiment()
    dataset = SimpleNamespace(
        channels=tuple(channels.values()), num_classes=len(labels), labels=labels, ignore_label=None
    )
    cfg = _plan_config(
        gpu_memory_gb,
        preset,
        base_features=base_features,
        max_features=max_features,
        max_features_2d=max_features_2d,
    )
    plan = make_plan(fp, dataset, cfg, workers=0)
    _assert_plans_equal(plan, theirs)
    _assert_every_configuration(fp, dataset, cfg, theirs)
    return plan, theirs


def _write_fingerprint_dataset(dirs, name, fp: Fingerprint, channels: dict, labels: dict):
    """nnU-Net's raw folder with one tiny case and the dataset_fingerprint.json of `fp`."""
    root, geometry = dirs.raw / name, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    for c in range(len(channels)):
        write_image(
            np.ones((2, 3, 4), np.int16), geometry, root / "imagesTr" / f"case_000_{c:04d}.nii.gz"
        )
    write_image(np.zeros((2, 3, 4), np.uint8), geometry, root / "labelsTr" / "case_000.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": channels,
                "labels": labels,
                "numTraining": len(fp.spacings_mm),
                "file_ending": ".nii.gz",
            }
        )
    )
    (dirs.pre / name).mkdir()
    (dirs.pre / name / "dataset_fingerprint.json").write_text(
        json.dumps(
            {
                "spacings": [list(s) for s in fp.spacings_mm],
                "shapes_after_crop": [list(s) for s in fp.shapes_after_crop],
                "foreground_intensity_properties_per_channel": dict(
                    enumerate(fp.intensity_properties)
                ),
                "median_relative_size_after_cropping": fp.median_relative_size_after_cropping,
            }
        )
    )


CT_LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def test_kits_like_plan_matches_nnunet(nnunet_dirs):
    # z 2.5-5 mm at 0.78 mm, 100 x 512 x 512: target z is the 10th percentile (2.75 mm), the
    # in-plane axes pool alone first, and the patch is far below 25 % of the median, so
    # 3d_lowres survives and 3d_fullres uses batch Dice
    fp = _fingerprint(
        [(z, 0.78, 0.78) for z in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)], [(100, 512, 512)] * 6
    )
    plan, _ = _plan_both(nnunet_dirs, "Dataset911_KiTSLike", fp, {"0": "CT"}, CT_LABELS, 8.0)
    assert plan.target_spacing_mm == pytest.approx((2.75, 0.78, 0.78))
    assert plan.pool_kernel_sizes[:3] == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
    assert plan.batch_dice and plan.cascade_recommended


def test_isotropic_160_plan_matches_nnunet(nnunet_dirs):
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 100, [(160, 160, 160)] * 100)
    plan, _ = _plan_both(nnunet_dirs, "Dataset912_Iso160", fp, {"0": "CT"}, CT_LABELS, 8.0)
    assert plan.patch_size == (128, 128, 128) and not plan.batch_dice


def test_lowres_tried_then_dropped_matches_nnunet(nnunet_dirs):
    # 208^3: the 128^3 patch covers 23 % (< 25 %), but the lowres stage that reaches 25 % has
    # more than half the fullres voxels, so nnU-Net drops it: no batch Dice
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 20, [(208, 208, 208)] * 20)
    plan, theirs = _plan_both(nnunet_dirs, "Dataset913_Iso208", fp, {"0": "CT"}, CT_LABELS, 8.0)
    assert np.prod(plan.patch_size) / np.prod(plan.median_shape) < 0.25
    assert not plan.batch_dice and "3d_lowres" not in theirs["configurations"]


def test_sagittal_plan_counts_only_the_top_head_as_nnunet(nnunet_dirs):
    # at this budget the proxy with every deep-supervision head would shrink x to 256
    fp = _fingerprint([(0.7, 0.7, 5.0)] * 5, [(300, 280, 40)] * 5)
    plan, _ = _plan_both(nnunet_dirs, "Dataset914_SagittalBig", fp, {"0": "CT"}, CT_LABELS, 17.25)
    assert plan.transpose_forward == (2, 0, 1) and plan.patch_size == (40, 320, 320)


def test_acdc_like_mr_plan_matches_nnunet(nnunet_dirs):
    fp = _fingerprint(
        [(10.0, 1.5, 1.5), (8.0, 1.4, 1.4), (10.0, 1.6, 1.6)] * 3,
        [(9, 210, 190), (11, 230, 200), (10, 190, 220)] * 3,
        channels=2,
        relative_size=0.6,
    )
    plan, _ = _plan_both(
        nnunet_dirs,
        "Dataset915_ACDCLike",
        fp,
        {"0": "cine", "1": "noNorm"},
        {"background": 0, "rv": 1, "myo": 2, "lv": 3},
        8.0,
    )
    assert [(n.scheme, n.use_mask) for n in plan.normalization] == [
        ("zscore", True),
        ("noNorm", False),
    ]


@pytest.mark.parametrize("gpu_memory_gb", [0.05, 0.15])
def test_cpu_demo_budget_and_narrow_features_match_nnunet(nnunet_dirs, gpu_memory_gb):
    # the demo's planner settings (studies/demo.yaml: 0.15 GB, 8 -> 64 features)
    fp = _fingerprint([(3.0, 1.0, 1.0)] * 8, [(30, 130, 130)] * 8)
    plan, _ = _plan_both(
        nnunet_dirs,
        "Dataset916_Demo",
        fp,
        {"0": "CT"},
        CT_LABELS,
        gpu_memory_gb,
        base_features=8,
        max_features=64,
    )
    assert plan.features_per_stage[:4] == [8, 16, 32, 64]


# ----------------------------------------------------------------------------------------------
# plan presets: nnU-Net's ResEnc M / L / XL planners (their proxy, references and batch rule)
# ----------------------------------------------------------------------------------------------

RESENC = ["resenc_m", "resenc_l", "resenc_xl"]


@pytest.mark.parametrize("preset", RESENC)
@pytest.mark.parametrize("dataset", [_isotropic, _anisotropic_axial, _sagittal])
def test_resenc_presets_at_their_default_targets_match_nnunet(nnunet_dirs, preset, dataset):
    # 8 / 24 / 40 GB: the patch is the whole median image; the batch is capped by the dataset
    # (100 % of its voxels, not nnUNetPlans' 5 %), which ResEnc's planners still apply
    plan, theirs = _compare(dataset(nnunet_dirs.raw), None, preset)
    assert plan.memory_budget_gb == {"resenc_m": 8.0, "resenc_l": 24.0, "resenc_xl": 40.0}[preset]
    assert plan.batch_size > 2  # 5 % of four small cases would have left nnUNetPlans' minimum


@pytest.mark.parametrize(
    "preset, gpu_memory_gb", [("resenc_m", 0.1), ("resenc_l", 0.1), ("resenc_xl", 0.15)]
)
def test_resenc_presets_shrink_the_patch_by_their_proxy_as_nnunet(
    nnunet_dirs, preset, gpu_memory_gb
):
    plan, _ = _compare(_isotropic(nnunet_dirs.raw), gpu_memory_gb, preset)
    assert np.prod(plan.patch_size) < np.prod(plan.median_shape)


@pytest.mark.parametrize(
    "preset, gpu_memory_gb, lowres",
    [("resenc_m", 0.08, True), ("resenc_m", 0.17, False), ("resenc_l", 0.05, True)],
)
def test_resenc_batch_dice_follows_nnunets_lowres_rule_with_their_proxy(
    nnunet_dirs, preset, gpu_memory_gb, lowres
):
    # 0.17 GB: the patch covers < 25 %, a 3d_lowres stage is tried with ResEnc's proxy and
    # dropped; at the smaller budgets it survives and 3d_fullres uses batch Dice
    plan, _ = _compare(_lowres_rule(nnunet_dirs.raw), gpu_memory_gb, preset)
    assert np.prod(plan.patch_size) / np.prod(plan.median_shape) < 0.25
    assert plan.batch_dice is lowres


@pytest.mark.parametrize("preset", RESENC)
def test_resenc_kits_like_plans_match_nnunet(nnunet_dirs, preset):
    fp = _fingerprint(
        [(z, 0.78, 0.78) for z in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)], [(100, 512, 512)] * 6
    )
    name = f"Dataset92{RESENC.index(preset)}_KiTSLike"
    plan, _ = _plan_both(nnunet_dirs, name, fp, {"0": "CT"}, CT_LABELS, None, preset=preset)
    assert plan.preset == preset


@pytest.mark.parametrize("preset", RESENC)
def test_resenc_isotropic_160_plans_match_nnunet(nnunet_dirs, preset):
    # 100 cases: no dataset cap; the batch grows with the budget's headroom
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 100, [(160, 160, 160)] * 100)
    name = f"Dataset93{RESENC.index(preset)}_Iso160"
    _plan_both(nnunet_dirs, name, fp, {"0": "CT"}, CT_LABELS, None, preset=preset)


def test_resenc_plans_differ_from_nnunets_default_plans(nnunet_dirs):
    # the presets are not nnUNetPlans relabelled: at 8 GB ResEnc M's proxy and 680 M
    # reference give a different patch or batch than the PlainConvUNet's 560 M on KiTS-like data
    fp = _fingerprint([(3.0, 0.78, 0.78)] * 6, [(100, 512, 512)] * 6)
    plain, _ = _plan_both(nnunet_dirs, "Dataset940_A", fp, {"0": "CT"}, CT_LABELS, 8.0)
    res, _ = _plan_both(
        nnunet_dirs, "Dataset941_B", fp, {"0": "CT"}, CT_LABELS, 8.0, preset="resenc_m"
    )
    assert (plain.patch_size, plain.batch_size) != (res.patch_size, res.batch_size)


def test_presets_hold_nnunets_planner_settings(nnunet_dirs):
    # each preset's constants read off the installed planner classes at their default targets
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 4, [(64, 64, 64)] * 4)
    _write_fingerprint_dataset(nnunet_dirs, "Dataset950_Settings", fp, {"0": "CT"}, CT_LABELS)
    assert set(PLANNERS) == set(PLANNER_PRESETS) == set(PRESET_GPU_MEMORY_GB)
    for name, preset in PLANNER_PRESETS.items():
        planner = _planner("Dataset950_Settings", None, name)
        network = {"plain": "PlainConvUNet", "residual": "ResidualEncoderUNet"}[preset.network]
        assert planner.UNet_class.__name__ == network
        assert preset.plans_name == planner.plans_identifier
        assert preset.reference_3d == planner.UNet_reference_val_3d
        assert preset.reference_gb == planner.UNet_reference_val_corresp_GB
        assert PRESET_GPU_MEMORY_GB[name] == planner.UNet_vram_target_GB == preset.reference_gb
        assert preset.max_dataset_covered == planner.max_dataset_covered
        encoder = planner.UNet_blocks_per_stage_encoder
        assert preset.encoder_blocks[: len(encoder)] == tuple(encoder)
        assert {preset.decoder_convs} == set(planner.UNet_blocks_per_stage_decoder)
        assert PlanConfig(preset=name).gpu_memory_gb == planner.UNet_vram_target_GB


# ----------------------------------------------------------------------------------------------
# configurations: 2d, 3d_lowres and the cascade (compared above for every dataset and preset)
# ----------------------------------------------------------------------------------------------


def test_kits_like_lowres_and_cascade_plans_match_nnunet(nnunet_dirs):
    fp = _fingerprint(
        [(z, 0.78, 0.78) for z in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)], [(100, 512, 512)] * 6
    )
    _, theirs = _plan_both(nnunet_dirs, "Dataset960_KiTSLike", fp, {"0": "CT"}, CT_LABELS, 8.0)
    assert {"2d", "3d_lowres", "3d_cascade_fullres"} <= set(theirs["configurations"])
    dataset = SimpleNamespace(channels=("CT",), num_classes=3, labels=CT_LABELS, ignore_label=None)
    plans = {
        name: make_plan(fp, dataset, PlanConfig(configuration=name), workers=0)
        for name in CONFIGURATIONS
    }
    lowres, fullres = plans["3d_lowres"], plans["3d_fullres"]
    coarser = np.array(lowres.target_spacing_mm) / np.array(fullres.target_spacing_mm)
    assert (coarser >= 1).all() and (coarser > 1).any()
    assert not lowres.batch_dice and fullres.batch_dice and plans["2d"].batch_dice
    cascade = plans["3d_cascade_fullres"]
    assert cascade.patch_size == fullres.patch_size and cascade.previous_stage_labels == (1, 2)
    assert cascade.network_input_channels == 3 and fullres.network_input_channels == 1
    # 2d keeps 3d_fullres's slice-axis spacing for reference; its patch is one slice
    assert plans["2d"].patch_size[0] == 1 and plans["2d"].features_per_stage[-1] == 512


def test_a_2d_patch_override_needs_one_slice(nnunet_dirs):
    fp = _fingerprint([(3.0, 1.0, 1.0)] * 4, [(30, 130, 130)] * 4)
    dataset = SimpleNamespace(channels=("CT",), num_classes=3, labels=CT_LABELS, ignore_label=None)
    plan = make_plan(fp, dataset, PlanConfig(configuration="2d", patch_size=(1, 96, 64)), workers=0)
    assert plan.patch_size == (1, 96, 64)
    with pytest.raises(ConfigError, match="plan.patch_size: a 2d patch has 1 voxel"):
        make_plan(fp, dataset, PlanConfig(configuration="2d", patch_size=(8, 96, 64)), workers=0)
