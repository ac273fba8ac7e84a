"""ablate.surface against DeepMind surface-distance (the reference), value for value.

Every random pair is compared array for array (surfels, areas, distances, order: exactly equal)
and metric for metric (surface Dice at several tolerances, including tolerances equal to a
distance that occurs, robust Hausdorff 95/100, average surface distance: 1e-9 relative).
"""

import functools
import math

import numpy as np
import pytest
import surface_distance as sd
from surface_distance import lookup_tables

from ablate import surface
from ablate.surface import compute_surface_distances

SPACINGS = [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (2.0, 1.0, 0.5), (0.7, 1.3, 2.9), (2.5, 0.7, 0.7)]
# and random anisotropic ones (a fixed pool: each new spacing costs both sides a lookup table)
SPACINGS += [
    tuple(float(s) for s in row) for row in np.random.default_rng(99).uniform(0.3, 4, (10, 3))
]
KEYS = ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")


@pytest.fixture(autouse=True)
def reference(monkeypatch):
    """surface-distance 0.1 as the reference, runnable on numpy 2 (np.Inf) and fast enough for
    thousands of pairs (its area table cached per spacing: the same values, built once)."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    build = lookup_tables.create_table_neighbour_code_to_surface_area
    cached = functools.lru_cache(maxsize=None)(lambda spacing: build(list(spacing)))
    monkeypatch.setattr(
        lookup_tables,
        "create_table_neighbour_code_to_surface_area",
        lambda spacing: cached(tuple(spacing)).copy(),
    )


def reference_distances(a, b, spacing):
    return sd.compute_surface_distances(a, b, list(spacing))


def metrics(d: dict) -> list[float]:
    """surface-distance's metrics of one result (the ones ablate reports and a few more)."""
    if d["surfel_areas_gt"].size == 0 or d["surfel_areas_pred"].size == 0:
        return []  # empty: ablate's evaluate never derives metrics here (documented policy)
    values = [sd.compute_robust_hausdorff(d, 95), sd.compute_robust_hausdorff(d, 100)]
    values += list(sd.compute_average_surface_distance(d))
    occurring = np.concatenate([d["distances_gt_to_pred"], d["distances_pred_to_gt"]])
    for tolerance in [0.0, 1.0, 2.0, *np.unique(occurring)[:4]]:
        values.append(sd.compute_surface_dice_at_tolerance(d, float(tolerance)))
    return [float(v) for v in values]


def assert_same(a, b, spacing) -> int:
    """Compare the engine with the reference on one pair; return the number of values."""
    want = reference_distances(a, b, spacing)
    got = compute_surface_distances(a, b, spacing)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got[key].dtype == np.float64
    want_m, got_m = metrics(want), metrics(got)
    np.testing.assert_allclose(got_m, want_m, rtol=1e-9, atol=0)
    return sum(want[k].size for k in KEYS) + len(want_m)


def spacing_of(rng) -> tuple[float, float, float]:
    return SPACINGS[rng.integers(len(SPACINGS))]


def noise(rng, shape):
    return rng.random(shape) < rng.uniform(0.02, 0.7)


def pair_noise(rng, shape):
    return noise(rng, shape), noise(rng, shape)


def pair_flipped(rng, shape):
    a = noise(rng, shape)
    return a, a ^ (rng.random(shape) < 0.05)


def pair_shifted_box(rng, shape):
    """Boxes touching the array borders, one shifted by up to two voxels per axis."""
    a = np.zeros(shape, bool)
    lo = [rng.integers(0, 2) * rng.integers(0, s) for s in shape]  # often 0: on the border
    hi = [
        rng.integers(lo_i + 1, s + 1) if rng.random() < 0.5 else s
        for lo_i, s in zip(lo, shape, strict=True)
    ]
    a[tuple(slice(lo_i, hi_i) for lo_i, hi_i in zip(lo, hi, strict=True))] = True
    b = np.roll(a, rng.integers(-2, 3, 3), axis=(0, 1, 2))
    return a, b


def pair_single_voxels(rng, shape):
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    for m in (a, b):
        for _ in range(rng.integers(1, 3)):
            m[tuple(rng.integers(0, s) for s in shape)] = True
    return a, b


def pair_far_blobs(rng, shape):
    """Small blobs far apart: distances beyond the engine's offset scan (its KD-tree path),
    with the ties of a voxel lattice."""
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    for m in (a, b):
        for _ in range(rng.integers(1, 4)):
            c = [rng.integers(0, s) for s in shape]
            r = rng.integers(0, 2, 3)
            m[tuple(slice(max(ci - ri, 0), ci + ri + 1) for ci, ri in zip(c, r, strict=True))] = 1
    return a, b


def pair_full_or_empty(rng, shape):
    full, empty = np.ones(shape, bool), np.zeros(shape, bool)
    choices = [full, empty, noise(rng, shape)]
    return choices[rng.integers(3)], choices[rng.integers(3)]


GENERATORS = {
    "noise": (pair_noise, (1, 10)),
    "flipped": (pair_flipped, (1, 10)),
    "shifted_box_on_border": (pair_shifted_box, (1, 12)),
    "single_voxels": (pair_single_voxels, (1, 10)),
    "far_blobs": (pair_far_blobs, (2, 40)),
    "full_or_empty": (pair_full_or_empty, (1, 8)),
}


@pytest.mark.parametrize("kind", GENERATORS)
def test_random_pairs_equal_surface_distance(kind):
    generate, (low, high) = GENERATORS[kind]
    rng = np.random.default_rng(list(GENERATORS).index(kind))
    compared = 0
    for _ in range(300):
        shape = tuple(int(s) for s in rng.integers(low, high, 3))
        if kind == "far_blobs":
            shape = (int(rng.integers(2, 8)), *shape[1:])
        a, b = generate(rng, shape)
        compared += assert_same(a, b, spacing_of(rng))
    assert compared > 0


@pytest.mark.parametrize(
    "path, all_pairs, far_for_transform",
    [("all pairs", 1 << 20, math.inf), ("KD-tree", 0, math.inf), ("transform", 0, 0.0)],
)
def test_each_way_to_far_surfels_equals_surface_distance(
    monkeypatch, path, all_pairs, far_for_transform
):
    """Surfels the offset scan leaves (beyond its radius, or after it gave up) go one of three
    ways depending on sizes; force each on pairs that have many of them."""
    monkeypatch.setattr(surface, "_ALL_PAIRS", all_pairs)
    monkeypatch.setattr(surface, "_FAR_FOR_TRANSFORM", far_for_transform)
    rng = np.random.default_rng(11)
    for i in range(150):
        generate = (pair_far_blobs, pair_shifted_box, pair_noise)[i % 3]
        shape = (int(rng.integers(2, 7)), int(rng.integers(2, 20)), int(rng.integers(2, 20)))
        assert_same(*generate(rng, shape), spacing_of(rng))


def test_scan_giving_up_inside_a_group_of_equal_distances(monkeypatch):
    """A far blob makes the offset scan give up after a block that ends inside a group of
    offsets of one distance: surfels found later at that same distance must sort with the
    scanned ones by area (a regression: they were ranked after every scanned offset)."""
    monkeypatch.setattr(surface, "_FAR_FOR_TRANSFORM", math.inf)  # the KD-tree finds them
    rng = np.random.default_rng(20)
    shape = (int(rng.integers(3, 10)), int(rng.integers(10, 40)), int(rng.integers(10, 40)))
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[:, :4, :4] = True  # the far blob
    core = rng.random(shape) < 0.2
    core[:, :12] = False
    core[:, :, :12] = False
    a |= core
    b |= core ^ (rng.random(shape) < 0.1) & ~(np.indices(shape)[1] < 12)
    assert_same(a, b, (1.0, 1.0, 1.0))


def test_empty_masks_follow_surface_distance():
    cube = np.zeros((4, 5, 6), bool)
    cube[1:3, 1:4, 2:5] = True
    empty = np.zeros_like(cube)
    both = compute_surface_distances(empty, empty, (2.0, 1.0, 0.5))
    assert all(both[k].size == 0 for k in KEYS)
    no_pred = compute_surface_distances(cube, empty, (2.0, 1.0, 0.5))
    assert np.isinf(no_pred["distances_gt_to_pred"]).all()
    assert no_pred["distances_pred_to_gt"].size == no_pred["surfel_areas_pred"].size == 0
    for a, b in [(empty, empty), (cube, empty), (empty, cube)]:
        assert_same(a, b, (2.0, 1.0, 0.5))


def test_one_voxel_has_eight_corner_surfels_of_known_area():
    voxel = np.zeros((3, 3, 3), bool)
    voxel[1, 1, 1] = True
    d = compute_surface_distances(voxel, voxel, (2.0, 1.0, 0.5))
    # each corner sees one voxel: normal (1, 1, 1) / 8 scaled by the face areas (0.5, 1, 2)
    area = math.sqrt(0.5**2 + 1.0**2 + 2.0**2) / 8
    np.testing.assert_allclose(d["surfel_areas_gt"], [area] * 8)
    assert (d["distances_gt_to_pred"] == 0).all()


def test_two_voxels_twenty_apart_in_x():
    # corners at x = 0, 1 and x = 20, 21 (0.5 mm): 9.5 and 10 mm, beyond the offset scan
    a, b = np.zeros((1, 1, 21), bool), np.zeros((1, 1, 21), bool)
    a[0, 0, 0] = b[0, 0, 20] = True
    d = compute_surface_distances(a, b, (2.0, 1.0, 0.5))
    np.testing.assert_array_equal(d["distances_gt_to_pred"], [9.5] * 4 + [10.0] * 4)
    assert_same(a, b, (2.0, 1.0, 0.5))


def test_non_contiguous_and_integer_masks():
    rng = np.random.default_rng(7)
    a, b = rng.random((9, 8, 7)) < 0.4, rng.random((9, 8, 7)) < 0.4
    want = reference_distances(a, b, (1.0, 2.0, 3.0))
    got = compute_surface_distances(
        np.asfortranarray(a), b.astype(np.uint8)[:, ::-1][:, ::-1], (1.0, 2.0, 3.0)
    )
    for key in KEYS:
        np.testing.assert_array_equal(got[key], want[key])


def test_masks_must_be_3d_of_one_shape():
    with pytest.raises(ValueError, match="two 3D masks of one shape"):
        compute_surface_distances(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="two 3D masks of one shape"):
        compute_surface_distances(np.ones((3, 3, 3), bool), np.ones((3, 3, 4), bool), (1, 1, 1))
