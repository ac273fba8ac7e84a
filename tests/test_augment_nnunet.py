"""ablate's augmentation against nnU-Net v2.8.1's own pipeline (batchgeneratorsv2 0.3.6).

Fixed parameters: each ablate `apply_*` gives what the bgv2 transform nnU-Net builds gives on the
same input (images within 1e-5, labels identical). Drawn parameters: ablate's draws and bgv2's
follow the same distribution (a two-sample KS test per parameter, seeded, a few thousand draws).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial import spatial as bg_spatial
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from scipy.stats import ks_2samp

from ablate.augment import INTENSITY, augment_sample, enlarged_patch_size, is_dummy_2d
from ablate.augment import geometry as our_spatial
from ablate.augment import intensity as ours

PATCH_3D = (10, 14, 18)
PATCH_FLAT = (5, 24, 30)  # 30 / 5 > 3: nnU-Net's dummy 2D
DRAWS = 3000
ALPHA = 1e-3


def nnunet_setup(patch_size):
    """nnU-Net's own rotation range, dummy-2D flag, initial (enlarged) patch size, mirror axes."""
    trainer = SimpleNamespace(
        configuration_manager=SimpleNamespace(patch_size=list(patch_size)),
        print_to_log_file=lambda *args, **kwargs: None,
    )
    return nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(trainer)


def nnunet_transforms(patch_size) -> list:
    rotation, dummy_2d, _, mirror_axes = nnunet_setup(patch_size)
    pipeline = nnUNetTrainer.get_training_transforms(
        patch_size, rotation, None, mirror_axes, dummy_2d
    )
    return pipeline.transforms


def nnunet_transform(patch_size, cls, index: int = 0):
    """(RandomTransform wrapper or None, the bgv2 transform) of nnU-Net's pipeline."""
    found = []
    for t in nnunet_transforms(patch_size):
        inner = t.transform if isinstance(t, RandomTransform) else t
        if isinstance(inner, cls):
            found.append((t if t is not inner else None, inner))
    return found[index]


def sample(shape, channels=2, seed=0):
    """Anisotropic image and labels -1..3, -1 in a corner block (padding / outside the mask)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(channels, *shape)).astype(np.float32)
    data += np.linspace(-1, 2, shape[-1], dtype=np.float32)  # structure for the blur to act on
    seg = np.zeros(shape, dtype=np.int16)
    z, y, x = (s // 2 for s in shape)
    seg[: z + 1, y - 3 : y + 3, x - 4 : x + 4] = 1
    seg[z:, :y, x:] = 2
    seg[rng.uniform(size=shape) > 0.93] = 3
    seg[:, : shape[1] // 2, : shape[2] // 3] = -1
    return data, seg


def as_tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array))


# ----- enlarged patch size and configuration


def test_enlarged_patch_size_equals_nnunets_for_many_patch_sizes_incl_flat():
    rng = np.random.default_rng(0)
    sizes = [(20, 80, 80), (16, 56, 72), (32, 32, 32), (80, 160, 160), (40, 224, 192), (5, 40, 40)]
    sizes += [tuple(int(v) for v in rng.integers(4, 320, 3)) for _ in range(300)]
    sizes += [
        (int(z), int(y), int(x)) for z, y, x in rng.integers((2, 16, 16), (24, 400, 400), (200, 3))
    ]
    flat = 0
    for size in sizes:
        _, dummy_2d, initial, _ = nnunet_setup(size)
        assert is_dummy_2d(size) == dummy_2d, size
        assert enlarged_patch_size(size) == tuple(int(v) for v in initial), size
        flat += dummy_2d
    assert flat > 100  # the flat branch is exercised


def test_pipeline_order_probabilities_and_ranges_are_nnunets():
    transforms = nnunet_transforms(PATCH_3D)
    names = [
        type(t.transform if isinstance(t, RandomTransform) else t).__name__ for t in transforms
    ]
    assert names[:9] == [
        "SpatialTransform",
        "GaussianNoiseTransform",
        "GaussianBlurTransform",
        "MultiplicativeBrightnessTransform",
        "ContrastTransform",
        "SimulateLowResolutionTransform",
        "GammaTransform",
        "GammaTransform",
        "MirrorTransform",
    ]
    spatial_t = transforms[0]
    assert (spatial_t.p_rotation, spatial_t.p_scaling) == (
        our_spatial.P_ROTATION,
        our_spatial.P_SCALING,
    )
    assert tuple(spatial_t.scaling) == our_spatial.SCALE_RANGE
    assert spatial_t.rotation[1] == our_spatial._rad(our_spatial.MAX_ROTATION_DEG)
    assert (spatial_t.bg_style_seg_sampling, spatial_t.border_mode_seg) == (False, "constant")
    assert (spatial_t.padding_value_seg, spatial_t.seg_tiebreak) == (-1, "nearest")
    assert (spatial_t.mode_image, spatial_t.mode_seg, spatial_t.align_corners) == (
        "bilinear",
        "bilinear",
        False,
    )
    ours_kwargs = {name: kwargs for name, _, kwargs in INTENSITY}
    wrapped = transforms[1:8]
    for (name, kwargs), t in zip(ours_kwargs.items(), wrapped, strict=True):
        assert kwargs["p"] == t.apply_probability, name
        assert kwargs.get("p_per_channel", 1) == t.transform.p_per_channel, name
    noise, blur, bright, contr, lowres, gamma_inv, gamma = (t.transform for t in wrapped)
    assert tuple(noise.noise_variance) == ours.NOISE_SD and noise.synchronize_channels
    assert tuple(blur.blur_sigma) == ours.BLUR_SIGMA and not blur.synchronize_axes
    assert bright.multiplier_range.contrast_range == ours.MULTIPLIER_RANGE
    assert contr.contrast_range.contrast_range == ours.MULTIPLIER_RANGE and contr.preserve_range
    assert tuple(lowres.scale) == ours.LOW_RESOLUTION_SCALE and lowres.synchronize_axes
    assert lowres.ignore_axes is None
    assert nnunet_transform(PATCH_FLAT, SimulateLowResolutionTransform)[1].ignore_axes == (0,)
    assert gamma_inv.gamma.contrast_range == ours.GAMMA_RANGE == gamma.gamma.contrast_range
    assert (gamma_inv.p_invert_image, gamma.p_invert_image) == (1, 0)
    assert ours_kwargs["gamma_inverted"]["invert"] and not ours_kwargs["gamma"]["invert"]
    assert gamma.p_retain_stats == gamma_inv.p_retain_stats == 1
    assert tuple(transforms[8].allowed_axes) == (0, 1, 2)


# ----- spatial transform, fixed parameters


def bgv2_spatial(patch_size, data, seg, angles_rad, scale):
    """nnU-Net's spatial transform (with Convert3DTo2D / 2DTo3D for flat patches) at fixed angles
    and scale, injected as callables / constants with probability 1."""
    transforms = nnunet_transforms(patch_size)
    dummy_2d = is_dummy_2d(patch_size)
    steps = transforms[:3] if dummy_2d else transforms[:1]
    spatial_t = steps[1] if dummy_2d else steps[0]
    rotate = any(a != 0 for a in angles_rad)
    spatial_t.p_rotation, spatial_t.p_scaling = float(rotate), float(scale != 1)
    angles = list(angles_rad) * (2 if dummy_2d else 1)
    spatial_t.rotation = lambda image, dim: angles[dim]
    spatial_t.scaling = float(scale)
    out = ComposeTransforms(steps)(image=as_tensor(data), segmentation=as_tensor(seg)[None])
    return out["image"].numpy(), out["segmentation"][0].numpy()


SPATIAL_3D_CASES = [
    ([0.0, 0.0, 0.0], 1.0),
    ([0.3, -0.2, 0.45], 1.0),
    ([0.0, 0.0, 0.0], 0.72),
    ([0.0, 0.0, 0.0], 1.37),
    ([-0.5, 0.12, -0.33], 0.8),
    ([0.52, 0.52, -0.52], 1.4),
    ([0.1, -0.4, 0.2], 0.7),
]


@pytest.mark.parametrize(("angles", "scale"), SPATIAL_3D_CASES)
def test_spatial_3d_equals_bgv2_with_nnunets_settings(angles, scale):
    data, seg = sample(enlarged_patch_size(PATCH_3D))
    params = (
        None
        if angles == [0, 0, 0] and scale == 1
        else {"angles_rad": angles, "scale": scale, "dummy_2d": False}
    )
    out, out_seg = our_spatial.apply_spatial(data, seg, params, PATCH_3D)
    ref, ref_seg = bgv2_spatial(PATCH_3D, data, seg, angles, scale)
    assert out.shape == (2, *PATCH_3D) and out_seg.shape == PATCH_3D
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out_seg, ref_seg)
    assert -1 in out_seg and {0, 1, 2} <= set(np.unique(out_seg))


@pytest.mark.parametrize(
    ("angle", "scale"), [(0.0, 1.0), (2.5, 1.0), (-1.2, 0.75), (0.0, 1.3), (3.1, 1.4)]
)
def test_spatial_dummy_2d_equals_bgv2_slice_by_slice(angle, scale):
    data, seg = sample(enlarged_patch_size(PATCH_FLAT), seed=1)
    seg[1] = 0  # a slice with one label, one with two, the rest with more
    seg[2] = np.where(seg[2] > 0, 2, 0)
    params = (
        None
        if angle == 0 and scale == 1
        else {"angles_rad": [angle], "scale": scale, "dummy_2d": True}
    )
    out, out_seg = our_spatial.apply_spatial(data, seg, params, PATCH_FLAT)
    ref, ref_seg = bgv2_spatial(PATCH_FLAT, data, seg, [angle], scale)
    assert out.shape == (2, *PATCH_FLAT)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out_seg, ref_seg)


TIE_CASES = [  # sample points exactly between voxels: every label boundary is a tie
    ((9, 13, 17), (15, 21, 27), [0.0, 0.0, 0.0], 0.5),
    ((10, 14, 18), (13, 19, 21), [np.pi, 0.0, 0.0], 1.0),
    ((10, 14, 18), (13, 19, 21), [0.0, np.pi, np.pi], 1.0),
    ((5, 24, 30), (5, 31, 33), [np.pi], 1.0),
    ((5, 23, 31), (5, 33, 37), [0.0], 0.5),
]


@pytest.mark.parametrize(("patch", "shape", "angles", "scale"), TIE_CASES)
def test_spatial_label_ties_are_settled_as_bgv2_settles_them(patch, shape, angles, scale):
    data, seg = sample(shape, seed=2)
    params = {"angles_rad": angles, "scale": scale, "dummy_2d": is_dummy_2d(patch)}
    out, out_seg = our_spatial.apply_spatial(data, seg, params, patch)
    ref, ref_seg = bgv2_spatial(patch, data, seg, angles, scale)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out_seg, ref_seg)


def test_spatial_crop_of_a_smaller_sample_pads_seg_with_minus_one_like_bgv2():
    data, seg = sample((8, 13, 21))
    out, out_seg = our_spatial.apply_spatial(data, seg, None, PATCH_3D)
    ref, ref_seg = bgv2_spatial(PATCH_3D, data, seg, [0, 0, 0], 1.0)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out_seg, ref_seg)
    assert (out_seg[0] == -1).all() and (out[:, 0] == 0).all()


def test_labels_are_not_nearest_neighbour_but_one_hot_linear_argmax():
    # a thin structure: nearest neighbour and one-hot/linear/argmax disagree at its edges
    data, seg = sample(enlarged_patch_size(PATCH_3D))
    params = {"angles_rad": [0.2, 0.1, -0.3], "scale": 0.85, "dummy_2d": False}
    _, out_seg = our_spatial.apply_spatial(data, seg, params, PATCH_3D)
    grid = our_spatial.sampling_grid(
        PATCH_3D, seg.shape, our_spatial.affine_matrix([0.2, 0.1, -0.3], [0.85] * 3)
    )
    nearest = our_spatial.resample_image(as_tensor(seg)[None].float() + 1, grid, "nearest")[0] - 1
    assert (out_seg != nearest.numpy()).any()


# ----- mirror and intensity transforms, fixed parameters


@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2)])
def test_mirror_equals_bgv2(axes):
    data, seg = sample(PATCH_3D)
    out, out_seg = our_spatial.apply_mirror(data, seg, {"axes": axes})
    t = MirrorTransform(allowed_axes=(0, 1, 2))
    np.testing.assert_array_equal(out, t._apply_to_image(as_tensor(data), axes=list(axes)).numpy())
    ref_seg = t._apply_to_segmentation(as_tensor(seg)[None], axes=list(axes))[0].numpy()
    np.testing.assert_array_equal(out_seg, ref_seg)
    assert -1 in out_seg


def test_gaussian_noise_sd_is_the_drawn_value_as_in_bgv2():
    data = np.zeros((2, 40, 48, 56), dtype=np.float32)
    _, noise = nnunet_transform(PATCH_3D, GaussianNoiseTransform)
    torch.manual_seed(0)
    for sd in (0.01, 0.05, 0.09):
        params = {"apply_idx": torch.tensor([0, 1]), "num_apply": 2, "sigmas": sd}
        ref = noise._apply_to_image(as_tensor(data), **params).numpy()
        out = ours.apply_gaussian_noise(data, {"sd": sd}, np.random.default_rng(0))
        assert out.std() == pytest.approx(ref.std(), rel=0.02)
        assert out.std() == pytest.approx(sd, rel=0.02)
        assert (
            abs(np.corrcoef(out[0].ravel(), out[1].ravel())[0, 1]) < 0.02
        )  # per voxel, per channel


@pytest.mark.parametrize(
    "sigmas", [{0: [0.5, 0.7, 1.0]}, {1: [0.99, 0.51, 0.8]}, {0: [0.6] * 3, 1: [0.75] * 3}]
)
def test_gaussian_blur_equals_bgv2(sigmas):
    data, _ = sample(PATCH_3D)
    _, blur = nnunet_transform(PATCH_3D, GaussianBlurTransform)  # benchmark=True, as nnU-Net
    params = {
        "apply_to_channel": torch.tensor([c in sigmas for c in range(2)]),
        "sigmas": list(sigmas.values()),
    }
    ref = blur._apply_to_image(as_tensor(data), **params).numpy()
    out = ours.apply_gaussian_blur(data, {"sigma": sigmas})
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert not np.allclose(out, data)


def test_gaussian_blur_on_a_thin_slice_axis_does_not_fail():
    data = np.ones((1, 3, 8, 8), dtype=np.float32)
    out = ours.apply_gaussian_blur(data, {"sigma": {0: [1.0, 1.0, 1.0]}})
    np.testing.assert_allclose(out, data, atol=1e-6)


def test_brightness_and_contrast_equal_bgv2():
    data, _ = sample(PATCH_3D)
    factors = [0.8, 1.2]
    _, bright = nnunet_transform(PATCH_3D, MultiplicativeBrightnessTransform)
    _, contr = nnunet_transform(PATCH_3D, ContrastTransform)
    ref = bright._apply_to_image(
        as_tensor(data), apply_to_channel=torch.tensor([0, 1]), multipliers=torch.Tensor(factors)
    )
    np.testing.assert_allclose(
        ours.apply_brightness(data, {"factors": factors}), ref.numpy(), atol=1e-6, rtol=0
    )
    ref = contr._apply_to_image(
        as_tensor(data), apply_to_channel=torch.tensor([0, 1]), multipliers=torch.tensor(factors)
    )
    out = ours.apply_contrast(data, {"factors": factors})
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)
    assert out[1].max() == pytest.approx(data[1].max()) and out[0].min() > data[0].min()


@pytest.mark.parametrize("invert", [True, False])
def test_gamma_equals_bgv2(invert):
    data, _ = sample(PATCH_3D)
    _, gamma_t = nnunet_transform(PATCH_3D, GammaTransform, index=0 if invert else 1)
    gammas = [0.75, 1.42]
    params = {
        "apply_to_channel": torch.tensor([0, 1]),
        "retain_stats": torch.tensor([True, True]),
        "invert_image": torch.tensor([invert, invert]),
        "gamma": torch.tensor(gammas),
    }
    ref = gamma_t._apply_to_image(as_tensor(data), **params).numpy()
    out = ours.apply_gamma(data, {"gamma": gammas, "invert": invert})
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch", [PATCH_3D, PATCH_FLAT])
@pytest.mark.parametrize("zoom", [0.5, 0.537, 0.63, 0.77, 0.93, 0.9999])
def test_low_resolution_equals_bgv2(patch, zoom):
    data, _ = sample(patch)
    _, lowres = nnunet_transform(patch, SimulateLowResolutionTransform)
    ignore = lowres.ignore_axes or ()
    zooms = [1.0 if a in ignore else zoom for a in range(3)]
    params = {"apply_to_channel": torch.tensor([1]), "scales": torch.Tensor([zooms])}
    ref = lowres._apply_to_image(as_tensor(data), **params).numpy()
    out = ours.apply_low_resolution(data, {"zoom": {1: zooms}})
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out[0], data[0])


def test_flat_patches_keep_their_slices_in_low_resolution_simulation():
    data = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], PATCH_FLAT)[None].copy()
    out, _, params = ours.low_resolution(data, None, np.random.default_rng(0), 1.0, 1.0, (0,))
    assert params["zoom"][0][0] == 1.0 and params["zoom"][0][1] < 1.0
    np.testing.assert_allclose(out, data, atol=1e-6)


# ----- drawn parameters: ablate's draws vs bgv2's, a KS test per parameter


def assert_same_distribution(ours_values, theirs_values, name):
    ours_values, theirs_values = np.asarray(ours_values, float), np.asarray(theirs_values, float)
    result = ks_2samp(ours_values, theirs_values, method="asymp")
    assert result.pvalue > ALPHA, f"{name}: KS {result.statistic:.3f}, p {result.pvalue:.2g}"


def seed_bgv2(seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("patch", [PATCH_3D, PATCH_FLAT])
def test_spatial_draws_follow_bgv2s_distribution(patch, monkeypatch):
    small = (4, 4, 4) if patch == PATCH_3D else (2, 8, 8)  # the draws do not depend on the size
    dummy_2d = is_dummy_2d(patch)
    recorded = []

    def record(create):
        def wrapped(angles, scales):
            recorded.append((list(np.atleast_1d(angles)), list(scales)))
            return create(angles, scales)

        return wrapped

    monkeypatch.setattr(
        bg_spatial, "create_affine_matrix_3d", record(bg_spatial.create_affine_matrix_3d)
    )
    monkeypatch.setattr(
        bg_spatial, "create_affine_matrix_2d", record(bg_spatial.create_affine_matrix_2d)
    )
    transform = nnunet_transforms(patch)[1 if dummy_2d else 0]
    transform.patch_size = small[1:] if dummy_2d else small
    image = torch.zeros((1, *(small[1:] if dummy_2d else small)))
    seed_bgv2()
    theirs = []
    for _ in range(DRAWS):
        recorded.clear()
        transform.get_parameters(image=image)
        theirs.append(recorded[0] if recorded else ([0.0] * (1 if dummy_2d else 3), [1.0] * 3))
    rng = np.random.default_rng(0)
    mine = []
    for _ in range(DRAWS):
        params = our_spatial.draw_spatial(rng, patch)
        mine.append(
            ([0.0] * (1 if dummy_2d else 3), [1.0])
            if params is None
            else (params["angles_rad"], [params["scale"]])
        )
    for axis in range(1 if dummy_2d else 3):
        assert_same_distribution(
            [m[0][axis] for m in mine], [t[0][axis] for t in theirs], f"angle {axis}"
        )
    assert_same_distribution([m[1][0] for m in mine], [t[1][0] for t in theirs], "scale")
    assert all(len(set(t[1])) == 1 for t in theirs)  # one factor for all axes, as ours
    if dummy_2d:  # bgv2 draws an angle per in-plane axis and uses the last
        assert all(len(t[0]) == 1 for t in theirs)


OFF = 0.0  # the value recorded for a channel the transform leaves alone


def bgv2_draws(wrapper, inner, extract, channels=2, k=1) -> np.ndarray:
    """(DRAWS, channels, k): `extract(params)` per draw through nnU-Net's RandomTransform."""
    image = torch.zeros((channels, 4, 4, 4))
    seed_bgv2()
    rows = []
    for _ in range(DRAWS):
        applied = wrapper.get_parameters(image=image)["apply_transform"]
        params = inner.get_parameters(image=image) if applied else None
        rows.append(per_channel(extract(params) if applied else {}, channels, k))
    return np.stack(rows)


def our_draws(draw, extract, channels=2, k=1) -> np.ndarray:
    """(DRAWS, channels, k): ablate's `draw(rng)`, `extract(params)` where applied."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(DRAWS):
        params = draw(rng)
        rows.append(per_channel(extract(params) if params is not None else {}, channels, k))
    return np.stack(rows)


def per_channel(values: dict, channels: int, k: int) -> np.ndarray:
    """{channel: value or k values} -> (channels, k), OFF where a channel is untouched."""
    return np.array([np.broadcast_to(values.get(c, OFF), k) for c in range(channels)], float)


def assert_same_columns(mine: np.ndarray, theirs: np.ndarray, name: str) -> None:
    assert mine.shape[1:] == theirs.shape[1:], name
    for column in range(mine.shape[2]):
        values = mine[:, :, column].ravel(), theirs[:, :, column].ravel()
        assert_same_distribution(*values, f"{name} [{column}]")


def test_noise_draws_follow_bgv2s_distribution_sd_not_variance():
    wrapper, inner = nnunet_transform(PATCH_3D, GaussianNoiseTransform)
    theirs = bgv2_draws(wrapper, inner, lambda p: {0: p["sigmas"]}, channels=1)
    mine = our_draws(ours.draw_gaussian_noise, lambda p: {0: p["sd"]}, channels=1)
    assert_same_columns(mine, theirs, "noise sd")
    applied = mine[mine != OFF], theirs[theirs != OFF]
    assert_same_distribution(*applied, "noise sd where applied")


def test_noise_output_sd_follows_bgv2s_end_to_end():
    """The realised noise (output sd on a zero image), drawn and applied by each side."""
    _, inner = nnunet_transform(PATCH_3D, GaussianNoiseTransform)
    zeros = np.zeros((1, 6, 8, 10), dtype=np.float32)
    seed_bgv2()
    theirs = [inner(image=as_tensor(zeros))["image"].std().item() for _ in range(1000)]
    rng = np.random.default_rng(0)
    mine = [ours.gaussian_noise(zeros, None, rng, p=1.0)[0].std() for _ in range(1000)]
    assert_same_distribution(mine, theirs, "output sd")
    assert max(mine) < 0.12


def test_blur_draws_follow_bgv2s_distribution():
    wrapper, inner = nnunet_transform(PATCH_3D, GaussianBlurTransform)

    def extract(p):
        chosen = np.flatnonzero(p["apply_to_channel"].numpy())
        return dict(zip(chosen.tolist(), p["sigmas"], strict=True))

    theirs = bgv2_draws(wrapper, inner, extract, k=3)
    mine = our_draws(lambda rng: ours.draw_gaussian_blur(rng, 2), lambda p: p["sigma"], k=3)
    assert_same_columns(mine, theirs, "blur sigma per axis")


@pytest.mark.parametrize("cls", [MultiplicativeBrightnessTransform, ContrastTransform])
def test_brightness_and_contrast_draws_follow_bgv2s_distribution(cls):
    wrapper, inner = nnunet_transform(PATCH_3D, cls)
    theirs = bgv2_draws(wrapper, inner, lambda p: dict(enumerate(p["multipliers"].tolist())))
    p = wrapper.apply_probability
    mine = our_draws(
        lambda rng: ours.draw_multipliers(rng, 2, p), lambda d: dict(enumerate(d["factors"]))
    )
    assert_same_columns(mine, theirs, f"{cls.__name__} factor")


@pytest.mark.parametrize("patch", [PATCH_3D, PATCH_FLAT])
def test_low_resolution_draws_follow_bgv2s_distribution(patch):
    wrapper, inner = nnunet_transform(patch, SimulateLowResolutionTransform)

    def extract(p):
        return dict(zip(p["apply_to_channel"].tolist(), p["scales"].tolist(), strict=True))

    theirs = bgv2_draws(wrapper, inner, extract, k=3)
    ignore = (0,) if is_dummy_2d(patch) else ()
    mine = our_draws(
        lambda rng: ours.draw_low_resolution(rng, 2, ignore_axes=ignore), lambda p: p["zoom"], k=3
    )
    assert_same_columns(mine, theirs, f"zoom per axis {patch}")


@pytest.mark.parametrize("invert", [True, False])
def test_gamma_draws_follow_bgv2s_distribution(invert):
    wrapper, inner = nnunet_transform(PATCH_3D, GammaTransform, index=0 if invert else 1)

    def extract(p):
        assert p["retain_stats"].all() and (p["invert_image"] == invert).all()
        return dict(enumerate(p["gamma"].tolist()))

    theirs = bgv2_draws(wrapper, inner, extract)
    p = wrapper.apply_probability
    mine = our_draws(
        lambda rng: ours.draw_gamma(rng, 2, p, invert), lambda d: dict(enumerate(d["gamma"]))
    )
    assert_same_columns(mine, theirs, "gamma")


def test_mirror_draws_follow_bgv2s_distribution():
    _, mirror_t = nnunet_transform(PATCH_3D, MirrorTransform)
    seed_bgv2()
    theirs = [mirror_t.get_parameters(image=None)["axes"] for _ in range(DRAWS)]
    rng = np.random.default_rng(0)
    mine = [(our_spatial.draw_mirror(rng) or {"axes": ()})["axes"] for _ in range(DRAWS)]
    for axis in range(3):
        flips = [axis in m for m in mine], [axis in t for t in theirs]
        assert_same_distribution(*flips, f"flip {axis}")


# ----- the pipeline


@pytest.mark.parametrize("patch", [PATCH_3D, PATCH_FLAT])
def test_pipeline_keeps_label_minus_one(patch):
    data, seg = sample(enlarged_patch_size(patch))
    seen = set()
    for seed in range(6):
        out, out_seg, record = augment_sample(
            data, seg, np.random.default_rng(seed), "nnunet", patch
        )
        assert out.shape == (2, *patch) and out_seg.shape == patch and out_seg.dtype == seg.dtype
        seen |= set(np.unique(out_seg).tolist())
        assert [name for name, _ in record][0] == "spatial" and record[-1][0] == "mirror"
    assert -1 in seen and seen <= {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("patch", [PATCH_3D, PATCH_FLAT])
def test_pipeline_low_resolution_leaves_the_slice_axis_of_flat_patches_alone(patch):
    data, seg = sample(enlarged_patch_size(patch), channels=1)
    zooms = []
    for seed in range(40):
        _, _, record = augment_sample(data, seg, np.random.default_rng(seed), "nnunet", patch)
        params = dict(record)["low_resolution"]
        zooms += list(params["zoom"].values()) if params else []
    assert len(zooms) >= 2
    slice_axis_kept = [z[0] == 1.0 and z[1] < 1.0 for z in zooms]
    assert all(slice_axis_kept) if is_dummy_2d(patch) else not any(slice_axis_kept)
