"""The optimiser, its schedule and the trainer's defaults against nnU-Net v2's nnUNetTrainer,
instantiated on a minimal plan (nothing is loaded or trained)."""

import inspect

import pytest
import torch
from nnunet_plans import nnunet_plans  # tests/ is on sys.path under pytest
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ablate.config import TrainConfig
from ablate.train import poly_lr

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
PLANS = nnunet_plans(
    {
        "data_identifier": "unused",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [32, 32, 32],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "batch_dice": True,
        "architecture": {
            "network_class_name": PLAIN_UNET,
            "arch_kwargs": {},
            "_kw_requires_import": [],
        },
    },
    original_median_spacing_after_transp=[1.0, 1.0, 1.0],
)
DATASET = {
    "labels": {"background": 0, "a": 1},
    "channel_names": {"0": "x"},
    "file_ending": ".nii.gz",
}


@pytest.fixture(scope="module")
def trainer() -> nnUNetTrainer:
    plans = {**PLANS, "continue_training": False}
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    trainer.network = torch.nn.Conv3d(1, 1, 3)
    return trainer


def test_trainer_defaults_equal_nnunets(trainer):
    cfg = TrainConfig()
    assert cfg.initial_lr == trainer.initial_lr
    assert cfg.weight_decay == trainer.weight_decay
    assert cfg.oversample_foreground == trainer.oversample_foreground_percent
    assert cfg.iterations_per_epoch == trainer.num_iterations_per_epoch
    assert cfg.val_iterations == trainer.num_val_iterations_per_epoch
    assert cfg.epochs == trainer.num_epochs
    assert cfg.deep_supervision != "none" and trainer.enable_deep_supervision
    assert f"clip_grad_norm_(self.network.parameters(), {cfg.grad_clip:g})" in inspect.getsource(
        nnUNetTrainer.train_step
    )


def test_optimiser_equals_nnunets(trainer):
    optimizer, scheduler = trainer.configure_optimizers()
    group = optimizer.param_groups[0]
    cfg = TrainConfig()
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (
        cfg.initial_lr,
        cfg.momentum,
        cfg.weight_decay,
    )
    assert isinstance(scheduler, PolyLRScheduler) and scheduler.max_steps == cfg.epochs


def test_poly_schedule_equals_nnunets_per_epoch():
    optimizer = torch.optim.SGD(torch.nn.Conv3d(1, 1, 1).parameters(), lr=0.01)
    scheduler = PolyLRScheduler(optimizer, 0.01, 1000)
    for epoch in range(1000):
        scheduler.step(epoch)  # nnU-Net steps it at every epoch's start
        assert poly_lr(0.01, epoch, 1000) == pytest.approx(optimizer.param_groups[0]["lr"], 1e-12)
