"""Surface distances of two 3D masks: DeepMind surface-distance's values, computed faster.

`compute_surface_distances(mask_gt, mask_pred, spacing_mm)` returns the same dict as
`surface_distance.compute_surface_distances` (0.1): the same surfels (corners of the voxel grid
whose 2x2x2 neighbourhood is neither empty nor full), the same surfel areas (its marching-cube
lookup table at `spacing_mm`), the same distances (Euclidean, in mm, from each surfel corner to
the nearest surfel corner of the other mask, computed with scipy's float formula
``sqrt(((dz*sz)**2 + (dy*sy)**2) + (dx*sx)**2)`` on integer offsets) and the same order (sorted
by (distance, area)). So surface-distance's `compute_surface_dice_at_tolerance`,
`compute_robust_hausdorff` and `compute_average_surface_distance` give the same values on it.

Where surface-distance runs two Euclidean distance transforms over the whole bounding box and
sorts the surfels with Python's `sorted()`, this engine only looks at the surfels:
1. the joint bounding box: one pass over each mask along z, then a projection of the slab;
2. neighbour codes from three vectorised multiply-adds on the flat padded crop (no correlation);
3. the nearest surfel of the other mask by scanning integer offsets in increasing distance up
   to two of the largest spacings (the first offset that lands on a surfel is the nearest;
   distance 0 first, so coincident surfaces cost one lookup); the scan gives up early when a
   block of offsets finds almost nothing (a structure far from the other mask);
4. the surfels it leaves: all pairs when few, else scipy's cKDTree on the other mask's surfels
   within reach, then every candidate within a rounding error of the nearest (the smallest
   float distance wins ties, which is what scipy's transform gave in every comparison), or,
   when they are many, scipy's
   feature transform over surface-distance's own grid read at those surfels only;
5. two stable radix sorts on (distance rank, area rank) instead of sorting Python tuples.
What none of the libraries does is steps 2, 3 and 5 and choosing per case between 3 and 4:
scipy's transforms cost ~60 ns per voxel of the box, MONAI's `compute_surface_dice` runs the
same full transforms (with torch), numba would add a run-time dependency for the scan only.

Empty masks as in surface-distance: both empty -> four empty arrays; one empty -> its arrays
are empty and the other mask's distances are all inf. Only 3D masks (ablate's (Z, Y, X)).
Measured against surface-distance in tests/test_surface.py and bench/metrics.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from surface_distance import lookup_tables

# The offset scan covers distances up to this many times the largest spacing (453 offsets at
# (3, 0.8, 0.8) mm, 33 at 1 mm isotropic); surfels farther from the other mask are rare.
_SCAN_VOXELS = 2.0
_MAX_BLOCK = 32  # offsets gathered at once once the first (most frequent) ones are done
_MAX_GATHER = 1 << 22  # corner lookups per step (32 MiB of indices), for very noisy masks
_ALL_PAIRS = 1 << 16  # below this many (query, target) pairs, compare them all (tiny masks)
# Far surfels per grid corner above which one feature transform of the whole grid is cheaper
# than KD-tree queries (~10 us for a far query, ~60 ns per corner for scipy's transform).
_FAR_FOR_TRANSFORM = 1 / 160
_Z_CHUNK = 4  # slices searched at once from the top for a mask's last occupied slice
_TIES = 8  # nearest candidates asked of the KD-tree at once (more only when all 8 tie)


@functools.lru_cache(maxsize=64)
def _area_table(spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """surface-distance's 256-entry neighbour-code -> surfel area table (mm^2), and each
    area's rank among the table's values (for a radix sort)."""
    table = lookup_tables.create_table_neighbour_code_to_surface_area(list(spacing_mm))
    return table, np.unique(table, return_inverse=True)[1].astype(np.uint16)


@functools.lru_cache(maxsize=64)
def _offsets(spacing_mm: tuple[float, float, float]):
    """Integer offsets (K, 3) within the scan radius sorted by their float distance (K,) in mm,
    each distance's rank among the distinct ones (K,), and the largest offset per axis."""
    radius = _SCAN_VOXELS * max(spacing_mm)
    reach = tuple(int(math.floor(radius / s)) for s in spacing_mm)
    axes = [np.arange(-r, r + 1) for r in reach]
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    distances = _distance(offsets, spacing_mm)
    keep = distances <= radius
    order = np.argsort(distances[keep], kind="stable")
    offsets, distances = offsets[keep][order], distances[keep][order]
    return offsets, distances, np.unique(distances, return_inverse=True)[1], reach


def _distance(offsets: np.ndarray, spacing_mm) -> np.ndarray:
    """scipy's distance_transform_edt formula on integer offsets (N, 3) -> (N,) mm."""
    scaled = offsets.astype(np.float64) * np.asarray(spacing_mm, dtype=np.float64)
    scaled *= scaled
    return np.sqrt((scaled[:, 0] + scaled[:, 1]) + scaled[:, 2])


def _span(occupied: np.ndarray) -> tuple[int, int] | None:
    hits = np.flatnonzero(occupied)
    return (int(hits[0]), int(hits[-1]) + 1) if hits.size else None


def _z_span(mask: np.ndarray) -> tuple[int, int] | None:
    """(first, last + 1) occupied z slice, or None: argmax on booleans stops at the first True,
    so only the empty slices below the first and above the last one are read."""
    rows = mask.reshape(mask.shape[0], -1)  # (Z, Y * X)
    first = int(rows.reshape(-1).argmax())
    if not rows.reshape(-1)[first]:
        return None
    low = first // rows.shape[1]
    for stop in range(rows.shape[0], low, -_Z_CHUNK):  # from the top, a few slices at a time
        start = max(stop - _Z_CHUNK, low)
        chunk = rows[start:stop].reshape(-1)
        if chunk[chunk.argmax()]:
            return low, start + int(np.flatnonzero(rows[start:stop].any(axis=1))[-1]) + 1
    raise AssertionError("unreachable: slice `low` is occupied")


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """(start, stop) per axis of the voxels set in a or b; None if both are empty: the z span
    of each, then a projection of the occupied slab only."""
    spans = [span for span in (_z_span(a), _z_span(b)) if span is not None]
    if not spans:
        return None
    z = (min(s[0] for s in spans), max(s[1] for s in spans))
    projection = np.logical_or.reduce(a[z[0] : z[1]], axis=0)  # (Y, X)
    projection |= np.logical_or.reduce(b[z[0] : z[1]], axis=0)
    return z, _span(projection.any(axis=1)), _span(projection.any(axis=0))


def _neighbour_codes(mask: np.ndarray, box, pad, shape) -> np.ndarray:
    """surface-distance's neighbour code of every voxel corner, flat: the box is copied into a
    zero grid of `shape` at offset 1 + pad, and corner f (the grid's flat index of its lowest
    voxel) gets bit 7 from voxel f ... bit 0 from voxel f + (1, 1, 1). Zero voxels on every
    side keep the corners that wrap from one row to the next at code 0."""
    voxels = np.zeros(shape, dtype=np.uint8)
    inner = tuple(
        slice(1 + p, 1 + p + stop - start) for (start, stop), p in zip(box, pad, strict=True)
    )
    voxels[inner] = mask.view(np.uint8)[tuple(slice(start, stop) for start, stop in box)]
    flat, row, slab = voxels.ravel(), shape[2], shape[1] * shape[2]
    codes = flat[:-1] * np.uint8(2) + flat[1:]  # x pairs: 2 bits
    codes = codes[:-row] * np.uint8(4) + codes[row:]  # y pairs: 4 bits
    return codes[:-slab] * np.uint8(16) + codes[slab:]  # z pairs: 8 bits


def _scan(query: np.ndarray, target: np.ndarray, strides, spacing_mm) -> np.ndarray:
    """Index of the nearest offset landing on a target surfel for each query surfel (flat
    corner indices), scanning offsets in increasing distance; -1 beyond the scan radius or
    where the scan gave up (many surfels left, hardly any found by the last block)."""
    offsets = _offsets(spacing_mm)[0]
    index = np.int32 if target.size < 2**31 else np.int64  # half the memory traffic
    steps = (offsets @ np.asarray(strides)).astype(index)
    query = query.astype(index)
    found_at = np.full(query.size, -1, dtype=np.int64)
    pending, corners = np.arange(query.size), query  # the unresolved queries, their corners
    start, block = 0, 1
    while start < len(steps) and pending.size:
        stop = min(len(steps), start + max(1, min(block, _MAX_GATHER // pending.size)))
        hits = np.take(target, steps[start:stop, None] + corners[None, :])  # (block, pending)
        found = np.logical_or.reduce(hits, axis=0)
        resolved = int(np.count_nonzero(found))
        if resolved:
            first = np.zeros(pending.size, dtype=np.int64)
            for row in range(stop - start - 1, -1, -1):  # the nearest offset that hits wins
                first[hits[row]] = row
            found_at[pending[found]] = start + first[found]
            pending, corners = pending[~found], corners[~found]
        if resolved * 64 < pending.size + resolved and pending.size * (len(steps) - stop) > (
            _MAX_GATHER
        ):
            break  # many left, hardly any found: far (another structure), cheaper elsewhere
        start, block = stop, min(2 * block, _MAX_BLOCK)
    return found_at


def _nearest(query: np.ndarray, target: np.ndarray, spacing_mm) -> np.ndarray:
    """Exact distances from query corners (N, 3) to the nearest target corner (M, 3): every pair
    for few, else a KD-tree and then every candidate tied with the nearest within rounding; of
    tied candidates the smallest float distance (as the offset scan)."""
    if len(query) * len(target) <= _ALL_PAIRS:
        pairs = (target[None] - query[:, None]).reshape(-1, 3)  # (N * M, 3)
        return _distance(pairs, spacing_mm).reshape(len(query), len(target)).min(axis=1)
    scale = np.asarray(spacing_mm, dtype=np.float64)
    target = _within_reach(query, target, scale)
    tree = cKDTree(target * scale, leafsize=64, balanced_tree=False, compact_nodes=False)
    k = min(_TIES, len(target))
    found, index = tree.query(query * scale, k=k)  # (N, k), nearest first
    found, index = found.reshape(len(query), k), index.reshape(len(query), k)
    tied = found <= found[:, :1] * (1 + 1e-9) + 1e-12  # within rounding of the nearest
    exact = np.where(
        tied,
        _distance((target[index] - query[:, None]).reshape(-1, 3), scale).reshape(tied.shape),
        np.inf,
    ).min(axis=1)
    more = np.flatnonzero(tied[:, -1]) if k < len(target) else np.array([], dtype=np.int64)
    if more.size:  # k ties and maybe more: every candidate within rounding
        balls = tree.query_ball_point(query[more] * scale, found[more, 0] * (1 + 1e-9) + 1e-12)
        counts = np.fromiter(map(len, balls), dtype=np.int64, count=len(balls))
        owner = np.repeat(more, counts)
        each = _distance(target[np.concatenate(balls).astype(np.int64)] - query[owner], scale)
        exact[more] = np.minimum.reduceat(each, np.cumsum(counts) - counts)
    return exact


def _within_reach(query: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The target corners that can be nearest to some query corner: each query's nearest is no
    farther than one target corner t0 (one near the first query), so all lie inside the
    queries' box grown by the largest distance to t0 (cheap, and far queries come in blobs)."""
    some = target[:: max(1, len(target) // 1024)]  # any corner bounds; a near one, tightly
    t0 = some[np.argmin(_distance(some - query[0], scale))]
    reach = (_distance(query - t0, scale).max() * (1 + 1e-9) + 1e-9) / scale  # voxels per axis
    low, high = query.min(axis=0) - reach, query.max(axis=0) + reach
    inside = (target[:, 0] >= low[0]) & (target[:, 0] <= high[0])
    for axis in (1, 2):
        inside &= (target[:, axis] >= low[axis]) & (target[:, axis] <= high[axis])
    return target[inside]


def _nearest_by_transform(query: np.ndarray, target_map: np.ndarray, shape, pad, spacing_mm):
    """surface-distance's own distances for query corners (flat indices): scipy's feature
    transform over its corner grid (the box's corners, without our padding), then the same
    float formula at the queries only."""
    grid = np.zeros(math.prod(shape), dtype=bool)
    grid[: target_map.size] = target_map
    corner_grid = tuple(slice(p, n - 1 - p) for n, p in zip(shape, pad, strict=True))
    features = ndimage.distance_transform_edt(
        ~grid.reshape(shape)[corner_grid],
        sampling=spacing_mm,
        return_distances=False,
        return_indices=True,
    )  # (3, Z + 1, Y + 1, X + 1)
    corners = np.stack(np.unravel_index(query, shape), axis=1) - np.asarray(pad)
    nearest = features[:, corners[:, 0], corners[:, 1], corners[:, 2]].T
    return _distance(nearest - corners, spacing_mm)


def _directed(query: np.ndarray, target: np.ndarray, target_map: np.ndarray, shape, spacing_mm):
    """Distances (mm) from every query surfel to the nearest target surfel (flat indices into
    a grid of `shape`; target_map marks the target surfels), and their ranks (equal distances,
    equal ranks) for sorting."""
    if target.size == 0:
        return np.full(query.size, np.inf), np.zeros(query.size, dtype=np.int64)
    if query.size * target.size <= _ALL_PAIRS:
        found_at = np.full(query.size, -1, dtype=np.int64)
    else:
        found_at = _scan(query, target_map, (shape[1] * shape[2], shape[2], 1), spacing_mm)
    _, offset_mm, offset_rank, pad = _offsets(spacing_mm)
    distances, ranks = offset_mm[found_at], offset_rank[found_at]  # -1: set below
    far = np.flatnonzero(found_at < 0)
    if far.size > _FAR_FOR_TRANSFORM * math.prod(shape):
        distances[far] = _nearest_by_transform(query[far], target_map, shape, pad, spacing_mm)
    elif far.size:
        corners = np.stack(np.unravel_index(query[far], shape), axis=1)
        targets = np.stack(np.unravel_index(target, shape), axis=1)
        distances[far] = _nearest(corners, targets, spacing_mm)
    if far.size:  # rank the offsets' and the other distances together
        values = np.unique(np.concatenate([offset_mm, distances[far]]))
        ranks = np.searchsorted(values, offset_mm)[found_at]
        ranks[far] = np.searchsorted(values, distances[far])
    return distances, ranks


def _sorted_order(distance_rank: np.ndarray, area_rank: np.ndarray) -> np.ndarray:
    """The order of np.lexsort((areas, distances)) from ranks: two stable sorts, radix sorts
    while the ranks fit 16 bits."""
    dtype = np.uint16 if distance_rank.size == 0 or distance_rank.max() < 2**16 else np.int64
    order = np.argsort(area_rank, kind="stable")
    return order[np.argsort(distance_rank[order].astype(dtype), kind="stable")]


def compute_surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm) -> dict:
    """surface_distance.compute_surface_distances for 3D masks (see the module docstring):
    {"distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred"}."""
    mask_gt, mask_pred = np.asarray(mask_gt, dtype=bool), np.asarray(mask_pred, dtype=bool)
    spacing = tuple(float(s) for s in spacing_mm)
    if mask_gt.ndim != 3 or mask_gt.shape != mask_pred.shape or len(spacing) != 3:
        raise ValueError(
            f"need two 3D masks of one shape and 3 spacings, got {mask_gt.shape}, "
            f"{mask_pred.shape} and spacing_mm {spacing_mm}"
        )
    box = _joint_box(mask_gt, mask_pred)
    if box is None:
        return {key: np.array([]) for key in _KEYS}
    pad = _offsets(spacing)[3]
    shape = tuple(stop - start + 2 + 2 * p for (start, stop), p in zip(box, pad, strict=True))
    codes = [_neighbour_codes(m, box, pad, shape) for m in (mask_gt, mask_pred)]
    surfel_maps = [(c + np.uint8(1)) > 1 for c in codes]  # code not 0 (empty), not 255 (full)
    surfels = [np.flatnonzero(m) for m in surfel_maps]
    table, table_rank = _area_table(spacing)
    surfel_codes = [c[s] for c, s in zip(codes, surfels, strict=True)]
    result = {}
    for i, (side, other) in enumerate((("gt", "pred"), ("pred", "gt"))):
        distances, ranks = _directed(surfels[i], surfels[1 - i], surfel_maps[1 - i], shape, spacing)
        order = _sorted_order(ranks, table_rank[surfel_codes[i]])
        result[f"distances_{side}_to_{other}"] = distances[order]
        result[f"surfel_areas_{side}"] = table[surfel_codes[i][order]]
    return {key: result[key] for key in _KEYS}


_KEYS = ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")
