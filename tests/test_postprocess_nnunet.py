"""Postprocessing decisions against nnU-Net v2's own `determine_postprocessing`, run on the same
prediction and reference files (labels and regions)."""

import json
import multiprocessing.dummy
import pickle

import numpy as np
import pytest
from nnunet_plans import nnunet_plans  # tests/ is on sys.path under pytest
from nnunetv2.evaluation import evaluate_predictions
from nnunetv2.postprocessing import remove_connected_components
from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

from ablate.imageio import Geometry, write_image
from ablate.postprocess import decide_postprocessing, training_targets

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
PLANS = nnunet_plans()


def scenario(seed: int, n: int = 6):
    """Label 1: a box with (in some predictions) a spurious blob; label 2: inside it, sometimes
    with a true second component that postprocessing would wrongly remove."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        ref = np.zeros((8, 20, 20), dtype=np.uint8)
        ref[1:6, 3:12, 3:12] = 1
        ref[2:4, 5:8, 5:8] = 2
        if rng.random() < 0.4:
            ref[6:8, 16:19, 16:19] = 2  # a true separate lesion
        pred = ref.copy()
        for _ in range(int(rng.integers(0, 3))):
            z, y, x = rng.integers(0, 7), rng.integers(13, 18), rng.integers(0, 18)
            pred[z : z + 2, y : y + 2, x : x + 2] = rng.integers(1, 3)
        pred[rng.random(ref.shape) < 0.01] = 0
        cases.append((pred, ref))
    return cases


class _InProcess:
    """multiprocessing's API with a thread pool: nnU-Net's spawn pools take seconds to start."""

    @staticmethod
    def get_context(_method):
        return multiprocessing.dummy

    Pool = multiprocessing.dummy.Pool


@pytest.fixture(autouse=True)
def in_process_pools(monkeypatch):
    monkeypatch.setattr(remove_connected_components, "multiprocessing", _InProcess)
    monkeypatch.setattr(evaluate_predictions, "multiprocessing", _InProcess)


def nnunet_decision(tmp_path, cases, dataset_labels) -> list:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for i, (pred, ref) in enumerate(cases):
        write_image(pred, GEOMETRY, pred_dir / f"c{i}.nii.gz")
        write_image(ref, GEOMETRY, ref_dir / f"c{i}.nii.gz")
    dataset_json = {"labels": dataset_labels, "file_ending": ".nii.gz", "channel_names": {}}
    if any(isinstance(v, list) for v in dataset_labels.values()):
        dataset_json["regions_class_order"] = [1, 2]
    determine_postprocessing(str(pred_dir), str(ref_dir), PLANS, dataset_json, num_processes=1)
    _, kwargs = pickle.loads((pred_dir / "postprocessing.pkl").read_bytes())
    steps = [k["labels_or_regions"] for k in kwargs]
    return [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in steps]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_decisions_equal_nnunets(tmp_path, seed):
    cases = scenario(seed)
    labels = {"background": 0, "kidney": 1, "tumor": 2}
    theirs = nnunet_decision(tmp_path, cases, labels)
    ours = decide_postprocessing(cases, training_targets(labels, None))
    assert list(ours.steps) == theirs


def test_region_decisions_equal_nnunets(tmp_path):
    cases = scenario(4)
    regions = {"kidney": (1, 2), "tumor": (2,)}
    labels = {"background": 0, "kidney": [1, 2], "tumor": 2}
    theirs = nnunet_decision(tmp_path, cases, labels)
    ours = decide_postprocessing(cases, training_targets(labels, regions))
    assert list(ours.steps) == theirs
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert ours.before["kidney"] == pytest.approx(summary["mean"]["(1, 2)"]["Dice"])


def test_decisions_with_an_ignore_label_equal_nnunets(tmp_path):
    """Reference voxels labelled `ignore` count in no Dice, for nnU-Net and for ablate."""
    cases = []
    for pred, ref in scenario(5):
        ref = ref.copy()
        ref[:, 13:, :] = np.where(ref[:, 13:, :] == 0, 3, ref[:, 13:, :])  # unannotated band
        cases.append((pred, ref))
    labels = {"background": 0, "kidney": 1, "tumor": 2}
    theirs = nnunet_decision(tmp_path, cases, {**labels, "ignore": 3})
    ours = decide_postprocessing(cases, training_targets(labels, None), ignore_label=3)
    assert list(ours.steps) == theirs
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert ours.before["kidney"] == pytest.approx(summary["mean"]["1"]["Dice"])
    unmasked = decide_postprocessing(cases, training_targets(labels, None))
    assert unmasked.before["kidney"] != pytest.approx(summary["mean"]["1"]["Dice"])
