import json

import numpy as np
import pytest

from ablate.data import read_nnunet_raw
from ablate.data.dataset import label_spec, targets_from_dataset_json
from ablate.errors import DataError
from ablate.imageio import Geometry, write_image

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _make_raw(root, labels, ids=("a", "b"), channels=("CT",), with_labels=("a", "b")):
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": labels,
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    array = np.zeros((2, 3, 4), np.int16)
    for cid in ids:
        for c in range(len(channels)):
            write_image(array, GEOMETRY, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        if cid in with_labels:
            write_image(array.astype(np.uint8), GEOMETRY, root / "labelsTr" / f"{cid}.nii.gz")
    return root


def test_reads_cases_channels_and_labels(tmp_path):
    root = _make_raw(
        tmp_path / "ds", {"background": 0, "liver": 1, "tumor": 2}, channels=("T1", "T2")
    )
    ds = read_nnunet_raw(root)
    assert ds.name == "ds" and ds.channels == ("T1", "T2")
    assert [c.case_id for c in ds.cases] == ["a", "b"]
    assert ds.cases[0].images == (
        root / "imagesTr" / "a_0000.nii.gz",
        root / "imagesTr" / "a_0001.nii.gz",
    )
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
    (tmp_path / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}'
    )
    with pytest.raises(DataError, match=r"imagesTr: not found"):
        read_nnunet_raw(tmp_path)


def test_region_style_labels(tmp_path):
    root = _make_raw(
        tmp_path / "brats",
        {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]},
    )
    ds = read_nnunet_raw(root)
    assert ds.labels == {"background": 0, "label_1": 1, "label_2": 2, "enhancing_tumor": 3}
    assert ds.targets() == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
    assert ds.num_classes == 4 and ds.region_based and ds.regions_class_order == (1, 2, 3)


# (dataset.json labels, regions_class_order) as nnU-Net's own converters and docs write them
LABEL_MAPS = [
    ({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, [1, 3, 2]),  # KiTS23
    (
        {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        [1, 2, 3],
    ),  # BraTS, nnU-Net's region documentation
    ({"background": 0, "kidney": [1, 2], "tumor": [2], "ignore": 3}, [1, 2]),
    ({"background": 0, "liver": 1, "tumor": 2, "ignore": 3}, None),
    ({"background": 0, "liver": 1, "tumor": [2]}, None),
]


@pytest.mark.parametrize(("raw", "order"), LABEL_MAPS)
def test_labels_follow_nnunets_label_manager(tmp_path, raw, order):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(raw, regions_class_order=order)
    meta = {"labels": raw, **({"regions_class_order": order} if order else {})}
    spec = label_spec(meta, tmp_path / "dataset.json")
    assert spec.region_based == manager.has_regions
    assert spec.ignore_label == manager.ignore_label
    assert sorted(spec.labels.values()) == manager.all_labels  # ignore is never a class
    if manager.has_regions:
        assert list(spec.targets.values()) == [
            tuple(r) if isinstance(r, tuple) else (r,) for r in manager.foreground_regions
        ]
        assert spec.regions_class_order == tuple(manager.regions_class_order)
    else:
        assert list(spec.targets.values()) == [(v,) for v in manager.foreground_labels]
    assert "ignore" not in spec.targets and "ignore" not in spec.labels


def test_region_order_is_read_not_guessed(tmp_path):
    raw = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    root = _make_raw(tmp_path / "kits23", raw)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "regions_class_order": [1, 3, 2]}))
    ds = read_nnunet_raw(root)
    assert ds.targets() == {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
    assert ds.regions_class_order == (1, 3, 2) and ds.labels["tumor"] == 2
    (root / "dataset.json").write_text(json.dumps({**meta, "regions_class_order": [1, 2]}))
    with pytest.raises(
        DataError,
        match=r"dataset.json: regions_class_order \[1, 2\] must give "
        r"one int per region \(3: kidney, masses, tumor\)",
    ):
        read_nnunet_raw(root)


def test_ignore_label_is_no_class_and_must_be_highest(tmp_path):
    root = _make_raw(tmp_path / "ds", {"background": 0, "liver": 1, "ignore": 2})
    ds = read_nnunet_raw(root)
    assert ds.labels == {"background": 0, "liver": 1} and ds.ignore_label == 2
    assert ds.targets() == {"liver": (1,)} and ds.num_classes == 2
    assert ds.declared_values() == {0, 1, 2}
    _make_raw(tmp_path / "bad", {"background": 0, "ignore": 1, "liver": 2})
    with pytest.raises(DataError, match=r"label 'ignore' is 1 but must be the highest value \(3"):
        read_nnunet_raw(tmp_path / "bad")


def test_msd_style_dataset_json_gives_targets(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(
        json.dumps(
            {"labels": {"0": "background", "1": "edema", "2": "tumour"}, "modality": {"0": "FLAIR"}}
        )
    )
    assert targets_from_dataset_json(path) == {"edema": (1,), "tumour": (2,)}


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


def test_content_hash_of_a_case_with_a_missing_file_does_not_raise(tmp_path):
    root = _make_raw(tmp_path / "ds", {"background": 0, "a": 1})
    (root / "imagesTr" / "b_0000.nii.gz").unlink()  # its label stays: verify names the image
    ds = read_nnunet_raw(root)
    assert [c.case_id for c in ds.cases] == ["a", "b"]
    assert len(ds.content_hash()) == 16
