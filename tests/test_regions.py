import numpy as np
import pytest
import torch

from ablate.errors import ConfigError
from ablate.plan import ChannelNormalization, Plan
from ablate.regions import (
    check_regions,
    default_region_order,
    labels_to_regions,
    network_plan,
    regions_from_json,
    regions_to_json,
    regions_to_labels,
    training_regions,
)

KITS = {"kidney": (1, 2), "tumor": (2,)}
KITS23 = {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}


def test_labels_to_regions_numpy_unbatched():
    seg = np.array([0, 1, 2, -1], dtype=np.int8).reshape(1, 1, 4)  # (Z, Y, X)
    masks = labels_to_regions(seg, KITS)  # (R, Z, Y, X)
    assert masks.shape == (2, 1, 1, 4) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks[0, 0, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(masks[1, 0, 0], [0, 0, 1, 0])


def test_labels_to_regions_torch_batched():
    seg = torch.tensor([[0, 1, 2], [2, 2, 0]]).reshape(2, 1, 1, 1, 3)  # (B, 1, Z, Y, X)
    masks = labels_to_regions(seg, KITS)
    assert masks.shape == (2, 2, 1, 1, 3) and masks.dtype == torch.float32
    assert masks[0, 0].flatten().tolist() == [0, 1, 1]
    assert masks[1, 1].flatten().tolist() == [1, 1, 0]


def test_default_order_matches_nnunet_regions_class_order():
    assert default_region_order(KITS) == (1, 2)
    assert default_region_order(KITS23) == (1, 3, 2)  # Dataset220_KiTS2023's order


def test_default_order_rejects_ambiguous_regions():
    with pytest.raises(ConfigError, match="cannot infer"):
        default_region_order({"tumor": (2,), "kidney": (1, 2)})  # innermost first


def test_regions_to_labels_paints_nested_regions_in_order():
    probs = np.array([[0.9, 0.9, 0.2, 0.5], [0.1, 0.7, 0.9, 0.9]]).reshape(2, 1, 1, 4)
    labels = regions_to_labels(probs, KITS)
    # strict > 0.5; tumour painted after kidney, even where kidney says no (nnU-Net's rule)
    np.testing.assert_array_equal(labels[0, 0], [1, 2, 2, 2])
    assert labels.dtype == np.uint8


def test_round_trip_labels_regions_labels():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 4, size=(3, 4, 5))
    masks = labels_to_regions(seg, KITS23)
    np.testing.assert_array_equal(regions_to_labels(masks, KITS23), seg)


def test_explicit_order_and_mismatch():
    probs = np.ones((2, 1, 1, 1))
    assert regions_to_labels(probs, KITS, order=(2, 1))[0, 0, 0] == 1
    with pytest.raises(ConfigError, match="must be equal"):
        regions_to_labels(np.ones((3, 1, 1, 1)), KITS)


def test_check_regions_rejects_background_and_empty():
    with pytest.raises(ConfigError, match="train.regions.bad"):
        check_regions({"bad": (0, 1)})
    with pytest.raises(ConfigError, match="train.regions.none"):
        check_regions({"none": ()})


def test_training_regions_checks_the_loss():
    assert training_regions(None, "dice_ce") is None
    assert training_regions({"kidney": [1, 2]}, "dice_bce") == {"kidney": (1, 2)}
    with pytest.raises(ConfigError, match="needs one of: dice_bce"):
        training_regions(KITS, "dice_ce")
    with pytest.raises(ConfigError, match="needs train.regions"):
        training_regions(None, "dice_bce")


def test_network_plan_and_json_keep_order():
    plan = Plan(
        (1.0, 1.0, 1.0),
        (4, 4, 4),
        2,
        [(1, 1, 1)],
        [(3, 3, 3)],
        [4],
        1,
        4,
        [ChannelNormalization("zscore")],
        (4, 4, 4),
        False,
    )
    assert network_plan(plan, KITS23).num_classes == 3 and network_plan(plan, None) is plan
    text = regions_to_json(KITS23)
    assert list(regions_from_json(text)) == ["kidney", "masses", "tumor"]
    assert regions_from_json(text) == KITS23 and regions_from_json(regions_to_json(None)) is None
