"""Sliding-window speed: ours against MONAI's sliding_window_inference and nnU-Net v2's predictor,
and our TTA k = 8, 4, 2, 1.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/infer.py
        [--nnunet-python /work/nnunet-venv/bin/python] [--threads 2]
        [--shape 48 64 64] [--patch 24 32 32] [--repeats 3]
Goals: ours at most as slow as MONAI (gaussian, overlap 0.5) and as nnU-Net's
predict_sliding_window_return_logits (gaussian, step 0.5, on CPU) with the same number of windows;
time linear in the TTA count k. MONAI is optional (skipped when not installed). nnU-Net runs in a
subprocess with its own venv's python (never imported here) on dynamic_network_architectures'
PlainConvUNet with our topology; parameter counts and window counts are printed for both sides.
Every time is the median of --repeats runs after one warm-up, with --threads torch threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet  # noqa: E402  (a sibling helper, not part of the package)

from ablate.config import TrainConfig  # noqa: E402
from ablate.device import select_device, synchronize  # noqa: E402
from ablate.infer import mirror_combinations, sliding_window_logits  # noqa: E402
from ablate.nets import build_network, count_parameters  # noqa: E402
from ablate.plan import ChannelNormalization, Plan  # noqa: E402


def small_plan(patch: tuple[int, int, int]) -> Plan:
    return Plan(
        target_spacing_mm=(1.0, 1.0, 1.0),
        patch_size=patch,
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (2, 2, 2), (2, 2, 2)],
        conv_kernel_sizes=[(3, 3, 3)] * 3,
        features_per_stage=[8, 16, 32],
        num_input_channels=1,
        num_classes=3,
        normalization=[ChannelNormalization("zscore")],
        median_shape=patch,
        anisotropic=False,
    )


class WindowCounter(nn.Module):
    """Wraps the network (the same one for both sides) and counts the windows it sees."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.windows = 0

    def forward(self, x):  # (B, C, Z, Y, X) -> (B, K, Z, Y, X)
        self.windows += x.shape[0]
        return self.net(x)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (allocations, cudnn autotune)
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)  # the median is robust to other jobs sharing the machine


def timed_alternately(fns, device, repeats: int) -> list[float]:
    """Median seconds of each function, run in turns (a, b, a, b, ...) after a warm-up each, so a
    slow phase of a shared machine hits both sides alike."""
    for fn in fns:
        fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, seconds, strict=True):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - start)
    return [statistics.median(s) for s in seconds]


# Runs in nnU-Net's venv: sys.argv[1] is the JSON job; prints one JSON line of results last.
NNUNET_SCRIPT = r"""
import json, statistics, sys, time, types
import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
feats, patch = job["features"], tuple(job["patch"])
net = PlainConvUNet(
    job["in_channels"], len(feats), feats, nn.Conv3d, job["kernels"], job["strides"], 2,
    job["classes"], 2, conv_bias=True, norm_op=nn.InstanceNorm3d,
    norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
    nonlin_kwargs={"negative_slope": 1e-2, "inplace": True}, deep_supervision=False).eval()
calls = [0]
net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + a[0].shape[0]))
gen = torch.Generator().manual_seed(0)
volume = torch.randn((job["in_channels"], *job["shape"]), generator=gen)

def predictor(mirror):
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                        perform_everything_on_device=True, device=torch.device("cpu"),
                        allow_tqdm=False)
    # what predict_sliding_window_return_logits reads from a trained model folder
    p.network = net
    p.configuration_manager = types.SimpleNamespace(patch_size=list(patch))
    p.label_manager = types.SimpleNamespace(num_segmentation_heads=job["classes"])
    p.allowed_mirroring_axes = (0, 1, 2)
    return p

out = {"parameters": sum(p.numel() for p in net.parameters()),
       "torch": torch.__version__, "threads": torch.get_num_threads()}
for k, mirror in ((1, False), (8, True)):
    p = predictor(mirror)
    calls[0] = 0
    p.predict_sliding_window_return_logits(volume)  # warm-up
    out[f"forwards_tta{k}"] = calls[0]
    seconds = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        p.predict_sliding_window_return_logits(volume)
        seconds.append(time.perf_counter() - start)
    out[f"tta{k}"] = statistics.median(seconds)
print(json.dumps(out))
"""


def time_nnunet(args, plan: Plan) -> dict:
    """nnU-Net's predictor on a PlainConvUNet of `plan`'s topology, timed in its own venv."""
    job = {
        "threads": args.threads,
        "repeats": args.repeats,
        "shape": list(args.shape),
        "patch": list(plan.patch_size),
        "features": list(plan.features_per_stage),
        "kernels": [list(k) for k in plan.conv_kernel_sizes],
        "strides": [list(s) for s in plan.pool_kernel_sizes],
        "in_channels": plan.num_input_channels,
        "classes": plan.num_classes,
    }
    env = _nnunet.nnunet_env(args.work_dir, args.threads)
    _, stdout = _nnunet.run_nnunet(args.nnunet_python, NNUNET_SCRIPT, [json.dumps(job)], env)
    return json.loads(stdout.strip().splitlines()[-1])


def compare_nnunet(args, plan: Plan, ours: dict, our_parameters: int) -> None:
    skip = _nnunet.nnunet_skip_reason(args.nnunet_python)
    if skip:
        print(f"nnU-Net predictor comparison skipped: {skip}")
        return
    theirs = time_nnunet(args, plan)
    print(
        f"nnU-Net predictor (torch {theirs['torch']}, {theirs['threads']} threads, "
        f"window batch 1): PlainConvUNet {theirs['parameters']} parameters "
        f"(ours {our_parameters}{'' if theirs['parameters'] == our_parameters else ' MISMATCH'})"
    )
    for k in (1, 8):
        print(
            f"nnU-Net TTA {k}: {theirs[f'tta{k}']:.3f} s/case, {theirs[f'forwards_tta{k}']} "
            f"window forwards (ours {ours['forwards'][k]})"
        )
    for k in (1, 8):
        ratios = "   ".join(
            f"window batch {wb}: {ours[wb][k] / theirs[f'tta{k}']:.2f}"
            for wb in sorted(ours["batches"])
        )
        print(f"ratio ours/nnU-Net TTA {k}: {ratios}  (goal <= 1)")


def compare_monai(args, net: WindowCounter, volume, patch, device) -> None:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed: comparison skipped")
        return

    def monai():
        with torch.inference_mode():
            x = volume[None].to(device)  # (1, C, Z, Y, X)
            return sliding_window_inference(
                x, patch, args.window_batch, net, overlap=0.5, mode="gaussian", sigma_scale=0.125
            )

    def ours():
        return sliding_window_logits(net, volume, patch, 0.5, [()], args.window_batch, device)

    net.windows = 0
    monai()
    monai_windows = net.windows
    t_ours, t_monai = timed_alternately([ours, monai], device, max(args.repeats, 5))
    print(
        f"MONAI sliding_window_inference: {t_monai:.3f} s/case, {monai_windows} windows; "
        f"ours TTA 1 timed in turns with it: {t_ours:.3f} s/case"
    )
    print(f"ratio ours/MONAI (TTA 1): {t_ours / t_monai:.2f}  (goal <= 1 with equal windows)")


def time_ours(args, net: WindowCounter, volume, patch, device) -> dict:
    """{window batch: {k: seconds}}, plus window forwards per k and the batches timed."""

    def ours(k: int, window_batch: int):
        combos = mirror_combinations((0, 1, 2), k)
        return lambda: sliding_window_logits(net, volume, patch, 0.5, combos, window_batch, device)

    forwards = {}
    for k in (1, 8):
        net.windows = 0
        ours(k, args.window_batch)()
        forwards[k] = net.windows
    batches = sorted({args.window_batch, 1})  # 1 is nnU-Net's: one window per forward
    result = {"forwards": forwards, "batches": batches}
    result[args.window_batch] = {
        k: timed(ours(k, args.window_batch), device, args.repeats) for k in (8, 4, 2, 1)
    }
    if args.window_batch != 1:
        result[1] = {k: timed(ours(k, 1), device, args.repeats) for k in (8, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    _nnunet.add_common_arguments(parser)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    parser.add_argument("--patch", type=int, nargs=3, default=(24, 32, 32))
    parser.add_argument("--window-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device("auto")
    patch = tuple(args.patch)
    plan = small_plan(patch)
    unet = build_network(TrainConfig(), plan)  # plain U-Net, 3 stages, 8-32 features
    unet.deep_supervision = False
    net = WindowCounter(unet).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn((1, *args.shape), generator=gen)  # (C, Z, Y, X)

    ours = time_ours(args, net, volume, patch, device)
    times = ours[args.window_batch]
    print(
        f"device {device}, {torch.get_num_threads()} threads, volume {tuple(args.shape)}, "
        f"patch {patch}, plain U-Net {count_parameters(unet)} parameters, "
        f"{ours['forwards'][1]} windows"
    )
    for k in (8, 4, 2, 1):
        print(
            f"ours TTA {k} (window batch {args.window_batch}): {times[k]:.3f} s/case   "
            f"time/(k * time TTA1) = {times[k] / (k * times[1]):.2f}"
        )
    if args.window_batch != 1:
        print(f"ours window batch 1: TTA 1 {ours[1][1]:.3f} s/case, TTA 8 {ours[1][8]:.3f} s/case")
    compare_monai(args, net, volume, patch, device)
    compare_nnunet(args, plan, ours, count_parameters(unet))


if __name__ == "__main__":
    main()
