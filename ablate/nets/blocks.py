"""Blocks of the U-Nets: plain conv, post-activation residual, pre-activation residual (nnU-Net
v2's / dynamic-network-architectures'), and nnU-Net v1's two residual blocks (Isensee 2019).

Every op is nnU-Net's: Conv3d with bias and padding k // 2, InstanceNorm3d (affine, eps 1e-5),
LeakyReLU(0.01). A *stage builder* turns (in_channels, out_channels, kernel, stride, units) into one
encoder stage whose first unit carries the stride; the U-Net skeleton (unet.py) only sees builders.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Triple = tuple[int, int, int]
StageBuilder = Callable[[int, int, Triple, Triple, int], nn.Module]
UnitBuilder = Callable[[int, int, Triple], nn.Module]

LEAKY_SLOPE = 1e-2


def conv3d(
    in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1), bias: bool = True
) -> nn.Conv3d:
    padding = tuple(k // 2 for k in kernel)
    return nn.Conv3d(in_ch, out_ch, kernel, stride, padding, bias=bias)


def norm(channels: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)


def act() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def conv_norm_act(
    in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)
) -> nn.Sequential:
    return nn.Sequential(conv3d(in_ch, out_ch, kernel, stride), norm(out_ch), act())


def norm_act_conv(
    in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)
) -> nn.Sequential:
    """A pre-activation conv unit (used by the pre-act decoder)."""
    return nn.Sequential(norm(in_ch), act(), conv3d(in_ch, out_ch, kernel, stride))


def _is_strided(stride: Triple) -> bool:
    return any(s != 1 for s in stride)


def _projection(in_ch: int, out_ch: int, stride: Triple, with_norm: bool) -> nn.Module:
    """ResNet-D shortcut: AvgPool(stride), 1x1x1 conv (no bias) [+ norm]; identity if shape kept."""
    ops: list[nn.Module] = []
    if _is_strided(stride):
        ops.append(nn.AvgPool3d(stride, stride))
    if in_ch != out_ch:
        ops.append(nn.Conv3d(in_ch, out_ch, 1, bias=False))
        if with_norm:
            ops.append(norm(out_ch))
    return nn.Sequential(*ops) if ops else nn.Identity()


class ResidualBlock(nn.Module):
    """Post-activation ResNet-D block (DNA's BasicBlockD).

    act(norm(conv(act(norm(conv(x))))) + skip(x)); conv1 carries the stride.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__()
        self.conv1 = conv3d(in_ch, out_ch, kernel, stride)
        self.norm1 = norm(out_ch)
        self.act1 = act()
        self.conv2 = conv3d(out_ch, out_ch, kernel)
        self.norm2 = norm(out_ch)
        self.skip = _projection(in_ch, out_ch, stride, with_norm=True)
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))  # (B, C_out, Z', Y', X')
        return self.act2(out + self.skip(x))

    def zero_init_residual(self) -> None:
        """The block starts as its shortcut (DNA's init_last_bn_before_add_to_0)."""
        nn.init.zeros_(self.norm2.weight)
        nn.init.zeros_(self.norm2.bias)


class PreActResidualBlock(nn.Module):
    """Pre-activation block (He et al. 2016): conv(act(norm(conv(act(norm(x)))))) + shortcut.

    When the shape changes, the projection sees the pre-activated input (nnU-Net v1's
    BasicPreActResidualBlock); otherwise the shortcut is the raw input.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__()
        self.norm1 = norm(in_ch)
        self.act1 = act()
        self.conv1 = conv3d(in_ch, out_ch, kernel, stride)
        self.norm2 = norm(out_ch)
        self.act2 = act()
        self.conv2 = conv3d(out_ch, out_ch, kernel)
        self.projects = _is_strided(stride) or in_ch != out_ch
        self.skip = _projection(in_ch, out_ch, stride, with_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))  # (B, C_in, Z, Y, X); not in place: x may be the shortcut
        shortcut = self.skip(pre) if self.projects else x
        return self.conv2(self.act2(self.norm2(self.conv1(pre)))) + shortcut

    def zero_init_residual(self) -> None:
        """No norm follows the last conv, so zero that conv instead (reference nnunet.md 2.4)."""
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)


def _strided_projection(in_ch: int, out_ch: int, stride: Triple, with_norm: bool) -> nn.Module:
    """nnU-Net v1's shortcut: a strided 1x1x1 conv (no bias) [+ norm] whenever the block strides
    or widens (also a strided block that keeps its width); identity otherwise."""
    if not (_is_strided(stride) or in_ch != out_ch):
        return nn.Identity()
    conv = nn.Conv3d(in_ch, out_ch, 1, stride, bias=False)
    return nn.Sequential(conv, norm(out_ch)) if with_norm else nn.Sequential(conv)


class V1ResidualBlock(ResidualBlock):
    """nnU-Net v1's BasicResidualBlock (Isensee 2019's residual encoder): the post-activation
    block above with v1's strided-conv shortcut; v1 initialises it He only (no zeroed norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__(in_ch, out_ch, kernel, stride)
        self.skip = _strided_projection(in_ch, out_ch, stride, with_norm=True)

    def zero_init_residual(self) -> None:
        pass


class V1PreActResidualBlock(PreActResidualBlock):
    """nnU-Net v1's BasicPreActResidualBlock: the pre-activation block above with v1's
    strided-conv shortcut on the pre-activated input; He initialisation only."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__(in_ch, out_ch, kernel, stride)
        self.skip = _strided_projection(in_ch, out_ch, stride, with_norm=False)

    def zero_init_residual(self) -> None:
        pass


def _stacked(unit: Callable[..., nn.Module]) -> StageBuilder:
    def build(in_ch: int, out_ch: int, kernel: Triple, stride: Triple, units: int) -> nn.Sequential:
        first = unit(in_ch, out_ch, kernel, stride)
        return nn.Sequential(first, *(unit(out_ch, out_ch, kernel) for _ in range(units - 1)))

    return build


plain_stage: StageBuilder = _stacked(conv_norm_act)
residual_stage: StageBuilder = _stacked(ResidualBlock)
preact_stage: StageBuilder = _stacked(PreActResidualBlock)
v1_residual_stage: StageBuilder = _stacked(V1ResidualBlock)
v1_preact_stage: StageBuilder = _stacked(V1PreActResidualBlock)


def init_weights(net: nn.Module, generator: torch.Generator | None = None) -> None:
    """nnU-Net's init: kaiming_normal_(a=1e-2) on (transposed) convs, bias 0; residuals zeroed."""
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in net.modules():
        if isinstance(module, (ResidualBlock, PreActResidualBlock)):
            module.zero_init_residual()
