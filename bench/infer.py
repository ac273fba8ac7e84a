"""Sliding-window speed: ours against MONAI's sliding_window_inference, and TTA k = 8, 4, 2, 1.

Run: OMP_NUM_THREADS=1 python bench/infer.py [--shape 48 64 64] [--patch 24 32 32] [--repeats 3]
Goals: ours at most as slow as MONAI (gaussian, overlap 0.5) with the same number of windows;
time linear in the TTA count k. MONAI is optional (skipped when not installed).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ablate.config import TrainConfig
from ablate.device import select_device, synchronize
from ablate.infer import mirror_combinations, sliding_window_logits
from ablate.nets import build_network
from ablate.plan import ChannelNormalization, Plan


def small_plan(patch: tuple[int, int, int]) -> Plan:
    return Plan(
        target_spacing_mm=(1.0, 1.0, 1.0), patch_size=patch, batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (2, 2, 2), (2, 2, 2)], conv_kernel_sizes=[(3, 3, 3)] * 3,
        features_per_stage=[8, 16, 32], num_input_channels=1, num_classes=3,
        normalization=[ChannelNormalization("zscore")], median_shape=patch, anisotropic=False,
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
    best = float("inf")
    for _ in range(repeats):  # the minimum is robust to other jobs sharing the machine
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    parser.add_argument("--patch", type=int, nargs=3, default=(24, 32, 32))
    parser.add_argument("--window-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = select_device("auto")
    patch = tuple(args.patch)
    unet = build_network(TrainConfig(), small_plan(patch))  # plain U-Net, 3 stages, 8-32 features
    unet.deep_supervision = False
    net = WindowCounter(unet).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn((1, *args.shape), generator=gen)  # (C, Z, Y, X)

    def ours(k: int):
        combos = mirror_combinations((0, 1, 2), k)
        return lambda: sliding_window_logits(net, volume, patch, 0.5, combos, args.window_batch,
                                             device)

    net.windows = 0
    ours(1)()
    our_windows = net.windows
    times = {k: timed(ours(k), device, args.repeats) for k in (8, 4, 2, 1)}
    print(f"device {device}, volume {tuple(args.shape)}, patch {patch}, "
          f"window batch {args.window_batch}, {our_windows} windows")
    for k in (8, 4, 2, 1):
        print(f"ours TTA {k}: {times[k]:.3f} s/case   time/(k * time TTA1) = "
              f"{times[k] / (k * times[1]):.2f}")
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed: comparison skipped")
        return

    def monai():
        with torch.inference_mode():
            x = volume[None].to(device)  # (1, C, Z, Y, X)
            return sliding_window_inference(x, patch, args.window_batch, net, overlap=0.5,
                                            mode="gaussian", sigma_scale=0.125)

    net.windows = 0
    monai()
    monai_windows = net.windows
    t_monai = timed(monai, device, args.repeats)
    print(f"MONAI sliding_window_inference: {t_monai:.3f} s/case, {monai_windows} windows")
    print(f"ratio ours/MONAI (TTA 1): {times[1] / t_monai:.2f}  (goal <= 1 with equal windows: "
          f"{our_windows} vs {monai_windows})")


if __name__ == "__main__":
    main()
