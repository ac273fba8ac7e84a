"""The one module that owns image geometry.

SimpleITK speaks (x, y, z); numpy arrays from it are (z, y, x). Everything in ablate past this
module uses numpy order: arrays are (Z, Y, X) and spacing is (z, y, x) in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ablate.errors import DataError


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (Z, Y, X) array; spacing_mm is in numpy (z, y, x) order."""

    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]  # SimpleITK (x, y, z) order, as stored in the file
    direction: tuple[float, ...]  # 9 values, SimpleITK row-major, as stored in the file

    def to_json(self) -> dict:
        return {
            "spacing_mm": list(self.spacing_mm),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_json(cls, d: dict) -> Geometry:
        return cls(tuple(d["spacing_mm"]), tuple(d["origin"]), tuple(d["direction"]))


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as a (Z, Y, X) array plus its geometry; DataError if unreadable."""
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(
            f"{path}: cannot read image ({first}); re-export or replace the file"
        ) from exc
    if img.GetDimension() != 3:
        raise DataError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    geometry = Geometry(
        spacing_mm=tuple(float(s) for s in reversed(img.GetSpacing())),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
    )
    return sitk.GetArrayFromImage(img), geometry


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a (Z, Y, X) array with the given geometry (compressed NIfTI for .nii.gz)."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(geometry.spacing_mm)))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)
