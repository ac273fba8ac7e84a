"""One U-Net skeleton; architectures differ only in the blocks registered in `ARCHITECTURES`.

Skeleton: [stem] -> encoder stages (stage s downsamples by plan.pool_kernel_sizes[s] in its first
unit) -> per decoder stage: transposed conv (kernel = stride, bias) to the skip's channels, concat
with the skip, decoder units, 1x1x1 seg head. A head exists for every decoder stage (n_stages - 1),
so checkpoints load with deep supervision on or off.

Features: plan.features_per_stage, or with `cfg.base_features = b` the rule
`min(b * 2**s, max(plan.features_per_stage))` (Isensee 2019's KiTS19 24/30 base, the plan's 320
cap).

Encoder units per stage: "plain" 2 convs (nnU-Net); "residual"/"preact" take
`cfg.blocks_per_stage`, default nnU-Net ResEnc's (1, 3, 4, 6, 6, 6, ...). A tuple shorter than
the plan's stage count repeats its last entry, a longer one is cut, so (1, 2, 3, 4) gives
Isensee 2019's 1, 2, 3, 4, 4, ... at any depth.
`blocks_per_stage` is ignored by "plain".

"residual_v1" / "preact_v1" are nnU-Net v1's FabiansUNet / FabiansPreActUNet, the networks of
Isensee 2019 (KiTS19): v1's blocks (a strided 1x1x1 conv shortcut), a 3x3x3 stem, bias-free
transposed convs and heads; preact_v1 normalises and activates each skip, then decodes with plain
conv-norm-act units. They are initialised He only, as v1 (no zeroed residual branch).

A 2d plan (nnU-Net's 2d configuration, held as a flat plan: patch (1, Y, X)) gets the same
skeleton in 2D: it is built with (1, k, k) kernels and (1, s, s) strides, then every 3D op is
swapped for its 2D twin with the same weights (`flatten_to_2d`), and `forward` drops the
singleton slice axis on the way in and restores it on the way out, so callers keep passing
(B, C, 1, Y, X) patches, as nnU-Net's 2D loader does internally before it squeezes.

Nonlinearity: nnU-Net's LeakyReLU(0.01) everywhere, or with `cfg.nonlin = "relu"` ReLU everywhere
(Isensee 2019's residual networks on KiTS19). Initialisation stays nnU-Net's (He, a = 0.01).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ablate.config import TrainConfig
from ablate.errors import ConfigError
from ablate.nets import blocks
from ablate.nets.blocks import StageBuilder, Triple, UnitBuilder
from ablate.plan import Plan

RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)


@dataclass(frozen=True)
class ArchSpec:
    """What one architecture plugs into the skeleton."""

    stage: StageBuilder  # one encoder stage
    decoder_unit: UnitBuilder  # one decoder unit (in_ch, out_ch, kernel)
    decoder_units: int  # decoder units per stage
    fixed_encoder_units: int | None  # None = cfg.blocks_per_stage (residual encoders)
    stem: UnitBuilder | None = None  # runs before stage 0 at full resolution
    pre_head: Callable[[int], nn.Module] | None = None  # before each seg head
    summary: str = ""
    stem_kernel: Triple | None = None  # None = the plan's stage-0 kernel
    skip_unit: Callable[[int], nn.Module] | None = None  # on each skip before the concat
    up_bias: bool = True  # transposed convs with bias (v2) or without (v1)
    head_bias: bool = True  # seg heads with bias (v2) or without (v1)


def _norm_act(channels: int) -> nn.Module:
    return nn.Sequential(blocks.norm(channels), blocks.act())


ARCHITECTURES: dict[str, ArchSpec] = {
    "plain": ArchSpec(
        stage=blocks.plain_stage,
        decoder_unit=blocks.conv_norm_act,
        decoder_units=2,
        fixed_encoder_units=2,
        summary="nnU-Net PlainConvUNet: 2x conv-IN-LReLU per stage, encoder and decoder",
    ),
    "residual": ArchSpec(
        stage=blocks.residual_stage,
        decoder_unit=blocks.conv_norm_act,
        decoder_units=1,
        fixed_encoder_units=None,
        stem=blocks.conv_norm_act,
        summary="nnU-Net ResEnc: BasicBlockD encoder, 1 conv per decoder stage",
    ),
    "preact": ArchSpec(
        stage=blocks.preact_stage,
        decoder_unit=blocks.norm_act_conv,
        decoder_units=1,
        fixed_encoder_units=None,
        stem=blocks.conv3d,
        pre_head=_norm_act,
        summary="pre-act residual encoder (Isensee 2019), IN-LReLU-conv decoder, norm+act, heads",
    ),
    # nnU-Net v1's networks of Isensee 2019 (KiTS19), as generic_modular_residual_UNet.py /
    # generic_modular_preact_residual_UNet.py define them
    "residual_v1": ArchSpec(
        stage=blocks.v1_residual_stage,
        decoder_unit=blocks.conv_norm_act,
        decoder_units=1,
        fixed_encoder_units=None,
        stem=blocks.conv_norm_act,
        stem_kernel=(3, 3, 3),
        up_bias=False,
        head_bias=False,
        summary="nnU-Net v1's FabiansUNet: BasicResidualBlock encoder, 1 conv per decoder stage",
    ),
    "preact_v1": ArchSpec(
        stage=blocks.v1_preact_stage,
        decoder_unit=blocks.conv_norm_act,
        decoder_units=1,
        fixed_encoder_units=None,
        stem=blocks.conv3d,
        stem_kernel=(3, 3, 3),
        skip_unit=_norm_act,
        up_bias=False,
        head_bias=False,
        summary="nnU-Net v1's FabiansPreActUNet: pre-act encoder, IN-act on skips, conv decoder",
    ),
}


class UNet(nn.Module):
    """U-Net skeleton. `forward` returns [full res, next lower, ...] while `deep_supervision`, else
    the full-resolution logits (B, K, Z, Y, X)."""

    def __init__(
        self,
        spec: ArchSpec,
        in_channels: int,
        num_classes: int,
        features: list[int],
        kernels: list[Triple],
        strides: list[Triple],
        encoder_units: list[int],
    ):
        super().__init__()
        self.deep_supervision = True
        self.flat = False  # a 2D network fed (B, C, 1, Y, X) patches (see flatten_to_2d)
        stem_kernel = spec.stem_kernel or kernels[0]
        self.stem = spec.stem(in_channels, features[0], stem_kernel) if spec.stem else nn.Identity()
        channels = features[0] if spec.stem else in_channels
        self.encoder = nn.ModuleList()
        for f, k, s, units in zip(features, kernels, strides, encoder_units, strict=True):
            self.encoder.append(spec.stage(channels, f, k, s, units))
            channels = f
        self.decoder = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.skip_units = nn.ModuleList()  # empty unless spec.skip_unit (no keys, no parameters)
        for s in reversed(range(len(features) - 1)):  # deepest skip first
            f, k = features[s], kernels[s]
            units = [
                spec.decoder_unit(2 * f if i == 0 else f, f, k) for i in range(spec.decoder_units)
            ]
            self.decoder.append(nn.Sequential(*units))
            up_stride = strides[s + 1]
            self.upsamplers.append(
                nn.ConvTranspose3d(features[s + 1], f, up_stride, up_stride, bias=spec.up_bias)
            )
            head = nn.Conv3d(f, num_classes, 1, bias=spec.head_bias)
            self.heads.append(nn.Sequential(spec.pre_head(f), head) if spec.pre_head else head)
            if spec.skip_unit:
                self.skip_units.append(spec.skip_unit(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.flat:
            out = self._forward(x[:, :, 0])  # (B, C, Y, X)
            if isinstance(out, list):
                return [o[:, :, None] for o in out]
            return out[:, :, None]  # (B, K, 1, Y, X)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)  # (B, C0, Z, Y, X)
        skips = []
        for stage in self.encoder:
            x = stage(x)  # (B, C_s, Z_s, Y_s, X_s)
            skips.append(x)
        outputs = []
        last = len(self.decoder) - 1
        for i, (up, decode, head) in enumerate(
            zip(self.upsamplers, self.decoder, self.heads, strict=True)
        ):
            x = up(x)  # (B, C_skip, Z_skip, Y_skip, X_skip)
            skip = self.skip_units[i](skips[-(i + 2)]) if self.skip_units else skips[-(i + 2)]
            x = decode(torch.cat((x, skip), dim=1))  # (B, C_skip, Z_skip, Y_skip, X_skip)
            if self.deep_supervision or i == last:
                outputs.append(head(x))  # (B, K, Z_skip, Y_skip, X_skip)
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]


def get_arch(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        valid = ", ".join(sorted(ARCHITECTURES))
        close = difflib.get_close_matches(name, ARCHITECTURES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"train.arch: unknown architecture '{name}'; valid: {valid}{hint}")
    return ARCHITECTURES[name]


def stage_features(cfg: TrainConfig, plan: Plan) -> list[int]:
    if cfg.base_features is None:
        return list(plan.features_per_stage)
    cap = max(plan.features_per_stage)
    return [min(cfg.base_features * 2**s, cap) for s in range(plan.num_stages)]


def encoder_units(cfg: TrainConfig, spec: ArchSpec, n_stages: int) -> list[int]:
    if spec.fixed_encoder_units is not None:
        return [spec.fixed_encoder_units] * n_stages
    wanted = tuple(cfg.blocks_per_stage or RESENC_BLOCKS)
    if not wanted or min(wanted) < 1:
        raise ConfigError(
            f"train.blocks_per_stage: {wanted} needs positive block counts, e.g. [1, 3, 4, 6, 6, 6]"
        )
    return [wanted[min(s, len(wanted) - 1)] for s in range(n_stages)]


def _check_plan(plan: Plan) -> None:
    n = plan.num_stages
    if n < 2 or len(plan.conv_kernel_sizes) != n or len(plan.pool_kernel_sizes) != n:
        lengths = (n, len(plan.conv_kernel_sizes), len(plan.pool_kernel_sizes))
        raise ConfigError(
            f"plan.json: features_per_stage, conv_kernel_sizes, pool_kernel_sizes have lengths "
            f"{lengths}; they need one equal length >= 2; re-run planning"
        )


def build_network(cfg: TrainConfig, plan: Plan, generator: torch.Generator | None = None) -> UNet:
    """The network `cfg.arch` on `plan`'s topology, nnU-Net-initialised (from `generator` if given).

    `net.deep_supervision` starts as `cfg.deep_supervision != "none"`; training may toggle it.
    """
    spec = get_arch(cfg.arch)
    _check_plan(plan)
    flat = plan.is_2d
    if flat and spec.stem_kernel is not None:
        spec = replace(spec, stem_kernel=(1, *spec.stem_kernel[1:]))
    net = UNet(
        spec,
        in_channels=plan.network_input_channels,
        num_classes=plan.num_classes,
        features=stage_features(cfg, plan),
        kernels=[tuple(k) for k in plan.conv_kernel_sizes],
        strides=[tuple(p) for p in plan.pool_kernel_sizes],
        encoder_units=encoder_units(cfg, spec, plan.num_stages),
    )
    if cfg.nonlin == "relu":
        use_relu(net)
    blocks.init_weights(net, generator)
    if flat:
        flatten_to_2d(net)
    net.deep_supervision = cfg.deep_supervision != "none"
    return net


def _conv_2d(conv: nn.Conv3d | nn.ConvTranspose3d) -> nn.Module:
    """The 2D twin of a conv whose kernel, stride and padding are 1 / 0 on the slice axis."""
    if conv.kernel_size[0] != 1 or conv.stride[0] != 1 or conv.padding[0] != 0:
        raise ConfigError(f"a 2d plan needs kernels and strides of 1 on the slice axis; got {conv}")
    kind = nn.ConvTranspose2d if isinstance(conv, nn.ConvTranspose3d) else nn.Conv2d
    twin = kind(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[1:],
        conv.stride[1:],
        conv.padding[1:],
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        twin.weight.copy_(conv.weight[:, :, 0])
        if conv.bias is not None:
            twin.bias.copy_(conv.bias)
    return twin


def _op_2d(module: nn.Module) -> nn.Module | None:
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        return _conv_2d(module)
    if isinstance(module, nn.InstanceNorm3d):
        twin = nn.InstanceNorm2d(module.num_features, module.eps, affine=module.affine)
        if module.affine:
            with torch.no_grad():
                twin.weight.copy_(module.weight)
                twin.bias.copy_(module.bias)
        return twin
    if isinstance(module, nn.AvgPool3d):
        kernel, stride = module.kernel_size, module.stride
        return nn.AvgPool2d(tuple(kernel[1:]), tuple(stride[1:]))
    return None


def flatten_to_2d(net: UNet) -> UNet:
    """Swap every 3D op of a network built on a flat plan for its 2D twin, weights kept, so the
    network is nnU-Net's 2D U-Net (Conv2d, InstanceNorm2d); `forward` still takes and returns
    (B, C, 1, Y, X)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            twin = _op_2d(child)
            if twin is not None:
                setattr(module, name, twin)
    net.flat = True
    return net


def use_relu(net: nn.Module) -> None:
    """Swap every LeakyReLU of `net` for a ReLU (each activation is its own module)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.LeakyReLU):
                setattr(module, name, nn.ReLU(inplace=child.inplace))
