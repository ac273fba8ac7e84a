import numpy as np
import pytest

from ablate.sampler import (
    batch_rng,
    choose_patch_start,
    crop_bounds,
    crop_padded,
    is_forced_foreground,
    iterate_batches,
    sample_batch,
    sample_patch,
)


class TinySource:
    """Stand-in for PreprocessedData: one (1, 6, 10, 12) case, label 2 at a single voxel."""

    def __init__(self):
        self.data = np.arange(6 * 10 * 12, dtype=np.float32).reshape(1, 6, 10, 12)
        self.seg = np.zeros((6, 10, 12), dtype=np.int8)
        self.seg[0, 0, 0] = -1
        self.seg[5, 9, 11] = 2

    def load_case(self, case_id):
        return self.data, self.seg, None

    def class_locations(self, case_id):
        return {1: np.zeros((0, 3), dtype=int), 2: np.argwhere(self.seg == 2)}


@pytest.mark.parametrize(
    "batch_size, p, forced",
    [
        (2, 0.33, [False, True]),
        (5, 0.33, [False, False, False, True, True]),  # round(3.35) = 3
        (4, 0.0, [False] * 4),
        (1, 0.33, [False]),  # round(0.67) = 1: with batch size 1 nothing is forced
        (1, 0.6, [True]),  # round(0.4) = 0
        (2, 0.25, [False, False]),  # round(1.5) = 2 (Python rounds half to even)
        (3, 1.0, [True] * 3),
    ],
)
def test_oversampling_is_by_position_in_the_batch(batch_size, p, forced):
    assert [is_forced_foreground(i, batch_size, p) for i in range(batch_size)] == forced


def test_forced_patch_is_centred_on_the_voxel_and_clamped_at_the_lower_bound_only():
    rng = np.random.default_rng(0)
    size = (4, 4, 4)
    locations = {1: np.array([[5, 6, 7]])}
    assert choose_patch_start((10, 20, 30), size, size, rng, locations) == (3, 4, 5)
    locations = {1: np.array([[9, 0, 29]])}
    # nnU-Net clamps at the lower bound only: the crop runs past the far border (padded there)
    assert choose_patch_start((10, 20, 30), size, size, rng, locations) == (7, 0, 27)


def test_image_smaller_than_patch_is_centred_with_padding():
    rng = np.random.default_rng(0)
    size = (4, 4, 4)
    starts = {choose_patch_start((2, 3, 4), size, size, rng, None) for _ in range(50)}
    assert starts == {(-1, -1, 0), (-1, 0, 0)}  # z pads 1 + 1, y pads 1 on either side


def test_enlarged_crop_may_reach_past_every_border_by_the_enlargement():
    low, high = crop_bounds((20, 50, 50), (12, 40, 40), (8, 32, 32))
    assert low == [-2, -4, -4] and high == [10, 14, 14]  # pad 4 (8) split 2 + 2 (4 + 4)
    low, high = crop_bounds((6, 50, 50), (12, 40, 40), (8, 32, 32))  # 6 + 4 slices < 12
    assert low[0] == -3 and high[0] == -3  # pad 6 instead of 4, split 3 + 3


def test_crop_padded_fills_outside():
    out = crop_padded(np.arange(4).reshape(1, 4), (-1, 2), (3, 3), fill=-1)
    assert out.tolist() == [[-1, -1, -1], [2, 3, -1], [-1, -1, -1]]


def test_forced_sample_contains_the_class_and_keeps_minus_one_for_augmentation():
    source = TinySource()
    data, seg = sample_patch(source, "a", (4, 4, 4), True, np.random.default_rng(1))
    assert data.shape == (1, 4, 4, 4) and seg.shape == (4, 4, 4)
    assert (seg == 2).sum() == 1
    data, seg = sample_patch(source, "a", (8, 12, 14), False, np.random.default_rng(1))
    assert (seg == -1).sum() == 8 * 12 * 14 - 6 * 10 * 12 + 1  # padding and the -1 voxel
    assert (data == 0).sum() >= 8 * 12 * 14 - 6 * 10 * 12


def test_batch_masks_channels_where_the_label_is_minus_one_then_maps_it_to_zero():
    source = TinySource()
    source.data = source.data + 1.0  # no zeros inside the image
    rng = np.random.default_rng(3)
    data, seg = sample_batch(source, ["a"], 1, (8, 12, 14), 0.0, rng, mask_channels=[0])
    assert seg.min() == 0
    assert (data[0, 0][seg[0, 0] == 0] == 0).sum() == 8 * 12 * 14 - 6 * 10 * 12 + 1
    data, seg = sample_batch(source, ["a"], 1, (8, 12, 14), 0.0, np.random.default_rng(3))
    assert seg.min() == 0 and (data == 0).sum() == 8 * 12 * 14 - 6 * 10 * 12  # padding only


def test_region_training_forces_crops_per_region():
    class RegionSource(TinySource):
        def region_locations(self, case_id, regions):
            assert [tuple(r) for r in regions] == [(1, 2), (2,)]
            return {(1, 2): np.argwhere(self.seg == 2), (2,): np.argwhere(self.seg == 2)}

    data, seg = sample_batch(
        RegionSource(), ["a"], 1, (4, 4, 4), 1.0, np.random.default_rng(0), regions=[(1, 2), (2,)]
    )
    assert (seg == 2).sum() == 1


def test_batches_are_deterministic_and_worker_independent():
    source = TinySource()

    def make(i):
        return sample_batch(source, ["a", "b"], 3, (4, 4, 4), 0.33, batch_rng(7, 2, 0, i))

    inline = list(iterate_batches(make, 5, workers=0))
    threaded = list(iterate_batches(make, 5, workers=2))
    assert len(threaded) == 5
    for (d0, s0), (d1, s1) in zip(inline, threaded, strict=True):
        assert d0.shape == (3, 1, 4, 4, 4) and s0.shape == (3, 1, 4, 4, 4)
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(s0, s1)
    assert (inline[0][1][2] == 2).any()  # last sample forced to foreground
    assert not np.array_equal(inline[0][0], inline[1][0])
