"""Check a dataset before anything is planned or trained on it.

`verify(dataset)` reads every file once and returns a list of `Problem`s, one line each, naming
the file and what to do. Errors make the data unusable (training would crash or learn from
garbage); warnings are suspicious but usable. Tolerances: spacing 1e-3 relative, origin 1e-3 of
the largest voxel spacing, direction cosines 1e-3 absolute.

SimpleITK reads a truncated ``.nii.gz`` without complaint (missing voxels come back as 0), so
NIfTI files are also streamed to the end and their length compared with what the header needs.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ablate.data.dataset import Case, Dataset
from ablate.errors import DataError
from ablate.imageio import Geometry, read_image

RELATIVE_TOLERANCE = 1e-3
NIFTI1_HEADER_BYTES = 348
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd")


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def verify(dataset: Dataset) -> list[Problem]:
    """Every problem found in the dataset's files, errors and warnings, in case order. An empty
    dataset, a labelled case without its image, an image without its label, files in the case
    folders that are hidden or carry another file ending each get one line."""
    if not dataset.cases:
        return [
            Problem(
                "error",
                dataset.root,
                "no cases found; check the folder and its format "
                "(`ablate verify --format ...`), or download the data first",
            )
        ]
    problems = _duplicate_ids(dataset) + _labels_without_images(dataset) + _stray_files(dataset)
    declared = dataset.declared_values()
    for case in dataset.cases:
        problems += _check_case(case, declared)
    return problems


def usable_cases(dataset: Dataset, problems: list[Problem]) -> int:
    """How many cases have all their files and no error against any of them."""
    bad = {_key(p.path) for p in problems if p.severity == "error"}
    return sum(
        case.label is not None and not any(_key(p) in bad for p in (*case.images, case.label))
        for case in dataset.cases
    )


def _key(path: Path) -> Path:
    """Paths compared by where they lead: a dataset read through a symlink or a relative path
    names the same files as its resolved self."""
    return Path(os.path.realpath(path))


def raise_on_errors(problems: list[Problem]) -> None:
    """DataError quoting the first error (and how many more) when any problem is an error."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        extra = len(errors) - 1
        more = f" (and {extra} more errors; run `ablate verify`)" if extra else ""
        raise DataError(f"{errors[0].path}: {errors[0].message}{more}")


def _duplicate_ids(dataset: Dataset) -> list[Problem]:
    counts = Counter(case.case_id for case in dataset.cases)
    seen: set[str] = set()
    problems = []
    for case in dataset.cases:
        if counts[case.case_id] > 1 and case.case_id not in seen:
            seen.add(case.case_id)
            problems.append(
                Problem(
                    "error",
                    case.images[0] if case.images else dataset.root,
                    f"case id {case.case_id!r} appears {counts[case.case_id]} "
                    "times; rename or remove the duplicates",
                )
            )
    return problems


def _labels_without_images(dataset: Dataset) -> list[Problem]:
    """Label files in the folders of the cases' labels that no case points to (the readers
    already turn a label without its image into a case whose image is missing)."""
    used = {_key(case.label) for case in dataset.cases if case.label is not None}
    folders = {_key(case.label.parent) for case in dataset.cases if case.label is not None}
    problems = []
    for folder in sorted(folders):
        for label in sorted(folder.glob(f"*{dataset.file_ending}")):
            if _key(label) not in used and not label.name.startswith("."):
                problems.append(
                    Problem(
                        "error",
                        label,
                        "label has no matching image; add the image or remove the label",
                    )
                )
    return problems


def _ending(name: str) -> str | None:
    return next((e for e in IMAGE_ENDINGS if name.lower().endswith(e)), None)


def _stray_files(dataset: Dataset) -> list[Problem]:
    """Hidden files (macOS ``._*`` AppleDouble copies, as MSD's tarballs ship them: a warning,
    they are never read) in the case folders and the dataset's own image/label folders, and
    image files whose ending differs from the one their folder's cases use (an error: they are
    not read, or the folder mixes endings)."""
    by_folder: dict[Path, list[Path]] = {}
    for case in dataset.cases:
        for path in (*case.images, *([case.label] if case.label else [])):
            by_folder.setdefault(path.parent, []).append(path)
    own = [dataset.root / name for name in ("imagesTr", "labelsTr", "images", "labels")]
    folders = {_key(f): f for f in [*own, *by_folder] if f.is_dir()}
    problems = []
    for folder in sorted(folders.values()):
        paths = by_folder.get(folder, [])
        endings = Counter(_ending(p.name) for p in paths)
        main = endings.most_common(1)[0][0] if endings else None
        used = {_key(p) for p in paths}
        for path in sorted(folder.iterdir()):
            ending = _ending(path.name)
            if ending is None or path.name.startswith(".partial_"):
                continue
            if path.name.startswith("."):
                message = "hidden file (macOS metadata, not an image) is ignored; delete it"
                problems.append(Problem("warning", path, message))
            elif main is not None and ending != main:
                read = "is read" if _key(path) in used else "is not read"
                message = (
                    f"ending {ending} differs from {main} of the other {endings[main]} "
                    f"files here and {read}; give every file the ending {main}"
                )
                problems.append(Problem("error", path, message))
    return problems


def _check_case(case: Case, declared: set[int]) -> list[Problem]:
    problems: list[Problem] = []
    images = []
    for path in case.images:
        if not path.is_file() and case.label is not None:
            problems.append(
                Problem(
                    "error",
                    path,
                    f"image of labelled case {case.case_id!r} is "
                    "missing; finish the download or restore it, or remove the "
                    "case's label",
                )
            )
            continue
        loaded = _load(path, problems)
        if loaded is not None:
            images.append((path, *loaded))
    if case.label is None:
        where = case.images[0] if case.images else Path(case.case_id)
        return problems + [
            Problem(
                "error",
                where,
                f"case {case.case_id!r} has no label file; add its label or remove the image",
            )
        ]
    label = _load(case.label, problems)
    if label is None:
        return problems
    for path, array, geometry in images:
        problems += _geometry_mismatch(case.label, label[0], label[1], path, array, geometry)
    return problems + _label_values(case.label, label[0], declared)


def _load(path: Path, problems: list[Problem]) -> tuple[np.ndarray, Geometry] | None:
    """Read a file, appending an error instead of raising when it is missing, truncated or bad."""
    if not path.is_file():
        problems.append(Problem("error", path, "file is missing; restore it or remove the case"))
        return None
    broken, non_finite = _scan_nifti(path)
    if broken:
        problems.append(Problem("error", path, broken))
        return None
    try:
        array, geometry = read_image(path)
    except DataError as exc:
        problems.append(Problem("error", path, str(exc).removeprefix(f"{path}: ")))
        return None
    if np.issubdtype(array.dtype, np.floating):
        non_finite = max(non_finite, int(array.size - np.count_nonzero(np.isfinite(array))))
    if non_finite:
        problems.append(
            Problem(
                "error",
                path,
                f"{non_finite} NaN/inf voxels; replace them with "
                "a finite value (e.g. the image minimum) and re-export",
            )
        )
    return array, geometry


def _scan_nifti(path: Path) -> tuple[str | None, int]:
    """Stream a NIfTI file to its end: (message if truncated or corrupt, NaN/inf voxel count).

    The raw payload is scanned because ITK's NIfTI reader turns NaN/inf into 0 on reading.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None, 0
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(NIFTI1_HEADER_BYTES)
            layout = _nifti1_layout(header)
            total, non_finite, pending = len(header), 0, b""
            while chunk := stream.read(1 << 22):
                if layout is not None and layout[2] is not None:
                    pending, bad = _count_non_finite(pending + chunk, total - len(pending), layout)
                    non_finite += bad
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return f"file is truncated or corrupt ({exc}); re-download or re-export it", 0
    if layout is not None and total < layout[1]:
        return (
            f"file is truncated: {total} bytes but its header needs {layout[1]}; "
            "re-download or re-export it"
        ), 0
    return None, non_finite


def _count_non_finite(data: bytes, data_start: int, layout: tuple) -> tuple[bytes, int]:
    """Count NaN/inf among the whole float items in `data`, which starts at file offset
    `data_start`; return the unconsumed tail (a partial item) and the count."""
    vox_offset, _, dtype = layout
    skip = min(len(data), max(0, vox_offset - data_start))
    usable = (len(data) - skip) // dtype.itemsize * dtype.itemsize
    values = np.frombuffer(data[skip : skip + usable], dtype=dtype)
    return data[skip + usable :], int(values.size - np.count_nonzero(np.isfinite(values)))


def _nifti1_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(vox_offset, bytes the file needs, float dtype or None) of a NIfTI-1 header, else None."""
    if len(header) < NIFTI1_HEADER_BYTES:
        return None
    for order in "<>":
        if struct.unpack(f"{order}i", header[:4])[0] == NIFTI1_HEADER_BYTES:
            dims = struct.unpack(f"{order}8h", header[40:56])
            datatype, bitpix = struct.unpack(f"{order}2h", header[70:74])
            vox_offset = int(struct.unpack(f"{order}f", header[108:112])[0])
            n_voxels = int(np.prod([max(d, 1) for d in dims[1 : 1 + max(dims[0], 0)]]))
            floats = {16: f"{order}f4", 64: f"{order}f8"}  # NIfTI datatype codes
            dtype = np.dtype(floats[datatype]) if datatype in floats else None
            return vox_offset, vox_offset + n_voxels * bitpix // 8, dtype
    return None


def _geometry_mismatch(
    label_path: Path,
    label: np.ndarray,
    label_geometry: Geometry,
    image_path: Path,
    image: np.ndarray,
    geometry: Geometry,
) -> list[Problem]:
    """Label vs one image channel: shape, spacing, origin, direction."""
    if label.shape != image.shape:
        return [
            Problem(
                "error",
                label_path,
                f"shape {label.shape} differs from {image.shape} "
                f"of image {image_path.name}; resample or re-export the label on the "
                "image grid",
            )
        ]
    max_spacing = max(geometry.spacing_mm)
    checks = (
        ("spacing_mm", geometry.spacing_mm, label_geometry.spacing_mm, RELATIVE_TOLERANCE, 0.0),
        ("origin", geometry.origin, label_geometry.origin, 0.0, RELATIVE_TOLERANCE * max_spacing),
        ("direction", geometry.direction, label_geometry.direction, 0.0, RELATIVE_TOLERANCE),
    )
    return [
        Problem(
            "error",
            label_path,
            f"{name} {_fmt(found)} differs from {_fmt(expected)} "
            f"of image {image_path.name}; copy the image geometry onto the label",
        )
        for name, expected, found, rtol, atol in checks
        if not np.allclose(found, expected, rtol=rtol, atol=atol)
    ]


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _label_values(path: Path, label: np.ndarray, declared: set[int]) -> list[Problem]:
    if np.issubdtype(label.dtype, np.integer) and label.size and label.min() >= 0:
        counts = np.bincount(label.ravel())  # far faster than np.unique on large volumes
        present = [int(v) for v in np.flatnonzero(counts)]
    else:
        present = [v.item() for v in np.unique(label)]
    problems = []
    unknown = [v for v in present if v not in declared]
    if unknown:
        problems.append(
            Problem(
                "error",
                path,
                f"label values {unknown} are not declared "
                f"(declared: {sorted(declared)}); fix the label file or declare "
                "them in the labels map",
            )
        )
    if all(v == 0 for v in present):
        problems.append(
            Problem(
                "warning",
                path,
                "label has no foreground voxels; check the annotation or drop the case",
            )
        )
    return problems
