"""Model cost: parameter count and forward FLOPs at a patch size."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all seg heads included)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    kernel_volume = math.prod(module.kernel_size)
    if isinstance(module, (nn.ConvTranspose3d, nn.ConvTranspose2d)):
        # every input voxel scatters a full kernel into every output channel
        in_voxels = inputs[0].shape[0] * math.prod(inputs[0].shape[2:])
        return in_voxels * module.in_channels * module.out_channels * kernel_volume // module.groups
    out_voxels = output.shape[0] * math.prod(output.shape[2:])
    return out_voxels * module.out_channels * (module.in_channels // module.groups) * kernel_volume


def count_flops(net: nn.Module, patch_size: tuple[int, ...], in_channels: int) -> int:
    """Forward FLOPs for one patch (batch 1): 2 x multiply-accumulates of Conv3d/ConvTranspose3d.

    Measured with forward hooks on a copy of `net` moved to the meta device (no memory, no compute),
    so shapes are exact for any topology. Biases, norms, activations and pooling are not counted.
    The heads that run are those of the net's current `deep_supervision` setting.
    """
    meta_net = copy.deepcopy(net).to("meta")
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, inputs, output)

    for module in meta_net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        meta_net(torch.zeros((1, in_channels, *patch_size), device="meta"))  # (1, C, Z, Y, X)
    return 2 * total
