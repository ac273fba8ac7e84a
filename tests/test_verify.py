import dataclasses
import gzip

import numpy as np
import pytest

from ablate.data import Case, Dataset
from ablate.data.verify import Problem, raise_on_errors, verify
from ablate.errors import DataError
from ablate.imageio import Geometry, write_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRY = Geometry((3.0, 0.8, 0.7), (1.0, 2.0, 3.0), IDENTITY)
LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def _label(shape=(2, 3, 4)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[1, 1, 1:3] = (1, 2)
    return label


def _dataset(root, ids=("a", "b"), ending=".nii.gz") -> Dataset:
    cases = []
    for cid in ids:
        image = root / "imagesTr" / f"{cid}_0000{ending}"
        label = root / "labelsTr" / f"{cid}{ending}"
        write_image(np.full((2, 3, 4), 40, np.int16), GEOMETRY, image)
        write_image(_label(), GEOMETRY, label)
        cases.append(Case(cid, (image,), label))
    return Dataset(
        root=root, name="t", channels=("CT",), labels=LABELS, cases=tuple(cases), file_ending=ending
    )


def _only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_clean_dataset_has_no_problems(tmp_path):
    assert verify(_dataset(tmp_path)) == []


def test_shape_mismatch(tmp_path):
    ds = _dataset(tmp_path)
    write_image(_label((2, 3, 5)), GEOMETRY, ds.cases[0].label)
    assert _only(verify(ds)) == Problem(
        "error",
        ds.cases[0].label,
        "shape (2, 3, 5) differs from (2, 3, 4) of image "
        "a_0000.nii.gz; resample or re-export the label on the "
        "image grid",
    )


def test_spacing_mismatch_and_tolerance(tmp_path):
    ds = _dataset(tmp_path)
    write_image(
        _label(), dataclasses.replace(GEOMETRY, spacing_mm=(3.0005, 0.8, 0.7)), ds.cases[0].label
    )
    assert verify(ds) == []  # 1.7e-4 relative: within tolerance
    write_image(
        _label(), dataclasses.replace(GEOMETRY, spacing_mm=(3.0, 0.8, 0.75)), ds.cases[0].label
    )
    assert str(_only(verify(ds))) == (
        f"error: {ds.cases[0].label}: spacing_mm (3, 0.8, 0.75) differs from (3, 0.8, 0.7) of "
        "image a_0000.nii.gz; copy the image geometry onto the label"
    )


def test_origin_mismatch(tmp_path):
    ds = _dataset(tmp_path)
    write_image(_label(), dataclasses.replace(GEOMETRY, origin=(1.0, 2.0, 4.0)), ds.cases[1].label)
    assert _only(verify(ds)).message == (
        "origin (1, 2, 4) differs from (1, 2, 3) of image "
        "b_0000.nii.gz; copy the image geometry onto the label"
    )


def test_direction_mismatch(tmp_path):
    ds = _dataset(tmp_path)
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write_image(_label(), dataclasses.replace(GEOMETRY, direction=flipped), ds.cases[0].label)
    assert _only(verify(ds)).message == (
        "direction (-1, 0, 0, 0, 1, 0, 0, 0, 1) differs from "
        "(1, 0, 0, 0, 1, 0, 0, 0, 1) of image a_0000.nii.gz; "
        "copy the image geometry onto the label"
    )


def test_undeclared_label_values(tmp_path):
    ds = _dataset(tmp_path)
    label = _label()
    label[0, 0, :2] = (3, 7)
    write_image(label, GEOMETRY, ds.cases[0].label)
    assert _only(verify(ds)).message == (
        "label values [3, 7] are not declared (declared: "
        "[0, 1, 2]); fix the label file or declare them in the "
        "labels map"
    )


def test_nan_and_inf_voxels(tmp_path):
    ds = _dataset(tmp_path)
    image = np.zeros((2, 3, 4), np.float32)
    image[0, 0, 0], image[1, 2, 3] = np.nan, np.inf
    write_image(image, GEOMETRY, ds.cases[1].images[0])
    assert _only(verify(ds)) == Problem(
        "error",
        ds.cases[1].images[0],
        "2 NaN/inf voxels; replace them with a finite value (e.g. the image minimum) and re-export",
    )


def test_unreadable_gzip_file(tmp_path):
    ds = _dataset(tmp_path)
    ds.cases[0].images[0].write_bytes(b"not an image")
    assert _only(verify(ds)).message == (
        "file is truncated or corrupt (Not a gzipped file (b'no')); re-download or re-export it"
    )


def test_unreadable_plain_file(tmp_path):
    ds = _dataset(tmp_path, ending=".nii")
    ds.cases[0].label.write_bytes(b"x" * 10)
    problem = _only(verify(ds))
    assert problem.path == ds.cases[0].label
    assert problem.message.startswith("cannot read image (")
    assert problem.message.endswith("); re-export or replace the file")


def test_truncated_gzip_file(tmp_path):
    ds = _dataset(tmp_path)
    path = ds.cases[1].label
    path.write_bytes(path.read_bytes()[:-20])  # SimpleITK alone would read this as zeros
    assert _only(verify(ds)) == Problem(
        "error",
        path,
        "file is truncated or corrupt (Compressed "
        "file ended before the end-of-stream marker was "
        "reached); re-download or re-export it",
    )


def test_truncated_plain_nifti(tmp_path):
    ds = _dataset(tmp_path, ending=".nii")
    path = ds.cases[0].images[0]
    path.write_bytes(path.read_bytes()[:-6])
    needed = 352 + 2 * 3 * 4 * 2  # vox_offset + int16 voxels
    assert _only(verify(ds)).message == (
        f"file is truncated: {needed - 6} bytes but its header "
        f"needs {needed}; re-download or re-export it"
    )


def test_gzip_nifti_payload_shorter_than_header_says(tmp_path):
    ds = _dataset(tmp_path)
    path = ds.cases[0].images[0]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-8]))  # a well-formed gzip stream with missing voxels
    assert _only(verify(ds)).message.startswith(f"file is truncated: {len(raw) - 8} bytes")


def test_image_without_label(tmp_path):
    ds = _dataset(tmp_path)
    ds.cases[1].label.unlink()
    ds = dataclasses.replace(ds, cases=(ds.cases[0], Case("b", ds.cases[1].images, None)))
    assert _only(verify(ds)) == Problem(
        "error",
        ds.cases[1].images[0],
        "case 'b' has no label file; add its label or remove the image",
    )


def test_label_without_image(tmp_path):
    ds = _dataset(tmp_path)
    orphan = tmp_path / "labelsTr" / "c.nii.gz"
    write_image(_label(), GEOMETRY, orphan)
    assert _only(verify(ds)) == Problem(
        "error", orphan, "label has no matching image; add the image or remove the label"
    )


def test_missing_image_file(tmp_path):
    ds = _dataset(tmp_path)
    ds.cases[0].images[0].unlink()
    assert _only(verify(ds)) == Problem(
        "error",
        ds.cases[0].images[0],
        "image of labelled case 'a' is missing; finish the "
        "download or restore it, or remove the case's label",
    )


def test_duplicate_case_ids(tmp_path):
    ds = _dataset(tmp_path)
    ds = dataclasses.replace(ds, cases=(ds.cases[0], ds.cases[1], ds.cases[0]))
    assert _only(verify(ds)) == Problem(
        "error",
        ds.cases[0].images[0],
        "case id 'a' appears 2 times; rename or remove the duplicates",
    )


def test_empty_foreground_is_a_warning(tmp_path):
    ds = _dataset(tmp_path)
    write_image(np.zeros((2, 3, 4), np.uint8), GEOMETRY, ds.cases[0].label)
    problems = verify(ds)
    assert _only(problems) == Problem(
        "warning",
        ds.cases[0].label,
        "label has no foreground voxels; check the annotation or drop the case",
    )
    raise_on_errors(problems)  # warnings alone do not stop a run


def test_raise_on_errors_quotes_first_and_counts(tmp_path):
    ds = _dataset(tmp_path)
    for case in ds.cases:
        case.images[0].unlink()
    with pytest.raises(
        DataError,
        match=r"a_0000.nii.gz: image of labelled case 'a' is missing; "
        r".* \(and 1 more errors; run `ablate verify`\)",
    ):
        raise_on_errors(verify(ds))
