import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import ablate
from ablate.checkpoint import checkpoint_for, checkpoint_regions, load_model
from ablate.config import TrainConfig
from ablate.errors import ConfigError, DataError
from ablate.losses import build_loss
from ablate.plan import ChannelNormalization, Plan
from ablate.regions import labels_to_regions
from ablate.train import (
    confusion_counts,
    ema_pseudo_dice,
    is_new_best,
    poly_lr,
    pseudo_dice,
    region_confusion_counts,
    train,
    training_loss,
)

PATCH = (4, 6, 8)


class TinyNet(nn.Module):
    """Stand-in for ablate.nets: full-resolution and half-resolution logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.deep_supervision = True
        self.full = nn.Conv3d(in_channels, num_classes, 3, padding=1)
        self.coarse = nn.Conv3d(in_channels, num_classes, 1)

    def forward(self, x):
        full = self.full(x)  # (B, K, Z, Y, X)
        if not self.deep_supervision:
            return full
        return [full, self.coarse(nn.functional.avg_pool3d(x, 2))]  # (B, K, Z/2, Y/2, X/2)


@pytest.fixture
def tiny_nets(monkeypatch):
    module = types.ModuleType("ablate.nets")
    module.build_network = lambda cfg, plan: TinyNet(plan.num_input_channels, plan.num_classes)
    module.count_parameters = lambda net: sum(p.numel() for p in net.parameters())
    module.count_flops = lambda net, patch_size, in_channels: 0  # TinyNet is not a U-Net
    monkeypatch.setitem(sys.modules, "ablate.nets", module)
    monkeypatch.setattr(ablate, "nets", module, raising=False)


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


class TinyData:
    """Stand-in for PreprocessedData: two random (1, 6, 8, 10) cases with labels 1 and 2."""

    ignore_label = None

    def __init__(self):
        self.plan = Plan(
            target_spacing_mm=(2.0, 1.0, 1.0),
            patch_size=PATCH,
            batch_size=2,
            pool_kernel_sizes=[(1, 1, 1), (2, 2, 2)],
            conv_kernel_sizes=[(3, 3, 3)] * 2,
            features_per_stage=[4, 8],
            num_input_channels=1,
            num_classes=3,
            normalization=[ChannelNormalization("zscore")],
            median_shape=(6, 8, 10),
            anisotropic=False,
        )
        self.case_ids = ("a", "b")
        self.folds = [Fold(("a", "b"), ("b",))]
        rng = np.random.default_rng(0)
        self.cases = {}
        for case_id in self.case_ids:
            seg = np.zeros((6, 8, 10), dtype=np.int8)
            seg[1:4, 2:6, 3:7] = 1
            seg[2, 3, 4:6] = 2
            seg[0, 0, 0] = -1
            data = (seg[None] + rng.normal(0, 0.5, (1, 6, 8, 10))).astype(np.float32)
            self.cases[case_id] = (data, seg)

    def load_case(self, case_id):
        return (*self.cases[case_id], None)

    def class_locations(self, case_id):
        seg = self.cases[case_id][1]
        return {c: np.argwhere(seg == c) for c in (1, 2)}

    def region_locations(self, case_id, regions):
        seg = self.cases[case_id][1]
        return {tuple(r): np.argwhere(np.isin(seg, r)) for r in regions}


def _cfg(**kwargs):
    defaults = dict(
        epochs=2,
        iterations_per_epoch=2,
        val_iterations=1,
        data_workers=0,
        device="cpu",
        augmentation="mirror",
    )
    return TrainConfig(**{**defaults, **kwargs})


def test_poly_lr():
    assert poly_lr(0.01, 0, 10) == 0.01
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 12, 10) == 0.0


def test_pseudo_dice_pools_counts_over_patches():
    pred = torch.tensor([[1, 1, 0, 2]])
    ref = torch.tensor([[1, 0, 0, 0]])
    counts = confusion_counts(pred, ref, 3) + confusion_counts(ref, ref, 3)
    # class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 0, FP 1 -> 0
    assert counts[:, 0].tolist() == [2, 1, 0]
    assert pseudo_dice(counts) == pytest.approx((0.8 + 0.0) / 2)


def test_tiny_training_writes_loadable_checkpoints(tiny_nets, tmp_path):
    seen = []
    result = train(
        _cfg(augmentation="nnunet"),
        TinyData(),
        0,
        1,
        tmp_path,
        on_epoch_end=lambda e, m: seen.append((e, m)),
    )
    assert [e for e, _ in seen] == [0, 1]
    assert result.checkpoint == tmp_path / "checkpoint_final.pt" and result.checkpoint.exists()
    assert (tmp_path / "checkpoint_latest.pt").exists()
    assert len(result.history) == 2 and set(result.history[0]) == {
        "train_loss",
        "val_loss",
        "pseudo_dice",
        "ema_pseudo_dice",
        "lr",
        "epoch_seconds",
    }
    assert all("ema_pseudo_dice" in m for _, m in seen)  # reaches tracking via the callback
    best = torch.load(tmp_path / "checkpoint_best.pt", weights_only=True)
    emas = [h["ema_pseudo_dice"] for h in result.history]
    assert best["best_ema"] == max(emas) and best["epoch"] == emas.index(max(emas)) + 1
    assert result.history[1]["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert result.parameters == sum(p.numel() for p in TinyNet(1, 3).parameters())
    assert result.seconds_per_epoch > 0 and result.peak_memory_mb
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["epoch"] == 2 and TrainConfig.model_validate_json(state["config"]).epochs == 2
    net, cfg, plan = load_model(result.checkpoint, torch.device("cpu"))
    assert not net.training and not net.deep_supervision and plan.patch_size == PATCH
    assert net(torch.zeros(1, 1, *PATCH)).shape == (1, 3, *PATCH)


class Interrupt(Exception):
    pass


def _interrupt_after_first_epoch(epoch, metrics):
    if epoch == 0:
        raise Interrupt


def test_interrupted_and_resumed_training_matches_uninterrupted(tiny_nets, tmp_path):
    data = TinyData()
    whole_dir, split = tmp_path / "whole", tmp_path / "split"
    whole = train(_cfg(epochs=3), data, 0, 5, whole_dir)
    with pytest.raises(Interrupt):
        train(
            _cfg(epochs=3, data_workers=2),
            data,
            0,
            5,
            tmp_path / "split",
            _interrupt_after_first_epoch,
        )
    assert not (tmp_path / "split" / "checkpoint_final.pt").exists()
    resumed = train(_cfg(epochs=3), data, 0, 5, tmp_path / "split")
    a = torch.load(whole.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]
    for key in ("pseudo_dice", "ema_pseudo_dice"):  # the EMA continues across the resume
        assert [h[key] for h in whole.history] == [h[key] for h in resumed.history]
    best = [torch.load(d / "checkpoint_best.pt", weights_only=True) for d in (whole_dir, split)]
    assert best[0]["epoch"] == best[1]["epoch"] and best[0]["best_ema"] == best[1]["best_ema"]
    assert torch.load(resumed.checkpoint, weights_only=True)["best_ema"] == best[0]["best_ema"]
    other_seed = train(_cfg(epochs=1), data, 0, 6, tmp_path / "other")
    assert not torch.equal(
        torch.load(other_seed.checkpoint, weights_only=True)["model"]["full.weight"],
        a["full.weight"],
    )


# --- region-based training -------------------------------------------------------------------

KITS = {"kidney": (1, 2), "tumor": (2,)}


def test_region_confusion_counts_per_region():
    pred = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool).reshape(1, 2, 1, 1, 3)
    ref = torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.bool).reshape(1, 2, 1, 1, 3)
    counts = region_confusion_counts(pred, ref)  # (3, R)
    assert counts[:, 0].tolist() == [1, 1, 0] and counts[:, 1].tolist() == [1, 1, 0]
    assert pseudo_dice(counts) == pytest.approx(2 / 3)


def test_region_training_loss_converts_labels_to_region_masks():
    cfg = _cfg(loss="dice_bce", deep_supervision="none")
    labels = torch.tensor([0, 1, 2, 2]).reshape(1, 1, 1, 1, 4)  # (B, 1, Z, Y, X)
    logits = torch.randn(1, 2, 1, 1, 4, generator=torch.Generator().manual_seed(0))
    loss = training_loss(cfg, TinyData().plan, KITS)(logits, labels, 0.0)
    expected = build_loss("dice_bce", False)(logits, labels_to_regions(labels, KITS), 0.0)
    assert loss.item() == pytest.approx(expected.item())


def test_region_loss_and_regions_must_match(tiny_nets, tmp_path):
    with pytest.raises(ConfigError, match="train.loss: 'dice_ce' takes a label map"):
        train(_cfg(), TinyData(), 0, 1, tmp_path, regions=KITS)
    with pytest.raises(ConfigError, match="needs train.regions"):
        train(_cfg(loss="dice_bce"), TinyData(), 0, 1, tmp_path)


def test_tiny_region_training_outputs_one_channel_per_region(tiny_nets, tmp_path):
    cfg = _cfg(loss="dice_bce", epochs=1)
    result = train(cfg, TinyData(), 0, 1, tmp_path, regions=KITS)
    assert np.isfinite(result.history[0]["train_loss"])
    assert 0 <= result.history[0]["pseudo_dice"] <= 1
    assert result.parameters == sum(p.numel() for p in TinyNet(1, 2).parameters())
    assert checkpoint_regions(result.checkpoint) == KITS
    net, _, plan = load_model(result.checkpoint, torch.device("cpu"))
    assert plan.num_classes == 3  # the data's plan is unchanged; only the network differs
    assert net(torch.zeros(1, 1, *PATCH)).shape == (1, 2, *PATCH)
    with pytest.raises(ConfigError, match="different training config"):
        train(cfg, TinyData(), 0, 1, tmp_path, regions={"tumor": (2,)})


# --- pseudo-Dice EMA and checkpoint_best (nnU-Net's logger and on_epoch_end) -----------------

DICE_SEQUENCE = [0.5, 0.2, 0.9, 0.6, 0.95, 0.1, float("nan"), 0.99]


def test_ema_pseudo_dice_equals_nnunets_logger(tmp_path):
    from nnunetv2.training.logging import nnunet_logger as logging

    logger = logging.MetaLogger(str(tmp_path), False)
    ours, ema = [], None
    for epoch, dice in enumerate(DICE_SEQUENCE):
        logger.log("mean_fg_dice", dice, epoch)
        ema = ema_pseudo_dice(ema, dice)
        ours.append(ema)
    np.testing.assert_array_equal(ours, logger.get_value("ema_fg_dice", None))  # bit for bit


def test_best_checkpoint_epochs_follow_nnunets_rule():
    """nnUNetTrainer.on_epoch_end: save when `_best_ema is None or ema > _best_ema`."""
    ema, best, saved = None, None, []
    for epoch, dice in enumerate([0.5, 0.2, 0.9, 0.6, 0.95, 0.1]):
        ema = ema_pseudo_dice(ema, dice)
        if is_new_best(best, ema):
            best, saved = ema, [*saved, epoch]
    assert saved == [0, 2, 3, 4]  # EMAs 0.5, 0.47, 0.513, 0.5217, 0.56453, 0.518077
    assert not is_new_best(float("nan"), 0.9)  # a NaN best is never beaten, as in nnU-Net


def test_no_validation_no_best_checkpoint(tiny_nets, tmp_path):
    result = train(_cfg(val_iterations=0, epochs=1), TinyData(), 0, 1, tmp_path)
    assert not (tmp_path / "checkpoint_best.pt").exists()
    assert checkpoint_for(tmp_path, "final") == result.checkpoint
    with pytest.raises(DataError, match="without validation.*infer.checkpoint: final"):
        checkpoint_for(tmp_path, "best")
    with pytest.raises(ConfigError, match="valid: final, best"):
        checkpoint_for(tmp_path, "last")


def test_checkpoint_for_best(tiny_nets, tmp_path):
    train(_cfg(epochs=1), TinyData(), 0, 1, tmp_path)
    assert checkpoint_for(tmp_path, "best") == tmp_path / "checkpoint_best.pt"
    net, _, _ = load_model(checkpoint_for(tmp_path, "best"), torch.device("cpu"))
    assert not net.training


def test_pseudo_dice_counts_equal_nnunets_validation_step():
    """nnUNetTrainer.validation_step: argmax one-hot (or sigmoid > 0.5 per region), TP/FP/FN by
    get_tp_fp_fn_tn over batch and space, background dropped; on_validation_epoch_end: nanmean."""
    from nnunetv2.training.loss import dice

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 4, 3, 5, 6), generator=generator)  # (B, K, Z, Y, X)
    target = torch.randint(0, 4, (2, 1, 3, 5, 6), generator=generator)
    target[target == 3] = 0  # class 3 only predicted: Dice 0; nnU-Net keeps it in the mean
    onehot = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1)
    tp, fp, fn, _ = dice.get_tp_fp_fn_tn(onehot, target, axes=[0, 2, 3, 4])
    ours = confusion_counts(logits.argmax(1), target[:, 0], 4)
    torch.testing.assert_close(ours, torch.stack([tp, fp, fn])[:, 1:].double())
    expected = np.nanmean((2 * tp / (2 * tp + fp + fn))[1:].numpy())
    assert pseudo_dice(ours) == pytest.approx(float(expected))
    masks = labels_to_regions(target, KITS) > 0  # (B, R, Z, Y, X)
    region_logits = logits[:, :2]
    tp, fp, fn, _ = dice.get_tp_fp_fn_tn(
        (torch.sigmoid(region_logits) > 0.5).long(), masks.long(), axes=[0, 2, 3, 4]
    )
    ours = region_confusion_counts(region_logits > 0, masks)
    torch.testing.assert_close(ours, torch.stack([tp, fp, fn]).double())


def test_pseudo_dice_counts_with_an_ignore_label_equal_nnunets_validation_step():
    """nnU-Net's validation_step with an ignore label: mask = target != ignore, ignored voxels set
    to 0 in the target, then get_tp_fp_fn_tn(..., mask=mask)."""
    from nnunetv2.training.loss import dice

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 3, 4, 5, 6), generator=generator)  # (B, K, Z, Y, X), ignore = 3
    target = torch.randint(0, 4, (2, 1, 4, 5, 6), generator=generator)
    mask = (target != 3).float()
    theirs_target = torch.where(target == 3, 0, target)
    onehot = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1)
    tp, fp, fn, _ = dice.get_tp_fp_fn_tn(onehot, theirs_target, axes=[0, 2, 3, 4], mask=mask)
    ours = confusion_counts(logits.argmax(1), target[:, 0], 3, target[:, 0] != 3)
    torch.testing.assert_close(ours, torch.stack([tp, fp, fn])[:, 1:].double())


def test_training_with_an_ignore_label_runs_and_leaves_ignored_voxels_out(tmp_path):
    """A dataset with nnU-Net's `ignore` label trains: the loss ignores those voxels, unforced
    crops centre on annotated voxels, and the network has no output for `ignore`."""
    import json

    from ablate.config import PlanConfig
    from ablate.data.dataset import read_nnunet_raw
    from ablate.imageio import Geometry, write_image
    from ablate.preprocess import prepare

    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(4):
        seg = np.zeros((12, 16, 16), np.uint8)
        seg[3:8, 4:10, 4:10] = 1
        seg[:, :, 12:] = 2  # not annotated
        image = (rng.normal(5.0, 0.3, seg.shape) + 2.0 * (seg == 1)).astype(np.float32)
        write_image(image, geometry, root / "imagesTr" / f"c{i}_0000.nii.gz")
        write_image(seg, geometry, root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MR"},
                "labels": {"background": 0, "organ": 1, "ignore": 2},
                "numTraining": 4,
                "file_ending": ".nii.gz",
            }
        )
    )
    dataset = read_nnunet_raw(root)
    assert dataset.ignore_label == 2 and dataset.num_classes == 2
    plan_cfg = PlanConfig(
        patch_size=(8, 8, 8), target_spacing_mm=(1.0, 1.0, 1.0), base_features=4, max_features=8
    )
    data = prepare(
        dataset, plan_cfg, tmp_path / "cache", folds=2, workers=0, intensity_samples=1000
    )
    assert data.ignore_label == 2 and data.plan.num_classes == 2
    annotated = data.annotated_locations("c0")
    seg = np.asarray(data.load_case("c0")[1])
    assert len(annotated) and not (seg[tuple(annotated.T)] == 2).any()
    cfg = _cfg(epochs=1, iterations_per_epoch=2, val_iterations=1, augmentation="mirror")
    result = train(cfg, data, fold=0, seed=0, out_dir=tmp_path / "train")
    assert np.isfinite(result.history[0]["train_loss"])
    assert np.isfinite(result.history[0]["val_loss"])
