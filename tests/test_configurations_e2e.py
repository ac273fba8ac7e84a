"""nnU-Net's configurations end to end on generated data, at the library level: 2d, 3d_lowres and
the cascade are planned, preprocessed, trained and predicted; the cascade's full-resolution
stage trains on the 3d_lowres folds' cross-validation predictions (one per case, by the fold
that held it out). The runner's ordering and resume are tested with the configuration study."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ablate.cascade import (
    PREVIOUS_STAGE_DIR,
    CascadeInput,
    load_previous_stage,
    write_previous_stage,
)
from ablate.checkpoint import load_model
from ablate.config import InferConfig, PlanConfig, TrainConfig
from ablate.data.synthetic import make_synthetic_dataset
from ablate.errors import ConfigError, DataError
from ablate.imageio import read_image
from ablate.infer import export_labels, model_logits
from ablate.preprocess import prepare
from ablate.train import _Loaders, train

CPU = torch.device("cpu")
TINY = dict(gpu_memory_gb=0.005, base_features=4, max_features=16, max_features_2d=16)
TRAIN = TrainConfig(
    epochs=1, iterations_per_epoch=2, val_iterations=1, data_workers=0, device="cpu"
)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("configurations")
    dataset = make_synthetic_dataset(root / "raw", 4, 0, fov_mm=(60, 70, 70))
    data = {
        name: prepare(
            dataset,
            PlanConfig(configuration=name, intensity_samples=10_000, **TINY),
            root / "cache",
            folds=2,
            workers=0,
            intensity_samples=1e4,
        )
        for name in ("2d", "3d_lowres", "3d_cascade_fullres")
    }
    return root, dataset, data


def test_2d_trains_and_predicts_every_slice(stages):
    root, dataset, data = stages
    plan = data["2d"].plan
    assert plan.is_2d and plan.patch_size[0] == 1
    result = train(TRAIN, data["2d"], 0, 0, root / "2d")
    model, _, saved = load_model(result.checkpoint, CPU)
    assert saved.is_2d and isinstance(model.encoder[0][0][0], torch.nn.Conv2d)
    case = data["2d"].folds[0].val[0]
    image, _, props = data["2d"].load_case(case)
    # 2d data keep the case's own slice count (nnU-Net resamples 2d data in-plane only)
    assert image.shape[1] == props.shape_after_crop[0]
    logits = model_logits(model, np.asarray(image), saved, InferConfig(tta=4), CPU)
    labels = export_labels(logits, props, saved)
    reference, _ = read_image(next(c.label for c in dataset.cases if c.case_id == case))
    assert labels.shape == reference.shape


def test_lowres_then_cascade_on_its_cross_validation_predictions(stages):
    root, _, data = stages
    lowres, cascade = data["3d_lowres"], data["3d_cascade_fullres"]
    assert all(
        lo >= fu
        for lo, fu in zip(
            lowres.plan.target_spacing_mm, cascade.plan.target_spacing_mm, strict=True
        )
    )
    folder = root / "lowres" / PREVIOUS_STAGE_DIR
    with pytest.raises(ConfigError, match="3d_lowres"):  # no predictions yet: the cascade waits
        train(TRAIN, cascade, 0, 0, root / "cascade-too-early")
    checkpoints = {
        fold: train(TRAIN, lowres, fold, 0, root / "lowres" / f"fold{fold}").checkpoint
        for fold in range(2)
    }
    infer = InferConfig(tta=1, device="cpu")
    written = write_previous_stage(checkpoints, lowres, cascade, folder, infer)
    assert sorted(written) == sorted(cascade.case_ids)
    assert write_previous_stage(checkpoints, lowres, cascade, folder, infer) == []  # resumable
    for case in cascade.case_ids:  # on the fullres grid, labels of the dataset only
        seg = np.asarray(load_previous_stage(folder, case)[...])
        assert seg.shape == cascade.load_case(case)[0].shape[1:]
        assert set(np.unique(seg)) <= {0, 1, 2}
    # what the evaluations read, shipped to a worker process: image + one-hot channels
    shipped = pickle.loads(pickle.dumps(CascadeInput(cascade, folder)))
    image, _, _ = shipped.load_case(cascade.case_ids[0])
    assert image.shape[0] == 3 and shipped.folds == cascade.folds
    loaders = _Loaders(TRAIN, cascade, cascade.folds[0], 2, 0, None, folder)
    data_batch, _ = next(iter(loaders.val(0)))
    assert data_batch.shape[1] == 1 + len(cascade.plan.previous_stage_labels)
    assert set(np.unique(data_batch[:, 1:])) <= {0.0, 1.0}
    result = train(TRAIN, cascade, 0, 0, root / "cascade", previous_stage=folder)
    model, _, plan = load_model(result.checkpoint, CPU)
    assert next(model.parameters()).shape[1] == plan.network_input_channels == 3
    missing = root / "empty"
    missing.mkdir()
    with pytest.raises(DataError, match="no 3d_lowres prediction"):
        train(TRAIN, cascade, 1, 0, root / "cascade-missing", previous_stage=missing)
    # an unseen case: the 3d_lowres folds' prediction, then the cascade on its one-hot
    from ablate.cascade import cascade_input_for_image, predict_previous_stage_for_image

    case = next(c for c in stages[1].cases if c.case_id == cascade.case_ids[0])
    images, geometry = zip(*(read_image(p) for p in case.images), strict=True)
    lowres_models = [load_model(c, CPU)[0] for _, c in sorted(checkpoints.items())]
    seg_prev = predict_previous_stage_for_image(
        list(images), geometry[0], lowres_models, lowres.plan, infer, CPU
    )
    assert seg_prev.shape == images[0].shape
    data, props = cascade_input_for_image(list(images), seg_prev, geometry[0], plan)
    assert data.shape[0] == 3 and set(np.unique(data[1:])) <= {0.0, 1.0}
    logits = model_logits(model, data, plan, InferConfig(tta=1), CPU)
    assert export_labels(logits, props, plan).shape == images[0].shape
