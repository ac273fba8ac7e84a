"""Time build_report on a synthetic study of 405 evaluations over 300 cases and 3 targets.

Default: 3 axes x 3 levels = 27 variants, 5 folds, 3 seeds -> 27 * 5 * 3 = 405 evaluation runs;
each case lies in one fold, so every variant and seed has 300 cases x 3 targets x (DSC, NSD).
Goal: under 30 s on the 2-core development machine.

    OMP_NUM_THREADS=1 python bench/report.py [--levels 3] [--axes 3] [--seeds 3] [--cases 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ablate.report import build_report, synthetic_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axes", type=int, default=3)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="keep the report here")
    args = parser.parse_args()
    names = ["arch", "loss", "tta", "aug", "ds"][: args.axes]
    axes = {a: [f"{a}{i}" for i in range(args.levels)] for a in names}
    effects = {f"{a}1": 0.01 for a in names} | {f"{names[0]}2": 0.03}
    start = time.perf_counter()
    results = synthetic_results(
        axes,
        n_cases=args.cases,
        targets=("kidney", "tumor", "cyst"),
        folds=args.folds,
        seeds=tuple(range(args.seeds)),
        effects=effects,
        epochs=20,
    )
    made = time.perf_counter()
    n_eval = len(results.cost)
    out = args.out or Path(tempfile.mkdtemp(prefix="ablate_bench_"))
    path = build_report(
        results, {"name": "bench", "baseline": " / ".join(v[0] for v in axes.values())}, out
    )
    done = time.perf_counter()
    print(
        f"{n_eval} evaluations, {results.tidy['variant'].nunique()} variants, {args.cases} "
        f"cases, 3 targets, {len(results.tidy):,} tidy rows"
    )
    print(
        f"synthetic results: {made - start:.1f} s; build_report: {done - made:.1f} s "
        f"-> {path} ({path.stat().st_size / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
