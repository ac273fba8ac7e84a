import json

import numpy as np
import pytest
import SimpleITK as sitk

from ablate.data.formats import (
    converted_root,
    detect_format,
    read_dataset,
    reorient_to_identity,
)
from ablate.data.synthetic import make_synthetic_dataset
from ablate.errors import DataError
from ablate.imageio import Geometry, read_image, write_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRY = Geometry((3.0, 0.8, 0.7), (1.0, 2.0, 3.0), IDENTITY)


def _ramp(shape=(2, 3, 4), dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


def _write(path, array=None, geometry=GEOMETRY):
    write_image(_ramp() if array is None else array, geometry, path)


def _msd(root, modalities, four_d_channels=0):
    root.mkdir()
    meta = {
        "name": "Task99",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": [{"image": "./imagesTr/p_1.nii.gz", "label": "./labelsTr/p_1.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr").mkdir()
    if four_d_channels:
        channels = np.stack([_ramp() + 100 * c for c in range(four_d_channels)])  # (C, Z, Y, X)
        img = sitk.GetImageFromArray(channels, isVector=False)
        img.SetSpacing((0.7, 0.8, 3.0, 1.0))
        sitk.WriteImage(img, str(root / "imagesTr" / "p_1.nii.gz"))
    else:
        _write(root / "imagesTr" / "p_1.nii.gz")
    _write(root / "labelsTr" / "p_1.nii.gz", _ramp(dtype=np.uint8) % 3)
    return root


def test_detect_each_format(tmp_path):
    nnunet = make_synthetic_dataset(tmp_path / "nn", cases=1, seed=0, fov_mm=(20.0, 20.0, 20.0))
    assert detect_format(nnunet.root) == "nnunet"
    assert detect_format(_msd(tmp_path / "msd", ["CT"])) == "msd"
    _write(tmp_path / "kits" / "data" / "case_00000" / "imaging.nii.gz")
    assert detect_format(tmp_path / "kits") == "kits19"
    _write(tmp_path / "flare" / "TrainingImg" / "train_001_0000.nii.gz")
    assert detect_format(tmp_path / "flare") == "flare21"
    _write(tmp_path / "plain" / "images" / "a.nii.gz")
    assert detect_format(tmp_path / "plain") == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unknown dataset layout"):
        detect_format(tmp_path / "empty")


def test_missing_path_names_path_and_how_to_obtain(tmp_path):
    with pytest.raises(DataError, match=r"nope: dataset folder not found; .*neheller/kits19"):
        read_dataset(tmp_path / "nope", fmt="kits19")
    with pytest.raises(DataError, match=r"nope: .*medicaldecathlon.com.*flare.grand-challenge"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"unknown dataset format 'nifti'; choose one of"):
        read_dataset(tmp_path, fmt="nifti")


def test_nnunet_and_labels_override(tmp_path):
    ds = read_dataset(make_synthetic_dataset(tmp_path / "nn", 1, 0, (20.0, 20.0, 20.0)).root)
    assert ds.targets() == {"kidney": (1, 2), "tumor": (2,)}
    renamed = read_dataset(ds.root, labels={"background": 0, "organ": 1, "lesion": 2})
    assert renamed.labels == {"background": 0, "organ": 1, "lesion": 2}
    with pytest.raises(DataError, match=r"must map 'background' to 0"):
        read_dataset(ds.root, labels={"organ": 1})


def test_msd_single_modality_is_used_in_place(tmp_path):
    root = _msd(tmp_path / "Task03", ["CT"])
    ds = read_dataset(root)
    assert ds.name == "Task99" and ds.channels == ("CT",)
    assert ds.labels == {"background": 0, "edema": 1, "tumour": 2}
    assert [c.case_id for c in ds.cases] == ["p_1"]
    assert ds.cases[0].images == ((root / "imagesTr" / "p_1.nii.gz").resolve(),)
    assert ds.cases[0].label == (root / "labelsTr" / "p_1.nii.gz").resolve()
    assert not converted_root(root).exists()


def test_msd_4d_is_split_into_channel_files(tmp_path):
    root = _msd(tmp_path / "Task01", ["FLAIR", "T1w"], four_d_channels=2)
    ds = read_dataset(root, fmt="msd")
    out = tmp_path / "Task01_ablate_converted" / "imagesTr"
    assert ds.channels == ("FLAIR", "T1w")
    assert ds.cases[0].images == (out / "p_1_0000.nii.gz", out / "p_1_0001.nii.gz")
    for c, path in enumerate(ds.cases[0].images):
        array, geometry = read_image(path)
        assert array.shape == (2, 3, 4)
        assert np.array_equal(array, _ramp() + 100 * c)
        assert geometry.spacing_mm == pytest.approx((3.0, 0.8, 0.7))
    stamp = ds.cases[0].images[1].stat().st_mtime_ns
    read_dataset(root, fmt="msd")
    assert ds.cases[0].images[1].stat().st_mtime_ns == stamp  # cached, not rewritten


def test_msd_channel_count_mismatch(tmp_path):
    root = _msd(tmp_path / "Task01", ["FLAIR", "T1w", "T2w"], four_d_channels=2)
    with pytest.raises(
        DataError,
        match=r"p_1.nii.gz: has 2 channel\(s\) in 4D but dataset.json "
        r"declares 3 modalities",
    ):
        read_dataset(root)


# KiTS19-like storage: sitk x runs along world -z (slices), y along +y, z along -x
KITS_DIRECTION = (0.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
KITS_GEOMETRY = Geometry(
    spacing_mm=(0.7, 0.8, 3.0), origin=(10.0, -5.0, 40.0), direction=KITS_DIRECTION
)  # spacing (z,y,x) of the *stored* axes


def _world(path, index_xyz):
    return np.array(sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint(index_xyz))


def test_reorient_keeps_every_voxel_in_place(tmp_path):
    stored = _ramp((5, 3, 2))  # numpy (a, b, c); c is the slice axis (sitk x)
    _write(tmp_path / "kits.nii.gz", stored, KITS_GEOMETRY)
    array, geometry = reorient_to_identity(stored, KITS_GEOMETRY)
    assert array.shape == (2, 3, 5)  # (Z slices, Y, X)
    assert geometry.spacing_mm == (3.0, 0.8, 0.7) and geometry.direction == IDENTITY
    _write(tmp_path / "new.nii.gz", array, geometry)
    for value in (0, 7, 29):
        old = np.argwhere(stored == value)[0][::-1]  # (x, y, z) index
        new = np.argwhere(array == value)[0][::-1]
        old_world = _world(tmp_path / "kits.nii.gz", [int(i) for i in old])
        new_world = _world(tmp_path / "new.nii.gz", [int(i) for i in new])
        assert new_world == pytest.approx(old_world)


def test_reorient_rejects_oblique():
    c, s = float(np.cos(0.3)), float(np.sin(0.3))
    oblique = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(DataError, match=r"is oblique; only axis-aligned"):
        reorient_to_identity(_ramp(), oblique)


def test_kits19_is_reoriented_into_the_cache(tmp_path):
    root = tmp_path / "kits19"
    stored = _ramp((5, 3, 2))
    _write(root / "data" / "case_00000" / "imaging.nii.gz", stored, KITS_GEOMETRY)
    _write(
        root / "data" / "case_00000" / "segmentation.nii.gz",
        (stored % 3).astype(np.uint8),
        KITS_GEOMETRY,
    )
    _write(root / "data" / "case_00210" / "imaging.nii.gz", stored, KITS_GEOMETRY)
    ds = read_dataset(root)
    assert ds.name == "KiTS19" and ds.targets() == {"kidney": (1, 2), "tumor": (2,)}
    assert [c.case_id for c in ds.cases] == ["case_00000"]  # case_00210 has no segmentation
    image, geometry = read_image(ds.cases[0].images[0])
    label, label_geometry = read_image(ds.cases[0].label)
    assert ds.cases[0].images[0].parent == tmp_path / "kits19_ablate_converted" / "imagesTr"
    assert image.shape == label.shape == (2, 3, 5) and geometry == label_geometry
    assert np.array_equal(label, image % 3)


def test_flare21(tmp_path):
    root = tmp_path / "FLARE21"
    _write(root / "TrainingImg" / "train_001_0000.nii.gz")
    _write(root / "TrainingImg" / "train_002_0000.nii.gz")
    _write(root / "TrainingMask" / "train_001.nii.gz", _ramp(dtype=np.uint8) % 5)
    ds = read_dataset(root)
    assert ds.labels == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert [c.case_id for c in ds.cases] == ["train_001", "train_002"]
    assert ds.cases[0].label == root / "TrainingMask" / "train_001.nii.gz"
    assert ds.cases[1].label is None


def test_plain_folder_needs_labels_map(tmp_path):
    _write(tmp_path / "images" / "liver_1.nii.gz")
    _write(tmp_path / "images" / "liver_2.nii.gz")
    _write(tmp_path / "labels" / "liver_1.nii.gz", _ramp(dtype=np.uint8) % 2)
    with pytest.raises(DataError, match=r"needs a labels map"):
        read_dataset(tmp_path, fmt="folder")
    ds = read_dataset(tmp_path, labels={"background": 0, "liver": 1})
    assert [c.case_id for c in ds.cases] == ["liver_1", "liver_2"]
    assert ds.cases[0].label == tmp_path / "labels" / "liver_1.nii.gz"
    assert ds.cases[1].label is None and ds.targets() == {"liver": (1,)}
