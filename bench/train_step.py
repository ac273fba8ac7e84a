"""One training iteration: ablate.train against the bare step of the same network, and nnU-Net v2.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/train_step.py \
        --nnunet-python /work/nnunet-venv/bin/python [--configs demo kits] [--work-dir ...]
Configurations: `demo` = studies/demo.yaml's plan settings; `kits` = the default 8 GB plan
(features 32..320) with the patch fixed to --kits-patch (default 32x96x96, as timed in
nnunet-on-cpu.md) and batch 2. Per configuration it prints the median seconds of:
  * ablate trainer, augmentation nnunet and mirror, data_workers 1: epochs of N iterations without
    validation (epoch_seconds / N; the first epoch is warm-up and dropped);
  * bare step: forward + Dice/CE deep-supervision loss + backward + clip + SGD step on one ready
    batch of the same network, 3 steps timed right after each trainer epoch so both see the same
    load from other jobs (goal: trainer / bare <= 1.10; median of the paired ratios, and the
    ratio of the minima, which other jobs disturb least);
  * nnU-Net's nnUNetTrainer (next(dataloader_train) + train_step), its 3d_fullres configuration
    rewritten to ablate's network, patch and batch, via its Python API; augmentation in-process
    (nnUNet_n_proc_DA=0: with 1 background process it hung here); its own bare step (train_step
    on one ready batch) is interleaved with the iterations, and where nnU-Net's python also has
    ablate (the test venv), ablate's bare step too, in the same process: on 2 cores shared with
    other jobs a step slows by up to 10x (two OpenMP threads on oversubscribed cores), so only
    steps timed in turns are comparable across systems.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet  # noqa: E402  (a sibling helper, not part of the package)

from ablate.config import PlanConfig, TrainConfig  # noqa: E402
from ablate.losses import build_loss, deep_supervision_loss  # noqa: E402
from ablate.nets import build_network  # noqa: E402
from ablate.preprocess import prepare  # noqa: E402
from ablate.study_load import load_study  # noqa: E402
from ablate.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 2
# per configuration: (epochs, iterations per epoch) of the trainer runs, bare/nnU-Net steps
SCHEDULE = {"demo": (4, 8, 10), "kits": (2, 3, 4)}


def plan_config(name: str, kits_patch) -> PlanConfig:
    if name == "demo":
        return load_study(REPO / "studies" / "demo.yaml", check_paths=False).plan
    return PlanConfig(patch_size=tuple(kits_patch))


def time_trainer(
    data, augmentation: str, epochs: int, iterations: int, work_dir: Path, bare
) -> tuple[list[float], list[float]]:
    """Seconds per iteration of ablate.train (epoch_seconds / N, no validation) for epochs 2..,
    each paired with a bare-step median timed right after that epoch (load is shared alike)."""
    cfg = TrainConfig(
        augmentation=augmentation,
        data_workers=1,
        epochs=epochs,
        iterations_per_epoch=iterations,
        val_iterations=0,
        batch_size=BATCH_SIZE,
    )
    trainer_times, bare_times = [], []

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch > 0:  # the first epoch is warm-up (allocations, loader start)
            trainer_times.append(metrics["epoch_seconds"] / iterations)
            bare_times.append(statistics.median(bare(3)))

    out = Path(tempfile.mkdtemp(prefix="trainer-", dir=work_dir))
    try:
        train(cfg, data, fold=0, seed=0, out_dir=out, on_epoch_end=after_epoch)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return trainer_times, bare_times


def bare_stepper(plan):
    """(steps -> seconds per step) for forward+loss+backward+clip+SGD step on a ready batch, and
    the parameter count; the network, loss and optimiser are the trainer's."""
    cfg = TrainConfig(batch_size=BATCH_SIZE)
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_network(cfg, plan)
    net.deep_supervision = True
    optimizer = torch.optim.SGD(
        net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    loss_fn = deep_supervision_loss(build_loss(cfg.loss, False), cfg.deep_supervision)
    shape = (BATCH_SIZE, plan.num_input_channels, *plan.patch_size)
    data = torch.randn(shape, generator=gen)  # (B, C, Z, Y, X)
    target = torch.randint(
        0, plan.num_classes, (BATCH_SIZE, 1, *plan.patch_size), generator=gen
    )  # (B, 1, Z, Y, X)
    net.train()

    def steps(count: int) -> list[float]:
        times = []
        for _ in range(count):
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(data), target, 0.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            optimizer.step()
            times.append(time.perf_counter() - began)
        return times

    steps(1)  # warm-up
    return steps, sum(p.numel() for p in net.parameters())


NNUNET_STEPS = """
import json, os, statistics, time, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
plans = json.load(open(args["plans"]))
plans["configurations"]["3d_fullres"] = args["configuration"]
plans["continue_training"] = False  # what run_training.py adds
dataset_json = json.load(open(args["dataset_json"]))
trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
trainer.on_train_start()
trainer.on_epoch_start()
fixed = next(trainer.dataloader_train)
try:  # where this python also has ablate: its bare step in this process, in turns with nnU-Net's
    sys.path.insert(0, args["bench_dir"])
    from train_step import bare_stepper
    from ablate.plan import Plan
    ablate_bare = bare_stepper(Plan.from_json(args["plan"]))[0]
except ImportError:
    ablate_bare = None
iteration, bare, ours = [], [], []
for _ in range(args["steps"] + 1):  # each step: one real iteration, then one on a ready batch
    began = time.perf_counter()
    trainer.train_step(next(trainer.dataloader_train))
    iteration.append(time.perf_counter() - began)
    began = time.perf_counter()
    trainer.train_step(fixed)
    bare.append(time.perf_counter() - began)
    if ablate_bare is not None:
        ours += ablate_bare(1)
params = sum(p.numel() for p in trainer.network.parameters())
print("BENCH=" + json.dumps({"iteration": iteration, "bare": bare, "ablate_bare": ours,
                             "parameters": params}), flush=True)
os._exit(0)  # skip joining the augmentation workers
"""


def time_nnunet(python: Path, work_dir: Path, plan, steps: int, threads: int) -> dict:
    """nnU-Net's per-step seconds: `iteration` = next(dataloader) + train_step, `bare` =
    train_step on one ready batch (interleaved; first pair dropped), and `parameters`."""
    plans_path = work_dir / "nnUNet_preprocessed" / _nnunet.DATASET_NAME / "nnUNetPlans.json"
    if not (plans_path.parent / "nnUNetPlans_3d_fullres").is_dir():
        _nnunet.nnunet_plan_and_preprocess(python, work_dir, threads)
    plans = _nnunet.nnunet_plans(work_dir)
    config = _nnunet.nnunet_configuration_from(
        plan, plans["configurations"]["3d_fullres"], BATCH_SIZE
    )
    args = {
        "threads": threads,
        "plans": str(plans_path),
        "configuration": config,
        "dataset_json": str(_nnunet.dataset_dir(work_dir) / "dataset.json"),
        "steps": steps,
        "bench_dir": str(Path(__file__).resolve().parent),
        "plan": plan.to_json(),
    }
    env = _nnunet.nnunet_env(work_dir, threads, {"nnUNet_n_proc_DA": "0"})
    shutil.rmtree(work_dir / "nnUNet_results", ignore_errors=True)
    _, stdout = _nnunet.run_nnunet(python, NNUNET_STEPS, [json.dumps(args)], env)
    line = next(s for s in stdout.splitlines() if s.startswith("BENCH="))
    result = json.loads(line[len("BENCH=") :])
    return {
        "iteration": result["iteration"][1:],
        "bare": result["bare"][1:],
        "ablate_bare": result["ablate_bare"][1:],
        "parameters": int(result["parameters"]),
    }


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def print_row(label: str, measured: list[float], paired: list[float]) -> None:
    """Median and minimum (the least disturbed by other jobs) of the iteration and its paired
    bare step, the median paired ratio and the min/min ratio, then the raw samples."""
    print(
        f"  {label:<30} {statistics.median(measured):8.3f} {min(measured):8.3f} "
        f"{statistics.median(paired):8.3f} {min(paired):8.3f} "
        f"{median_ratio(measured, paired):7.2f} {min(measured) / min(paired):7.2f}",
        flush=True,
    )
    print(
        f"  {'':30} samples {[round(t, 2) for t in measured]} / {[round(t, 2) for t in paired]}",
        flush=True,
    )


def bench_configuration(name: str, args, dataset, skip: str | None) -> None:
    cfg = plan_config(name, args.kits_patch)
    data = prepare(
        dataset,
        cfg,
        args.work_dir / "ablate_cache_train",
        workers=2,
        intensity_samples=cfg.intensity_samples,
    )
    plan = data.plan
    epochs, iterations, steps = SCHEDULE[name]
    print(
        f"\n[{name}] patch {plan.patch_size}, batch {BATCH_SIZE}, features "
        f"{plan.features_per_stage}, {epochs} epochs x {iterations} iterations",
        flush=True,
    )
    bare, params = bare_stepper(plan)
    print(
        f"  {'seconds per iteration':<30} {'median':>8} {'min':>8} {'bare med':>8} "
        f"{'bare min':>8} {'ratio':>7} {'min/min':>7}   (goal ratio <= 1.10)"
    )
    ours = {}
    for augmentation in ("nnunet", "mirror"):
        trainer, paired = time_trainer(data, augmentation, epochs, iterations, args.work_dir, bare)
        ours[augmentation] = min(trainer)
        print_row(f"ablate trainer, aug {augmentation}", trainer, paired)
    print(f"  ablate network: {params} parameters", flush=True)
    if skip:
        print(f"  nnU-Net trainer: skipped ({skip})")
        return
    theirs = time_nnunet(args.nnunet_python, args.work_dir, plan, steps, args.threads)
    print_row("nnU-Net trainer, its aug", theirs["iteration"], theirs["bare"])
    if theirs["ablate_bare"]:  # the same process, in turns: what the two networks cost alike
        print_row("nnU-Net bare / ablate bare", theirs["bare"], theirs["ablate_bare"])
    print(
        f"  nnU-Net network: {theirs['parameters']} parameters; min ablate trainer (aug nnunet)"
        f" / min nnU-Net trainer = {ours['nnunet'] / min(theirs['iteration']):.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _nnunet.add_common_arguments(parser)
    parser.add_argument("--configs", nargs="+", default=["demo", "kits"], choices=SCHEDULE)
    parser.add_argument("--kits-patch", type=int, nargs=3, default=(32, 96, 96))
    args = parser.parse_args()
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    skip = _nnunet.nnunet_skip_reason(args.nnunet_python)
    if skip:
        print(f"nnU-Net side skipped: {skip}")
    dataset = _nnunet.make_dataset(args.work_dir)
    for name in args.configs:
        bench_configuration(name, args, dataset, skip)


if __name__ == "__main__":
    main()
