"""Checkpoints: written atomically every epoch (temporary file + os.replace), loaded with
`torch.load(weights_only=True)`, holding the resolved config and plan so a model rebuilds from its
checkpoint alone, and the RNG state so a resumed training continues bit for bit.

A training folder holds `checkpoint_latest.pt` (every epoch), `checkpoint_final.pt` (the end) and,
as nnU-Net, `checkpoint_best.pt`: the weights of the epoch whose EMA pseudo Dice was the highest
so far (`best_ema` in every checkpoint, so a resumed training keeps it). Inference loads the
final one unless `infer.checkpoint` says best (`checkpoint_for`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablate.config import TrainConfig
from ablate.errors import ConfigError, DataError
from ablate.plan import Plan
from ablate.regions import (
    network_plan,
    region_order_from_json,
    regions_from_json,
    regions_to_json,
)

LATEST, FINAL, BEST = "checkpoint_latest.pt", "checkpoint_final.pt", "checkpoint_best.pt"
CHECKPOINTS = {"final": FINAL, "best": BEST}  # infer.checkpoint -> file name
RESUME_IGNORED_FIELDS = ("device", "data_workers")  # may differ between a run and its resume


def rng_state(device: torch.device, seed: int) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "batch_seed": seed}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(
    path: Path,
    net,
    optimizer,
    scaler,
    epoch: int,
    cfg: TrainConfig,
    plan: Plan,
    history: list[dict[str, float]],
    seed: int,
    fold: int,
    regions: dict[str, tuple[int, ...]] | None = None,
    best_ema: float | None = None,
    region_order: tuple[int, ...] | None = None,
) -> None:
    device = next(net.parameters()).device
    checkpoint = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "config": cfg.model_dump_json(),
        "plan": json.dumps(plan.to_json()),
        "history": history,
        "rng": rng_state(device, seed),
        "seed": seed,
        "fold": fold,
        "regions": regions_to_json(regions, region_order),
        "best_ema": best_ema,  # the best EMA pseudo Dice so far (None: no epoch validated yet)
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def resume(
    path: Path, cfg: TrainConfig, net, optimizer, scaler, device, regions=None
) -> tuple[int, list[dict[str, float]], float | None]:
    """Restore state from `path` if present; returns (first epoch to run, history so far, best
    EMA pseudo Dice so far or None)."""
    if not path.exists():
        return 0, [], None
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    saved = TrainConfig.model_validate_json(checkpoint["config"]).model_dump(
        exclude=set(RESUME_IGNORED_FIELDS)
    )
    same_regions = regions_from_json(checkpoint.get("regions", "")) == regions
    if saved != cfg.model_dump(exclude=set(RESUME_IGNORED_FIELDS)) or not same_regions:
        raise ConfigError(
            f"{path}: was written with a different training config; delete it or use a new out_dir"
        )
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
    if device.type == "cuda" and "cuda" in checkpoint["rng"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"].cpu(), device)
    best_ema = checkpoint.get("best_ema")
    return int(checkpoint["epoch"]), list(checkpoint["history"]), best_ema


def load_model(checkpoint: Path, device) -> tuple[nn.Module, TrainConfig, Plan]:
    """The trained network in eval mode with deep supervision off, its TrainConfig and Plan."""
    from ablate.nets import build_network

    state = torch.load(checkpoint, map_location=device, weights_only=True)
    cfg = TrainConfig.model_validate_json(state["config"])
    plan = Plan.from_json(json.loads(state["plan"]))
    net = build_network(cfg, network_plan(plan, regions_from_json(state.get("regions", ""))))
    net.load_state_dict(state["model"])
    net.deep_supervision = False
    return net.to(device).eval(), cfg, plan


def checkpoint_regions(checkpoint: Path) -> dict[str, tuple[int, ...]] | None:
    """The regions a checkpoint was trained on (None: softmax over labels)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return regions_from_json(state.get("regions", ""))


def checkpoint_region_order(checkpoint: Path) -> tuple[int, ...] | None:
    """The label each of a region model's regions paints in exports (the dataset's
    regions_class_order; default_region_order for checkpoints that predate it); None for a
    softmax model."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return region_order_from_json(state.get("regions", ""))


def checkpoint_for(train_dir: Path, which: str = "final") -> Path:
    """The checkpoint inference loads from a training's folder: `which` is `infer.checkpoint`,
    "final" (nnU-Net's default) or "best" (the highest EMA pseudo Dice, nnU-Net's
    checkpoint_best)."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"infer.checkpoint: unknown {which!r}; valid: {', '.join(CHECKPOINTS)}")
    path = Path(train_dir) / CHECKPOINTS[which]
    if which == "best" and not path.exists() and (Path(train_dir) / FINAL).exists():
        raise DataError(
            f"{path}: missing; the training ran without validation (train.val_iterations 0 or "
            "no validation cases), so no EMA pseudo Dice chose a best epoch; "
            "use infer.checkpoint: final"
        )
    return path
