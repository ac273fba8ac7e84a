"""Lossless reorientation of axis-aligned images (a signed axis permutation, no resampling).

KiTS stores the axial slice axis as the first NIfTI axis, so numpy arrays come back
(512, 512, slices); nnU-Net's ``NibabelIOWithReorient`` turns such files to RAS. `reorient` puts
an image's axes along the world axes with chosen signs (identity, or RAS as nnU-Net does) while
every voxel keeps its world position; `to_source_grid` is its inverse, for writing a prediction
back in a dataset's own grid (e.g. a KiTS19 submission).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ablate.errors import DataError
from ablate.imageio import Geometry, read_image, write_image

IDENTITY = (1, 1, 1)  # SimpleITK (LPS) x, y, z each along +world
RAS = (-1, -1, 1)  # nibabel's canonical RAS in SimpleITK's LPS world: nnU-Net's reorientation


def _axes(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # columns: sitk x, y, z
    world_axis = np.abs(direction).argmax(axis=0)  # for each sitk index axis
    unit = np.allclose(np.abs(direction).max(axis=0), 1.0, atol=1e-3)
    if sorted(world_axis) != [0, 1, 2] or not unit:
        raise DataError(
            f"direction {geometry.direction} is oblique; only axis-aligned images can "
            "be reoriented losslessly"
        )
    return direction, world_axis


def reorient(array: np.ndarray, geometry: Geometry, signs=IDENTITY) -> tuple[np.ndarray, Geometry]:
    """Permute and flip a (Z, Y, X) array so that SimpleITK axis w runs along signs[w] * world w.

    Only for axis-aligned directions; the world position of every voxel is unchanged. DataError
    for oblique directions.
    """
    direction, world_axis = _axes(geometry)
    own = direction[world_axis, [0, 1, 2]]  # the sign each stored axis has along its world axis
    spacing_xyz = np.asarray(geometry.spacing_mm[::-1])
    size_xyz = np.asarray(array.shape[::-1])
    origin = np.asarray(geometry.origin, dtype=float)
    data = array
    for j in range(3):
        if own[j] != signs[world_axis[j]]:  # flip: the far corner becomes the origin
            origin = origin + direction[:, j] * spacing_xyz[j] * (size_xyz[j] - 1)
            data = np.flip(data, axis=2 - j)
    # numpy axis (2 - j) holds sitk axis j; new sitk axis w is the old one lying along world w
    old_for_new = [int(np.where(world_axis == w)[0][0]) for w in range(3)]
    data = np.ascontiguousarray(np.transpose(data, [2 - old_for_new[2 - a] for a in range(3)]))
    new_spacing_xyz = [float(spacing_xyz[j]) for j in old_for_new]
    new_direction = tuple(float(np.diag(signs)[r, c]) for r in range(3) for c in range(3))
    return data, Geometry(
        tuple(new_spacing_xyz[::-1]), tuple(float(o) for o in origin), new_direction
    )


def reorient_to_identity(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """`reorient` to the identity direction (ablate's KiTS19 cache)."""
    return reorient(array, geometry, IDENTITY)


def is_oriented(geometry: Geometry, signs=IDENTITY) -> bool:
    return np.allclose(geometry.direction, np.diag(signs).ravel(), atol=1e-6)


def to_source_grid(
    array: np.ndarray,
    geometry: Geometry,
    source: Geometry,
    source_shape: tuple[int, int, int],
    where: Path,
) -> np.ndarray:
    """The (Z, Y, X) array of an image on `geometry` re-laid on the source grid it was reoriented
    from (the inverse of `reorient`); DataError naming `where` if the grids do not cover the
    same voxels."""
    if (
        array.shape == tuple(source_shape)
        and np.allclose(geometry.direction, source.direction, atol=1e-4)
        and np.allclose(geometry.origin, source.origin, atol=1e-3)
    ):
        return array  # the source grid already (a layout read in place)
    index = np.arange(int(np.prod(source_shape))).reshape(source_shape)
    signs = tuple(int(round(v)) for v in np.diag(np.reshape(geometry.direction, (3, 3))))
    moved, moved_geometry = reorient(index, source, signs)
    same = (
        moved.shape == array.shape
        and np.allclose(moved_geometry.spacing_mm, geometry.spacing_mm, rtol=1e-4)
        and np.allclose(moved_geometry.origin, geometry.origin, atol=1e-3)
        and np.allclose(moved_geometry.direction, geometry.direction, atol=1e-4)
    )
    if not same:
        raise DataError(
            f"{where}: shape {array.shape}, spacing {geometry.spacing_mm} and origin "
            f"{geometry.origin} are not the reoriented grid of the source image; "
            "predict on the dataset ablate read"
        )
    out = np.empty(source_shape, dtype=array.dtype)
    out.ravel()[moved.ravel()] = array.ravel()
    return out


def is_fresh(copy: Path, source: Path) -> bool:
    return copy.is_file() and copy.stat().st_mtime_ns >= source.stat().st_mtime_ns


def reoriented_copy(source: Path, out: Path, signs=IDENTITY) -> Path:
    """`out`, rewritten from `source` reoriented when it is older than the source (atomic)."""
    if not is_fresh(out, source):
        array, geometry = read_image(source)
        array, geometry = reorient(array, geometry, signs)
        partial = out.with_name(f".partial_{out.name}")
        write_image(array, geometry, partial)
        partial.replace(out)
    return out
