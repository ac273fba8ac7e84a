"""A region dataset (dataset.json labels with lists, regions_class_order) as nnU-Net v2 treats it:
trained region-based by default (one sigmoid output per declared region, Dice + BCE) and exported
painted in its regions_class_order, whether the regions nest or not. nnU-Net's LabelManager and
export_prediction are the oracle."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.inference import export_prediction
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from test_expand import PINNED
from test_expand import STUDY as PINNED_STUDY
from test_infer_nnunet import case, nnunet_managers, nnunet_properties
from test_train import TinyData, tiny_nets  # noqa: F401 (tiny_nets: the fixture)

from ablate.checkpoint import checkpoint_region_order, checkpoint_regions, load_model
from ablate.config import TrainConfig
from ablate.data.dataset import Dataset, parse_labels
from ablate.errors import ConfigError
from ablate.expand import describe, expand
from ablate.infer import CaseEnsemble, export_labels
from ablate.regions import (
    DatasetRegions,
    dataset_regions,
    default_region_order,
    region_order_from_json,
    regions_from_json,
    regions_to_json,
    with_dataset_regions,
)
from ablate.study import Study
from ablate.train import train

# non-nested regions whose regions_class_order ablate's default order cannot give: the default
# is ambiguous for the first, and paints (1, 2, 3) where the dataset says (2, 1, 3) for the second
NON_NESTED = {
    "ambiguous_default": ({"background": 0, "a": [1, 2], "b": [2, 3]}, [1, 3]),
    "other_than_default": ({"background": 0, "a": [1, 2], "b": [2, 3], "c": 3}, [2, 1, 3]),
}
KITS23_LABELS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
KITS23_ORDER = (1, 3, 2)


def _dataset(labels: dict, order, ignore: bool = False) -> Dataset:
    raw = {**labels, **({"ignore": 4} if ignore else {})}
    spec = parse_labels(raw, Path("dataset.json"), order)
    return Dataset(
        root=Path("."),
        name="regions",
        channels=("CT",),
        labels=spec.labels,
        cases=(),
        regions=spec.targets if spec.region_based else {},
        ignore_label=spec.ignore_label,
        region_based=spec.region_based,
        regions_class_order=spec.regions_class_order,
    )


def _nnunet_export(logits, plan, props, labels: dict, order):
    plans, configuration, _ = nnunet_managers(plan)  # the plan's side only
    return export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(),
        plans,
        configuration,
        LabelManager(labels, list(order)),
        nnunet_properties(props),
        num_threads_torch=1,
    )


# --- (a) exports paint the dataset's regions_class_order -----------------------------------------


@pytest.mark.parametrize("name", sorted(NON_NESTED))
def test_export_of_non_nested_regions_equals_nnunets_with_the_datasets_class_order(name):
    labels, class_order = NON_NESTED[name]
    declared = dataset_regions(_dataset(labels, class_order))
    assert declared.order == tuple(class_order)
    plan, props, logits = case("anisotropic", seed=7, channels=len(declared.regions))
    theirs = np.asarray(_nnunet_export(logits, plan, props, labels, class_order))
    ours = export_labels(logits, props, plan, declared.regions, declared.order)
    np.testing.assert_array_equal(ours, theirs)
    assert set(np.unique(theirs)) == {0, *class_order}  # every region painted: order exercised
    if name == "ambiguous_default":
        with pytest.raises(ConfigError, match="cannot infer which label"):
            default_region_order(declared.regions)
    else:  # the old export, in the default order, differs from nnU-Net's
        default = export_labels(logits, props, plan, declared.regions)
        assert (default != theirs).sum() > 10


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_ensembles_paint_the_datasets_class_order_as_nnunet(average):
    labels, class_order = NON_NESTED["other_than_default"]
    declared = dataset_regions(_dataset(labels, class_order))
    plan, props, first = case("anisotropic", seed=8, channels=3)
    second = case("anisotropic", seed=9, channels=3)[2]
    ensemble = CaseEnsemble(props, plan, declared.regions, average, declared.order)
    single = ensemble.add(first)
    np.testing.assert_array_equal(
        single, np.asarray(_nnunet_export(first, plan, props, labels, class_order))
    )
    ensemble.add(second)
    manager = LabelManager(labels, class_order)
    if average == "logits":
        expected = _nnunet_export((first + second) / 2, plan, props, labels, class_order)
    else:  # nnUNetv2_ensemble: mean of the exported sigmoid probabilities, then painted
        plans, configuration, _ = nnunet_managers(plan)
        probabilities = [
            export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape(
                x.clone(),
                plans,
                configuration,
                manager,
                nnunet_properties(props),
                return_probabilities=True,
                num_threads_torch=1,
            )[1]
            for x in (first, second)
        ]
        expected = manager.convert_probabilities_to_segmentation(
            (probabilities[0] + probabilities[1]) / 2
        )
    np.testing.assert_array_equal(ensemble.labels(), np.asarray(expected))


def test_checkpoint_json_keeps_the_order_and_reads_old_checkpoints_with_the_default():
    regions = {"a": (1, 2), "b": (2, 3), "c": (3,)}
    text = regions_to_json(regions, (2, 1, 3))
    assert regions_from_json(text) == regions and list(regions_from_json(text)) == ["a", "b", "c"]
    assert region_order_from_json(text) == (2, 1, 3)
    kits = {"kidney": (1, 2), "tumor": (2,)}
    old = json.dumps([[name, list(values)] for name, values in kits.items()])  # before the order
    assert regions_from_json(old) == kits and region_order_from_json(old) == (1, 2)
    assert region_order_from_json("") is None and regions_to_json(None) == ""
    with pytest.raises(ConfigError, match="one foreground label"):
        regions_to_json(regions, (2, 1))


# --- (b) a region dataset trains region-based by default ------------------------------------------


def _study(**train) -> Study:
    return Study.model_validate(
        {**PINNED_STUDY, "train": {**PINNED_STUDY["train"], **train}, "axes": {}, "ensembles": {}}
    )


def test_region_dataset_jobs_train_its_regions_and_label_dataset_keys_stay():
    declared = dataset_regions(_dataset(KITS23_LABELS, list(KITS23_ORDER)))
    assert list(declared.regions.items()) == [
        ("kidney", (1, 2, 3)),
        ("masses", (2, 3)),
        ("tumor", (2,)),
    ]
    study = _study()
    label_jobs, _ = expand(study, "data-key")
    region_jobs, _ = expand(study, "data-key", declared)
    for job in region_jobs:
        assert job.train.regions == declared.regions and job.train.region_order == KITS23_ORDER
        assert job.train.loss == "dice_bce"  # nnU-Net's DC_and_BCE for regions
    assert not {j.key for j in region_jobs} & {j.key for j in label_jobs}
    assert all(j.train.regions is None and j.train.loss == "dice_ce" for j in label_jobs)
    # a label dataset declares no regions: its jobs and keys are those pinned before
    label_dataset = _dataset({"background": 0, "kidney": 1, "tumor": 2}, None)
    assert dataset_regions(label_dataset) is None
    pinned = Study.model_validate(PINNED_STUDY)
    train_jobs, _ = expand(pinned, "data-key", dataset_regions(label_dataset))
    assert [j.key for j in train_jobs] == [key for kind, _, key in PINNED if kind == "train"]
    text = describe(study, (region_jobs, []))
    assert "training: region-based, one sigmoid output per region (loss dice_bce)" in text
    assert "kidney [1, 2, 3], masses [2, 3], tumor [2]; exports paint labels [1, 3, 2]" in text


def test_the_studys_regions_win_and_a_label_loss_is_refused():
    declared = DatasetRegions({"a": (1, 2), "b": (2, 3)}, (1, 3))
    own = with_dataset_regions(TrainConfig(loss="dice_bce", regions={"c": (3,)}), declared)
    assert own.regions == {"c": (3,)} and own.region_order is None
    same = with_dataset_regions(TrainConfig(loss="dice_bce", regions=declared.regions), declared)
    assert same.region_order == (1, 3)  # the dataset's regions: painted in its order
    with pytest.raises(ConfigError, match="train.loss: 'dice_topk' takes a label map"):
        with_dataset_regions(TrainConfig(loss="dice_topk"), declared)
    with pytest.raises(ConfigError, match="train.region_order: needs train.regions"):
        with_dataset_regions(TrainConfig(region_order=(1,)), None)
    with pytest.raises(ConfigError, match="train.region_order"):
        with_dataset_regions(
            TrainConfig(loss="dice_bce", regions={"a": (1,)}, region_order=(1, 2)), None
        )
    # ablate's region losses refuse an ignore label: such a dataset stays label-based
    assert dataset_regions(_dataset(KITS23_LABELS, list(KITS23_ORDER), ignore=True)) is None


@pytest.mark.usefixtures("tiny_nets")
def test_a_region_datasets_default_training_has_one_sigmoid_head_per_region(tmp_path):
    labels, class_order = NON_NESTED["other_than_default"]
    declared = dataset_regions(_dataset(labels, class_order))
    cfg = TrainConfig(
        epochs=1, iterations_per_epoch=2, val_iterations=1, data_workers=0, device="cpu"
    )
    cfg = with_dataset_regions(cfg.model_copy(update={"augmentation": "mirror"}), declared)
    result = train(cfg, TinyData(), 0, 1, tmp_path)
    assert checkpoint_regions(result.checkpoint) == declared.regions
    assert checkpoint_region_order(result.checkpoint) == (2, 1, 3)  # not the default (1, 2, 3)
    net, _, _ = load_model(result.checkpoint, torch.device("cpu"))
    assert net(torch.zeros(1, 1, 4, 6, 8)).shape[1] == 3  # one output per region


# --- (c) end to end on a KiTS23-like raw dataset ----------------------------------------------


KITS23_STUDY = """
name: kits23
dataset: {path: DATASET}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16}
train: {epochs: 1, iterations_per_epoch: 2, val_iterations: 1, data_workers: 0}
infer: {tta: 1}
folds: {k: 2}
workdir: work
report_dir: report
"""


@pytest.mark.slow
def test_kits23_trains_its_regions_and_exports_them_painted_in_its_class_order(tmp_path, capsys):
    import layouts

    from ablate.cli import main
    from ablate.config import InferConfig
    from ablate.imageio import read_image
    from ablate.infer import model_logits
    from ablate.run.study_data import load_dataset, prepare_data
    from ablate.study_load import load_study

    root = layouts.nnunet_kits2023(tmp_path / "Dataset220_KiTS2023", n=4)
    meta = json.loads((root / "dataset.json").read_text())
    study_file = tmp_path / "study.yaml"
    study_file.write_text(textwrap.dedent(KITS23_STUDY).replace("DATASET", str(root)))
    assert main(["validate", str(study_file)]) == 0
    assert "exports paint labels [1, 3, 2]" in capsys.readouterr().out
    assert main(["run", str(study_file)]) == 0
    study = load_study(study_file)
    data = prepare_data(study, load_dataset(study)[0])  # cached by the run
    cpu = torch.device("cpu")
    models = {}
    for checkpoint in (tmp_path / "work" / "jobs").glob("*/checkpoint_final.pt"):
        assert checkpoint_regions(checkpoint) == {
            "kidney": (1, 2, 3),
            "masses": (2, 3),
            "tumor": (2,),
        }
        assert checkpoint_region_order(checkpoint) == tuple(meta["regions_class_order"])
        fold = torch.load(checkpoint, map_location="cpu", weights_only=True)["fold"]
        models[fold] = load_model(checkpoint, cpu)
    assert sorted(models) == [0, 1]
    raw = sorted((tmp_path / "work" / "jobs").glob("*/raw/*.nii.gz"))
    assert len(raw) == 4
    painted = set()
    for path in raw:
        case_id = path.name.removesuffix(".nii.gz")
        fold = next(f for f, split in enumerate(data.folds) if case_id in split.val)
        model, _, plan = models[fold]
        image, _, props = data.load_case(case_id)
        logits = model_logits(model, np.array(image), plan, InferConfig(tta=1), cpu)
        assert logits.shape[0] == 3  # one sigmoid output per region
        theirs = np.asarray(
            _nnunet_export(
                torch.as_tensor(logits), plan, props, meta["labels"], meta["regions_class_order"]
            )
        )
        written = read_image(path)[0]
        np.testing.assert_array_equal(written, theirs)
        painted |= set(np.unique(written).tolist())
    assert painted >= {1, 2, 3}  # every region's label was painted somewhere


def test_validate_learns_the_regions_from_dataset_json_without_converting_cases(tmp_path):
    import layouts

    from ablate.data.formats import converted_root
    from ablate.run.study_data import declared_regions

    root = layouts.nnunet_kits2023(tmp_path / "Dataset220_KiTS2023", n=2)
    study = Study.model_validate({"name": "kits23", "dataset": {"path": str(root)}})
    declared = declared_regions(study)
    assert declared.order == KITS23_ORDER
    assert list(declared.regions) == ["kidney", "masses", "tumor"]
    assert not converted_root(root).exists()  # its NibabelIOWithReorient cases stay unread
    labelled = Study.model_validate(
        {"name": "k", "dataset": {"path": str(root), "labels": {"background": 0, "kidney": 1}}}
    )
    assert declared_regions(labelled) is None  # the study's own labels: a label dataset
