"""The held-out test set: a seeded holdout kept out of the folds, and a separate test dataset
refused unless it matches the training set."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ablate.data import read_nnunet_raw
from ablate.data.testset import check_test_dataset, held_out_key, hold_out
from ablate.errors import DataError
from ablate.imageio import Geometry, write_image

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _raw(root, ids, labels=None, channels=("CT",), unlabelled=()):
    (root / "imagesTr").mkdir(parents=True)
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": labels or {"background": 0, "kidney": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    for cid in ids:
        for c in range(len(channels)):
            write_image(
                np.zeros((2, 3, 4), np.int16), GEOMETRY, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz"
            )
        if cid not in unlabelled:
            write_image(
                np.zeros((2, 3, 4), np.uint8), GEOMETRY, root / "labelsTr" / f"{cid}.nii.gz"
            )
    return read_nnunet_raw(root)


def test_holdout_is_seeded_disjoint_and_labelled_only(tmp_path):
    ids = [f"c{i:02d}" for i in range(10)]
    dataset = _raw(tmp_path / "ds", ids, unlabelled=("c03",))
    kept, test = hold_out(dataset, 3, seed=7, folds=5)
    again_kept, again_test = hold_out(dataset, 3, seed=7, folds=5)
    assert [c.case_id for c in test] == [c.case_id for c in again_test]
    assert kept == again_kept
    test_ids = {c.case_id for c in test}
    assert len(test_ids) == 3 and "c03" not in test_ids  # never an unlabelled case
    assert test_ids.isdisjoint(c.case_id for c in kept.cases)
    assert len(kept.cases) == 7 and kept.content_hash() != dataset.content_hash()
    other = {c.case_id for c in hold_out(dataset, 3, seed=8, folds=5)[1]}
    assert other != test_ids  # another seed draws other cases (for these ids and seeds)


def test_holdout_must_leave_a_case_per_fold(tmp_path):
    dataset = _raw(tmp_path / "ds", ["a", "b", "c", "d"])
    hold_out(dataset, 2, seed=0, folds=2)
    with pytest.raises(
        DataError,
        match=r"dataset.test.holdout: 3 of 4 labelled cases would leave "
        r"fewer than folds.k = 2",
    ):
        hold_out(dataset, 3, seed=0, folds=2)


def test_a_separate_test_set_must_match_the_training_set(tmp_path):
    train = _raw(tmp_path / "train", ["a", "b"])
    assert [c.case_id for c in check_test_dataset(train, _raw(tmp_path / "ok", ["x"]))] == ["x"]
    bad = {
        "channels": (_raw(tmp_path / "mr", ["x"], channels=("T1",)), r"channels \['T1'\] differ"),
        "labels": (
            _raw(tmp_path / "lab", ["x"], labels={"background": 0, "liver": 1}),
            r"labels .*liver.* differ from the training set's",
        ),
        "unlabelled": (
            _raw(tmp_path / "unl", ["x", "y"], unlabelled=("y",)),
            r"case y has no label \(1 in all\)",
        ),
        "overlap": (_raw(tmp_path / "dup", ["b", "x"]), r"case b is also a training case"),
        "empty": (_raw(tmp_path / "none", []), r"no cases found"),
    }
    for test, match in bad.values():
        with pytest.raises(DataError, match=match) as info:
            check_test_dataset(train, test)
        assert str(info.value).startswith(f"dataset.test.path {test.root}: ")


def test_held_out_key_follows_the_files(tmp_path):
    cases = _raw(tmp_path / "ds", ["a", "b"]).cases
    key = held_out_key(cases)
    assert held_out_key(tuple(reversed(cases))) == key
    assert held_out_key(cases[:1]) != key
    label = cases[0].label
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a re-written label
    assert held_out_key(cases) != key


def test_a_study_with_a_separate_test_set_loads_both_and_verifies_them(tmp_path):
    from ablate.run.study_data import load_dataset
    from ablate.study_load import load_study

    _raw(tmp_path / "train", ["a", "b", "c"])
    _raw(tmp_path / "held", ["x", "y"])
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: s\ndataset: {path: train, format: nnunet, test: {path: held}}\nfolds: {k: 2}\n"
    )
    dataset, test = load_dataset(load_study(path), check=True)
    assert [c.case_id for c in dataset.cases] == ["a", "b", "c"]
    assert [c.case_id for c in test] == ["x", "y"]
    (tmp_path / "held" / "labelsTr" / "y.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"held/labelsTr/y.nii.gz: "):
        load_dataset(load_study(path), check=True)


def test_external_folders_predict_all_of_a_set_or_none(tmp_path):
    from ablate.data.dataset import Case
    from ablate.expand import expand_externals
    from ablate.folds import Fold
    from ablate.study import Study

    folds = [Fold(("b",), ("a",)), Fold(("a",), ("b",))]
    test = (Case("x", (), None), Case("y", (), None))
    folder = tmp_path / "pred"
    folder.mkdir()
    study = Study.model_validate(
        {"name": "s", "dataset": {"synthetic": {"cases": 4}}, "external": {"nnunet": str(folder)}}
    )

    def jobs():
        jobs = expand_externals(study, "k", folds, ".nii.gz", test)
        return [(j.fold, j.case_ids, j.name) for j in jobs]

    def touch(*ids):
        for c in ids:
            (folder / f"{c}.nii.gz").write_bytes(b"")

    with pytest.raises(
        DataError,
        match=r"external.nnunet: .*pred predicts 0 of the 2 "
        r"cross-validation cases \(a.nii.gz is missing\)",
    ):
        jobs()
    touch("a", "b")
    assert jobs() == [
        (0, ("a",), "nnunet · external · fold 0"),
        (1, ("b",), "nnunet · external · fold 1"),
    ]
    touch("x")
    with pytest.raises(DataError, match=r"predicts 1 of the 2 held-out test cases \(y.nii.gz"):
        jobs()
    touch("y")
    assert jobs()[-1] == (-1, ("x", "y"), "nnunet · external · test")
    (folder / "a.nii.gz").unlink()
    (folder / "b.nii.gz").unlink()
    assert jobs() == [(-1, ("x", "y"), "nnunet · external · test")]  # test predictions only
