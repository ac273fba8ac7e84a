import numpy as np
import pytest
import SimpleITK as sitk

from ablate.errors import DataError
from ablate.imageio import Geometry, read_image, write_image

# a 30-degree rotation about z: non-identity, non-symmetric, orthonormal
C, S = float(np.cos(np.pi / 6)), float(np.sin(np.pi / 6))
ROTATED = Geometry(
    spacing_mm=(3.0, 0.8, 0.6),
    origin=(-12.5, 40.0, 7.25),
    direction=(C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0),
)


def _ramp(shape=(3, 4, 5)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)  # every voxel unique


def test_round_trip_keeps_shape_values_and_geometry(tmp_path):
    array = _ramp()
    write_image(array, ROTATED, tmp_path / "a.nii.gz")
    back, geometry = read_image(tmp_path / "a.nii.gz")
    assert back.shape == (3, 4, 5) and back.dtype == np.int16
    assert np.array_equal(back, array)
    assert geometry.spacing_mm == pytest.approx(ROTATED.spacing_mm)
    assert geometry.origin == pytest.approx(ROTATED.origin)
    assert geometry.direction == pytest.approx(ROTATED.direction, abs=1e-6)


def test_zyx_convention_matches_simpleitk_xyz(tmp_path):
    write_image(_ramp(), ROTATED, tmp_path / "a.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert img.GetSize() == (5, 4, 3)  # (x, y, z)
    assert img.GetSpacing() == pytest.approx((0.6, 0.8, 3.0))
    assert img.GetPixel(4, 0, 2) == _ramp()[2, 0, 4]


def test_uint8_labels_and_float_round_trip(tmp_path):
    label = np.zeros((2, 3, 4), np.uint8)
    label[1, 2, 3] = 2
    write_image(label, ROTATED, tmp_path / "l.nii.gz")
    back, _ = read_image(tmp_path / "l.nii.gz")
    assert back.dtype == np.uint8 and back[1, 2, 3] == 2 and back.sum() == 2
    values = np.linspace(-1.5, 1.5, 24, dtype=np.float32).reshape(2, 3, 4)
    write_image(values, ROTATED, tmp_path / "f.nii.gz")
    assert np.array_equal(read_image(tmp_path / "f.nii.gz")[0], values)


def test_geometry_json_round_trip():
    assert Geometry.from_json(ROTATED.to_json()) == ROTATED


def test_unreadable_and_2d_files_raise_data_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"bad.nii.gz: cannot read image"):
        read_image(bad)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(flat))
    with pytest.raises(DataError, match=r"flat.nii.gz: expected a 3D image, got 2D"):
        read_image(flat)
