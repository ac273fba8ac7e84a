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
    means = {}
    for name, values in targets.items():
        per_case = [dice(np.isin(p, values), np.isin(r, values)) for p, r in cases]
        finite = [d for d in per_case if not np.isnan(d)]
        means[name] = float(np.mean(finite)) if finite else float("nan")
    means[FOREGROUND_MEAN] = float(np.mean([means[n] for n in targets]))
    return means


def decide_postprocessing(
    cases: Sequence[tuple], targets: Mapping[str, Sequence[int]]
) -> PostprocessingDecision:
    """nnU-Net's determine_postprocessing on cross-validation predictions.

    `cases` holds (pred_labels, ref_labels[, spacing_mm]) per case (spacing is accepted for the
    evaluate-stage tuple shape; Dice does not need it). `targets` maps a name to the label values
    it unites (labels or regions), in dataset order.
    """
    targets = {name: tuple(int(v) for v in values) for name, values in targets.items()}
    current = [(np.asarray(c[0]), np.asarray(c[1])) for c in cases]
    baseline = mean_dice(current, targets)
    steps, trials = [], []
    foreground = tuple(sorted({v for values in targets.values() for v in values}))
    candidates: list[tuple[str | None, tuple[int, ...]]] = [(None, foreground)]
    if len(targets) > 1:
        candidates += list(targets.items())
    scores = baseline
    for target, values in candidates:
        tried = [(keep_largest_component(p, values), r) for p, r in current]
        after = mean_dice(tried, targets)
        accepted = _improves(target, scores, after, targets)
        trials.append(
            {"name": target or UNION_STEP, "labels": list(values), "accepted": accepted,
             "before": dict(scores), "after": dict(after)}
        )
        if accepted:
            steps.append(values)
            current, scores = tried, after
    return PostprocessingDecision(tuple(steps), baseline, scores, tuple(trials))


def _improves(target: str | None, before: dict, after: dict, targets: Mapping) -> bool:
    """nnU-Net's acceptance: strict improvement; for the union step (None), no target worse."""
    if target is not None:
        return after[target] > before[target]
    if not after[FOREGROUND_MEAN] > before[FOREGROUND_MEAN]:
        return False
    return not any(after[t] < before[t] for t in targets)
