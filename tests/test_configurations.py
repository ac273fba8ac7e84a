"""nnU-Net's 2d configuration and cascade input against nnU-Net's own code on the same input:
the 2D network (DNA's 2D U-Nets), the 2D augmentation setup and crop boxes (nnUNetTrainer,
nnUNetDataLoader with a 2D patch), the 2D sliding window and export (nnUNetPredictor,
export_prediction with a 2D configuration), the previous stage's one-hot channels
(convert_labelmap_to_one_hot, MoveSegAsOneHotToDataTransform), its resampling
(resample_and_save's probabilities resampling), and the cascade's two random transforms
(bgv2's ApplyRandomBinaryOperatorTransform, RemoveRandomConnectedComponent...)."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.nnunet import random_binary_operator as bgv2_binary
from batchgeneratorsv2.transforms.nnunet import remove_connected_components as bgv2_cc
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from nnunetv2.inference import export_prediction, predict_from_raw_data
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from test_augment_nnunet import nnunet_setup
from test_infer_nnunet import nnunet_managers, nnunet_properties
from torch import nn

from ablate.augment import enlarged_patch_size
from ablate.augment.geometry import max_rotation_deg_for
from ablate.cascade import (
    apply_binary_operator,
    one_hot,
    previous_stage_segmentation,
    remove_component,
    with_previous_stage,
)
from ablate.config import InferConfig, TrainConfig
from ablate.imageio import Geometry
from ablate.infer import export_labels, model_logits
from ablate.nets import build_network, count_parameters
from ablate.plan import ChannelNormalization, Plan
from ablate.preprocess import CaseProperties
from ablate.sampler import choose_patch_start, crop_bounds

CPU = torch.device("cpu")
IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def flat_plan(patch=(24, 32), channels=1, classes=3, stages=3) -> Plan:
    """A 2d plan as ablate holds it: (1, Y, X) patch, (1, ...) pooling and kernels."""
    return Plan(
        target_spacing_mm=(3.0, 0.8, 0.8),
        patch_size=(1, *patch),
        batch_size=12,
        pool_kernel_sizes=[(1, 1, 1)] + [(1, 2, 2)] * (stages - 1),
        conv_kernel_sizes=[(1, 3, 3)] * stages,
        features_per_stage=[4 * 2**s for s in range(stages)],
        num_input_channels=channels,
        num_classes=classes,
        normalization=[ChannelNormalization("zscore")] * channels,
        median_shape=(9, *patch),
        anisotropic=True,
        configuration="2d",
    )


def dna_2d(arch: str, plan: Plan, blocks=(1, 3, 4)) -> nn.Module:
    """DNA's 2D U-Net as nnU-Net's 2d plans build it (Conv2d, InstanceNorm2d)."""
    from dynamic_network_architectures.architectures import unet

    common = dict(
        input_channels=plan.network_input_channels,
        n_stages=plan.num_stages,
        features_per_stage=plan.features_per_stage,
        conv_op=nn.Conv2d,
        kernel_sizes=[k[1:] for k in plan.conv_kernel_sizes],
        strides=[p[1:] for p in plan.pool_kernel_sizes],
        num_classes=plan.num_classes,
        conv_bias=True,
        norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    if arch == "plain":
        return unet.PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)
    return unet.ResidualEncoderUNet(
        n_blocks_per_stage=list(blocks), n_conv_per_stage_decoder=1, **common
    )


def copy_weights(ours: nn.Module, theirs: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mine, ref in zip(ours.parameters(), theirs.parameters(), strict=True):
            ref.copy_(torch.randn(ref.shape, generator=generator) * 0.3)
            mine.copy_(ref)


# ---- 2D network -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["plain", "residual"])
def test_2d_network_is_dnas_2d_unet(arch):
    plan = flat_plan(channels=2)
    ours = build_network(TrainConfig(arch=arch, blocks_per_stage=(1, 3, 4)), plan)
    theirs = dna_2d(arch, plan)
    kinds = {type(m) for m in ours.modules()}
    assert nn.Conv2d in kinds and nn.Conv3d not in kinds and nn.InstanceNorm3d not in kinds
    assert count_parameters(ours) == count_parameters(theirs)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    copy_weights(ours, theirs)
    x = torch.randn(2, 2, 24, 32, generator=torch.Generator().manual_seed(1))  # (B, C, Y, X)
    for a, b in zip(ours(x[:, :, None]), theirs(x), strict=True):
        assert a.shape[2] == 1  # ablate keeps the slice axis: (B, K, 1, Y', X')
        torch.testing.assert_close(a[:, :, 0], b, atol=1e-4, rtol=1e-4)


def test_cascade_network_takes_the_one_hot_channels():
    plan = dataclasses.replace(flat_plan(channels=1), previous_stage_labels=(1, 2))
    net = build_network(TrainConfig(), plan)
    assert plan.network_input_channels == 3
    assert next(net.parameters()).shape[1] == 3
    assert net(torch.zeros(1, 3, 1, 24, 32))[0].shape == (1, 3, 1, 24, 32)


# ---- 2D augmentation setup and crops ------------------------------------------------------------


@pytest.mark.parametrize("patch", [(64, 48), (96, 96), (128, 64), (160, 96), (40, 224)])
def test_2d_rotation_and_enlarged_patch_equal_nnunets(patch):
    rotation, dummy_2d, initial, mirror_axes = nnunet_setup(patch)
    assert not dummy_2d and tuple(mirror_axes) == (0, 1)
    assert max_rotation_deg_for((1, *patch)) == pytest.approx(np.degrees(rotation[1]))
    assert enlarged_patch_size((1, *patch)) == (1, *(int(v) for v in initial))


class _Recorder:
    """np.random stand-in for nnU-Net's get_bbox: records randint's bounds, returns the low."""

    def __init__(self):
        self.bounds = []

    def randint(self, low, high):
        self.bounds.append((int(low), int(high) - 1))
        return low


def _nnunet_loader_2d(patch, final):
    """nnU-Net's nnUNetDataLoader state for a 2D patch (the constructor's pseudo-3D fields)."""
    loader = object.__new__(nnUNetDataLoader)
    loader.patch_size = (1, *patch)
    loader.final_patch_size = (1, *final)
    loader.need_to_pad = (np.array(loader.patch_size) - np.array(loader.final_patch_size)).astype(
        int
    )
    loader.has_ignore = False
    loader.annotated_classes_key = (-1, 0, 1, 2)
    return loader


@pytest.mark.parametrize("shape", [(9, 40, 50), (5, 20, 70), (1, 100, 30)])
def test_2d_crop_boxes_equal_nnunets_2d_loader(shape, monkeypatch):
    final = (32, 48)
    patch = enlarged_patch_size((1, *final))[1:]
    loader = _nnunet_loader_2d(patch, final)
    recorder, rng = _Recorder(), np.random.default_rng(0)
    monkeypatch.setattr(np, "random", types.SimpleNamespace(randint=recorder.randint))
    loader.get_bbox(np.array(shape), False, None)
    low, high = crop_bounds(shape, (1, *patch), (1, *final))
    assert recorder.bounds == list(zip(low, high, strict=True))
    assert low[0] == high[0] - shape[0] + 1 == 0  # one whole slice, any of them
    # a forced crop centred on a foreground voxel: nnU-Net's box start, the voxel's own slice
    voxel = np.array([shape[0] - 1, shape[1] // 3, shape[2] - 2])
    monkeypatch.setattr(
        np, "random", types.SimpleNamespace(choice=lambda n: 0, randint=recorder.randint)
    )
    theirs, _ = loader.get_bbox(np.array(shape), True, {1: np.array([[0, *voxel]])})
    ours = choose_patch_start(shape, (1, *patch), (1, *final), rng, {1: voxel[None]})
    assert list(ours) == list(theirs) and ours[0] == voxel[0]


# ---- 2D sliding window and export ---------------------------------------------------------------


def _nnunet_2d_managers(plan: Plan):
    plans, _, labels = nnunet_managers(plan)
    configuration = {
        "spacing": list(plan.target_spacing_mm[1:]),
        "patch_size": list(plan.patch_size[1:]),
        "architecture": {},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
    }
    plans.plans["configurations"] = {"2d": configuration}
    return plans, ConfigurationManager(configuration), labels


def test_2d_sliding_window_and_export_equal_nnunets(monkeypatch):
    from test_infer_nnunet import _Fp32Torch, sliding_window_prediction

    gaussian = sliding_window_prediction.compute_gaussian.__wrapped__
    monkeypatch.setattr(predict_from_raw_data, "torch", _Fp32Torch())
    monkeypatch.setattr(
        predict_from_raw_data,
        "compute_gaussian",
        lambda *a, **k: gaussian(*a, **{**k, "dtype": torch.float32}),
    )
    plan = flat_plan(patch=(16, 24))
    ours = build_network(TrainConfig(), plan)
    theirs = dna_2d("plain", plan)
    copy_weights(ours, theirs)
    theirs.decoder.deep_supervision = False
    plans, configuration, labels = _nnunet_2d_managers(plan)
    predictor = predict_from_raw_data.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=CPU,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        theirs,
        plans,
        configuration,
        None,
        {"labels": {"background": 0, "a": 1, "b": 2}},
        "nnUNetTrainer",
        (0, 1),
    )
    image = torch.randn((1, 5, 21, 30), generator=torch.Generator().manual_seed(2))
    expected = predictor.predict_sliding_window_return_logits(image)
    logits = model_logits(ours, image.numpy(), plan, InferConfig(tta=8), CPU)  # 2d: 4 mirrors
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # export: the case keeps its own slice spacing (2.5 mm), only the plane is resampled
    props = CaseProperties(
        "c",
        Geometry((2.5, 0.7, 0.9), (0.0, 0.0, 0.0), IDENTITY),
        (7, 27, 30),
        ((1, 6), (2, 26), (0, 27)),
        (5, 24, 27),
        (5, 21, 30),
    )
    theirs_labels = export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape(
        expected.clone(), plans, configuration, labels, nnunet_properties(props), False, 1
    )
    np.testing.assert_array_equal(export_labels(logits, props, plan), np.asarray(theirs_labels))


# ---- the cascade's previous-stage input ----------------------------------------------------------


def test_one_hot_previous_stage_equals_nnunets():
    rng = np.random.default_rng(0)
    seg = rng.integers(-1, 4, (6, 9, 11)).astype(np.int16)  # -1: outside the nonzero mask
    labels = (1, 2, 3)
    np.testing.assert_array_equal(
        one_hot(seg, labels, np.float32), convert_labelmap_to_one_hot(seg, labels, np.float32)
    )
    image = rng.normal(size=(2, 6, 9, 11)).astype(np.float32)
    transform = MoveSegAsOneHotToDataTransform(1, labels, remove_channel_from_source=True)
    target = np.where(seg < 0, 0, seg)  # after nnU-Net's RemoveLabelTansform(-1, 0)
    out = transform(
        image=torch.from_numpy(image),
        segmentation=torch.from_numpy(np.stack([target, target])),
    )
    np.testing.assert_array_equal(with_previous_stage(image, target, labels), out["image"].numpy())


def test_previous_stage_resampling_equals_nnunets_resample_and_save():
    # lowres logits (2.2 x 1.6 x 1.6 mm) to the fullres grid, as resample_and_save does it:
    # the lowres spacing on both sides, linear, then argmax
    logits = torch.randn((3, 7, 12, 10), generator=torch.Generator().manual_seed(3)) * 4
    spacing = [2.2, 1.6, 1.6]
    target = (11, 19, 16)
    configuration = ConfigurationManager(
        {
            "spacing": spacing,
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {
                "is_seg": False,
                "order": 1,
                "order_z": 0,
                "force_separate_z": None,
            },
            "architecture": {},
        }
    )
    resampled = configuration.resampling_fn_probabilities(logits.clone(), target, spacing, spacing)
    expected = np.asarray(torch.as_tensor(resampled).argmax(0))
    np.testing.assert_array_equal(previous_stage_segmentation(logits, target, spacing), expected)
    assert isinstance(PlansManager, type)  # the managers above are nnU-Net's own


def _bgv2_binary_operator(hot: np.ndarray, channel: int, operator: str, radius: float):
    functions = {
        "dilation": bgv2_binary.binary_dilation_torch,
        "erosion": bgv2_binary.binary_erosion_torch,
        "closing": bgv2_binary.binary_closing_torch,
        "opening": bgv2_binary.binary_opening_torch,
    }
    transform = bgv2_binary.ApplyRandomBinaryOperatorTransform(
        list(range(hot.shape[0])), strel_size=(1, 8), p_per_label=0.5
    )
    params = {"apply_to_channels": [channel], "operators": [functions[operator]]}
    return transform._apply_to_image(torch.from_numpy(hot.copy()), **params, strel_size=[radius])


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.int16)
    for label in (1, 2):
        for _ in range(3):
            centre = [rng.integers(0, s) for s in shape]
            box = tuple(slice(max(c - 3, 0), c + rng.integers(2, 5)) for c in centre)
            seg[box] = label
    return one_hot(seg, (1, 2))


@pytest.mark.parametrize("operator", ["dilation", "erosion", "closing", "opening"])
@pytest.mark.parametrize("radius", [1.0, 2.5, 3.7])
def test_binary_operator_equals_bgv2s(operator, radius):
    hot = _blobs((10, 18, 16), seed=int(radius * 10))
    ours = apply_binary_operator(hot, [(0, operator, radius)])
    theirs = _bgv2_binary_operator(hot, 0, operator, radius)
    np.testing.assert_array_equal(ours, theirs.numpy())
    assert not np.array_equal(ours, hot) or operator in ("closing", "opening")
    # a 2d sample: bgv2 sees the slice alone and uses a disk
    flat = _blobs((1, 30, 26), seed=7)
    ours = apply_binary_operator(flat, [(1, operator, radius)])
    theirs = _bgv2_binary_operator(flat[:, 0], 1, operator, radius)
    np.testing.assert_array_equal(ours[:, 0], theirs.numpy())


class _PickRng:
    def __init__(self, index: int):
        self.index = index

    def integers(self, n):
        assert 0 <= self.index < n
        return self.index


def test_remove_component_equals_bgv2s(monkeypatch):
    seg = np.zeros((12, 20, 20), np.int16)
    seg[1:4, 2:6, 2:5] = seg[8:11, 12:18, 3:6] = seg[5, 15:17, 15:19] = 1
    seg[2:5, 10:13, 12:16] = seg[9:12, 2:5, 14:19] = 2
    seg[6:12, 6:19, 6:19][seg[6:12, 6:19, 6:19] == 0] = 2  # too large to remove (> 15 %)
    hot = one_hot(seg, (1, 2))
    transform = bgv2_cc.RemoveRandomConnectedComponentFromOneHotEncodingTransform(
        [0, 1], fill_with_other_class_p=0, dont_do_if_covers_more_than_x_percent=0.15
    )
    for channel in (0, 1):
        _, sizes = bgv2_cc.label_with_component_sizes(hot[channel].astype(bool))
        valid = [i for i, n in sizes.items() if n < hot[channel].size * 0.15]
        assert len(valid) >= 2
        for index, component in enumerate(valid):
            monkeypatch.setattr(
                bgv2_cc.np,
                "random",
                types.SimpleNamespace(choice=lambda ids, c=component: c, uniform=lambda: 1.0),
            )
            theirs = transform._apply_to_image(
                torch.from_numpy(hot.copy()), apply_to_channels=[channel]
            )
            ours = remove_component(hot, [channel], _PickRng(index))
            np.testing.assert_array_equal(ours, theirs.numpy())
            assert ours[channel].sum() < hot[channel].sum()


# ---- the cascade's job dependencies (expand) ---------------------------------------------------


def _configuration_study(values, **extra):
    from ablate.study import Study

    return Study.model_validate(
        {
            "name": "configurations",
            "dataset": {"synthetic": {"cases": 6}},
            "train": {"epochs": 1, "iterations_per_epoch": 1},
            "folds": {"k": 3},
            "axes": {"plan.configuration": values, **extra},
        }
    )


def test_the_cascade_needs_every_fold_of_its_lowres_stage():
    from ablate.expand import expand

    study = _configuration_study(["3d_fullres", "3d_lowres", "3d_cascade_fullres"])
    trains, evals = expand(study, "data")
    by_config = {}
    for job in trains:
        by_config.setdefault(job.plan.configuration, []).append(job)
    lowres = [j.key for j in sorted(by_config["3d_lowres"], key=lambda j: j.fold)]
    for job in by_config["3d_cascade_fullres"]:
        assert job.needs == tuple(lowres) and job.previous_stage_plan.configuration == "3d_lowres"
    assert all(not j.needs for c in ("3d_fullres", "3d_lowres") for j in by_config[c])
    cascade_keys = {j.key for j in by_config["3d_cascade_fullres"]}
    assert sum(e.train_key in cascade_keys for e in evals) == 3
    # the cascade's key follows its lowres stage: another lowres training, another cascade
    other, _ = expand(
        _configuration_study(["3d_lowres", "3d_cascade_fullres"]).model_copy(update={"seeds": [0]}),
        "other data",
    )
    assert not cascade_keys & {j.key for j in other}


def test_a_cascade_without_its_lowres_stage_is_refused():
    from ablate.errors import ConfigError
    from ablate.expand import expand

    with pytest.raises(
        ConfigError, match="plan.configuration: 3d_cascade_fullres .* add 3d_lowres"
    ):
        expand(_configuration_study(["2d", "3d_cascade_fullres"]), "data")


def test_the_configuration_seed_studies_expand():
    from pathlib import Path

    from ablate.expand import describe, expand, expand_ensembles
    from ablate.study_load import load_study

    studies = Path(__file__).parent.parent / "studies"
    nnunet = load_study(studies / "nnunet.yaml", check_paths=False)
    trains, evals = expand(nnunet, "dry-run")
    assert len(trains) == len(evals) == 4 * 5
    cascade = [j for j in trains if j.plan.configuration == "3d_cascade_fullres"]
    assert len(cascade) == 5 and all(len(j.needs) == 5 for j in cascade)
    assert len({e.label for e in expand_ensembles(nnunet, evals)}) == 6  # every pair
    assert "plan.configuration (training): 2d, 3d_fullres, 3d_lowres" in describe(
        nnunet, (trains, evals)
    )
    flare = load_study(studies / "flare21.yaml", check_paths=False)
    trains, _ = expand(flare, "dry-run")
    assert {j.plan.configuration for j in trains} == {"3d_lowres"}
    assert {j.plan.patch_size for j in trains} == {(80, 192, 160)}
    assert {(j.train.epochs, j.train.lr_schedule_epochs, j.train.batch_size) for j in trains} == {
        (300, 1000, 2)
    }


# ---- preprocessing: 2d data and an unseen case's cascade input, against nnU-Net's preprocessor


def _nnunet_run_case(plan, data, seg, spacing, configuration="3d_fullres"):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from test_preprocess_nnunet import plans_for

    plans = plans_for(plan)
    config = dict(plans.plans["configurations"]["3d_fullres"])
    if configuration == "2d":
        config["spacing"] = list(plan.target_spacing_mm[1:])
    plans.plans["configurations"][configuration] = config
    return DefaultPreprocessor(verbose=False).run_case_npy(
        data.copy(),
        None if seg is None else seg[None].copy(),
        {"spacing": list(spacing)},
        plans,
        plans.get_configuration(configuration),
        {"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "CT"}},
    )


def test_2d_preprocessing_keeps_each_cases_slice_spacing_as_nnunet():
    from test_preprocess_nnunet import CT, case, make_plan

    from ablate.preprocess import preprocess_images

    plan = dataclasses.replace(make_plan((3.0, 1.1, 1.1), [CT]), configuration="2d")
    data, _ = case((9, 30, 28), 1, seed=3)
    spacing = (4.0, 0.8, 0.8)  # this case's slices are 4 mm apart: 2d keeps them
    ours, props = preprocess_images(list(data), Geometry(spacing, (0.0,) * 3, IDENTITY), plan)
    theirs, _, _ = _nnunet_run_case(plan, data, None, spacing, "2d")
    assert ours.shape == theirs.shape and ours.shape[1] == props.shape_after_crop[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-5)


def test_cascade_input_of_an_unseen_case_equals_nnunets():
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
    from test_preprocess_nnunet import CT, case, make_plan

    from ablate.cascade import cascade_input_for_image

    plan = dataclasses.replace(make_plan((2.9, 1.1, 1.1), [CT]), previous_stage_labels=(1, 2))
    data, seg_prev = case((9, 30, 28), 1, seed=4)  # seg_prev: the lowres stage's label map
    spacing = (4.0, 0.8, 0.8)
    geometry = Geometry(spacing, (0.0,) * 3, IDENTITY)
    ours, _ = cascade_input_for_image(list(data), seg_prev, geometry, plan)
    image, seg, _ = _nnunet_run_case(plan, data, seg_prev, spacing)
    # nnU-Net's data iterators: the preprocessed segmentation's one-hot after the image
    theirs = np.vstack((image, convert_labelmap_to_one_hot(seg[0], (1, 2), image.dtype)))
    assert ours.shape == theirs.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-5)
    assert ours[1:].sum() > 0
