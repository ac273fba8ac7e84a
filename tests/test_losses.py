import math

import pytest
import torch

from ablate.errors import ConfigError
from ablate.losses import (
    LOSSES,
    REGION_LOSSES,
    build_loss,
    ce_to_dice_weights,
    cross_entropy,
    deep_supervision_loss,
    deep_supervision_weights,
    downsample_target,
    sigmoid_soft_dice,
    soft_dice,
    topk_cross_entropy,
)


def _uniform_two_class():
    logits = torch.zeros(1, 2, 1, 1, 4)  # softmax 0.5 everywhere
    target = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 1, 4)
    return logits, target


def test_soft_dice_is_negative_dice_without_background():
    logits, target = _uniform_two_class()
    # class 1: intersect 2 * 0.5 = 1, sum_pred 4 * 0.5 = 2, sum_gt 2 -> dice (2 + s) / (4 + s)
    s = 1e-5
    assert soft_dice(logits, target, batch_dice=False).item() == pytest.approx(-(2 + s) / (4 + s))


def test_batch_dice_pools_the_batch_before_dividing():
    logits = torch.full((2, 2, 1, 1, 2), -20.0)
    logits[:, 1] = 20.0  # predicts foreground everywhere
    target = torch.zeros(2, 1, 1, 1, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 1  # sample 0: both fg voxels; sample 1: none
    target[0, 0, 0, 0, 1] = 1
    per_sample = -soft_dice(logits, target, batch_dice=False).item()  # mean(1, ~0)
    pooled = -soft_dice(logits, target, batch_dice=True).item()  # 2*2 / (2 + 4)
    assert per_sample == pytest.approx(0.5, abs=1e-4)
    assert pooled == pytest.approx(4 / 6, abs=1e-4)


def test_dice_ce_adds_ce_and_negative_dice():
    logits, target = _uniform_two_class()
    loss = build_loss("dice_ce", batch_dice=False)(logits, target, 0.3)
    assert loss.item() == pytest.approx(math.log(2) - 0.5, abs=1e-5)


def test_topk_takes_exactly_the_top_ten_percent_of_the_whole_batch():
    logits = torch.zeros(2, 2, 1, 1, 10)
    target = torch.zeros(2, 1, 1, 1, 10, dtype=torch.long)
    values = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    logits[:, 1, 0, 0] = values  # CE_j = log(1 + e^v_j) for target 0
    # 10 % of 20 voxels = 2: both largest losses lie in sample 1 (v = 18, 19)
    expected = (math.log1p(math.exp(18)) + math.log1p(math.exp(19))) / 2
    assert topk_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_topk_is_topk_plus_dice():
    logits, target = _uniform_two_class()
    loss = build_loss("dice_topk", batch_dice=False)(logits, target, 0.0)
    assert loss.item() == pytest.approx(math.log(2) - 0.5, abs=1e-5)  # all CEs equal ln 2


@pytest.mark.parametrize(
    "progress, weights",
    [(0.0, (2, 0)), (0.5, (2, 0)), (0.625, (1, 1)), (0.75, (0, 2)), (1.0, (0, 2))],
)
def test_ce_to_dice_schedule(progress, weights):
    assert ce_to_dice_weights(progress) == pytest.approx(weights)


def test_ce_to_dice_loss_follows_the_weights():
    logits, target = _uniform_two_class()
    loss = LOSSES["ce_to_dice"](False)
    ce = cross_entropy(logits, target).item()
    dice = soft_dice(logits, target, False).item()
    assert loss(logits, target, 0.1).item() == pytest.approx(2 * ce)
    assert loss(logits, target, 0.625).item() == pytest.approx(ce + dice)
    assert loss(logits, target, 0.9).item() == pytest.approx(2 * dice)


def test_deep_supervision_weights_per_mode():
    assert deep_supervision_weights("nnunet", 5) == pytest.approx(
        [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0]
    )
    assert deep_supervision_weights("nnunet", 1) == [1.0]
    assert deep_supervision_weights("last3", 5) == pytest.approx([0.7, 0.2, 0.1, 0, 0])
    assert deep_supervision_weights("last3", 2) == pytest.approx([0.7 / 0.9, 0.2 / 0.9])
    assert deep_supervision_weights("none", 3) == [1.0, 0.0, 0.0]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: last3, nnunet, none"):
        deep_supervision_weights("top3", 4)
    with pytest.raises(ConfigError, match="train.loss.*dice_ce"):
        build_loss("dice", batch_dice=False)


def test_downsample_target_is_nearest():
    target = torch.arange(4).reshape(1, 1, 1, 1, 4)
    assert downsample_target(target, (1, 1, 2)).flatten().tolist() == [1, 3]


def test_deep_supervision_wrapper_weights_outputs_and_downsamples_targets():
    base = build_loss("dice_ce", batch_dice=False)
    full = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    half = torch.randn(1, 3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    lowest = torch.randn(1, 3, 1, 1, 1)
    target = torch.randint(0, 3, (1, 1, 2, 4, 4), generator=torch.Generator().manual_seed(2))
    wrapped = deep_supervision_loss(base, "nnunet")
    expected = (2 / 3) * base(full, target, 0) + (1 / 3) * base(
        half, downsample_target(target, (1, 2, 2)), 0
    )
    assert wrapped([full, half, lowest], target, 0).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert wrapped(full, target, 0).item() == pytest.approx(base(full, target, 0).item())


# --- region-based loss (dice_bce) -------------------------------------------------------------


def test_dice_bce_at_zero_logits_is_ln2_minus_mean_region_dice():
    target = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32).reshape(1, 2, 1, 1, 4)
    logits = torch.zeros(1, 2, 1, 1, 4)  # sigmoid 0.5 everywhere
    # region 0: 2*1 / (2 + 2) = 1/2; region 1: 2*0.5 / (1 + 2) = 1/3; background is not a channel
    expected = math.log(2) - (1 / 2 + 1 / 3) / 2
    loss = build_loss("dice_bce", batch_dice=False)(logits, target, 0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert sigmoid_soft_dice(logits, target, False).item() == pytest.approx(-5 / 12, rel=1e-4)


def test_dice_bce_perfect_prediction_approaches_minus_one():
    target = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32).reshape(1, 2, 1, 1, 4)
    logits = (target * 2 - 1) * 50
    assert build_loss("dice_bce", False)(logits, target, 0.0).item() == pytest.approx(-1, abs=1e-4)
    assert "dice_bce" in REGION_LOSSES and "dice_ce" not in REGION_LOSSES


def test_dice_bce_batch_dice_pools_regions_over_the_batch():
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(2, 1, 1, 1, 2)
    logits = torch.zeros(2, 1, 1, 1, 2)
    # pooled: 2*1 / (2 + 2) = 1/2; per sample: 2*1 / (2 + 1) = 2/3 and 0 / (0 + 1) = 0
    assert sigmoid_soft_dice(logits, target, True).item() == pytest.approx(-0.5, rel=1e-4)
    assert sigmoid_soft_dice(logits, target, False).item() == pytest.approx(-1 / 3, rel=1e-4)


def test_dice_bce_with_deep_supervision_downsamples_region_masks():
    base = build_loss("dice_bce", batch_dice=False)
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(1, 2, 2, 4, 4, generator=gen)  # (B, R, Z, Y, X)
    half = torch.randn(1, 2, 1, 2, 2, generator=gen)
    target = (torch.rand(1, 2, 2, 4, 4, generator=gen) > 0.5).float()  # (B, R, Z, Y, X)
    wrapped = deep_supervision_loss(base, "last3")
    half_target = target[:, :, 1::2, 1::2, 1::2]  # nearest-exact picks the odd voxels
    expected = (0.7 * base(full, target, 0) + 0.2 * base(half, half_target, 0)) / 0.9
    assert wrapped([full, half], target, 0).item() == pytest.approx(expected.item(), rel=1e-6)
