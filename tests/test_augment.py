import numpy as np
import pytest

from ablate.augment import (
    augment_sample,
    brightness,
    contrast,
    enlarged_patch_size,
    gamma,
    gaussian_blur,
    gaussian_noise,
    low_resolution,
    mirror,
    sample_size_for,
    spatial,
)
from ablate.errors import ConfigError


def _sample(shape=(6, 8, 10)):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, *shape)).astype(np.float32)
    seg = (rng.uniform(size=shape) > 0.7).astype(np.int16)
    return data, seg


@pytest.mark.parametrize(
    "transform", [gaussian_noise, gaussian_blur, brightness, contrast, low_resolution, gamma]
)
def test_probability_zero_is_identity(transform):
    data, seg = _sample()
    out, out_seg, params = transform(data, seg, np.random.default_rng(0), p=0.0)
    assert params is None
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(out_seg, seg)


@pytest.mark.parametrize(
    "transform", [gaussian_noise, gaussian_blur, brightness, contrast, low_resolution, gamma]
)
def test_probability_one_changes_data_keeps_shape_and_records(transform):
    data, seg = _sample()
    kwargs = {"p_per_channel": 1.0} if transform in (gaussian_blur, low_resolution) else {}
    out, out_seg, params = transform(data, seg, np.random.default_rng(0), p=1.0, **kwargs)
    assert params is not None and out.shape == data.shape
    assert not np.allclose(out, data)
    np.testing.assert_array_equal(out_seg, seg)


def test_mirror_flips_data_and_seg_together():
    data, seg = _sample()
    data[0] = seg
    out, out_seg, params = mirror(data, seg, np.random.default_rng(0), p=1.0)
    assert params == {"axes": (0, 1, 2)}
    np.testing.assert_array_equal(out_seg, seg[::-1, ::-1, ::-1])
    np.testing.assert_array_equal(out[0], out_seg)


def test_contrast_preserves_range_and_gamma_retains_mean_and_sd():
    data, seg = _sample()
    out, _, _ = contrast(data, seg, np.random.default_rng(3), p=1.0)
    assert out[0].min() >= data[0].min() and out[0].max() <= data[0].max()
    out, _, _ = gamma(data, seg, np.random.default_rng(3), p=1.0, invert=True)
    assert out[1].mean() == pytest.approx(data[1].mean(), abs=1e-4)
    assert out[1].std() == pytest.approx(data[1].std(), rel=1e-3)


def test_enlarged_patch_matches_nnunet_get_patch_size():
    # 32 * (cos 30 + sin 30) / 0.85 = 51.4
    assert enlarged_patch_size((32, 32, 32)) == (51, 51, 51)
    assert sample_size_for("mirror", (4, 8, 8)) == (4, 8, 8)


def test_spatial_without_rotation_or_scaling_is_a_centre_crop():
    data, seg = _sample((6, 8, 10))
    out, out_seg, params = spatial(data, seg, np.random.default_rng(0), (4, 4, 4), 0.0, 0.0)
    assert params is None
    np.testing.assert_array_equal(out, data[:, 1:5, 2:6, 3:7])
    np.testing.assert_array_equal(out_seg, seg[1:5, 2:6, 3:7])


def test_spatial_identity_transform_by_interpolation_matches_crop():
    data, seg = _sample((6, 8, 10))
    out, out_seg, params = spatial(data, seg, np.random.default_rng(0), (4, 4, 4), 0.0, 1.0)
    assert 0.7 <= params["scale"] <= 1.4 and out.shape == (2, 4, 4, 4)
    assert set(np.unique(out_seg)) <= {0, 1}


@pytest.mark.parametrize("mode", ["nnunet", "mirror", "none"])
def test_pipelines_return_the_patch_shape(mode):
    patch = (4, 6, 8)
    data, seg = _sample(sample_size_for(mode, patch))
    out, out_seg, record = augment_sample(data, seg, np.random.default_rng(5), mode, patch)
    assert out.shape == (2, *patch) and out_seg.shape == patch and out.dtype == np.float32
    if mode == "none":
        assert all(params is None for _, params in record)


def test_unknown_augmentation_is_a_config_error():
    data, seg = _sample()
    with pytest.raises(ConfigError, match="valid: nnunet, mirror, none"):
        augment_sample(data, seg, np.random.default_rng(0), "heavy", (4, 4, 4))


def test_flat_patches_get_nnunets_dummy_2d_sizes():
    from ablate.augment import enlarged_patch_size, is_dummy_2d

    assert is_dummy_2d((20, 80, 80)) and not is_dummy_2d((32, 64, 64))
    # nnU-Net: rotation clamped to 90 deg swaps the in-plane edges; / 0.85; the slice axis kept
    assert enlarged_patch_size((20, 80, 80)) == (20, 94, 94)
    assert enlarged_patch_size((16, 56, 72)) == (16, 84, 84)


def test_dummy_2d_spatial_transform_leaves_the_slice_axis_alone():
    from ablate.augment import spatial

    patch = (6, 24, 24)
    size = (6, 28, 28)
    data = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], size)[None].copy()
    seg = np.ones(size, dtype=np.int8)
    out, out_seg, params = spatial(data, seg, np.random.default_rng(0), patch, 1.0, 1.0)
    assert params["dummy_2d"] and len(params["angles_rad"]) == 1 and params["angles_rad"][0] != 0
    centre = out[0, :, 10:14, 10:14]  # inside the rotated field of view
    assert np.allclose(centre, np.arange(6)[:, None, None])
    assert out_seg.shape == patch
