"""The GPU path on one CUDA device: the CUDA-marked tests, then ablate's training step with AMP
against the bare step and against nnU-Net's trainer at the KiTS-like plan, and sliding-window
inference against nnU-Net's predictor with the same windows.

Run: python bench/gpu.py OUTDIR [--iterations 5] [--cases 8] [--work-dir DIR]
        [--nnunet-python PY]   (default: this python; 'none' skips the nnU-Net rows)
Writes OUTDIR/gpu.md (the table), OUTDIR/gpu.json (every number) and OUTDIR/pytest_cuda.txt.
Budget: about 5 minutes on one GPU (a few timed iterations per row, never epochs); installs
nothing. Without a CUDA device it stops at once with one line on stderr (exit 2).

Data: `--cases` generated KiTS-like CT cases (`make_synthetic_dataset(fov_mm=(300, 250, 250))`,
about 100 x 280 x 280 voxels after preprocessing), planned with nnU-Net's default 8 GB plan
(PlanConfig(): features 32..320, its patch and batch). Rows:
  * `pytest -m cuda tests/`: AMP training step, reported peak GPU memory, sliding window CUDA vs
    CPU, pinned-memory transfer (tests/test_cuda.py);
  * bare step fp32 / AMP: forward + deep-supervised Dice+CE + backward + clip + SGD step of the
    plan's network on one ready batch on the GPU, without and with autocast + GradScaler;
  * ablate trainer (AMP, augmentation nnunet, its default data_workers): epoch_seconds /
    iterations of `ablate.train.train` without validation, first epoch dropped; the trainer's
    reported peak GPU memory against `torch.cuda.max_memory_allocated`;
  * nnU-Net trainer: nnUNetTrainer on CUDA (its AMP, its augmentation in background processes)
    with its 3d_fullres configuration rewritten to ablate's network, patch and batch, via its
    Python API: next(dataloader_train) + train_step, and train_step on one ready batch (its bare
    step), interleaved;
  * sliding window: one network (dynamic_network_architectures' PlainConvUNet of the plan's
    topology, random weights) on the largest preprocessed case, step 0.5, Gaussian, TTA 8, AMP:
    ablate `sliding_window_logits` at window batch 1 (nnU-Net's) and 2 (its default) against
    `nnUNetPredictor.predict_sliding_window_return_logits`; windows counted on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet  # noqa: E402  (a sibling helper, not part of the package)

REPO = Path(__file__).resolve().parent.parent
FOV_MM = (300.0, 250.0, 250.0)


def no_cuda_line() -> str | None:
    if torch.cuda.is_available():
        return None
    return (
        f"bench/gpu.py: no CUDA device (torch {torch.__version__}, built for CUDA "
        f"{torch.version.cuda}); run it on a machine with a GPU"
    )


def cuda_tests(out: Path) -> dict:
    """`pytest -m cuda` over the suite; its summary line and exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (out / "pytest_cuda.txt").write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"summary": summary, "exit": done.returncode}


def synchronized_seconds(fn) -> float:
    torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - began


def bare_step_times(plan, batch_size: int, iterations: int, amp: bool) -> list[float]:
    """Seconds per step of forward + loss + backward + clip + SGD on one ready GPU batch."""
    from ablate.config import TrainConfig
    from ablate.losses import build_loss, deep_supervision_loss
    from ablate.nets import build_network

    device = torch.device("cuda")
    cfg = TrainConfig(batch_size=batch_size)
    torch.manual_seed(0)
    net = build_network(cfg, plan).to(device)
    net.deep_supervision = True
    net.train()
    optimizer = torch.optim.SGD(
        net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = deep_supervision_loss(build_loss(cfg.loss, plan.batch_dice), cfg.deep_supervision)
    shape = (batch_size, plan.num_input_channels, *plan.patch_size)
    data = torch.randn(shape, device=device)  # (B, C, Z, Y, X)
    target = torch.randint(0, plan.num_classes, (batch_size, 1, *plan.patch_size), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=amp):
            loss = loss_fn(net(data), target, 0.0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up (cuDNN algorithm choice, allocations)
    return [synchronized_seconds(step) for _ in range(iterations)]


def ablate_trainer(data, batch_size: int, iterations: int, work: Path) -> dict:
    """Seconds per iteration of ablate.train on CUDA (first epoch dropped) and its peak memory
    against torch.cuda.max_memory_allocated."""
    from ablate.config import TrainConfig
    from ablate.train import train

    cfg = TrainConfig(
        epochs=3,
        iterations_per_epoch=iterations,
        val_iterations=0,
        batch_size=batch_size,
        augmentation="nnunet",
        device="cuda",
    )
    with tempfile.TemporaryDirectory(dir=work) as out:
        result = train(cfg, data, fold=0, seed=0, out_dir=Path(out))
    torch_peak = torch.cuda.max_memory_allocated() / 2**20
    reported = result.peak_memory_mb["peak_gpu_allocated_mb"]
    return {
        "seconds": [h["epoch_seconds"] / iterations for h in result.history[1:]],
        "data_workers": cfg.data_workers,
        "peak_reported_mb": reported,
        "peak_torch_mb": torch_peak,
        "peak_equal": reported == torch_peak,
    }


NNUNET_TRAINER = r"""
import json, os, time, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
args = json.loads(sys.argv[1])
plans = json.load(open(args["plans"]))
plans["configurations"]["3d_fullres"] = args["configuration"]
plans["continue_training"] = False  # what run_training.py adds
dataset_json = json.load(open(args["dataset_json"]))
trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cuda"))
trainer.on_train_start()
trainer.on_epoch_start()
fixed = next(trainer.dataloader_train)
def timed(batch):
    torch.cuda.synchronize(); began = time.perf_counter()
    trainer.train_step(batch)
    torch.cuda.synchronize(); return time.perf_counter() - began
iteration, bare = [], []
for _ in range(args["steps"] + 1):  # each: one real iteration, then one on the ready batch
    torch.cuda.synchronize(); began = time.perf_counter()
    trainer.train_step(next(trainer.dataloader_train))
    torch.cuda.synchronize(); iteration.append(time.perf_counter() - began)
    bare.append(timed(fixed))
params = sum(p.numel() for p in trainer.network.parameters())
print("BENCH=" + json.dumps({"iteration": iteration[1:], "bare": bare[1:], "parameters": params}),
      flush=True)
os._exit(0)  # skip joining the augmentation workers
"""


def nnunet_trainer(python: Path, work: Path, plan, batch_size: int, steps: int) -> dict:
    _nnunet.nnunet_plan_and_preprocess(python, work, threads=4)
    plans_path = work / "nnUNet_preprocessed" / _nnunet.DATASET_NAME / "nnUNetPlans.json"
    base = _nnunet.nnunet_plans(work)["configurations"]["3d_fullres"]
    args = {
        "plans": str(plans_path),
        "configuration": _nnunet.nnunet_configuration_from(plan, base, batch_size),
        "dataset_json": str(_nnunet.dataset_dir(work) / "dataset.json"),
        "steps": steps,
    }
    env = _nnunet.nnunet_env(work, 4)
    _, stdout = _nnunet.run_nnunet(python, NNUNET_TRAINER, [json.dumps(args)], env)
    line = next(s for s in stdout.splitlines() if s.startswith("BENCH="))
    return json.loads(line[len("BENCH=") :])


def dna_kwargs(plan) -> dict:
    """PlainConvUNet arguments of the plan's topology (nnU-Net's 3d_fullres network)."""
    return {
        "input_channels": plan.num_input_channels,
        "n_stages": plan.num_stages,
        "features_per_stage": list(plan.features_per_stage),
        "kernel_sizes": [list(k) for k in plan.conv_kernel_sizes],
        "strides": [list(s) for s in plan.pool_kernel_sizes],
        "n_conv_per_stage": 2,
        "num_classes": plan.num_classes,
        "n_conv_per_stage_decoder": 2,
    }


def build_dna(kwargs: dict):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    return PlainConvUNet(
        **kwargs,
        conv_op=nn.Conv3d,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


NNUNET_PREDICTOR = r"""
import json, statistics, time, types, torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
job = json.loads(sys.argv[1])
net = PlainConvUNet(**job["kwargs"], conv_op=nn.Conv3d, conv_bias=True, norm_op=nn.InstanceNorm3d,
                    norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                    nonlin_kwargs={"inplace": True}, deep_supervision=False)
net.load_state_dict(torch.load(job["weights"], map_location="cpu"))
net = net.cuda().eval()
calls = [0]
net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + a[0].shape[0]))
volume = torch.load(job["volume"])
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                    perform_everything_on_device=True, device=torch.device("cuda"),
                    allow_tqdm=False)
p.network = net  # what predict_sliding_window_return_logits reads from a model folder
p.configuration_manager = types.SimpleNamespace(patch_size=job["patch"])
p.label_manager = types.SimpleNamespace(num_segmentation_heads=job["kwargs"]["num_classes"])
p.allowed_mirroring_axes = (0, 1, 2)
p.predict_sliding_window_return_logits(volume)  # warm-up
forwards = calls[0]
seconds = []
for _ in range(job["repeats"]):
    torch.cuda.synchronize(); began = time.perf_counter()
    p.predict_sliding_window_return_logits(volume)
    torch.cuda.synchronize(); seconds.append(time.perf_counter() - began)
print("BENCH=" + json.dumps({"seconds": seconds, "forwards": forwards}), flush=True)
"""


def sliding_window(python: Path | None, data, work: Path, repeats: int) -> dict:
    from ablate.infer import mirror_combinations, sliding_window_logits

    plan = data.plan
    case = max(data.case_ids, key=lambda c: data.load_case(c)[0].shape[1:])
    volume = torch.from_numpy(data.load_case(case)[0][...])  # (C, Z, Y, X)
    kwargs = dna_kwargs(plan)
    torch.manual_seed(0)
    net = build_dna(kwargs).cuda().eval()
    calls = [0]
    net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + a[0].shape[0]))
    combos = mirror_combinations((0, 1, 2), 8)
    result = {"case": case, "shape": list(volume.shape[1:]), "patch": list(plan.patch_size)}
    for window_batch in (1, 2):

        def ours(window_batch=window_batch):
            return sliding_window_logits(
                net, volume, plan.patch_size, 0.5, combos, window_batch, torch.device("cuda")
            )

        calls[0] = 0
        ours()  # warm-up
        result["ablate_forwards"] = calls[0]
        result[f"ablate_batch{window_batch}"] = [synchronized_seconds(ours) for _ in range(repeats)]
    if python is not None:
        weights, volume_file = work / "weights.pt", work / "volume.pt"
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, weights)
        torch.save(volume, volume_file)
        job = {
            "kwargs": kwargs,
            "weights": str(weights),
            "volume": str(volume_file),
            "patch": list(plan.patch_size),
            "repeats": repeats,
        }
        _, stdout = _nnunet.run_nnunet(python, NNUNET_PREDICTOR, [json.dumps(job)], dict(_env()))
        line = next(s for s in stdout.splitlines() if s.startswith("BENCH="))
        theirs = json.loads(line[len("BENCH=") :])
        result["nnunet"], result["nnunet_forwards"] = theirs["seconds"], theirs["forwards"]
    return result


def _env() -> dict:
    import os

    return dict(os.environ, nnUNet_compile="false")


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def table(results: dict) -> str:
    """The markdown table of gpu.md."""
    lines = ["| row | seconds (median) | note |", "|---|---|---|"]
    tests = results.get("pytest", {})
    lines.append(f"| pytest -m cuda | | {tests.get('summary', tests.get('error', '-'))} |")
    steps = results.get("steps", {})
    fp32, amp = median(steps.get("bare_fp32", [])), median(steps.get("bare_amp", []))
    lines.append(f"| bare step fp32 | {fp32:.4f} | |")
    lines.append(f"| bare step AMP | {amp:.4f} | AMP speed-up {fp32 / amp:.2f}x |")
    trainer = results.get("ablate_trainer", {})
    if "seconds" in trainer:
        it = median(trainer["seconds"])
        lines.append(
            f"| ablate trainer, AMP | {it:.4f} | / bare AMP = {it / amp:.2f} (goal <= 1.10); "
            f"data_workers {trainer['data_workers']}; peak reported "
            f"{trainer['peak_reported_mb']:.1f} MB, torch.cuda.max_memory_allocated "
            f"{trainer['peak_torch_mb']:.1f} MB: {'equal' if trainer['peak_equal'] else 'DIFFER'} |"
        )
    theirs = results.get("nnunet_trainer", {})
    if "iteration" in theirs:
        it_n, bare_n = median(theirs["iteration"]), median(theirs["bare"])
        ours = median(trainer.get("seconds", []))
        lines.append(
            f"| nnU-Net trainer (AMP) | {it_n:.4f} | its bare step {bare_n:.4f}; ablate trainer /"
            f" nnU-Net trainer = {ours / it_n:.2f}; {theirs['parameters']} parameters |"
        )
    window = results.get("sliding_window", {})
    if "ablate_batch1" in window:
        geometry = f"case {window['case']} {window['shape']}, patch {window['patch']}"
        for batch in (1, 2):
            lines.append(
                f"| ablate sliding window TTA 8, window batch {batch} | "
                f"{median(window[f'ablate_batch{batch}']):.3f} | {geometry}; "
                f"{window['ablate_forwards']} window forwards |"
            )
        if "nnunet" in window:
            n = median(window["nnunet"])
            ratio = median(window["ablate_batch1"]) / n
            lines.append(
                f"| nnU-Net predictor TTA 8 | {n:.3f} | {window['nnunet_forwards']} window "
                f"forwards; ablate (batch 1) / nnU-Net = {ratio:.2f} |"
            )
    for name, error in results.get("errors", {}).items():
        lines.append(f"| {name} | failed | {error} |")
    return "\n".join(lines) + "\n"


def run_part(results: dict, name: str, fn, into: dict | None = None) -> None:
    """Run one part into `into` (default `results`); a failure is recorded in results["errors"]
    as one line and the rest still runs."""
    began = time.perf_counter()
    try:
        (results if into is None else into)[name] = fn()
    except Exception as error:  # noqa: BLE001  (any failure of one part: record, continue)
        traceback.print_exc()
        results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"[:300]
    torch.cuda.empty_cache()  # the next part starts from the same empty device
    print(f"[{name}] {time.perf_counter() - began:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per row")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ablate-bench-gpu"))
    parser.add_argument("--nnunet-python", type=Path, default=Path(sys.executable))
    args = parser.parse_args()
    missing = no_cuda_line()
    if missing:
        print(missing, file=sys.stderr)
        raise SystemExit(2)
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = None if str(args.nnunet_python) == "none" else args.nnunet_python
    skip = _nnunet.nnunet_skip_reason(python) if python else "--nnunet-python none"
    results: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if skip:
        results.setdefault("errors", {})["nnU-Net rows"] = f"skipped: {skip}"
        python = None
    run_part(results, "pytest", lambda: cuda_tests(args.outdir))

    from ablate.config import PlanConfig
    from ablate.preprocess import prepare

    dataset = _nnunet.make_dataset(work, cases=args.cases, fov_mm=FOV_MM)
    data = prepare(dataset, PlanConfig(), work / "ablate_cache", workers=4, intensity_samples=1e6)
    plan, batch = data.plan, data.plan.batch_size
    results["plan"] = {"patch": list(plan.patch_size), "batch": batch}
    results["plan"]["features"] = list(plan.features_per_stage)
    print(f"plan: patch {plan.patch_size}, batch {batch}, features {plan.features_per_stage}")
    steps: dict = {}
    results["steps"] = steps
    for name, amp in (("bare_fp32", False), ("bare_amp", True)):
        run_part(
            results, name, lambda amp=amp: bare_step_times(plan, batch, args.iterations, amp), steps
        )
    run_part(results, "ablate_trainer", lambda: ablate_trainer(data, batch, args.iterations, work))
    if python:
        run_part(
            results,
            "nnunet_trainer",
            lambda: nnunet_trainer(python, work, plan, batch, args.iterations),
        )
    run_part(results, "sliding_window", lambda: sliding_window(python, data, work, 3))
    (args.outdir / "gpu.json").write_text(json.dumps(results, indent=1))
    text = f"{results['device']}, torch {results['torch']} (CUDA {results['cuda']}), "
    text += f"{results['date']}; plan {results['plan']}\n\n" + table(results)
    (args.outdir / "gpu.md").write_text(text)
    print(text)
    raise SystemExit(1 if results.get("errors") else 0)


if __name__ == "__main__":
    main()
