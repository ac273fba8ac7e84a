import json

import numpy as np
import pytest

from ablate.data import read_nnunet_raw
from ablate.errors import DataError
from ablate.imageio import Geometry, write_image

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _make_raw(root, labels, ids=("a", "b"), channels=("CT",), with_labels=("a", "b")):
    root.mkdir(parents=True, exist_ok=True)
    meta = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
            "numTraining": len(ids), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    array = np.zeros((2, 3, 4), np.int16)
    for cid in ids:
        for c in range(len(channels)):
            write_image(array, GEOMETRY, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        if cid in with_labels:
            write_image(array.astype(np.uint8), GEOMETRY, root / "labelsTr" / f"{cid}.nii.gz")
    return root


def test_reads_cases_channels_and_labels(tmp_path):
    root = _make_raw(tmp_path / "ds", {"background": 0, "liver": 1, "tumor": 2},
                     channels=("T1", "T2"))
    ds = read_nnunet_raw(root)
    assert ds.name == "ds" and ds.channels == ("T1", "T2")
    assert [c.case_id for c in ds.cases] == ["a", "b"]
    assert ds.cases[0].images == (root / "imagesTr" / "a_0000.nii.gz",
                                  root / "imagesTr" / "a_0001.nii.gz")
    assert ds.cases[1].label == root / "labelsTr" / "b.nii.gz"
    assert ds.num_classes == 3
    assert ds.targets() == {"liver": (1,), "tumor": (2,)}


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DataError, match=r"dataset.json: not found; an nnU-Net v2 raw dataset"):
        read_nnunet_raw(tmp_path)


def test_invalid_json_and_missing_keys(tmp_path):
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DataError, match=r"dataset.json: invalid JSON"):
        read_nnunet_raw(tmp_path)
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0}}')
    with pytest.raises(DataError, match=r"dataset.json: missing key 'channel_names'"):
        read_nnunet_raw(tmp_path)


def test_missing_images_folder(tmp_path):
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, '
                                           '"labels": {"background": 0, "a": 1}}')
    with pytest.raises(DataError, match=r"imagesTr: not found"):
        read_nnunet_raw(tmp_path)


def test_region_style_labels(tmp_path):
    root = _make_raw(tmp_path / "brats", {"background": 0, "whole_tumor": [1, 2, 3],
                                          "tumor_core": [2, 3], "enhancing_tumor": [3]})
    ds = read_nnunet_raw(root)
    assert ds.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert ds.targets() == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3),
                            "enhancing_tumor": (3,)}
    assert ds.num_classes == 4


def test_bad_label_values(tmp_path):
    _make_raw(tmp_path, {"background": 0, "a": "one"})
    with pytest.raises(DataError, match=r"label 'a' must be an int or a list of ints"):
        read_nnunet_raw(tmp_path)
    _make_raw(tmp_path, {"bg": 1, "a": 2})
    with pytest.raises(DataError, match=r"labels must map 'background' to 0"):
        read_nnunet_raw(tmp_path)


def test_missing_labels_give_none(tmp_path):
    ds = read_nnunet_raw(_make_raw(tmp_path, {"background": 0, "a": 1}, with_labels=("b",)))
    assert ds.cases[0].label is None
    assert ds.cases[1].label is not None


def test_content_hash_changes_with_files(tmp_path):
    root = _make_raw(tmp_path, {"background": 0, "a": 1})
    before = read_nnunet_raw(root).content_hash()
    assert read_nnunet_raw(root).content_hash() == before
    write_image(np.ones((2, 3, 5), np.int16), GEOMETRY, root / "imagesTr" / "b_0000.nii.gz")
    assert read_nnunet_raw(root).content_hash() != before
