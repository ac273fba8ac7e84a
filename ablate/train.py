"""Training: nnU-Net's loop (SGD, poly LR, grad clip 12, AMP on CUDA), resumable bit-for-bit on CPU.

Randomness: the network initialisation uses torch's global generator inside `torch.random.fork_rng`
seeded from the job's seed (the caller's state is restored afterwards); every batch is drawn from a
numpy Generator seeded by (seed, epoch, split, batch index), so a resumed run sees the same batches.
Checkpoints (`checkpoint_latest.pt` every epoch, `checkpoint_final.pt` at the end, and as nnU-Net
`checkpoint_best.pt` whenever the EMA pseudo Dice improves) are written atomically and load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ablate.augment import augment_sample, sample_size_for
from ablate.cascade import CascadeSource, cascade_augment
from ablate.checkpoint import BEST, FINAL, LATEST, resume, save_checkpoint
from ablate.config import TrainConfig
from ablate.device import peak_memory_mb, reset_peak_memory, select_device, synchronize
from ablate.errors import ConfigError, DataError
from ablate.losses import build_loss, deep_supervision_loss
from ablate.plan import Plan
from ablate.regions import (
    labels_to_regions,
    network_plan,
    paint_order,
    training_regions,
)
from ablate.sampler import batch_rng, iterate_batches, sample_batch

TRAIN_SPLIT, VAL_SPLIT = 0, 1


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # checkpoint_final.pt
    epochs: int
    seconds: float
    seconds_per_epoch: float
    peak_memory_mb: dict[str, float]
    parameters: int
    flops: int
    # per epoch: train_loss, val_loss, pseudo_dice, ema_pseudo_dice, lr, epoch_seconds
    history: list[dict[str, float]]


def train(
    cfg: TrainConfig,
    data: Any,  # PreprocessedData
    fold: int,
    seed: int,
    out_dir: Path,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    regions: dict[str, tuple[int, ...]] | None = None,
    previous_stage: Path | None = None,
) -> TrainResult:
    """Train one fold; resumes from out_dir/checkpoint_latest.pt when present.

    `regions` (default: `cfg.regions` where TrainConfig has it) switches to region-based training:
    one sigmoid output per region, targets from ablate.regions.labels_to_regions.
    `previous_stage`: for a 3d_cascade_fullres plan, the folder of the 3d_lowres stage's
    cross-validation predictions on the 3d_fullres grid (ablate.cascade), one per case.
    """
    from ablate.nets import build_network  # lazy: nets is a sibling stage

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    order = cfg.region_order if regions is None else None  # cfg's order paints cfg's regions
    if regions is None:
        regions = cfg.regions
    regions = training_regions(regions, cfg.loss)
    order = paint_order(regions, order) if regions else None  # stored for the exports
    stored = {"regions": regions, "region_order": order}
    plan, split = data.plan, _fold_split(data, fold)
    batch_size = cfg.batch_size or plan.batch_size
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        net = build_network(cfg, network_plan(plan, regions)).to(device)
        parameters, flops = _count(net, network_plan(plan, regions))
        net.deep_supervision = cfg.deep_supervision != "none"
        optimizer = torch.optim.SGD(
            net.parameters(),
            lr=cfg.initial_lr,
            momentum=cfg.momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        start_epoch, history, best_ema = resume(
            out_dir / LATEST, cfg, net, optimizer, scaler, device, regions
        )
        loss_fn = training_loss(cfg, plan, regions, data.ignore_label)
        loaders = _Loaders(cfg, data, split, batch_size, seed, regions, previous_stage)
        reset_peak_memory(device)
        for epoch in range(start_epoch, cfg.epochs):
            metrics = _run_epoch(
                epoch, cfg, net, optimizer, scaler, loss_fn, loaders, device, regions
            )
            previous = history[-1].get("ema_pseudo_dice") if history else None
            metrics["ema_pseudo_dice"] = ema_pseudo_dice(previous, metrics["pseudo_dice"])
            history.append(metrics)
            state = (net, optimizer, scaler, epoch + 1, cfg, plan, history, seed, fold)
            if loaders.validates and is_new_best(best_ema, metrics["ema_pseudo_dice"]):
                best_ema = metrics["ema_pseudo_dice"]
                save_checkpoint(out_dir / BEST, *state, **stored, best_ema=best_ema)
            save_checkpoint(out_dir / LATEST, *state, **stored, best_ema=best_ema)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics))
        final = out_dir / FINAL
        state = (net, optimizer, scaler, cfg.epochs, cfg, plan, history, seed, fold)
        save_checkpoint(final, *state, **stored, best_ema=best_ema)
    seconds = float(sum(h["epoch_seconds"] for h in history))
    return TrainResult(
        checkpoint=final,
        epochs=cfg.epochs,
        seconds=seconds,
        seconds_per_epoch=seconds / max(len(history), 1),
        peak_memory_mb=peak_memory_mb(device),
        parameters=parameters,
        flops=flops,
        history=history,
    )


def ema_pseudo_dice(previous: float | None, pseudo_dice: float) -> float:
    """nnU-Net's moving average of the pseudo Dice (its logger's ema_fg_dice): the first epoch's
    value, then 0.9 * previous + 0.1 * new. A NaN (no class in prediction or reference) stays."""
    return pseudo_dice if previous is None else previous * 0.9 + 0.1 * pseudo_dice


def is_new_best(best_ema: float | None, ema: float) -> bool:
    """nnU-Net's on_epoch_end rule for checkpoint_best: the first epoch, then a strictly higher
    EMA (so after a NaN first value no epoch is better, as in nnU-Net)."""
    return best_ema is None or ema > best_ema


def poly_lr(initial_lr: float, epoch: int, schedule_epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler, stepped per epoch; 0 past the end of the schedule."""
    return initial_lr * max(0.0, 1 - epoch / schedule_epochs) ** exponent


def _run_epoch(
    epoch: int, cfg: TrainConfig, net, optimizer, scaler, loss_fn, loaders, device, regions=None
):
    """One epoch of training then validation; returns the epoch's metrics."""
    began = time.perf_counter()
    lr = poly_lr(cfg.initial_lr, epoch, cfg.lr_schedule_epochs or cfg.epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    progress = epoch / cfg.epochs  # the loss schedule's fraction of training done
    net.train()
    losses = [
        _train_step(net, optimizer, scaler, loss_fn, batch, progress, cfg.grad_clip, device)
        for batch in loaders.train(epoch)
    ]
    num_classes = loaders.data.plan.num_classes
    val_loss, dice = _validate(
        net,
        loss_fn,
        loaders.val(epoch),
        progress,
        num_classes,
        device,
        regions,
        loaders.data.ignore_label,
    )
    synchronize(device)
    return {
        "train_loss": float(np.mean(losses)),
        "val_loss": val_loss,
        "pseudo_dice": dice,
        "lr": lr,
        "epoch_seconds": time.perf_counter() - began,
    }


def _train_step(
    net, optimizer, scaler, loss_fn, batch, progress: float, grad_clip: float, device
) -> float:
    data, target = _to_device(batch, device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        outputs = net(data)  # list of (B, K, Z, Y, X), full resolution first, or one tensor
        loss = loss_fn(outputs, target, progress)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach().cpu())


@torch.no_grad()
def _validate(
    net,
    loss_fn,
    batches,
    progress: float,
    num_classes: int,
    device,
    regions=None,
    ignore_label: int | None = None,
) -> tuple[float, float]:
    """Mean loss and pseudo Dice (TP/FP/FN summed over all patches per class, then mean).

    With regions: per region, the prediction is sigmoid > 0.5 (nnU-Net's validation_step).
    Voxels holding `ignore_label` count in no class (nnU-Net's mask).
    """
    net.eval()
    n_targets = len(regions) if regions else num_classes - 1
    losses, counts = [], torch.zeros(3, n_targets, dtype=torch.float64)
    for batch in batches:
        data, target = _to_device(batch, device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outputs = net(data)
            losses.append(float(loss_fn(outputs, target, progress).cpu()))
        logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        if regions:
            masks = labels_to_regions(target, regions) > 0  # (B, R, Z, Y, X)
            counts += region_confusion_counts(logits > 0, masks).cpu()
        else:
            labels = target[:, 0]  # (B, Z, Y, X)
            scored = None if ignore_label is None else labels != ignore_label
            counts += confusion_counts(logits.argmax(1), labels, num_classes, scored).cpu()
    if not losses:
        return math.nan, math.nan
    return float(np.mean(losses)), pseudo_dice(counts)


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """(3, K-1) rows TP, FP, FN per foreground class of label maps pred and target (same shape);
    only voxels where `scored` is True count, when given."""
    rows = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        if scored is not None:
            p, t = p & scored, t & scored
        rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    return torch.stack(rows, dim=1).double()


def region_confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(3, R) rows TP, FP, FN per region of boolean masks pred and target (B, R, Z, Y, X)."""
    dims = [d for d in range(pred.ndim) if d != 1]
    tp = (pred & target).sum(dims)
    fp = (pred & ~target).sum(dims)
    fn = (~pred & target).sum(dims)
    return torch.stack([tp, fp, fn]).double()


def pseudo_dice(counts: torch.Tensor) -> float:
    """Mean over classes of 2TP / (2TP + FP + FN); classes absent from pred and ref are skipped."""
    tp, fp, fn = counts
    denominator = 2 * tp + fp + fn
    dice = (2 * tp / denominator)[denominator > 0]
    return float(dice.mean()) if dice.numel() else math.nan


def _to_device(batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    data, seg = batch
    pin = device.type == "cuda"
    data_t = torch.from_numpy(data)  # (B, C, Z, Y, X)
    seg_t = torch.from_numpy(seg.astype(np.int64))  # (B, 1, Z, Y, X)
    if pin:
        data_t, seg_t = data_t.pin_memory(), seg_t.pin_memory()
    return data_t.to(device, non_blocking=pin), seg_t.to(device, non_blocking=pin)


class _Loaders:
    """Train batches augmented per cfg.augmentation; validation batches plain, same sampling."""

    def __init__(
        self,
        cfg: TrainConfig,
        data,
        split,
        batch_size: int,
        seed: int,
        regions=None,
        previous_stage: Path | None = None,
    ):
        self.cfg, self.data, self.split, self.batch_size, self.seed = (
            cfg,
            data,
            split,
            batch_size,
            seed,
        )
        self.cascade = tuple(data.plan.previous_stage_labels)
        if self.cascade:
            if previous_stage is None:
                raise ConfigError(
                    "plan.configuration: 3d_cascade_fullres trains on the 3d_lowres stage's "
                    "cross-validation predictions; run its 3d_lowres folds first"
                )
            self.source = CascadeSource(data, previous_stage)
        else:
            self.source = data
        self.regions = regions  # forced crops sample per region, as nnU-Net's region training
        self.patch_size = tuple(data.plan.patch_size)
        # no validation batches: no pseudo Dice, so no best checkpoint (nnU-Net always validates)
        self.validates = bool(split.val) and cfg.val_iterations > 0

    def train(self, epoch: int):
        mode, patch = self.cfg.augmentation, self.patch_size

        def augment(d, s, rng):
            return augment_sample(d, s, rng, mode, patch)[:2]

        if self.cascade:
            augment = cascade_augment(self.cascade, mode, patch)

        return self._batches(
            self.split.train,
            epoch,
            TRAIN_SPLIT,
            self.cfg.iterations_per_epoch,
            sample_size_for(mode, patch),
            augment,
        )

    def val(self, epoch: int):
        if not self.split.val:
            return iter(())
        plain = cascade_augment(self.cascade, None, self.patch_size) if self.cascade else None
        return self._batches(
            self.split.val, epoch, VAL_SPLIT, self.cfg.val_iterations, self.patch_size, plain
        )

    def _batches(self, case_ids: Sequence[str], epoch: int, split: int, count: int, size, augment):
        # nnU-Net masks use_mask_for_norm channels in training batches only
        masked = [c for c, n in enumerate(self.data.plan.normalization) if n.use_mask]
        regions = list(self.regions.values()) if self.regions else None

        def make(i: int):
            rng = batch_rng(self.seed, epoch, split, i)
            return sample_batch(
                self.source,
                case_ids,
                self.batch_size,
                size,
                self.cfg.oversample_foreground,
                rng,
                augment,
                final_size=self.patch_size,
                mask_channels=masked if split == TRAIN_SPLIT else (),
                regions=regions,
                annotated=self.data.ignore_label is not None,
            )

        return iterate_batches(make, count, self.cfg.data_workers)


def _fold_split(data, fold: int):
    if not 0 <= fold < len(data.folds):
        raise ConfigError(
            f"fold: {fold} is out of range; the preprocessed data has {len(data.folds)} folds"
        )
    split = data.folds[fold]
    if not split.train:
        raise DataError(
            f"fold {fold}: no training cases; check the dataset and the number of folds"
        )
    return split


def _count(net: nn.Module, plan: Plan) -> tuple[int, int]:
    from ablate.nets import count_flops, count_parameters

    flops = count_flops(net, plan.patch_size, plan.network_input_channels)
    return int(count_parameters(net)), int(flops)


# --- region-based training (nnU-Net's regions; see ablate.regions) --------------------------


def training_loss(
    cfg: TrainConfig, plan: Plan, regions=None, ignore_label: int | None = None
) -> Callable[..., torch.Tensor]:
    """cfg.loss with deep supervision; with regions, label targets become region masks first
    (at full resolution, before the per-output downsampling, as nnU-Net's transforms); voxels
    holding the dataset's `ignore_label` are left out."""
    loss = deep_supervision_loss(
        build_loss(cfg.loss, plan.batch_dice, ignore_label), cfg.deep_supervision
    )
    if not regions:
        return loss

    def region_loss(outputs, target: torch.Tensor, progress: float) -> torch.Tensor:
        return loss(outputs, labels_to_regions(target, regions), progress)  # (B, R, Z, Y, X)

    return region_loss
