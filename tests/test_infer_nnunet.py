"""Inference against nnU-Net v2.8.1 itself: export (resample logits, then softmax/sigmoid and
argmax/threshold), the sliding window with Gaussian weighting, and mirror TTA.

nnU-Net's predictor accumulates in fp16 on every device; ablate in float32. The 1e-4 comparisons
therefore run nnU-Net's own code with its two fp16 choices switched to float32
(`nnunet_fp32`), and one more comparison runs it unmodified at fp16's precision.
"""

from __future__ import annotations

import dataclasses
import itertools
import types

import numpy as np
import pytest
import torch
from nnunetv2.inference import (  # the oracle is a test dependency: never skipped
    export_prediction,
    predict_from_raw_data,
    sliding_window_prediction,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from test_nets import dna_network  # tests/ is on sys.path under pytest
from torch import nn

from ablate.config import InferConfig, TrainConfig
from ablate.errors import ConfigError
from ablate.imageio import Geometry
from ablate.infer import (
    CaseEnsemble,
    _uncrop_probabilities,
    export_labels,
    export_probabilities,
    gaussian_importance,
    mirror_combinations,
    model_logits,
    resample_logits,
    window_starts,
)
from ablate.nets import build_network
from ablate.plan import ChannelNormalization, Plan
from ablate.preprocess import CaseProperties
from ablate.regions import default_region_order

CPU = torch.device("cpu")
IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
REGIONS = {"kidney": (1, 2), "tumor": (2,)}


# --- nnU-Net's side: plans, configuration and label managers built from ablate's plan -----------


def nnunet_managers(plan, regions=None):
    """nnU-Net's PlansManager, ConfigurationManager and LabelManager for the same plan."""
    forward = list(getattr(plan, "transpose_forward", None) or (0, 1, 2))
    backward = list(getattr(plan, "transpose_backward", None) or (0, 1, 2))
    configuration = {
        "spacing": list(plan.target_spacing_mm),
        "patch_size": list(plan.patch_size),
        "architecture": {},  # present so ConfigurationManager takes the current plans format
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        # nnU-Net's ExperimentPlanner.determine_resampling for probabilities
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
    }
    plans = PlansManager(
        {
            "transpose_forward": forward,
            "transpose_backward": backward,
            "configurations": {"3d_fullres": configuration},
        }
    )
    if regions is None:
        labels = {"background": 0, **{f"c{i}": i for i in range(1, plan.num_classes)}}
        label_manager = LabelManager(labels, None)
    else:
        labels = {"background": 0, **{name: list(v) for name, v in regions.items()}}
        label_manager = LabelManager(labels, list(default_region_order(regions)))
    return plans, ConfigurationManager(configuration), label_manager


def nnunet_properties(props: CaseProperties) -> dict:
    return {
        "spacing": list(props.geometry.spacing_mm),
        "shape_before_cropping": list(props.original_shape),
        "bbox_used_for_cropping": [list(b) for b in props.crop_bbox],
        "shape_after_cropping_and_before_resampling": list(props.shape_after_crop),
    }


def nnunet_export(logits: torch.Tensor, plan, props, regions=None, probabilities=False):
    plans, configuration, label_manager = nnunet_managers(plan, regions)
    out = export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(),
        plans,
        configuration,
        label_manager,
        nnunet_properties(props),
        return_probabilities=probabilities,
        num_threads_torch=1,
    )
    return out


# --- export ------------------------------------------------------------------------------------


def make_plan(spacing_mm, patch=(8, 16, 16), classes=3, **transpose) -> Plan:
    plan = Plan(
        target_spacing_mm=spacing_mm,
        patch_size=patch,
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (1, 2, 2), (2, 2, 2)],
        conv_kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)],
        features_per_stage=[4, 8, 16],
        num_input_channels=1,
        num_classes=classes,
        normalization=[ChannelNormalization("zscore")],
        median_shape=patch,
        anisotropic=False,
    )
    return dataclasses.replace(plan, **transpose)  # with nnU-Net's axis transpose, if given


# (plan spacing, original spacing, original shape, crop bbox) in the preprocessed axis order
EXPORT_CASES = {
    # coarse z at 3.6 mm against 1.0 mm in-plane: linear in-plane, nearest along z
    "anisotropic": ((3.0, 0.8, 0.8), (3.6, 0.7, 0.9), (9, 30, 26), ((1, 8), (2, 29), (0, 25))),
    "isotropic": ((1.0, 1.0, 1.0), (1.3, 0.8, 1.1), (12, 21, 17), ((0, 12), (3, 19), (1, 16))),
}


def case(name: str, seed: int = 0, channels: int = 3, logit_scale: float = 6.0):
    spacing_mm, original_mm, original_shape, bbox = EXPORT_CASES[name]
    crop_shape = tuple(b - a for a, b in bbox)
    resampled = tuple(
        int(round(s * o / t)) for s, o, t in zip(crop_shape, original_mm, spacing_mm, strict=True)
    )
    props = CaseProperties(
        "c",
        Geometry(original_mm, (0.0, 0.0, 0.0), IDENTITY),
        original_shape,
        bbox,
        crop_shape,
        resampled,
    )
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((channels, *resampled), generator=generator) * logit_scale
    return make_plan(spacing_mm, classes=channels), props, logits


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_export_labels_equal_nnunets_export(name):
    plan, props, logits = case(name)
    ours = export_labels(logits, props, plan)
    theirs = nnunet_export(logits, plan, props)
    assert ours.shape == props.original_shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_export_order_matters_and_we_resample_logits_first():
    """Softmax at the plan's spacing, then resampling probabilities (ablate before) gives other
    labels than nnU-Net's resampled logits on these confident, upsampled logits."""
    plan, props, logits = case("anisotropic", seed=3, logit_scale=8.0)
    theirs = np.asarray(nnunet_export(logits, plan, props))
    probabilities = torch.softmax(torch.as_tensor(logits), 0).numpy()  # at the plan's spacing
    resampled = resample_logits(probabilities, props, plan)  # the old order: softmax, resample
    softmax_first = _uncrop_probabilities(resampled, props, plan, None)
    assert (softmax_first.argmax(0) != theirs).sum() > 10
    np.testing.assert_array_equal(export_labels(logits, props, plan), theirs)


def test_export_regions_equal_nnunets_export():
    plan, props, logits = case("anisotropic", seed=1, channels=2)
    theirs = nnunet_export(logits, plan, props, REGIONS)
    np.testing.assert_array_equal(export_labels(logits, props, plan, REGIONS), np.asarray(theirs))


@pytest.mark.parametrize("regions", [None, REGIONS])
def test_export_probabilities_equal_nnunets_saved_probabilities(regions):
    plan, props, logits = case("isotropic", seed=2, channels=2 if regions else 3)
    labels, probabilities = nnunet_export(logits, plan, props, regions, probabilities=True)
    ours = export_probabilities(logits, props, plan, regions)
    np.testing.assert_allclose(ours, probabilities, atol=1e-5)
    assert (ours[0, 0, 0, 0] == 1.0) == (regions is None)  # background outside the crop


def test_export_reverts_nnunets_transpose():
    """The transpose hook: a plan transposed (2, 0, 1) exports in the image's axis order."""
    _, props, logits = case("anisotropic", seed=4)
    plan = make_plan((3.0, 0.8, 0.8), transpose_forward=(2, 0, 1), transpose_backward=(1, 2, 0))
    # props.geometry holds the image's spacing; nnU-Net transposes it with transpose_forward
    image_spacing = tuple(props.geometry.spacing_mm[i] for i in plan.transpose_backward)
    props = CaseProperties(
        "c",
        Geometry(image_spacing, (0.0, 0.0, 0.0), IDENTITY),
        props.original_shape,
        props.crop_bbox,
        props.shape_after_crop,
        props.shape_after_resample,
    )
    theirs = np.asarray(nnunet_export(logits, plan, props))
    ours = export_labels(logits, props, plan)
    assert ours.shape == tuple(props.original_shape[i] for i in plan.transpose_backward)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_case_ensemble_follows_nnunets_two_ensembles(average):
    """logits: nnU-Net's predictor averages fold logits, then exports; probabilities:
    nnUNetv2_ensemble averages each fold's exported probabilities, then argmax."""
    plan, props, first = case("anisotropic", seed=5)
    second = case("anisotropic", seed=6)[2]
    ensemble = CaseEnsemble(props, plan, None, average)
    np.testing.assert_array_equal(
        ensemble.add(first), np.asarray(nnunet_export(first, plan, props))
    )
    ensemble.add(second)
    if average == "logits":
        expected = np.asarray(nnunet_export((first + second) / 2, plan, props))
    else:
        probabilities = [
            nnunet_export(x, plan, props, probabilities=True)[1] for x in (first, second)
        ]
        _, _, label_manager = nnunet_managers(plan)
        expected = label_manager.convert_probabilities_to_segmentation(
            (probabilities[0] + probabilities[1]) / 2
        )
    np.testing.assert_array_equal(ensemble.labels(), expected)
    single = CaseEnsemble(props, plan, None, None)  # no ensemble: each model's export only
    np.testing.assert_array_equal(
        single.add(second), np.asarray(nnunet_export(second, plan, props))
    )
    with pytest.raises(ConfigError, match="no models"):
        single.labels()


# --- sliding window, Gaussian, steps and TTA against nnUNetPredictor ---------------------------


def test_gaussian_and_steps_equal_nnunets():
    patch = (8, 16, 12)
    theirs = sliding_window_prediction.compute_gaussian(patch, 1 / 8, 10, torch.float32, CPU)
    np.testing.assert_allclose(gaussian_importance(patch) * 10, theirs.numpy(), rtol=1e-6)
    for size in [(8, 16, 12), (11, 21, 27), (30, 17, 13)]:
        for step in (0.5, 0.33, 1.0):
            expected = sliding_window_prediction.compute_steps_for_sliding_window(size, patch, step)
            assert [window_starts(s, p, step) for s, p in zip(size, patch, strict=True)] == expected


def test_tta_order_equals_nnunets_mirror_combinations():
    # nnUNetPredictor._internal_maybe_mirror_and_predict: identity, then
    # [c for i in range(len(mirror_axes)) for c in itertools.combinations(mirror_axes, i + 1)]
    for axes in [(0, 1, 2), (1, 2), (0, 2), (2,)]:
        theirs = [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for k in range(1, len(theirs) + 1):
            assert mirror_combinations(axes, k) == theirs[:k]
            assert mirror_combinations(axes, k, "nnunet_v2") == theirs[:k]


# nnU-Net v1's SegmentationNetwork._internal_maybe_mirror_and_pred_3D, transcribed: pass m runs
# `if m == i and (axes in mirror_axes)`, flipping dims of the (b, c, x, y, z) tensor (data axis =
# dim - 2); v1 is not installable beside v2, so its table is the reference here
V1_MIRROR_PASSES = [
    (0, ()),
    (1, (4,)),
    (2, (3,)),
    (3, (4, 3)),
    (4, (2,)),
    (5, (4, 2)),
    (6, (3, 2)),
    (7, (4, 3, 2)),
]


def _v1_passes(mirror_axes, mirror_idx: int = 8) -> list[tuple[int, ...]]:
    passes = [tuple(sorted(d - 2 for d in dims)) for _, dims in V1_MIRROR_PASSES[:mirror_idx]]
    return [p for p in passes if set(p) <= set(mirror_axes)]


def test_v1_mirror_order_equals_nnunet_v1s_passes():
    for axes in [(0, 1, 2), (1, 2), (0, 2), (2,)]:
        theirs = _v1_passes(axes)
        for k in range(1, len(theirs) + 1):
            assert mirror_combinations(axes, k, "nnunet_v1") == theirs[:k]
    # Zhou 2021's (FLARE21) TTA 2 (v1 cut to two passes, all axes allowed): identity and the x flip,
    # where nnU-Net v2's order flips z
    assert mirror_combinations((0, 1, 2), 2, "nnunet_v1") == _v1_passes((0, 1, 2), 2)
    assert mirror_combinations((0, 1, 2), 2, "nnunet_v1") == [(), (2,)]
    assert mirror_combinations((0, 1, 2), 2) == [(), (0,)]
    # at TTA 8 both orders average the same eight predictions
    assert set(mirror_combinations((0, 1, 2), 8, "nnunet_v1")) == set(
        mirror_combinations((0, 1, 2), 8)
    )


class _Fp32Torch(types.ModuleType):
    """`torch` as nnU-Net's predictor sees it, with its fp16 accumulators made float32."""

    def __init__(self):
        super().__init__("torch")
        self.half = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def nnunet_fp32(monkeypatch):
    gaussian = sliding_window_prediction.compute_gaussian.__wrapped__
    monkeypatch.setattr(predict_from_raw_data, "torch", _Fp32Torch())
    monkeypatch.setattr(
        predict_from_raw_data,
        "compute_gaussian",
        lambda *a, **k: gaussian(*a, **{**k, "dtype": torch.float32}),
    )


def dna_plain_unet(plan: Plan) -> nn.Module:
    """nnU-Net's PlainConvUNet for the plan, as nnU-Net builds it for inference (no deep
    supervision); tests/test_nets.py checks its parameters register in ablate's order."""
    network = dna_network("plain", plan, [])
    network.decoder.deep_supervision = False
    return network


def same_weights(plan: Plan) -> tuple[nn.Module, nn.Module]:
    """ablate's plain U-Net and DNA's, with the same random weights (InstanceNorm affine too)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ours = build_network(TrainConfig(arch="plain"), plan)
        theirs = dna_plain_unet(plan)
        with torch.no_grad():
            for mine, ref in zip(ours.parameters(), theirs.parameters(), strict=True):
                ref.copy_(torch.randn(ref.shape) * 0.3)
                mine.copy_(ref)
    return ours, theirs


def nnunet_predictor(network: nn.Module, plan: Plan, mirror: bool):
    plans, configuration, _ = nnunet_managers(plan)
    predictor = predict_from_raw_data.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=CPU,
        allow_tqdm=False,
    )
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}}
    predictor.manual_initialization(
        network, plans, configuration, None, dataset_json, "nnUNetTrainer", (0, 1, 2)
    )
    return predictor


@pytest.mark.parametrize("tta", [1, 8])
def test_sliding_window_logits_equal_nnunets_predictor(tta, nnunet_fp32):
    plan = make_plan((3.0, 0.8, 0.8))
    ours, theirs = same_weights(plan)
    image = torch.randn((1, 11, 21, 27), generator=torch.Generator().manual_seed(1))
    expected = nnunet_predictor(theirs, plan, tta == 8).predict_sliding_window_return_logits(image)
    logits = model_logits(ours, image.numpy(), plan, InferConfig(tta=tta), CPU)
    assert expected.dtype == torch.float32 and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    _, props, _ = case("anisotropic")
    props = CaseProperties(
        "c", props.geometry, (13, 26, 30), ((1, 12), (2, 24), (0, 30)), (11, 22, 30), (11, 21, 27)
    )
    np.testing.assert_array_equal(
        export_labels(logits, props, plan), np.asarray(nnunet_export(expected, plan, props))
    )


def test_sliding_window_near_unmodified_fp16_nnunet():
    """nnU-Net as shipped (fp16 accumulators) gives the same labels and, two voxels in from the
    volume's faces, logits within fp16's precision. On the faces its fp16 Gaussian weights
    (down to 1e-6 of the peak) lose precision and the logits differ by up to 0.3 here."""
    plan = make_plan((3.0, 0.8, 0.8))
    ours, theirs = same_weights(plan)
    image = torch.randn((1, 9, 18, 20), generator=torch.Generator().manual_seed(2))
    expected = nnunet_predictor(theirs, plan, True).predict_sliding_window_return_logits(image)
    assert expected.dtype == torch.float16
    logits = model_logits(ours, image.numpy(), plan, InferConfig(tta=8), CPU)
    inner = (slice(None), *[slice(2, -2)] * 3)
    torch.testing.assert_close(logits[inner], expected.float()[inner], atol=5e-3, rtol=1e-2)
    torch.testing.assert_close(logits.argmax(0), expected.argmax(0), atol=0, rtol=0)
