"""nnU-Net's ignore label in the loss (issue 15): ablate's label-map losses built with a
dataset's ignore label equal nnU-Net v2.8.1's compound losses built with it, in value and
gradient; without an ignore label nothing changes (tests/test_losses_nnunet.py)."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.training.loss import compound_losses as compound
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from ablate.errors import ConfigError
from ablate.losses import build_loss, ce_to_dice_weights

IGNORE = 3
SHAPE = (2, 3, 5, 8, 9)  # (B, K, Z, Y, X): classes 0-2, the ignore label 3


def nnunet_loss(name: str, batch_dice: bool, progress: float):
    dice = {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}
    if name == "dice_topk":
        return compound.DC_and_topk_loss(dice, {"k": 10, "label_smoothing": 0.0}, 1, 1, IGNORE)
    w_ce, w_dice = ce_to_dice_weights(progress) if name == "ce_to_dice" else (1, 1)
    return compound.DC_and_CE_loss(dice, {}, w_ce, w_dice, IGNORE, MemoryEfficientSoftDiceLoss)


def tensors(seed: int, all_ignored: bool = False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(SHAPE, generator=generator) * 3
    labels = torch.randint(0, 3, (SHAPE[0], 1, *SHAPE[2:]), generator=generator)
    labels[:, :, 1:3] = IGNORE  # unannotated slices
    if all_ignored:
        labels[:] = IGNORE
    return logits, labels


def value_and_grad(loss, logits):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits)
    value.backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("all_ignored", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize(
    ("name", "progress"),
    [
        ("dice_ce", 0.0),
        ("dice_topk", 0.0),
        ("ce_to_dice", 0.1),
        ("ce_to_dice", 0.6),
        ("ce_to_dice", 0.9),
    ],
)
def test_ignore_label_loss_equals_nnunets(name, progress, batch_dice, all_ignored):
    logits, target = tensors(0, all_ignored)
    ours, our_grad = value_and_grad(
        lambda x: build_loss(name, batch_dice, ignore_label=IGNORE)(x, target, progress), logits
    )
    no_dice = name == "ce_to_dice" and ce_to_dice_weights(progress)[1] == 0
    if all_ignored and no_dice:  # nnU-Net returns int 0 here
        assert nnunet_loss(name, batch_dice, progress)(logits, target) == 0
        assert ours == 0 and not our_grad.any()
        return
    theirs, their_grad = value_and_grad(
        lambda x: nnunet_loss(name, batch_dice, progress)(x, target), logits
    )
    torch.testing.assert_close(
        ours, torch.as_tensor(theirs, dtype=ours.dtype), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)
    ignored = (target == IGNORE).expand_as(logits)
    assert not our_grad[ignored].any()  # nothing is learnt where nothing was annotated


def test_region_losses_refuse_an_ignore_label():
    with pytest.raises(ConfigError, match=r"'dice_bce' does not support the dataset's ignore"):
        build_loss("dice_bce", False, ignore_label=IGNORE)
