"""Evaluation speed on a KiTS-sized case: ablate.evaluate against naive surface-distance calls.

Run: OMP_NUM_THREADS=1 python bench/metrics.py [--slices 64]
The case is 512 x 512 x N (spacing 3 x 0.78 x 0.78 mm) with a kidney-like ellipsoid and a tumour
inside it; the prediction is a shifted, dilated copy. "Naive" calls surface-distance on the full
volume once per distance metric (NSD, HD95, ASSD), as scripts that compute each metric separately
do. Goal: our whole case (all metrics, two targets) well under one naive call per metric.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import surface_distance

from ablate.evaluate import evaluate_case

SPACING_MM = (3.0, 0.78, 0.78)
TARGETS = {"kidney": (1, 2), "tumor": (2,)}


def kits_like_case(slices: int) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.ogrid[:slices, :512, :512]
    cz = slices / 2

    def ellipsoid(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1

    ref = np.zeros((slices, 512, 512), dtype=np.uint8)
    ref[ellipsoid((cz, 260, 150), (slices / 4, 60, 35))] = 1
    ref[ellipsoid((cz + 2, 250, 145), (slices / 10, 20, 18))] = 2
    pred = np.zeros_like(ref)
    pred[ellipsoid((cz + 1, 263, 152), (slices / 4 + 1, 62, 36))] = 1
    pred[ellipsoid((cz + 2, 252, 147), (slices / 10, 22, 17))] = 2
    return pred, ref


def naive(pred: np.ndarray, ref: np.ndarray, labels: tuple[int, ...]) -> None:
    m_ref, m_pred = np.isin(ref, labels), np.isin(pred, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        d = surface_distance.compute_surface_distances(m_ref, m_pred, list(SPACING_MM))
        surface_distance.compute_surface_dice_at_tolerance(d, 2.0)
        d = surface_distance.compute_surface_distances(m_ref, m_pred, list(SPACING_MM))
        surface_distance.compute_robust_hausdorff(d, 95)
        d = surface_distance.compute_surface_distances(m_ref, m_pred, list(SPACING_MM))
        surface_distance.compute_average_surface_distance(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pred, ref = kits_like_case(args.slices)
    tolerances = dict.fromkeys(TARGETS, 2.0)

    start = time.perf_counter()
    for _ in range(args.repeats):
        evaluate_case(pred, ref, SPACING_MM, TARGETS, tolerances)
    ours = (time.perf_counter() - start) / args.repeats

    start = time.perf_counter()
    for labels in TARGETS.values():
        naive(pred, ref, labels)
    naive_total = time.perf_counter() - start
    per_call = naive_total / (3 * len(TARGETS))
    print(f"case 512x512x{args.slices}, targets {list(TARGETS)}")
    print(f"ours (all 8 metrics, all targets): {ours:.3f} s/case")
    print(f"naive surface-distance (3 calls per target): {naive_total:.3f} s/case, "
          f"{per_call:.3f} s per call")
    print(f"ratio ours / naive: {ours / naive_total:.3f};  ours / one naive call per target: "
          f"{ours / (per_call * len(TARGETS)):.3f}  (goal well under 1)")


if __name__ == "__main__":
    main()
