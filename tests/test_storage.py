"""ablate.storage: blosc2 arrays chunked as nnU-Net v2's cache, read back exactly, old .npy too."""

import numpy as np
import pytest

from ablate.sampler import crop_padded
from ablate.storage import chunk_params, open_array, save_array


def volume(shape=(2, 23, 41, 37), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.normal(size=shape), axis=-1).astype(np.float32)  # compressible
    return smooth


def test_chunk_params_equal_nnunet_comp_blosc2_params():
    dataset = pytest.importorskip("nnunetv2.training.dataloading.nnunet_dataset")
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = (int(rng.integers(1, 4)), *(int(s) for s in rng.integers(1, 600, 3)))
        patch = tuple(int(p) for p in rng.integers(1, 256, 3))
        for itemsize in (1, 2, 4):
            blocks, chunks = dataset.comp_blosc2_params(shape, patch, itemsize)
            assert chunk_params(shape, patch, itemsize) == (tuple(blocks), tuple(chunks))
    # a label map has no channel axis: the same spatial blocks and chunks
    assert (
        chunk_params((150, 320, 320), (40, 160, 160), 1)[1]
        == chunk_params((1, 150, 320, 320), (40, 160, 160), 1)[1][1:]
    )


def test_round_trip_and_patches_equal_numpy(tmp_path):
    data = volume()
    seg = (data[0] > 0).astype(np.int8) - (data[1] < -3).astype(np.int8)  # -1, 0, 1
    save_array(tmp_path, "c_data", data, (8, 16, 16))
    save_array(tmp_path, "c_seg", seg, (8, 16, 16))
    stored, stored_seg = open_array(tmp_path, "c_data"), open_array(tmp_path, "c_seg")
    assert stored.shape == data.shape and stored.dtype == np.float32
    assert stored_seg.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(stored), data)
    np.testing.assert_array_equal(stored_seg[...], seg)
    for start in [(0, 0, 0), (5, 7, 9), (-3, 30, -5), (20, 38, 30)]:  # partly outside too
        np.testing.assert_array_equal(
            crop_padded(stored, start, (8, 16, 16), 0.0), crop_padded(data, start, (8, 16, 16), 0.0)
        )
        np.testing.assert_array_equal(
            crop_padded(stored_seg, start, (8, 16, 16), -1),
            crop_padded(seg, start, (8, 16, 16), -1),
        )


def test_compressed_as_nnunet_stores_the_same_data(tmp_path):
    dataset = pytest.importorskip("nnunetv2.training.dataloading.nnunet_dataset")
    data = volume(seed=1)
    data[:, :, 12:] = 0  # background, as around a cropped body
    seg = (data[:1] > 0).astype(np.int16)
    patch = (8, 16, 16)
    blocks, chunks = dataset.comp_blosc2_params(data.shape, patch, 4)
    blocks_seg, chunks_seg = dataset.comp_blosc2_params(seg.shape, patch, 2)
    stem = str(tmp_path / "nnunet")
    dataset.nnUNetDatasetBlosc2.save_case(
        data,
        seg,
        {},
        stem,
        chunks=chunks,
        blocks=blocks,
        chunks_seg=chunks_seg,
        blocks_seg=blocks_seg,
    )
    ours = save_array(tmp_path, "ours", data, patch)
    assert ours.stat().st_size <= (tmp_path / "nnunet.b2nd").stat().st_size
    assert ours.stat().st_size < data.nbytes / 2


def test_an_older_uncompressed_cache_still_opens(tmp_path):
    data = volume()
    np.save(tmp_path / "c_data.npy", data)
    stored = open_array(tmp_path, "c_data")
    assert isinstance(stored, np.memmap)
    np.testing.assert_array_equal(stored[:, 1:4], data[:, 1:4])


def test_a_cache_written_as_npy_still_loads_through_prepared_data(tmp_path):
    """A cache folder from before (same key: the arrays are the same, only stored differently)
    keeps working: load_case and region_locations read its .npy files."""
    from ablate.config import PlanConfig
    from ablate.data.synthetic import make_synthetic_dataset
    from ablate.preprocess import prepare

    dataset = make_synthetic_dataset(tmp_path / "raw", 2, seed=0, fov_mm=(30.0, 40.0, 40.0))
    data = prepare(
        dataset, PlanConfig(), tmp_path / "cache", folds=2, workers=0, intensity_samples=1000
    )
    case = data.case_ids[0]
    image, seg, _ = data.load_case(case)
    image, seg = np.asarray(image), np.asarray(seg)
    for name, array in ((f"{case}_data", image), (f"{case}_seg", seg)):
        (data.root / f"{name}.b2nd").unlink()
        np.save(data.root / f"{name}.npy", array)
    old_image, old_seg, _ = data.load_case(case)
    assert isinstance(old_image, np.memmap)
    np.testing.assert_array_equal(old_image, image)
    np.testing.assert_array_equal(old_seg, seg)
    regions = data.region_locations(case, [(1, 2)])
    assert np.all(np.isin(seg[tuple(regions[(1, 2)].T)], (1, 2)))
