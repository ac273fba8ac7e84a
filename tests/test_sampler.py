import numpy as np
import pytest

from ablate.sampler import (
    batch_rng,
    choose_patch_start,
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
        (1, 0.1, [True]),  # at least one forced when p > 0
        (3, 1.0, [True] * 3),
    ],
)
def test_oversampling_is_by_position_in_the_batch(batch_size, p, forced):
    assert [is_forced_foreground(i, batch_size, p) for i in range(batch_size)] == forced


def test_forced_patch_is_centred_on_the_voxel_and_clamped():
    rng = np.random.default_rng(0)
    locations = {1: np.array([[5, 6, 7]])}
    assert choose_patch_start((10, 20, 30), (4, 4, 4), rng, locations) == (3, 4, 5)
    locations = {1: np.array([[9, 0, 29]])}
    assert choose_patch_start((10, 20, 30), (4, 4, 4), rng, locations) == (6, 0, 26)


def test_image_smaller_than_patch_is_centred_with_padding():
    rng = np.random.default_rng(0)
    starts = {choose_patch_start((2, 3, 4), (4, 4, 4), rng, None) for _ in range(50)}
    assert starts == {(-1, -1, 0), (-1, 0, 0)}  # z pads 1 + 1, y pads 1 on either side


def test_crop_padded_fills_outside():
    out = crop_padded(np.arange(4).reshape(1, 4), (-1, 2), (3, 3), fill=-1)
    assert out.tolist() == [[-1, -1, -1], [2, 3, -1], [-1, -1, -1]]


def test_forced_sample_contains_the_class_and_maps_minus_one_to_zero():
    source = TinySource()
    data, seg = sample_patch(source, "a", (4, 4, 4), True, np.random.default_rng(1))
    assert data.shape == (1, 4, 4, 4) and seg.shape == (4, 4, 4)
    assert (seg == 2).sum() == 1
    data, seg = sample_patch(source, "a", (8, 12, 14), False, np.random.default_rng(1))
    assert seg.min() == 0 and (data == 0).sum() >= 8 * 12 * 14 - 6 * 10 * 12


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
