"""Surface distances on a KiTS-sized case: ablate.surface against DeepMind surface-distance.

Run: OMP_NUM_THREADS=1 python bench/metrics.py [--slices 150] [--repeats 5] [--pairs 300]

The case is 512 x 512 x N voxels at (3, 0.8, 0.8) mm (z, y, x): two kidney-like ellipsoids, a
tumour in one of them and, in the prediction, perturbed surfaces (shifted, wobbling radii) and a
small false-positive tumour blob 4 cm away. Per target (kidney = labels 1+2, tumour = 2) both
sides get the full-size boolean masks and compute the distances plus NSD (2 mm), HD95 and ASSD
(surface-distance's own metric functions on each result). The two are timed interleaved, call by
call, so load from other jobs hits both alike; a tiny-mask row (16^3 arrays) checks that the
engine is not slower where there is nothing to gain. Every result of the timed calls, plus
random and adversarial pairs (noise, shifted boxes on the border, single voxels, far blobs,
empty masks), is compared value for value: the script prints the number of compared values and
of mismatches (exact equality of surfels, areas, distances; metrics to 1e-9 relative).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import surface_distance as sd

from ablate.evaluate import evaluate_case
from ablate.surface import compute_surface_distances

SPACING_MM = (3.0, 0.8, 0.8)
TARGETS = {"kidney": (1, 2), "tumour": (2,)}
KEYS = ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")
np.Inf = np.inf  # surface-distance 0.1 still spells it so (NumPy 2 removed it): one-empty pairs


def ellipsoid(out: np.ndarray, centre_mm, radii_mm, label: int, wobble: float = 0.0) -> None:
    """Paint an ellipsoid (with optionally wobbling radius) into out, evaluated on its box only."""
    lo = [
        max(int((c - 1.3 * r) / s), 0)
        for c, r, s in zip(centre_mm, radii_mm, SPACING_MM, strict=True)
    ]
    hi = [
        min(int((c + 1.3 * r) / s) + 1, n)
        for c, r, s, n in zip(centre_mm, radii_mm, SPACING_MM, out.shape, strict=True)
    ]
    z, y, x = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    dz, dy, dx = (
        (g * s - c) / r
        for g, s, c, r in zip((z, y, x), SPACING_MM, centre_mm, radii_mm, strict=True)
    )
    q = dz**2 + dy**2 + dx**2
    if wobble:
        q = q * (1 + wobble * np.sin(3 * np.arctan2(dy, dx)) * np.cos(2 * dz))
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))][q <= 1] = label


def kits_like_case(slices: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((slices, 512, 512), dtype=np.uint8)
    pred = np.zeros_like(ref)
    zm = slices * SPACING_MM[0] / 2
    for xm in (130.0, 280.0):
        ellipsoid(ref, (zm, 200, xm), (55, 30, 28), 1)
        ellipsoid(pred, (zm + 2, 201, xm + 1), (56, 30, 29), 1, wobble=0.08)
    ellipsoid(ref, (zm + 10, 215, 145), (18, 15, 14), 2)
    ellipsoid(pred, (zm + 12, 216, 146), (17, 16, 14), 2, wobble=0.1)
    ellipsoid(pred, (zm - 40, 260, 300), (6, 5, 5), 2)  # a false-positive blob
    return pred, ref


def derived(d: dict) -> list[float]:
    """What ablate.evaluate derives from one result: NSD at 2 mm, HD95, ASSD."""
    if d["surfel_areas_gt"].size == 0 or d["surfel_areas_pred"].size == 0:
        return []
    a, b = sd.compute_average_surface_distance(d)
    return [
        float(sd.compute_surface_dice_at_tolerance(d, 2.0)),
        float(sd.compute_robust_hausdorff(d, 95)),
        float((a + b) / 2),
    ]


def mismatches(want: dict, got: dict) -> tuple[int, int]:
    """(values compared, values that differ) for one pair of results."""
    compared = bad = 0
    for key in KEYS:
        compared += want[key].size
        if want[key].shape != got[key].shape:
            bad += want[key].size
        else:
            bad += int(np.count_nonzero(want[key] != got[key]))
    w, g = derived(want), derived(got)
    compared += len(w)
    bad += sum(not np.isclose(a, b, rtol=1e-9, atol=0) for a, b in zip(w, g, strict=True))
    return compared, bad


def reference(a, b, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return sd.compute_surface_distances(a, b, list(spacing))


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    derived(result)
    return time.perf_counter() - start, result


def random_pairs(n: int, seed: int = 0):
    """Random and adversarial pairs of 8-48 voxels per axis and their spacing."""
    rng = np.random.default_rng(seed)
    spacings = [(3.0, 0.8, 0.8), (1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (0.7, 1.3, 2.9)]
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers(8, 48, 3))
        kind = i % 5
        a = rng.random(shape) < rng.uniform(0.05, 0.6)
        if kind == 0:
            b = a ^ (rng.random(shape) < 0.03)
        elif kind == 1:  # boxes on the border, one shifted
            a = np.zeros(shape, bool)
            a[: rng.integers(1, shape[0] + 1), rng.integers(0, shape[1]) :] = True
            b = np.roll(a, rng.integers(-2, 3, 3), axis=(0, 1, 2))
        elif kind == 2:  # single voxels and far blobs
            a, b = np.zeros(shape, bool), np.zeros(shape, bool)
            for m in (a, b):
                for _ in range(rng.integers(1, 4)):
                    c = [rng.integers(0, s) for s in shape]
                    r = rng.integers(0, 3, 3)
                    m[
                        tuple(
                            slice(max(ci - ri, 0), ci + ri + 1) for ci, ri in zip(c, r, strict=True)
                        )
                    ] = True
        elif kind == 3:  # one or both empty
            b = np.zeros(shape, bool)
            a = a if rng.random() < 0.6 else np.zeros(shape, bool)
            if rng.random() < 0.5:
                a, b = b, a
        else:
            b = rng.random(shape) < rng.uniform(0.05, 0.6)
        yield a, b, spacings[i % len(spacings)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=300, help="random pairs compared")
    args = parser.parse_args()
    print(
        f"{platform.node()} {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}, load before: {os.getloadavg()}"
    )
    pred, ref = kits_like_case(args.slices)
    masks = {n: (np.isin(ref, labels), np.isin(pred, labels)) for n, labels in TARGETS.items()}
    # not part of the case: the prediction's right kidney against the reference's left one
    # (every surfel far from the other mask, the engine's least favourable case)
    left, right = masks["kidney"][0].copy(), masks["kidney"][1].copy()
    left[:, :, 205:], right[:, :, :205] = False, False
    masks["other side"] = (left, right)
    times = {(n, side): [] for n in masks for side in ("surface-distance", "ablate")}
    compared = bad = 0
    surfels = {}
    for _ in range(args.repeats):
        for name, (m_ref, m_pred) in masks.items():
            t_sd, want = timed(reference, m_ref, m_pred, SPACING_MM)
            t_ab, got = timed(compute_surface_distances, m_ref, m_pred, SPACING_MM)
            times[name, "surface-distance"].append(t_sd)
            times[name, "ablate"].append(t_ab)
            c, b = mismatches(want, got)
            compared, bad = compared + c, bad + b
            surfels[name] = (got["surfel_areas_gt"].size, got["surfel_areas_pred"].size)
    print(
        f"\ncase 512x512x{args.slices} at {SPACING_MM} mm, median of {args.repeats} "
        "interleaved runs, distances + NSD/HD95/ASSD per target:"
    )
    total = {"surface-distance": 0.0, "ablate": 0.0}
    for name in masks:
        med = {s: float(np.median(times[name, s])) for s in total}
        for s in total:
            total[s] += med[s] if name in TARGETS else 0.0
        print(
            f"  {name:10s} surface-distance {med['surface-distance']:.4f} s  ablate "
            f"{med['ablate']:.4f} s  ratio {med['surface-distance'] / med['ablate']:.1f}x  "
            f"(surfels ref/pred {surfels[name][0]}/{surfels[name][1]})"
        )
    print(
        f"  case (kidney + tumour) surface-distance {total['surface-distance']:.4f} s  ablate "
        f"{total['ablate']:.4f} s  RATIO {total['surface-distance'] / total['ablate']:.1f}x "
        "(goal >= 10)"
    )

    tolerances = dict.fromkeys(TARGETS, 2.0)
    start = time.perf_counter()
    evaluate_case(pred, ref, SPACING_MM, TARGETS, tolerances)
    print(
        f"  ablate.evaluate.evaluate_case, whole case (8 metrics x 2 targets): "
        f"{time.perf_counter() - start:.3f} s"
    )

    tiny = {"surface-distance": [], "ablate": []}
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, b = rng.random((16, 16, 16)) < 0.3, rng.random((16, 16, 16)) < 0.3
        for side, fn in (("surface-distance", reference), ("ablate", compute_surface_distances)):
            t, result = timed(fn, a, b, (2.0, 1.0, 0.5))
            tiny[side].append(t)
        c, b_ = mismatches(reference(a, b, (2.0, 1.0, 0.5)), result)
        compared, bad = compared + c, bad + b_
    med = {s: float(np.median(v)) * 1000 for s, v in tiny.items()}
    print(
        f"  tiny 16^3 noise pairs: surface-distance {med['surface-distance']:.2f} ms  ablate "
        f"{med['ablate']:.2f} ms  ratio {med['surface-distance'] / med['ablate']:.1f}x"
    )

    for a, b, spacing in random_pairs(args.pairs):
        c, b_ = mismatches(reference(a, b, spacing), compute_surface_distances(a, b, spacing))
        compared, bad = compared + c, bad + b_
    print(
        f"\ncompared {compared} values (the timed results + {args.pairs} random pairs): "
        f"{bad} mismatches"
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
