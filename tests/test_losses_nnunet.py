"""Every ablate loss against nnU-Net v2.8.1's own loss classes on the same tensors: value and
gradient, batch Dice on and off, with nnU-Net's deep supervision (weights and target
downsampling as its trainer and bgv2's DownsampleSegForDSTransform build them). ablate has no
ignore label, so nnU-Net's ignore-label paths are not compared."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
    DownsampleSegForDSTransform,
)
from batchgeneratorsv2.transforms.utils.seg_to_regions import (
    ConvertSegmentationToRegionsTransform,
)
from nnunetv2.training.loss import compound_losses as compound  # the oracle: never skipped
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from ablate.config import TrainConfig
from ablate.losses import build_loss, deep_supervision_loss, deep_supervision_weights
from ablate.train import training_loss

SHAPE = (2, 3, 6, 10, 12)  # (B, K, Z, Y, X)
POOLS = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 2, 2)]
REGIONS = {"kidney": (1, 2), "tumor": (2,)}


def dice_kwargs(batch_dice: bool, do_bg: bool = False) -> dict:
    """nnU-Net's trainer: soft Dice kwargs of _build_loss (ddp off)."""
    return {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": do_bg, "ddp": False}


def nnunet_loss(name: str, batch_dice: bool, progress: float = 0.0):
    """nnU-Net's class for each ablate loss, built as its trainers build it."""
    if name == "dice_ce":  # nnUNetTrainer._build_loss
        return compound.DC_and_CE_loss(
            dice_kwargs(batch_dice), {}, 1, 1, None, dice_class=MemoryEfficientSoftDiceLoss
        )
    if name == "dice_topk":  # nnUNetTrainerTopk10Loss
        return compound.DC_and_topk_loss(
            dice_kwargs(batch_dice), {"k": 10, "label_smoothing": 0.0}, 1, 1, None
        )
    if name == "ce_to_dice":  # Xu 2021 (FLARE21): nnU-Net's Dice+CE with scheduled weights
        from ablate.losses import ce_to_dice_weights

        w_ce, w_dice = ce_to_dice_weights(progress)
        return compound.DC_and_CE_loss(
            dice_kwargs(batch_dice), {}, w_ce, w_dice, None, MemoryEfficientSoftDiceLoss
        )
    if name == "dice_bce":  # nnUNetTrainer._build_loss with regions
        return compound.DC_and_BCE_loss(
            {},
            dice_kwargs(batch_dice, do_bg=True),
            use_ignore_label=False,
            dice_class=MemoryEfficientSoftDiceLoss,
        )
    raise AssertionError(name)


def tensors(seed: int, channels: int = 3, regions: bool = False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=generator) * 3
    labels = torch.randint(0, 3, (SHAPE[0], 1, *SHAPE[2:]), generator=generator)
    labels[1, :, :3] = 0  # one class absent from part of the batch: batch Dice matters
    if regions:
        masks = torch.stack([torch.isin(labels[:, 0], torch.tensor(v)) for v in REGIONS.values()])
        return logits, masks.transpose(0, 1).float()  # (B, R, Z, Y, X)
    return logits, labels


def value_and_grad(loss, logits, *args):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, *args)
    value.backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize(
    "name, progress",
    [
        ("dice_ce", 0.0),
        ("dice_topk", 0.0),
        ("ce_to_dice", 0.1),
        ("ce_to_dice", 0.6),
        ("ce_to_dice", 0.9),
        ("dice_bce", 0.0),
    ],
)
def test_loss_equals_nnunets_class(name, progress, batch_dice):
    logits, target = tensors(0, channels=2 if name == "dice_bce" else 3, regions=name == "dice_bce")
    ours, our_grad = value_and_grad(
        lambda x: build_loss(name, batch_dice)(x, target, progress), logits
    )
    theirs, their_grad = value_and_grad(nnunet_loss(name, batch_dice, progress), logits, target)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)


def nnunet_ds_weights(n_outputs: int) -> np.ndarray:
    """nnUNetTrainer._build_loss: 1/2^i, the lowest resolution 0, normalised."""
    weights = np.array([1 / (2**i) for i in range(n_outputs)])
    weights[-1] = 0
    return weights / weights.sum()


@pytest.mark.parametrize("n_outputs", [1, 2, 4, 6])
def test_deep_supervision_weights_equal_nnunets(n_outputs):
    expected = nnunet_ds_weights(n_outputs) if n_outputs > 1 else [1.0]
    np.testing.assert_allclose(deep_supervision_weights("nnunet", n_outputs), expected)


def ds_outputs(seed: int, channels: int):
    """Logits at each deep supervision scale, as a U-Net with POOLS returns them."""
    generator = torch.Generator().manual_seed(seed)
    shape, outputs = np.array(SHAPE[2:]), []
    for pool in POOLS[:-1]:
        shape = shape // np.array(pool)
        outputs.append(torch.randn((SHAPE[0], channels, *shape), generator=generator) * 3)
    return outputs


def nnunet_ds_targets(seg: torch.Tensor, regions=None) -> list[torch.Tensor]:
    """nnU-Net's training transforms on each sample: regions first, then the downsampling."""
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(POOLS), axis=0))[:-1]
    per_sample = []
    for sample in seg:  # (1, Z, Y, X)
        if regions is not None:
            sample = ConvertSegmentationToRegionsTransform(list(regions.values()), 0)(
                segmentation=sample
            )["segmentation"]
        per_sample.append(DownsampleSegForDSTransform(scales)(segmentation=sample)["segmentation"])
    return [torch.stack(level) for level in zip(*per_sample, strict=True)]


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("name", ["dice_ce", "dice_topk", "dice_bce"])
def test_deep_supervision_loss_equals_nnunets_wrapper(name, batch_dice):
    regions = REGIONS if name == "dice_bce" else None
    outputs = ds_outputs(1, channels=2 if regions else 3)
    _, seg = tensors(2)
    plan = types.SimpleNamespace(batch_dice=batch_dice, cascade_recommended=batch_dice)
    ours = training_loss(TrainConfig(loss=name, regions=regions), plan, regions)
    weights = nnunet_ds_weights(len(outputs))
    theirs = DeepSupervisionWrapper(nnunet_loss(name, batch_dice), weights)
    targets = nnunet_ds_targets(seg, regions)
    torch.testing.assert_close(
        ours(outputs, seg, 0.0), theirs(outputs, targets), atol=1e-6, rtol=1e-6
    )
    wrapped = deep_supervision_loss(build_loss(name, batch_dice), "nnunet")
    if regions is None:  # the plain wrapper, target downsampled by ablate
        torch.testing.assert_close(
            wrapped(outputs, seg, 0.0), theirs(outputs, targets), atol=1e-6, rtol=1e-6
        )


def test_the_batch_dice_cases_differ():
    """The tensors above make batch Dice matter, so both parametrisations test something."""
    logits, target = tensors(0)
    values = [build_loss("dice_ce", batch_dice)(logits, target, 0.0) for batch_dice in (0, 1)]
    assert abs(float(values[0] - values[1])) > 1e-3
