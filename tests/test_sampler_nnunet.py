"""The patch sampler against nnU-Net v2's own data loader (`nnUNetDataLoader.get_bbox`) and
preprocessor (`DefaultPreprocessor._sample_foreground_locations`), called on the same inputs."""

import numpy as np
import pytest
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from ablate import sampler
from ablate.preprocess import sample_class_locations
from ablate.sampler import choose_patch_start, crop_bounds, is_forced_foreground


def nnunet_loader(sample_size, final_size, batch_size=2, oversample=0.33) -> nnUNetDataLoader:
    """nnU-Net's loader with only what get_bbox and the oversampling rule read (no dataset)."""
    loader = nnUNetDataLoader.__new__(nnUNetDataLoader)
    loader.patch_size = tuple(sample_size)
    loader.final_patch_size = tuple(final_size)
    loader.need_to_pad = (np.array(sample_size) - np.array(final_size)).astype(int)
    loader.has_ignore = False
    loader.annotated_classes_key = (-1, 0, 1, 2)
    loader.batch_size = batch_size
    loader.oversample_foreground_percent = oversample
    return loader


def nnunet_bounds(loader, shape, monkeypatch) -> tuple[list[int], list[int]]:
    """The (low, high) get_bbox draws a random start between, read off np.random.randint."""
    calls = []

    def record(low, high):
        calls.append((low, high - 1))
        return low

    monkeypatch.setattr(np.random, "randint", record)
    loader.get_bbox(np.array(shape), False, None)
    monkeypatch.undo()
    return [c[0] for c in calls], [c[1] for c in calls]


SIZES = [  # (shape, sample size, final size)
    ((120, 400, 400), (96, 224, 224), (80, 160, 160)),  # KiTS-like: enlarged by rotation
    ((60, 400, 400), (96, 224, 224), (80, 160, 160)),  # fewer slices than the enlarged patch
    ((181, 512, 512), (86, 224, 224), (80, 160, 160)),
    ((20, 30, 31), (20, 30, 31), (20, 30, 31)),  # validation: no enlargement, exact fit
    ((5, 7, 9), (8, 17, 16), (6, 12, 12)),  # smaller than both
    ((33, 64, 65), (41, 77, 76), (32, 64, 64)),  # odd paddings
]


@pytest.mark.parametrize("shape, sample_size, final_size", SIZES)
def test_crop_bounds_equal_get_bbox(shape, sample_size, final_size, monkeypatch):
    loader = nnunet_loader(sample_size, final_size)
    assert list(crop_bounds(shape, sample_size, final_size)) == list(
        nnunet_bounds(loader, shape, monkeypatch)
    )


@pytest.mark.parametrize("shape, sample_size, final_size", SIZES)
def test_forced_crop_equals_get_bbox_for_every_voxel_position(shape, sample_size, final_size):
    loader = nnunet_loader(sample_size, final_size)
    rng = np.random.default_rng(0)
    for _ in range(200):
        voxel = [int(rng.integers(0, s)) for s in shape]
        theirs, _ = loader.get_bbox(np.array(shape), True, {1: np.array([[0, *voxel]])})
        ours = choose_patch_start(shape, sample_size, final_size, rng, {1: np.array([voxel])})
        assert list(ours) == theirs
        assert all(s <= v < s + p for s, v, p in zip(ours, voxel, sample_size, strict=True))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("oversample", [0.0, 0.25, 0.33, 0.5, 0.6, 1.0])
def test_oversampling_rule_equals_nnunet(batch_size, oversample):
    loader = nnunet_loader((4, 4, 4), (4, 4, 4), batch_size, oversample)
    for i in range(batch_size):
        assert is_forced_foreground(
            i, batch_size, oversample
        ) == loader._oversample_last_XX_percent(i)


def test_final_patch_covers_every_border_voxel_over_2000_draws():
    """The sampler's crop, then bgv2's centre crop (floor(S / 2) - F // 2) to the final patch."""
    shape, sample_size, final_size = (14, 40, 36), (18, 48, 44), (12, 32, 28)
    rng = np.random.default_rng(1)
    seen = np.zeros(shape, dtype=bool)
    for _ in range(2000):
        start = choose_patch_start(shape, sample_size, final_size, rng, None)
        final = [
            s + p // 2 - f // 2 for s, p, f in zip(start, sample_size, final_size, strict=True)
        ]
        window = tuple(
            slice(max(a, 0), min(a + f, n))
            for a, f, n in zip(final, final_size, shape, strict=True)
        )
        seen[window] = True
    border = np.ones(shape, dtype=bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert seen[border].all() and seen.all()


def test_forced_crop_contains_its_foreground_near_the_border():
    """The issue's case: foreground in slices 2-15 of a 120-slice volume, KiTS patch sizes."""
    shape, sample_size, final_size = (120, 400, 400), (96, 224, 224), (80, 160, 160)
    seg = np.zeros(shape, dtype=np.int8)
    seg[2:16, 180:220, 180:220] = 1
    locations = sample_class_locations(seg, [1])
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(60):
        start = choose_patch_start(shape, sample_size, final_size, rng, locations)
        final = [
            s + p // 2 - f // 2 for s, p, f in zip(start, sample_size, final_size, strict=True)
        ]
        window = tuple(
            slice(max(a, 0), max(min(a + f, n), 0))
            for a, f, n in zip(final, final_size, shape, strict=True)
        )
        hits += bool(seg[window].any())
    assert hits == 60


def test_foreground_locations_equal_nnunet_per_label_and_per_region():
    rng = np.random.default_rng(3)
    seg = np.zeros((1, 30, 40, 50), dtype=np.int16)
    seg[0, 5:25, 10:30, 10:45] = 1  # 14000 voxels: more than 10000 are sampled
    seg[0, 10:15, 15:20, 20:30] = 2
    seg[0, rng.random((30, 40, 50)) < 0.01] = 3
    seg[0, :2] = -1
    for classes in ([1, 2, 3, 4], [(1, 2, 3), (2, 3), (3,)], [(2, 1)]):
        theirs = DefaultPreprocessor._sample_foreground_locations(seg, classes)
        ours = sample_class_locations(seg[0], classes)
        assert list(ours) == list(theirs)
        for key, voxels in theirs.items():
            expected = np.asarray(voxels).reshape(-1, 4)[:, 1:]
            np.testing.assert_array_equal(ours[key], expected)


@pytest.mark.parametrize("shape, sample_size, final_size", SIZES[3:])
def test_crops_with_an_ignore_label_centre_on_annotated_voxels_as_get_bbox(
    shape, sample_size, final_size, monkeypatch
):
    """Unforced crops, and forced crops of a case without foreground, centre on an annotated
    voxel (nnU-Net's annotated_classes_key), clamped at the lower bound only."""
    starts = []

    def record(*args):
        starts.append(list(choose_patch_start(*args)))
        return starts[-1]

    monkeypatch.setattr(sampler, "choose_patch_start", record)
    loader = nnunet_loader(sample_size, final_size)
    loader.has_ignore = True
    rng = np.random.default_rng(4)
    for _ in range(100):
        voxel = [int(rng.integers(0, s)) for s in shape]
        locations = {1: np.zeros((0, 4)), loader.annotated_classes_key: np.array([[0, *voxel]])}
        source = AnnotatedSource(shape, voxel)
        for force in (False, True):
            theirs, _ = loader.get_bbox(np.array(shape), force, locations)
            sampler.sample_patch(source, "c", sample_size, force, rng, final_size, annotated=True)
            assert starts[-1] == theirs


class AnnotatedSource:
    """One case without foreground whose one annotated voxel is `voxel`."""

    def __init__(self, shape, voxel):
        self.seg = np.zeros(shape, np.int8)
        self.voxel = voxel

    def load_case(self, case_id):
        return self.seg[None].astype(np.float32), self.seg, None

    def class_locations(self, case_id):
        return {1: np.zeros((0, 3), dtype=np.int64)}

    def annotated_locations(self, case_id):
        return np.array([self.voxel])
