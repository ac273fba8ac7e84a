"""Segmentation losses (nnU-Net's; Dice+TopK of Zhou 2021 and CE->Dice of Xu 2021, both on FLARE21)
and deep supervision.

Every loss is called as ``loss(logits, target, progress)``: logits (B, K, Z, Y, X), target
(B, 1, Z, Y, X) long with values in [0, K), progress in [0, 1] the fraction of training done.
Region losses (`REGION_LOSSES`, e.g. "dice_bce") instead take logits (B, R, Z, Y, X) and target
(B, R, Z, Y, X) binary masks, one per region (ablate.regions.labels_to_regions).

Sign convention: as in nnU-Net, the Dice term is returned as ``-dice`` (not ``1 - dice``), so a
total loss can go below 0; the optimum of Dice+CE is -1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from ablate.errors import ConfigError


class Loss(Protocol):
    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, progress: float
    ) -> torch.Tensor: ...


def soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    batch_dice: bool,
    smooth: float = 1e-5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """nnU-Net's MemoryEfficientSoftDiceLoss: softmax, no background, class mean; returns -dice.

    `mask` (B, 1, Z, Y, X), nnU-Net's loss_mask: voxels where it is False count nowhere."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]  # (B, K-1, Z, Y, X)
    spatial = tuple(range(2, logits.ndim))
    with torch.no_grad():
        onehot = torch.zeros_like(logits, dtype=probs.dtype).scatter_(1, target.long(), 1)[:, 1:]
        if mask is not None:
            onehot = onehot * mask
        sum_gt = onehot.sum(spatial)  # (B, K-1)
    if mask is not None:
        probs = probs * mask
    intersect = (probs * onehot).sum(spatial)
    sum_pred = probs.sum(spatial)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, min=1e-8)
    return -dice.mean()


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target[:, 0].long(), ignore_index=ignore_index)


def topk_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, percent: float = 10.0, ignore_index: int = -100
) -> torch.Tensor:
    """nnU-Net's TopKLoss: mean CE over the `percent` % highest-loss voxels of the whole batch
    (ignored voxels count as 0, as in nnU-Net)."""
    per_voxel = F.cross_entropy(
        logits.float(), target[:, 0].long(), reduction="none", ignore_index=ignore_index
    )  # (B, Z, Y, X)
    k = max(1, int(per_voxel.numel() * percent / 100))
    top, _ = torch.topk(per_voxel.reshape(-1), k, sorted=False)
    return top.mean()


def ce_to_dice_weights(progress: float) -> tuple[float, float]:
    """Seed 001's schedule rescaled to fractions of training: (w_ce, w_dice), summing to 2.

    CE only up to 50 %, a linear blend until 75 %, Dice only afterwards (v1: epochs 500/750/1000).
    """
    if progress <= 0.5:
        return 2.0, 0.0
    if progress <= 0.75:
        w_dice = 2.0 * (progress - 0.5) / 0.25
        return 2.0 - w_dice, w_dice
    return 0.0, 2.0


def dice_ce(batch_dice: bool) -> Loss:
    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        return cross_entropy(logits, target) + soft_dice(logits, target, batch_dice)

    return loss


def dice_topk(batch_dice: bool) -> Loss:
    """nnU-Net's DC_and_topk_loss (k=10, weights 1:1), the loss of Zhou 2021 (FLARE21), Eq. 1.

    Deviation from the paper's Eq. 1: the Dice denominator is sum(p) + sum(g) as in nnU-Net,
    not sum(p^2) + sum(g^2).
    """

    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        return topk_cross_entropy(logits, target) + soft_dice(logits, target, batch_dice)

    return loss


def ce_to_dice(batch_dice: bool) -> Loss:
    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        w_ce, w_dice = ce_to_dice_weights(progress)
        total = logits.new_zeros((), dtype=torch.float32)
        if w_ce:  # zero-weight terms are skipped, as nnU-Net does, to save compute
            total = total + w_ce * cross_entropy(logits, target)
        if w_dice:
            total = total + w_dice * soft_dice(logits, target, batch_dice)
        return total

    return loss


# --- region-based training: target (B, R, Z, Y, X) binary masks from ablate.regions -----------


def sigmoid_soft_dice(
    logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, smooth: float = 1e-5
) -> torch.Tensor:
    """nnU-Net's MemoryEfficientSoftDiceLoss for regions: sigmoid, do_bg=True; returns -dice.

    Every channel is a region (there is no background channel), so all of them are averaged.
    """
    probs = torch.sigmoid(logits.float())  # (B, R, Z, Y, X)
    spatial = tuple(range(2, logits.ndim))
    masks = target.to(probs.dtype)  # (B, R, Z, Y, X)
    intersect = (probs * masks).sum(spatial)  # (B, R)
    sum_pred, sum_gt = probs.sum(spatial), masks.sum(spatial)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, min=1e-8)
    return -dice.mean()


def dice_bce(batch_dice: bool) -> Loss:
    """nnU-Net's DC_and_BCE_loss (weights 1:1): BCE-with-logits mean + sigmoid Dice."""

    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return bce + sigmoid_soft_dice(logits, target, batch_dice)

    return loss


REGION_LOSSES = frozenset({"dice_bce"})  # take region masks, not a label map


LOSSES: dict[str, Callable[[bool], Loss]] = {
    "dice_ce": dice_ce,
    "dice_topk": dice_topk,
    "ce_to_dice": ce_to_dice,
    "dice_bce": dice_bce,
}


def build_loss(name: str, batch_dice: bool, ignore_label: int | None = None) -> Loss:
    """The loss `name`; with a dataset's `ignore_label`, voxels holding it are left out of the
    CE and Dice terms as nnU-Net's compound losses do (label-map losses only)."""
    if name not in LOSSES:
        raise ConfigError(f"train.loss: unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    if ignore_label is None:
        return LOSSES[name](batch_dice)
    if name in REGION_LOSSES:
        raise ConfigError(
            f"train.loss: {name!r} does not support the dataset's ignore label yet; train on "
            "labels (dice_ce, dice_topk, ce_to_dice) or drop the ignore label"
        )
    return _ignoring(name, batch_dice, ignore_label)


def _ignoring(name: str, batch_dice: bool, ignore_label: int) -> Loss:
    """nnU-Net's DC_and_CE_loss / DC_and_topk_loss with ignore_label: the Dice target has the
    ignored voxels set to 0 and masked out; CE ignores them and is 0 when all are ignored."""
    ce_term = topk_cross_entropy if name == "dice_topk" else cross_entropy

    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        w_ce, w_dice = ce_to_dice_weights(progress) if name == "ce_to_dice" else (1.0, 1.0)
        mask = target != ignore_label  # (B, 1, Z, Y, X)
        # a zero tied to the logits: with every voxel ignored and no Dice weight (CE-to-Dice's
        # first half) backward still runs and gives zero gradients, where nnU-Net returns int 0
        total = logits.float().sum() * 0.0
        if w_dice:
            dice_target = torch.where(mask, target, 0)
            total = total + w_dice * soft_dice(logits, dice_target, batch_dice, mask=mask)
        if w_ce and bool(mask.any()):
            total = total + w_ce * ce_term(logits, target, ignore_index=ignore_label)
        return total

    return loss


def deep_supervision_weights(mode: str, n_outputs: int) -> list[float]:
    """Weights per network output, index 0 = full resolution.

    nnunet: w_i = 1/2^i, the lowest-resolution output weighted 0, normalised to sum 1.
    last3:  0.7, 0.2, 0.1 on the three highest resolutions (Zhou 2021, FLARE21), zeros elsewhere.
    none:   the full-resolution output only.
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    if mode == "nnunet":
        weights = [1 / 2**i for i in range(n_outputs)]
        if n_outputs > 1:
            weights[-1] = 0.0
    elif mode == "last3":
        weights = ([0.7, 0.2, 0.1] + [0.0] * n_outputs)[:n_outputs]
    elif mode == "none":
        weights = [1.0] + [0.0] * (n_outputs - 1)
    else:
        raise ConfigError(
            f"train.deep_supervision: unknown mode {mode!r}; valid: last3, nnunet, none"
        )
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour downsampling of a label map (B, 1, Z, Y, X) to a spatial `shape`."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=shape, mode="nearest-exact").long()


def deep_supervision_loss(loss: Loss, mode: str) -> Callable[..., torch.Tensor]:
    """Wrap `loss` to take the network's list of outputs (full resolution first) or a single tensor.

    The target is downsampled to each output's shape; zero-weight outputs are skipped.
    """

    def wrapped(
        outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, progress: float
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return loss(outputs, target, progress)
        weights = deep_supervision_weights(mode, len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, out in zip(weights, outputs, strict=True):
            if weight:
                total = total + weight * loss(
                    out, downsample_target(target, tuple(out.shape[2:])), progress
                )
        return total

    return wrapped
