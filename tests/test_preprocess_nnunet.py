"""Preprocessing against nnU-Net v2's own `DefaultPreprocessor.run_case_npy`, given the same plan:
transpose, crop, normalisation and resampling must give nnU-Net's arrays."""

import numpy as np
import pytest
from nnunet_plans import nnunet_plans  # tests/ is on sys.path under pytest
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ablate.imageio import Geometry
from ablate.infer import export_labels
from ablate.plan import ChannelNormalization, Plan
from ablate.preprocess import _transform

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def make_plan(target_spacing, normalization, transpose_forward=(0, 1, 2)) -> Plan:
    backward = tuple(int(a) for a in np.argsort(transpose_forward))
    return Plan(
        target_spacing_mm=tuple(target_spacing),
        patch_size=(16, 16, 16),
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (2, 2, 2)],
        conv_kernel_sizes=[(3, 3, 3), (3, 3, 3)],
        features_per_stage=[4, 8],
        num_input_channels=len(normalization),
        num_classes=3,
        normalization=list(normalization),
        median_shape=(16, 16, 16),
        anisotropic=False,
        transpose_forward=tuple(transpose_forward),
        transpose_backward=backward,
    )


def plans_for(plan: Plan) -> PlansManager:
    """nnU-Net's plans for the same decisions (3d_fullres, its default resampling)."""
    resampling = "resample_data_or_seg_to_shape"
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "architecture": {"network_class_name": "unused", "arch_kwargs": {}},
        "preprocessor_name": "DefaultPreprocessor",
        "spacing": list(plan.target_spacing_mm),
        "normalization_schemes": [
            {"ct": "CTNormalization", "zscore": "ZScoreNormalization"}[n.scheme]
            for n in plan.normalization
        ],
        "use_mask_for_norm": [n.use_mask for n in plan.normalization],
        "resampling_fn_data": resampling,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, **SEPARATE_Z},
        "resampling_fn_seg": resampling,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, **SEPARATE_Z},
        "resampling_fn_probabilities": resampling,
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            **SEPARATE_Z,
        },
    }
    intensities = {
        str(c): {
            "mean": n.mean,
            "std": n.std,
            "percentile_00_5": n.lower,
            "percentile_99_5": n.upper,
        }
        for c, n in enumerate(plan.normalization)
    }
    return PlansManager(
        nnunet_plans(
            fullres,
            plan.transpose_forward,
            plan.transpose_backward,
            foreground_intensity_properties_per_channel=intensities,
        )
    )


SEPARATE_Z = {"force_separate_z": None}  # nnU-Net decides per case (its planner's setting)


def case(shape, channels, seed, body=True):
    """A body (zeros outside, so the crop matters) with two labelled blobs, and CT-like noise."""
    rng = np.random.default_rng(seed)
    data = np.zeros((channels, *shape), dtype=np.float32)
    z, y, x = shape
    inside = (slice(1, z - 1), slice(2, y - 1), slice(3, x - 2)) if body else (slice(None),) * 3
    data[(slice(None), *inside)] = rng.normal(40, 80, (channels, *data[0][inside].shape))
    seg = np.zeros(shape, dtype=np.int16)
    seg[z // 4 : z // 2, y // 3 : y // 2 + 3, x // 3 : x // 2 + 2] = 1
    seg[z // 3 : z // 2, y // 3 : y // 3 + 3, x // 3 : x // 3 + 4] = 2
    data[0][seg == 1] += 120
    data[0][seg == 2] += 300
    data[0][z // 2, y // 2, x // 2] = 3000  # a bright outlier that the CT clip must cut
    return data, seg


CT = ChannelNormalization("ct", False, 60.0, 90.0, -100.0, 350.0)
CASES = {
    "isotropic, upsampled": ((14, 17, 19), (1.0, 1.0, 1.0), (0.7, 0.8, 0.75), [CT], (0, 1, 2)),
    "anisotropic axial": ((9, 30, 28), (4.0, 0.8, 0.8), (2.9, 1.1, 1.1), [CT], (0, 1, 2)),
    "sagittal, coarse x": ((26, 30, 8), (0.9, 0.9, 4.5), (3.0, 1.2, 1.2), [CT], (2, 0, 1)),
    "two-channel MR, masked": (
        (12, 22, 20),
        (1.5, 1.0, 1.1),
        (1.2, 1.3, 1.0),
        [ChannelNormalization("zscore", True), ChannelNormalization("zscore", False)],
        (0, 1, 2),
    ),
    "coronal, coarse y": ((24, 7, 26), (1.0, 5.0, 1.0), (4.0, 1.3, 1.3), [CT], (1, 0, 2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_preprocessed_arrays_equal_nnunets(name):
    shape, spacing, target, norms, transpose = CASES[name]
    plan = make_plan(target, norms, transpose)
    data, seg = case(shape, len(norms), seed=len(name))
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY)
    ours, our_seg, props = _transform(data.copy(), seg.copy(), geometry, plan, "c")
    plans = plans_for(plan)
    theirs, their_seg, their_props = DefaultPreprocessor(verbose=False).run_case_npy(
        data.copy(),
        seg[None].copy(),
        {"spacing": list(spacing)},
        plans,
        plans.get_configuration("3d_fullres"),
        {"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "x"}},
    )
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(our_seg, their_seg[0])
    assert props.original_shape == tuple(their_props["shape_before_cropping"])
    assert [list(b) for b in props.crop_bbox] == [
        list(b) for b in their_props["bbox_used_for_cropping"]
    ]
    assert props.shape_after_crop == tuple(
        their_props["shape_after_cropping_and_before_resampling"]
    )


def test_export_undoes_the_transpose_of_a_sagittal_volume():
    shape, spacing, target, norms, transpose = CASES["sagittal, coarse x"]
    same = tuple(spacing[a] for a in transpose)  # the plan's frame: only transpose and crop act
    plan = make_plan(same, norms, transpose)
    data, seg = case(shape, 1, seed=5)
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY)
    _, cached, props = _transform(data, seg, geometry, plan, "c")
    assert cached.shape[0] < cached.shape[1]  # the coarse x axis now comes first
    logits = np.stack([(cached == k) for k in range(3)]).astype(np.float32) * 10
    restored = export_labels(logits, props, plan)
    assert restored.shape == shape
    np.testing.assert_array_equal(restored, seg)
