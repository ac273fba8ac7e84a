import json
import multiprocessing as mp

import numpy as np
import pytest

from ablate.config import PlanConfig
from ablate.data.dataset import read_nnunet_raw
from ablate.imageio import Geometry, write_image
from ablate.infer import export_labels
from ablate.plan import ChannelNormalization, Plan, crop_to_nonzero
from ablate.preprocess import label_dtype, normalize, prepare, preprocess_images
from ablate.resample import resample_seg

SPACING = (3.0, 1.0, 1.25)  # (z, y, x), anisotropic on purpose
CFG = PlanConfig(gpu_memory_gb=0.05, base_features=4, max_features=16)


def _volume(shift: int):
    """A (8, 20, 24) CT-like body (zeros outside) with a labelled box blob."""
    image = np.zeros((8, 20, 24), np.int16)
    image[1:7, 2:18, 3:21] = -50
    seg = np.zeros(image.shape, np.uint8)
    seg[3:6, 6 + shift : 12 + shift, 8:16] = 1
    image[seg == 1] = 100
    return image, seg


def _make_dataset(root, n=3):
    (root / "imagesTr").mkdir(parents=True)
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(n):
        image, seg = _volume(i)
        write_image(image, geometry, root / "imagesTr" / f"c{i}_0000.nii.gz")
        write_image(seg, geometry, root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "organ": 1},
                "numTraining": n,
                "file_ending": ".nii.gz",
            }
        )
    )
    return read_nnunet_raw(root)


def _plan(**kw) -> Plan:
    base = dict(
        target_spacing_mm=(1.5, 1.0, 1.0),
        patch_size=(8, 16, 16),
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (2, 2, 2)],
        conv_kernel_sizes=[(3, 3, 3)] * 2,
        features_per_stage=[4, 8],
        num_input_channels=1,
        num_classes=2,
        normalization=[ChannelNormalization("ct", False, 10.0, 5.0, 0.0, 30.0)],
        median_shape=(16, 20, 30),
        anisotropic=False,
    )
    base.update(kw)
    return Plan(**base)


def test_ct_normalisation_hand_values():
    data = np.array([[[[-10.0, 10.0, 40.0]]]], np.float32)  # (C, Z, Y, X)
    out = normalize(data, np.zeros((1, 1, 3), np.int16), _plan().normalization)
    # clip to [0, 30], then (x - 10) / 5
    np.testing.assert_allclose(out[0, 0, 0], [-2.0, 0.0, 4.0])


def test_zscore_with_mask_ignores_outside():
    data = np.array([[[[0.0, 1.0, 3.0]]]], np.float32)
    seg = np.array([[[-1, 0, 0]]], np.int16)
    out = normalize(data, seg, [ChannelNormalization("zscore", use_mask=True)])
    np.testing.assert_allclose(out[0, 0, 0], [0.0, -1.0, 1.0])


def test_crop_bbox_fills_holes_and_marks_outside():
    image, seg = _volume(0)
    image[4, 4, 5] = 0  # a hole inside the body: filled, so stays label 0 (not -1)
    data, seg_c, bbox = crop_to_nonzero(image[None].astype(np.float32), seg.astype(np.int16))
    assert bbox == ((1, 7), (2, 18), (3, 21))
    assert data.shape == (1, 6, 16, 18) and seg_c.shape == (6, 16, 18)
    assert data[0, 3, 2, 2] == 0 and seg_c[3, 2, 2] == 0
    assert seg_c.min() == 0  # the (hole-filled) body fills its bbox: no -1
    image[1, 2, 3] = 0  # carve a corner out of the bbox: outside the mask -> -1
    _, seg_c, _ = crop_to_nonzero(image[None].astype(np.float32), seg.astype(np.int16))
    assert seg_c[0, 0, 0] == -1 and (seg_c == -1).sum() == 1


def test_resampled_shape_is_rounded_spacing_ratio():
    image, _ = _volume(0)
    geometry = Geometry(SPACING, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    data, props = preprocess_images([image], geometry, _plan())
    # cropped (6, 16, 18) * (3, 1, 1.25) / (1.5, 1, 1) -> (12, 16, 22.5 -> 22)
    assert props.shape_after_crop == (6, 16, 18)
    assert data.shape == (1, 12, 16, 22) and props.shape_after_resample == (12, 16, 22)
    assert data.dtype == np.float32


def test_preprocess_images_leaves_the_unlabelled_mask_unresampled(monkeypatch):
    """Inference needs the resampled image only: the nonzero mask is not resampled (at
    512x512x200 that cost 7 s and 1.9 GB), and the image is the same as a labelled case's."""
    import ablate.preprocess as preprocess

    image, seg = _volume(0)
    geometry = Geometry(SPACING, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labelled, _, _ = preprocess.preprocess_images_and_labels([image], seg, geometry, _plan())
    calls = []
    real = preprocess.resample_seg
    monkeypatch.setattr(
        preprocess, "resample_seg", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    data, props = preprocess_images([image], geometry, _plan())
    assert calls == []
    np.testing.assert_array_equal(data, labelled)
    assert props.shape_after_resample == data.shape[1:]


def test_resample_seg_keeps_labels_and_nearest_on_coarse_axis():
    seg = np.zeros((4, 6, 6), np.int16)
    seg[1:3, 2:4, 2:4] = 1
    out = resample_seg(seg, (8, 12, 12), (4.0, 1.0, 1.0), (2.0, 0.5, 0.5))
    assert set(np.unique(out)) == {0, 1}
    assert out.sum() == 8 * seg.sum()  # a 2x upsampling of an aligned box is exact


def test_export_recovers_the_blob_in_the_original_geometry():
    image, seg = _volume(1)
    geometry = Geometry(SPACING, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    plan = _plan()
    _, props = preprocess_images([image], geometry, plan)
    cropped = seg[tuple(slice(a, b) for a, b in props.crop_bbox)].astype(np.int16)
    seg_r = resample_seg(cropped, props.shape_after_resample, SPACING, plan.target_spacing_mm)
    logits = np.stack([seg_r == 0, seg_r == 1]).astype(np.float32) * 10  # (K, Z, Y, X)
    restored = export_labels(logits, props, plan)
    assert restored.shape == image.shape
    assert np.all(restored[0] == 0)  # z = 0 is outside the crop: background
    np.testing.assert_array_equal(restored, seg)


def test_prepare_builds_loads_and_reuses(tmp_path):
    ds = _make_dataset(tmp_path / "raw")
    data = prepare(ds, CFG, tmp_path / "cache", folds=3, workers=0, intensity_samples=3000)
    assert data.case_ids == ("c0", "c1", "c2") and len(data.folds) == 3
    arr, seg, props = data.load_case("c1")
    # lazy, chunked (blosc2): a patch slice decompresses only its chunks (tests/test_storage.py)
    assert not isinstance(arr, np.ndarray) and arr.dtype == np.float32 and seg.dtype == np.int8
    assert arr.shape[1:] == seg.shape == props.shape_after_resample
    locs = data.class_locations("c1")
    assert set(locs) == {1} and len(locs[1]) > 0
    assert np.all(np.asarray(seg)[tuple(locs[1].T)] == 1)
    regions = data.region_locations("c1", [(1,), (1, 5)])
    assert set(regions) == {(1,), (1, 5)}
    np.testing.assert_array_equal(regions[(1,)], locs[1])  # the same seed, the same draws
    # CT: foreground is all 100, so the 0.5/99.5 percentiles and mean are 100, sd 0
    assert data.plan.normalization[0].lower == 100.0 and data.plan.normalization[0].std == 0.0
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.root.iterdir()}
    again = prepare(ds, CFG, tmp_path / "cache", folds=3, workers=0, intensity_samples=3000)
    assert again.key == data.key and again.plan == data.plan
    assert {p.name: p.stat().st_mtime_ns for p in again.root.iterdir()} == mtimes


def test_labels_past_127_are_cached_as_int16():
    assert label_dtype(np.array([0, 1, 127], np.int16)) == np.int8
    assert label_dtype(np.array([0, -1, 128], np.int16)) == np.int16  # int8 would wrap to -128


def test_prepare_takes_the_study_splits_file_and_refuses_unknown_cases(tmp_path):
    from ablate.errors import DataError
    from ablate.folds import Fold, write_splits

    ds = _make_dataset(tmp_path / "raw")
    custom = [Fold(("c0", "c1"), ("c2",)), Fold(("c2",), ("c0", "c1"))]
    write_splits(custom, tmp_path / "mine.json")
    data = prepare(
        ds,
        CFG,
        tmp_path / "cache",
        folds=2,
        workers=0,
        intensity_samples=1000,
        splits_file=tmp_path / "mine.json",
    )
    assert data.folds == custom
    with pytest.raises(DataError, match=r"mine.json: 2 folds but the study's folds.k is 3"):
        prepare(
            ds,
            CFG,
            tmp_path / "cache",
            folds=3,
            workers=0,
            intensity_samples=1000,
            splits_file=tmp_path / "mine.json",
        )
    write_splits(
        [Fold(("c0", "c1"), ("c2",)), Fold(("c2", "held"), ("c0", "c1"))], tmp_path / "leaky.json"
    )
    with pytest.raises(
        DataError,
        match=r"fold 1 names case 'held', which is not a "
        r"cross-validation case \(missing, or held out",
    ):
        prepare(
            ds,
            CFG,
            tmp_path / "cache",
            folds=2,
            workers=0,
            intensity_samples=1000,
            splits_file=tmp_path / "leaky.json",
        )


def test_prepare_with_process_pool_matches_in_process(tmp_path):
    ds = _make_dataset(tmp_path / "raw", n=2)
    serial = prepare(ds, CFG, tmp_path / "a", folds=2, workers=0, intensity_samples=1000)
    pooled = prepare(ds, CFG, tmp_path / "b", folds=2, workers=2, intensity_samples=1000)
    np.testing.assert_array_equal(serial.load_case("c0")[0], pooled.load_case("c0")[0])


def _prepare_in_child(args):
    raw, cache = args
    import os

    prepare(read_nnunet_raw(raw), CFG, cache, folds=2, workers=0, intensity_samples=1000)
    return os.getpid()


@pytest.mark.timeout(120)
def test_concurrent_prepare_builds_once(tmp_path):
    _make_dataset(tmp_path / "raw", n=2)
    cache = tmp_path / "cache"
    with mp.get_context("fork").Pool(2) as pool:
        pids = pool.map(_prepare_in_child, [(tmp_path / "raw", cache)] * 2, chunksize=1)
    built = [p for p in cache.iterdir() if p.is_dir()]
    assert len(built) == 1 and not built[0].name.startswith(".tmp")
    builder = json.loads((built[0] / "build_info.json").read_text())["pid"]
    assert builder in pids


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slice_wise_resize_equals_the_3d_spline_with_factor_one(slice_axis, order):
    """Resizing in-plane slice by slice (as nnU-Net does, and several times faster) gives the
    3-D spline's values exactly: with factor 1 along the slice axis it only reproduces it.
    Cubic for images, linear for exported logits and label indicators."""
    from scipy.ndimage import zoom

    from ablate.resample import _resize

    image = np.random.default_rng(slice_axis).normal(size=(9, 23, 17)).astype(np.float32)
    shape = [round(s * 1.4) if a != slice_axis else s for a, s in enumerate(image.shape)]
    factors = [n / o for n, o in zip(shape, image.shape, strict=True)]
    expected = zoom(image, factors, order=order, mode="nearest", grid_mode=True)
    if order > 1:
        other = tuple(a for a in range(3) if a != slice_axis)
        low, high = image.min(axis=other, keepdims=True), image.max(axis=other, keepdims=True)
        expected = np.clip(expected, low, high)
    np.testing.assert_array_equal(_resize(image, shape, order, slice_axis=slice_axis), expected)


def test_slice_wise_label_resize_equals_the_3d_one():
    """Labels resized through their in-plane indicators slice by slice pick the same winners."""
    from ablate.resample import _resize_labels

    seg = np.random.default_rng(3).integers(0, 3, size=(7, 19, 21)).astype(np.uint8)
    shape = (7, 27, 30)
    np.testing.assert_array_equal(
        _resize_labels(seg, shape, slice_axis=0), _resize_labels(seg, shape)
    )
