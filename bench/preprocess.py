"""Fingerprint + plan + preprocess: ablate.preprocess.prepare against nnUNetv2_plan_and_preprocess.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/preprocess.py \
        --nnunet-python /work/nnunet-venv/bin/python [--repeats 1] [--work-dir /tmp/ablate-bench]
Both sides read the same 12-case synthetic dataset (Dataset901, nnU-Net raw layout), plan for the
same 8 GB budget with default features (32..320) and nnU-Net's 1e8 foreground intensity samples,
and use 2 processes (ours workers=2; nnU-Net -np 2 -npfp 2). Each run starts from an empty cache.
Goal: ours at least as fast (ratio nnU-Net seconds / ours >= 1); the plans agree.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet  # noqa: E402  (a sibling helper, not part of the package)

from ablate.config import PlanConfig  # noqa: E402
from ablate.preprocess import prepare  # noqa: E402

NNUNET_SAMPLES = 1e8  # nnU-Net's foreground intensity samples over the whole dataset


def time_ours(dataset, work_dir: Path, samples: float):
    """Seconds of one cold prepare() (empty cache) and its PreprocessedData."""
    cache = work_dir / "ablate_cache"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = PlanConfig(gpu_memory_gb=8.0, intensity_samples=int(samples))
    began = time.perf_counter()
    data = prepare(dataset, cfg, cache, workers=2, intensity_samples=samples)
    return time.perf_counter() - began, data


def print_agreement(ours: dict, theirs: dict | None) -> int:
    """One line per plan field; returns the number of fields that differ."""
    print(f"\n{'plan field':<22} {'ablate':<34} {'nnU-Net':<34} same")
    differ = 0
    for field, value in ours.items():
        other = theirs.get(field) if theirs else None
        same = "-" if theirs is None else ("yes" if other == value else "NO")
        differ += same == "NO"
        print(f"{field:<22} {value!s:<34} {other!s:<34} {same}")
    return differ


def print_intensities(ours: list[dict], theirs: list[dict] | None) -> None:
    """Foreground statistics behind CT normalisation; both sides sample randomly, so they differ
    a little (relative difference printed)."""
    keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
    print(f"\n{'CT statistic':<22} {'ablate':>12} {'nnU-Net':>12} {'rel. diff':>10}")
    for c, mine in enumerate(ours):
        for key in keys:
            other = theirs[c][key] if theirs else float("nan")
            rel = abs(mine[key] - other) / max(abs(other), 1e-9)
            print(f"ch{c} {key:<18} {mine[key]:12.3f} {other:12.3f} {rel:10.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _nnunet.add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1, help="cold runs per side (median)")
    parser.add_argument("--cases", type=int, default=_nnunet.CASES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work_dir = args.work_dir.resolve()
    skip = _nnunet.nnunet_skip_reason(args.nnunet_python)
    if skip:
        print(f"nnU-Net side skipped: {skip}")
    dataset = _nnunet.make_dataset(work_dir, args.cases)
    n = len(dataset.cases)
    ours, theirs, ours_small = [], [], []
    for _ in range(args.repeats):  # interleaved, so load from other jobs hits both sides alike
        seconds, data = time_ours(dataset, work_dir, NNUNET_SAMPLES)
        ours.append(seconds)
        ours_small.append(time_ours(dataset, work_dir, 1e6)[0])
        if not skip:
            theirs.append(
                _nnunet.nnunet_plan_and_preprocess(args.nnunet_python, work_dir, args.threads)
            )
    mine = statistics.median(ours)
    print(f"\n{n} cases, {args.repeats} cold run(s) per side, median seconds")
    print(f"ablate prepare (1e8 samples):  {mine:7.1f} s  {n / mine:6.3f} cases/s")
    small = statistics.median(ours_small)
    print(f"ablate prepare (1e6 samples):  {small:7.1f} s  {n / small:6.3f} cases/s")
    their_plan, their_intensities = None, None
    if theirs:
        other = statistics.median(theirs)
        print(f"nnUNetv2_plan_and_preprocess:  {other:7.1f} s  {n / other:6.3f} cases/s")
        print(
            f"speed ratio ablate/nnU-Net (1e8 samples): {other / mine:.2f}x "
            f"({'goal met' if other >= mine else 'goal NOT met'}: ours at least as fast)"
        )
        their_plan = _nnunet.nnunet_plan_summary(_nnunet.nnunet_plans(work_dir))
        their_intensities = _nnunet.nnunet_intensity_properties(work_dir)
    differ = print_agreement(_nnunet.ablate_plan_summary(data.plan), their_plan)
    if their_plan is not None:
        print(f"\nplans agree on {len(their_plan) - differ} of {len(their_plan)} fields")
    print_intensities(data.fingerprint.intensity_properties, their_intensities)


if __name__ == "__main__":
    main()
