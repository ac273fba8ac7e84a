import json
import math

import numpy as np
import pytest

from ablate.postprocess import (
    PostprocessingDecision,
    apply_postprocessing,
    decide_postprocessing,
    dice,
    keep_largest_component,
    largest_component_mask,
    mean_dice,
)


def cube_case():
    """ref: a 2x2x2 cube of label 1; pred: the cube plus a spurious voxel far away."""
    ref = np.zeros((4, 6, 8), dtype=np.uint8)
    ref[0:2, 0:2, 0:2] = 1
    pred = ref.copy()
    pred[3, 5, 7] = 1
    return pred, ref


def test_connectivity_is_26_as_nnunet():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touch at a corner only: one 26-component of size 2
    mask[3, 3, 3] = True
    kept = largest_component_mask(mask)
    assert kept[0, 0, 0] and kept[1, 1, 1] and not kept[3, 3, 3]


def test_tied_largest_components_are_all_kept():
    mask = np.zeros((1, 1, 5), dtype=bool)
    mask[0, 0, [0, 4]] = True
    np.testing.assert_array_equal(largest_component_mask(mask), mask)


def test_keep_largest_component_touches_only_the_given_labels():
    labels = np.array([1, 1, 0, 1, 0, 2], dtype=np.uint8).reshape(1, 1, 6)
    np.testing.assert_array_equal(keep_largest_component(labels, (1,))[0, 0], [1, 1, 0, 0, 0, 2])
    # the union of 1 and 2: components {0,1} (size 2), {3}, {5} -> only the first stays
    np.testing.assert_array_equal(keep_largest_component(labels, (1, 2))[0, 0], [1, 1, 0, 0, 0, 0])
    assert labels[0, 0, 3] == 1  # the input is not modified


def test_dice_and_nan_for_two_empty_masks():
    a = np.array([True, True, False])
    assert dice(a, np.array([True, False, False])) == pytest.approx(2 / 3)
    assert math.isnan(dice(~np.ones(3, bool), ~np.ones(3, bool)))


def test_spurious_blob_removal_is_accepted():
    pred, ref = cube_case()
    decision = decide_postprocessing([(pred, ref, (2.0, 1.0, 1.0))], {"organ": (1,)})
    assert decision.steps == ((1,),)
    assert decision.before["organ"] == pytest.approx(16 / 17)
    assert decision.after == {"organ": 1.0, "foreground_mean": 1.0}
    assert len(decision.trials) == 1  # one target: no per-target steps, as nnU-Net
    np.testing.assert_array_equal(apply_postprocessing(pred, decision), ref)


def test_removing_a_true_second_component_is_rejected():
    _, ref = cube_case()
    ref[3, 4:6, 7] = 1  # a real second component of 2 voxels
    decision = decide_postprocessing([(ref.copy(), ref)], {"organ": (1,)})
    assert decision.steps == ()
    assert decision.trials[0]["after"]["organ"] == pytest.approx(16 / 18)
    assert decision.after == decision.before == {"organ": 1.0, "foreground_mean": 1.0}


def two_label_case():
    """Label 1: a 3x3x3 cube + (pred only) a spurious 8-voxel blob; label 2: 4 voxels touching
    the cube plus one true separate voxel."""
    ref = np.zeros((5, 12, 12), dtype=np.uint8)
    ref[0:3, 0:3, 0:3] = 1
    ref[0, 0, 3:7] = 2
    ref[4, 11, 11] = 2
    pred = ref.copy()
    pred[0:2, 0:2, 9:11] = 1
    return pred, ref


def test_union_step_rejected_when_one_target_gets_worse_then_per_target_steps():
    pred, ref = two_label_case()
    targets = {"one": (1,), "two": (2,)}
    decision = decide_postprocessing([(pred, ref)], targets)
    union, one, two = decision.trials
    # the union step: label 1 54/62 -> 1, label 2 1 -> 8/9; the mean rises but "two" falls
    assert union["after"]["foreground_mean"] > union["before"]["foreground_mean"]
    assert union["after"]["two"] == pytest.approx(8 / 9)
    assert not union["accepted"]
    assert one["accepted"] and not two["accepted"]
    assert decision.steps == ((1,),)
    assert decision.before["one"] == pytest.approx(54 / 62)
    assert decision.after == {"one": 1.0, "two": 1.0, "foreground_mean": 1.0}


def test_steps_chain_on_accepted_output_and_regions_work():
    pred, ref = two_label_case()
    regions = {"whole": (1, 2), "core": (2,)}
    means = mean_dice([(pred, ref)], regions)
    assert means["whole"] == pytest.approx(2 * 32 / (40 + 32))
    decision = decide_postprocessing([(pred, ref)], regions)
    # union = whole region: removes the spurious blob (+) and the lone label-2 voxel (core -)
    assert [t["accepted"] for t in decision.trials] == [False, True, False]
    assert decision.steps == ((1, 2),)


def test_decision_round_trips_through_json():
    pred, ref = two_label_case()
    decision = decide_postprocessing([(pred, ref)], {"one": (1,), "two": (2,)})
    restored = PostprocessingDecision.from_json(json.loads(json.dumps(decision.to_json())))
    assert restored.steps == decision.steps and restored.after == decision.after
    np.testing.assert_array_equal(
        apply_postprocessing(pred, restored), apply_postprocessing(pred, decision)
    )
