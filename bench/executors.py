"""What each executor costs: wall time of one small study (in-process vs 2 local workers vs Ray
with 2 workers), and the overhead each adds per job (goal: under 2 s).

Run: OMP_NUM_THREADS=1 python bench/executors.py [--kinds inprocess local ray] [--jobs 10]
     [--skip-study] [--workdir /tmp/bench-executors]
Per-job overhead = (wall time of N sleep(0.25) jobs run one at a time through a warm executor
- N x 0.25 s) / N; start-up = creating the executor plus its first job (worker start, imports).
Add `slurm` to --kinds to measure a running Slurm (sinfo must answer; resources: 1 CPU, 0.25 GB).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ablate.run.executors import make_executor
from ablate.study import ExecutorSpec, RaySpec, SlurmSpec, Study

JOB_SECONDS = 0.25
STUDY = {
    "name": "bench-executors",
    "dataset": {"synthetic": {"cases": 6, "seed": 3, "fov_mm": [60, 70, 70]}},
    "plan": {
        "gpu_memory_gb": 0.02,
        "base_features": 4,
        "max_features": 16,
        "intensity_samples": 10000,
    },
    "train": {"epochs": 2, "iterations_per_epoch": 4, "val_iterations": 1, "data_workers": 0},
    "infer": {"window_batch": 4},
    "axes": {"train.deep_supervision": ["nnunet", "none"]},
    "folds": {"k": 2},
    "workers": 1,
}


def spec_of(kind: str, workdir: Path) -> ExecutorSpec:
    return ExecutorSpec(
        kind=kind,
        workers=1 if kind == "inprocess" else 2,
        ray=RaySpec(num_cpus=1),
        slurm=SlurmSpec(
            gpus_per_job=0,
            cpus_per_job=1,
            mem_gb=0.25,
            time_min=10,
            array_parallelism=2,
            folder=workdir / "slurm",
        ),
    )


def overhead(kind: str, jobs: int, workdir: Path) -> tuple[float, float]:
    """(start-up seconds, per-job overhead seconds) on sleep jobs run one at a time."""
    start = time.perf_counter()
    executor = make_executor(spec_of(kind, workdir), workdir)
    executor.submit(time.sleep, JOB_SECONDS).result()
    startup = time.perf_counter() - start - JOB_SECONDS
    start = time.perf_counter()
    for _ in range(jobs):
        executor.submit(time.sleep, JOB_SECONDS).result()
    per_job = (time.perf_counter() - start) / jobs - JOB_SECONDS
    executor.shutdown()
    return startup, per_job


def study_seconds(kind: str, workdir: Path) -> tuple[float, int]:
    """Wall time of the small study (data generation and preprocessing included) and its jobs."""
    from ablate.run.driver import run_study
    from ablate.run.progress import PlainProgress

    root = workdir / f"study-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    study = Study.model_validate(
        {**STUDY, "workdir": str(root / "work"), "report_dir": str(root / "report")}
    )
    executor = make_executor(spec_of(kind, workdir), workdir)
    start = time.perf_counter()
    summary = run_study(study, progress=PlainProgress(), make_report=False, executor=executor)
    if summary.failed:
        raise SystemExit(f"{kind}: failed jobs {summary.failed}")
    return time.perf_counter() - start, summary.trainings.run + summary.evaluations.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["inprocess", "local", "ray"])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-executors"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.kinds:
        startup, per_job = overhead(kind, args.jobs, args.workdir)
        wall, jobs = (float("nan"), 0) if args.skip_study else study_seconds(kind, args.workdir)
        rows.append((kind, startup, per_job, wall, jobs))
    print(f"\n{'executor':10s} {'start-up s':>10s} {'per-job s':>10s} {'study s':>8s} {'jobs':>5s}")
    for kind, startup, per_job, wall, jobs in rows:
        flag = "" if per_job < 2.0 else "  (over the 2 s goal)"
        print(f"{kind:10s} {startup:10.2f} {per_job:10.3f} {wall:8.1f} {jobs:5d}{flag}")


if __name__ == "__main__":
    main()
