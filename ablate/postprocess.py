"""Largest-connected-component postprocessing, decided on cross-validation predictions (nnU-Net).

Follows `nnunetv2/postprocessing/remove_connected_components.py`:

- components are found with full connectivity (26-neighbourhood in 3D), as nnU-Net's
  `acvl_utils.remove_all_but_largest_component` calls `skimage.measure.label(connectivity=None)`;
  NOT scipy.ndimage.label's default (6-neighbourhood). Tied largest components are all kept.
- `decide_postprocessing` first tries "keep the largest foreground component" on the union of all
  targets (accepted iff the foreground-mean Dice improves and no target's mean Dice gets worse),
  then, when there is more than one target, each target in order (accepted iff that target's mean
  Dice improves), each step applied on top of the accepted ones. Comparisons are strict, as
  nnU-Net's. Removed voxels become background 0.
- Dice per case is NaN when prediction and reference are both empty; means are nanmeans over
  cases, and the foreground mean is the plain mean of the target means (nnU-Net's summary.json).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

FOREGROUND_MEAN = "foreground_mean"
UNION_STEP = "foreground_union"  # the trial name of the first step


@dataclass(frozen=True)
class PostprocessingDecision:
    """Which largest-component steps to apply, with the mean Dice they were decided on.

    `steps` are applied in order; each is the tuple of label values whose union is reduced to its
    largest component. `trials` records every tried step: name, labels, accepted, before, after.
    """

    steps: tuple[tuple[int, ...], ...] = ()
    before: dict[str, float] = field(default_factory=dict)  # mean Dice without postprocessing
    after: dict[str, float] = field(default_factory=dict)  # mean Dice with `steps` applied
    trials: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping) -> PostprocessingDecision:
        return cls(
            steps=tuple(tuple(int(v) for v in s) for s in obj.get("steps", ())),
            before={k: float(v) for k, v in obj.get("before", {}).items()},
            after={k: float(v) for k, v in obj.get("after", {}).items()},
            trials=tuple(dict(t) for t in obj.get("trials", ())),
        )


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component(s) of a boolean mask (all of them on a size tie)."""
    structure = np.ones((3,) * mask.ndim, dtype=bool)  # full connectivity, as skimage's default
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())[1:]  # (count,) voxels per component
    keep = np.flatnonzero(sizes == sizes.max()) + 1
    return np.isin(components, keep)


def keep_largest_component(labels: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Set to 0 every voxel of `label_values` outside the largest component of their union."""
    mask = np.isin(labels, tuple(label_values))
    out = labels.copy()
    out[mask & ~largest_component_mask(mask)] = 0
    return out


def apply_postprocessing(labels: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """Apply the decision's accepted steps, in order, to one (Z, Y, X) label map."""
    for label_values in decision.steps:
        labels = keep_largest_component(labels, label_values)
    return labels


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (nnU-Net)."""
    tp = np.count_nonzero(pred & ref)
    denominator = np.count_nonzero(pred) + np.count_nonzero(ref)
    return float("nan") if denominator == 0 else 2 * tp / denominator


def mean_dice(
    cases: Sequence[tuple[np.ndarray, np.ndarray]], targets: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Per-target nanmean Dice over (pred, ref) label maps, plus the foreground mean."""
    return _nanmeans(
        {
            name: [dice(np.isin(p, values), np.isin(r, values)) for p, r in cases]
            for name, values in targets.items()
        }
    )


def decide_postprocessing(
    cases: Sequence[tuple], targets: Mapping[str, Sequence[int]], ignore_label: int | None = None
) -> PostprocessingDecision:
    """nnU-Net's determine_postprocessing on cross-validation predictions.

    `cases` holds (pred_labels, ref_labels[, spacing_mm]) per case (spacing is accepted for the
    evaluate-stage tuple shape; Dice does not need it). `targets` maps a name to the label values
    it unites (labels or regions), in dataset order. `cases` is read one case at a time, once per
    candidate step, so a lazy sequence that loads each case from disk keeps one case in memory.
    Reference voxels holding `ignore_label` count in no Dice (nnU-Net's ignore mask).
    """
    targets = {name: tuple(int(v) for v in values) for name, values in targets.items()}

    def means_after(steps: tuple[tuple[int, ...], ...]) -> dict[str, float]:
        per_target: dict[str, list[float]] = {name: [] for name in targets}
        for case in cases:
            pred, ref = np.asarray(case[0]), np.asarray(case[1])
            for values in steps:
                pred = keep_largest_component(pred, values)
            scored = True if ignore_label is None else ref != ignore_label
            for name, values in targets.items():
                per_target[name].append(
                    dice(np.isin(pred, values) & scored, np.isin(ref, values) & scored)
                )
        return _nanmeans(per_target)

    baseline = scores = means_after(())
    steps: list[tuple[int, ...]] = []
    trials = []
    foreground = tuple(sorted({v for values in targets.values() for v in values}))
    candidates: list[tuple[str | None, tuple[int, ...]]] = [(None, foreground)]
    if len(targets) > 1:
        candidates += list(targets.items())
    for target, values in candidates:
        after = means_after((*steps, values))
        accepted = _improves(target, scores, after, targets)
        trials.append(
            {
                "name": target or UNION_STEP,
                "labels": list(values),
                "accepted": accepted,
                "before": dict(scores),
                "after": dict(after),
            }
        )
        if accepted:
            steps.append(values)
            scores = after
    return PostprocessingDecision(tuple(steps), baseline, scores, tuple(trials))


def training_targets(
    labels: Mapping[str, object], regions: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    """What nnU-Net decides postprocessing on: the training regions, in their order, when the
    model is region-based, else each foreground label (the label manager's foreground)."""
    if regions:
        return {name: tuple(int(v) for v in values) for name, values in regions.items()}
    values = sorted({int(v) for v in labels.values() if isinstance(v, int) and int(v) > 0})
    return {next(n for n, v in labels.items() if v == value): (value,) for value in values}


def _nanmeans(per_target: Mapping[str, list[float]]) -> dict[str, float]:
    means = {}
    for name, values in per_target.items():
        finite = [d for d in values if not np.isnan(d)]
        means[name] = float(np.mean(finite)) if finite else float("nan")
    means[FOREGROUND_MEAN] = float(np.mean([means[n] for n in per_target]))
    return means


def _improves(target: str | None, before: dict, after: dict, targets: Mapping) -> bool:
    """nnU-Net's acceptance: strict improvement; for the union step (None), no target worse."""
    if target is not None:
        return after[target] > before[target]
    if not after[FOREGROUND_MEAN] > before[FOREGROUND_MEAN]:
        return False
    return not any(after[t] < before[t] for t in targets)
