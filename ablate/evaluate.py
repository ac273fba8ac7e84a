"""Per-case segmentation metrics: a functional core over one surface-distance computation.

For each (case, target) `ablate.surface.compute_surface_distances` runs ONCE (DeepMind
surface-distance's surfels, areas and distances, value for value, 10x faster; it crops to the
masks' joint bounding box itself), and NSD, HD95 and ASSD are derived from its result with
surface-distance's own functions; DSC, RVD and volumes come from voxel counts.

Definitions (all distances in mm, surfaces are DeepMind's surfels with area weights):
- dsc = 2 |R & P| / (|R| + |P|)
- nsd = surface Dice at `tolerance_mm` (compute_surface_dice_at_tolerance)
- hd95 = compute_robust_hausdorff(.., 95): max of the two directed 95th percentiles
- assd = mean of the two directed average surface distances
- rvd = (|P| - |R|) / |R| (relative volume difference, signed)
- vol_ref_ml, vol_pred_ml = voxel count * voxel volume / 1000
- empty = 0 (none empty), 1 (reference empty), 2 (prediction empty), 3 (both empty)

Empty-mask policy (Metrics Reloaded): both empty -> dsc 1, nsd 1, hd95/assd NaN, rvd NaN;
reference empty only -> dsc 0, nsd 0, hd95/assd NaN, rvd NaN; prediction empty only -> dsc 0,
nsd 0, hd95/assd NaN, rvd -1. The `empty` row flags these cases so NaN distances can be told
apart from failures. nnU-Net instead reports Dice NaN for both-empty and drops it from means.

Ignore label (nnU-Net's `ignore`): voxels where the reference holds it are left out of both masks
(as nnU-Net's compute_metrics counts TP/FP/FN only outside them), so nothing predicted there
counts; `ignore` itself is never a target.

Against MONAI (tests/test_evaluate.py): `compute_dice` equals dsc when neither mask is empty;
`compute_surface_dice(use_subvoxels=True)` equals nsd. MONAI's default NSD (use_subvoxels=False)
counts boundary voxels instead of surfel areas and therefore differs; MONAI returns NaN for
both-empty NSD and HD where we return 1 and NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import surface_distance

from ablate.errors import ConfigError, DataError
from ablate.imageio import Geometry, read_image
from ablate.surface import compute_surface_distances

METRICS = ("dsc", "nsd", "hd95", "assd", "rvd", "vol_ref_ml", "vol_pred_ml", "empty")


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the nonzero bounding box grown by `margin` voxels (clipped); None if empty."""
    boxes = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        start, stop = hits[0] - margin, hits[-1] + 1 + margin
        boxes.append(slice(int(max(start, 0)), int(min(stop, mask.shape[axis]))))
    return tuple(boxes)


def surface_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing_mm) -> dict:
    """DeepMind's surface distances of two boolean masks (surface-distance's dict and values)."""
    return compute_surface_distances(mask_ref, mask_pred, spacing_mm)


def dice(n_overlap: int, n_ref: int, n_pred: int) -> float:
    """DSC from counts; 1 when both masks are empty."""
    if n_ref + n_pred == 0:
        return 1.0
    return 2.0 * n_overlap / (n_ref + n_pred)


def relative_volume_difference(n_ref: int, n_pred: int) -> float:
    """(pred - ref) / ref; NaN when the reference is empty."""
    return float("nan") if n_ref == 0 else (n_pred - n_ref) / n_ref


def nsd(distances: dict, tolerance_mm: float) -> float:
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def hd95(distances: dict) -> float:
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def assd(distances: dict) -> float:
    ref_to_pred, pred_to_ref = surface_distance.compute_average_surface_distance(distances)
    return float((ref_to_pred + pred_to_ref) / 2.0)


def empty_flag(n_ref: int, n_pred: int) -> int:
    return int(n_ref == 0) + 2 * int(n_pred == 0)


def mask_metrics(
    mask_ref: np.ndarray, mask_pred: np.ndarray, spacing_mm, tolerance_mm: float
) -> dict[str, float]:
    """All metrics of one target from its boolean masks (see the module docstring)."""
    n_ref, n_pred = int(mask_ref.sum()), int(mask_pred.sum())
    n_overlap = int(np.logical_and(mask_ref, mask_pred).sum())
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    flag = empty_flag(n_ref, n_pred)
    values = {
        "dsc": dice(n_overlap, n_ref, n_pred),
        "nsd": 1.0 if flag == 3 else 0.0,
        "hd95": float("nan"),
        "assd": float("nan"),
        "rvd": relative_volume_difference(n_ref, n_pred),
        "vol_ref_ml": n_ref * voxel_ml,
        "vol_pred_ml": n_pred * voxel_ml,
        "empty": float(flag),
    }
    if flag == 0:
        distances = surface_distances(mask_ref, mask_pred, spacing_mm)
        values.update(nsd=nsd(distances, tolerance_mm), hd95=hd95(distances), assd=assd(distances))
    return values


def _tolerance(tolerance_mm: dict[str, float] | float, target: str) -> float:
    if not isinstance(tolerance_mm, dict):
        return float(tolerance_mm)
    if target not in tolerance_mm:
        raise ConfigError(f"eval.nsd_tolerance_mm: no tolerance for target '{target}'; add one")
    return float(tolerance_mm[target])


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float] | float,
    ignore_label: int | None = None,
) -> list[dict]:
    """Rows {"target", "metric", "value"} for every target (a target is a union of labels).

    pred and ref are (Z, Y, X) label maps on the same grid; spacing_mm is (z, y, x). Voxels where
    ref == ignore_label are scored in no target (see the module docstring).
    """
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if ignore_label is not None and any(ignore_label in labels for labels in targets.values()):
        raise ConfigError(
            f"evaluation.targets: the ignore label {ignore_label} is never scored; "
            "remove it from the targets"
        )
    if ignore_label is not None:
        ignored = ref == ignore_label
        pred, ref = np.where(ignored, 0, pred), np.where(ignored, 0, ref)
    if all(0 not in labels for labels in targets.values()):
        # no target holds background: crop once to the joint foreground (big speed-up on CT)
        box = bounding_box((pred != 0) | (ref != 0))
        if box is not None:
            pred, ref = pred[box], ref[box]
    rows = []
    for name, labels in targets.items():
        mask_pred, mask_ref = np.isin(pred, labels), np.isin(ref, labels)
        values = mask_metrics(mask_ref, mask_pred, spacing_mm, _tolerance(tolerance_mm, name))
        rows += [{"target": name, "metric": m, "value": v} for m, v in values.items()]
    return rows


def _check_same_grid(
    pred_path: Path,
    ref_path: Path,
    pred: np.ndarray,
    ref: np.ndarray,
    pred_geo: Geometry,
    ref_geo: Geometry,
) -> None:
    checks = [
        ("shape", pred.shape, ref.shape, pred.shape == ref.shape),
        (
            "spacing",
            pred_geo.spacing_mm,
            ref_geo.spacing_mm,
            np.allclose(pred_geo.spacing_mm, ref_geo.spacing_mm, rtol=0, atol=1e-4),
        ),
        (
            "origin",
            pred_geo.origin,
            ref_geo.origin,
            np.allclose(pred_geo.origin, ref_geo.origin, rtol=0, atol=1e-3),
        ),
        (
            "direction",
            pred_geo.direction,
            ref_geo.direction,
            np.allclose(pred_geo.direction, ref_geo.direction, rtol=0, atol=1e-4),
        ),
    ]
    for field, got, want, ok in checks:
        if not ok:
            raise DataError(
                f"{pred_path}: {field} {got} differs from the reference {ref_path} "
                f"({want}); write predictions on the reference grid"
            )


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float] | float,
    file_ending: str = ".nii.gz",
    ignore_label: int | None = None,
) -> pd.DataFrame:
    """Evaluate every reference case in ref_dir against pred_dir -> columns case, target, metric,
    value. Every reference needs a prediction with the same file name and geometry; hidden files
    (macOS ``._*`` copies in MSD's tarballs) are no cases."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    ref_paths = sorted(p for p in ref_dir.glob(f"*{file_ending}") if not p.name.startswith("."))
    if not ref_paths:
        raise DataError(f"{ref_dir}: no reference files ending in {file_ending}")
    missing = [p.name for p in ref_paths if not (pred_dir / p.name).is_file()]
    if missing:
        raise DataError(
            f"{pred_dir / missing[0]}: prediction missing ({len(missing)} of "
            f"{len(ref_paths)} cases); predict every reference case first"
        )
    return evaluate_files(
        [(p.name[: -len(file_ending)], pred_dir / p.name, p) for p in ref_paths],
        targets,
        tolerance_mm,
        ignore_label,
    )


def _common_grid(pred, pred_geo: Geometry, ref, ref_geo: Geometry):
    """pred and ref as they are, or both reoriented losslessly to the identity direction when
    they lie on two axis orders/flips of the same voxels (a KiTS19 submission in the native
    slices-first grid against the reoriented reference, or the other way round)."""
    from ablate.data.orient import reorient_to_identity

    if pred.shape == ref.shape and np.allclose(pred_geo.direction, ref_geo.direction, atol=1e-4):
        return pred, pred_geo, ref, ref_geo
    try:
        return (*reorient_to_identity(pred, pred_geo), *reorient_to_identity(ref, ref_geo))
    except DataError:  # oblique: _check_same_grid names the difference
        return pred, pred_geo, ref, ref_geo


def evaluate_files(
    pairs: list[tuple[str, Path, Path]],
    targets: dict[str, tuple[int, ...]],
    tolerance_mm: dict[str, float] | float,
    ignore_label: int | None = None,
) -> pd.DataFrame:
    """Evaluate (case id, prediction file, reference file) pairs on the same grid (up to a
    lossless reorientation) -> columns case, target, metric, value (voxels of the reference's
    ignore label are not scored)."""
    rows = []
    for case, pred_path, ref_path in pairs:
        if not Path(pred_path).is_file():
            raise DataError(f"{pred_path}: prediction missing for case {case}; predict it first")
        ref, ref_geo = read_image(ref_path)
        pred, pred_geo = read_image(pred_path)
        pred, pred_geo, ref, ref_geo = _common_grid(pred, pred_geo, ref, ref_geo)
        _check_same_grid(pred_path, ref_path, pred, ref, pred_geo, ref_geo)
        for row in evaluate_case(
            pred, ref, ref_geo.spacing_mm, targets, tolerance_mm, ignore_label
        ):
            rows.append({"case": case, **row})
    return pd.DataFrame(rows, columns=["case", "target", "metric", "value"])


def evaluate_dataset(
    pred_dir: str | Path, dataset, tolerance_mm: dict[str, float] | float
) -> pd.DataFrame:
    """Evaluate predictions of every labelled case of a `Dataset` read as downloaded (its
    targets and ignore label): `<case><file ending>` or `<case>.nii.gz` in pred_dir, or KiTS19's
    submission name `prediction_NNNNN.nii.gz`, on the grid ablate read or the native one."""
    pred_dir = Path(pred_dir)
    pairs = []
    for case in (c for c in dataset.cases if c.label is not None):
        names = (
            f"{case.case_id}{dataset.file_ending}",
            f"{case.case_id}.nii.gz",
            f"prediction_{case.case_id.removeprefix('case_')}.nii.gz",
        )
        found = next((pred_dir / n for n in names if (pred_dir / n).is_file()), pred_dir / names[0])
        pairs.append((case.case_id, found, case.label))
    if not pairs:
        raise DataError(f"{dataset.root}: no labelled cases to score against")
    return evaluate_files(pairs, dataset.targets(), tolerance_mm, dataset.ignore_label)
