"""Networks: shapes, deep supervision, analytic parameter/FLOP counts, cross-check against DNA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ablate.config import TrainConfig
from ablate.errors import ConfigError
from ablate.nets import ARCHITECTURES, build_network, count_flops, count_parameters
from ablate.nets.blocks import PreActResidualBlock, ResidualBlock
from ablate.nets.unet import encoder_units, stage_features
from ablate.plan import ChannelNormalization, Plan

PATCH = (16, 32, 32)


def make_plan(
    n_stages: int,
    features: list[int] | None = None,
    in_channels: int = 1,
    classes: int = 3,
    anisotropic: bool = True,
) -> Plan:
    if anisotropic:  # stage 1 pools only in-plane; stage 0 uses in-plane kernels
        pools = [(1, 1, 1), (1, 2, 2)] + [(2, 2, 2)] * (n_stages - 2)
        convs = [(1, 3, 3)] + [(3, 3, 3)] * (n_stages - 1)
    else:
        pools = [(1, 1, 1)] + [(2, 2, 2)] * (n_stages - 1)
        convs = [(3, 3, 3)] * n_stages
    features = features or [min(4 * 2**s, 32) for s in range(n_stages)]
    return Plan(
        target_spacing_mm=(3.0, 1.0, 1.0),
        patch_size=PATCH,
        batch_size=2,
        pool_kernel_sizes=pools,
        conv_kernel_sizes=convs,
        features_per_stage=features,
        num_input_channels=in_channels,
        num_classes=classes,
        normalization=[ChannelNormalization("zscore")] * in_channels,
        median_shape=PATCH,
        anisotropic=anisotropic,
    )


def expected_shapes(plan: Plan, batch: int) -> list[tuple[int, ...]]:
    shapes, size = [], list(plan.patch_size)
    for pool in plan.pool_kernel_sizes[:-1]:
        size = [s // p for s, p in zip(size, pool, strict=True)]
        shapes.append((batch, plan.num_classes, *size))
    return shapes


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("n_stages", [3, 5])
def test_forward_backward_shapes_with_deep_supervision(arch: str, n_stages: int) -> None:
    plan = make_plan(n_stages, in_channels=2)
    net = build_network(TrainConfig(arch=arch, blocks_per_stage=(1, 2)), plan)
    x = torch.randn(2, 2, *PATCH)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == n_stages - 1
    assert [tuple(o.shape) for o in outputs] == expected_shapes(plan, 2)
    sum(o.square().mean() for o in outputs).backward()
    stem_or_first = next(net.parameters())
    assert stem_or_first.grad is not None and torch.isfinite(stem_or_first.grad).all()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_deep_supervision_off_returns_full_resolution_tensor(arch: str) -> None:
    plan = make_plan(3)
    net = build_network(TrainConfig(arch=arch, deep_supervision="none"), plan)
    assert net.deep_supervision is False
    x = torch.randn(1, 1, *PATCH)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *PATCH)
    net.deep_supervision = True
    with torch.no_grad():
        outputs = net(x)
    assert torch.allclose(outputs[0], out, atol=1e-5)  # same weights, same full-res head


def test_plain_parameter_count_matches_hand_count() -> None:
    # 3 stages, features (2, 4, 8), 1 input, 3 classes, kernels 3^3 (27 taps), pools 2^3 (8 taps)
    # conv(ci, co) = 27*ci*co + co; InstanceNorm(co) = 2*co; transposed conv = 8*ci*co + co
    enc0 = (27 * 1 * 2 + 2) + 4 + (27 * 2 * 2 + 2) + 4  # 174
    enc1 = (27 * 2 * 4 + 4) + 8 + (27 * 4 * 4 + 4) + 8  # 672
    enc2 = (27 * 4 * 8 + 8) + 16 + (27 * 8 * 8 + 8) + 16  # 2640
    dec1 = (8 * 8 * 4 + 4) + (27 * 8 * 4 + 4) + 8 + (27 * 4 * 4 + 4) + 8 + (4 * 3 + 3)  # 1595
    dec0 = (8 * 4 * 2 + 2) + (27 * 4 * 2 + 2) + 4 + (27 * 2 * 2 + 2) + 4 + (2 * 3 + 3)  # 411
    assert enc0 + enc1 + enc2 + dec1 + dec0 == 5492
    net = build_network(TrainConfig(arch="plain"), make_plan(3, [2, 4, 8], anisotropic=False))
    assert count_parameters(net) == 5492


def test_count_flops_of_single_convs_by_hand() -> None:
    conv = nn.Conv3d(1, 2, 3, padding=1)
    # output 2*3*4 = 24 voxels x 2 channels x 27 taps x 1 input channel = 1296 MACs
    assert count_flops(conv, (2, 3, 4), in_channels=1) == 2 * 1296
    up = nn.ConvTranspose3d(2, 1, 2, stride=2)
    # 1*2*2 = 4 input voxels x 2 in x 1 out x 8 taps = 64 MACs
    assert count_flops(up, (1, 2, 2), in_channels=2) == 2 * 64


def test_count_flops_grows_with_patch_and_leaves_net_usable() -> None:
    net = build_network(TrainConfig(), make_plan(3))
    small = count_flops(net, PATCH, 1)
    assert count_flops(net, (32, 32, 32), 1) == 2 * small  # conv FLOPs are linear in voxels
    assert next(net.parameters()).device.type == "cpu"


def test_residual_blocks_start_as_their_shortcut() -> None:
    net = build_network(TrainConfig(arch="residual"), make_plan(3))
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 1 + 3 + 4  # default ResEnc blocks (1, 3, 4)
    assert all(b.norm2.weight.abs().sum() == 0 and b.norm2.bias.abs().sum() == 0 for b in blocks)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.bias is not None]
    assert all(c.bias.abs().sum() == 0 for c in convs)
    pre = [
        m
        for m in build_network(TrainConfig(arch="preact"), make_plan(3)).modules()
        if isinstance(m, PreActResidualBlock)
    ]
    assert pre and all(b.conv2.weight.abs().sum() == 0 for b in pre)


def test_generator_makes_init_reproducible() -> None:
    def weights(seed: int) -> torch.Tensor:
        torch.randn(7)  # global RNG state must not matter
        net = build_network(
            TrainConfig(), make_plan(3), generator=torch.Generator().manual_seed(seed)
        )
        return torch.cat([p.flatten() for p in net.parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


def test_feature_and_block_rules() -> None:
    plan = make_plan(5, [32, 64, 128, 256, 320])
    assert stage_features(TrainConfig(base_features=24), plan) == [24, 48, 96, 192, 320]
    assert stage_features(TrainConfig(), plan) == [32, 64, 128, 256, 320]
    residual = ARCHITECTURES["residual"]
    assert encoder_units(TrainConfig(), residual, 7) == [1, 3, 4, 6, 6, 6, 6]
    assert encoder_units(TrainConfig(blocks_per_stage=(1, 2, 3, 4)), residual, 5) == [1, 2, 3, 4, 4]
    assert encoder_units(TrainConfig(blocks_per_stage=(1, 2, 3, 4)), residual, 2) == [1, 2]
    assert encoder_units(TrainConfig(blocks_per_stage=(1, 2)), ARCHITECTURES["plain"], 3) == [
        2,
        2,
        2,
    ]
    with pytest.raises(ConfigError, match="blocks_per_stage"):
        encoder_units(TrainConfig(blocks_per_stage=(1, 0)), residual, 3)


def test_unknown_architecture_names_the_closest_match() -> None:
    with pytest.raises(
        ConfigError,
        match=r"train\.arch.*valid: plain, preact, preact_v1, residual, residual_v1.*'residual'",
    ):
        build_network(TrainConfig(arch="resdual"), make_plan(3))


def test_inconsistent_plan_is_a_config_error() -> None:
    plan = make_plan(3)
    broken = Plan(**{**plan.__dict__, "conv_kernel_sizes": plan.conv_kernel_sizes[:2]})
    with pytest.raises(ConfigError, match="plan.json"):
        build_network(TrainConfig(), broken)


# --- cross-check against dynamic_network_architectures (nnU-Net's own networks) -------------------


def dna_network(
    arch: str, plan: Plan, blocks: list[int], nonlin: type[nn.Module] = nn.LeakyReLU
) -> nn.Module:
    from dynamic_network_architectures.architectures import unet  # the oracle: never skipped

    common = dict(
        input_channels=plan.num_input_channels,
        n_stages=plan.num_stages,
        features_per_stage=plan.features_per_stage,
        conv_op=nn.Conv3d,
        kernel_sizes=plan.conv_kernel_sizes,
        strides=plan.pool_kernel_sizes,
        num_classes=plan.num_classes,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nonlin,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    if arch == "plain":
        return unet.PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)
    return unet.ResidualEncoderUNet(n_blocks_per_stage=blocks, n_conv_per_stage_decoder=1, **common)


@pytest.mark.parametrize("arch", ["plain", "residual"])
@pytest.mark.parametrize("n_stages", [3, 5])
@pytest.mark.parametrize("nonlin", ["leaky_relu", "relu"])
def test_matches_dna_parameter_count_and_outputs(arch: str, n_stages: int, nonlin: str) -> None:
    plan = make_plan(n_stages, in_channels=2)
    blocks = encoder_units(TrainConfig(), ARCHITECTURES["residual"], n_stages)
    activation = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU}[nonlin]
    reference = dna_network(arch, plan, blocks, activation)
    ours = build_network(TrainConfig(arch=arch, nonlin=nonlin), plan)
    kinds = {type(m) for m in ours.modules()}
    assert (nn.LeakyReLU in kinds) is (nonlin == "leaky_relu") and (nn.ReLU in kinds) is (
        nonlin == "relu"
    )
    assert count_parameters(ours) == count_parameters(reference)
    # same registration order -> copy DNA's weights positionally, then the outputs must agree
    theirs = list(reference.parameters())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mine, ref in zip(ours.parameters(), theirs, strict=True):
            ref.copy_(torch.randn(ref.shape, generator=generator) * 0.2)
            mine.copy_(ref)
        x = torch.randn(1, 2, *PATCH, generator=generator)
        for a, b in zip(ours(x), reference(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4)


# --- Isensee 2019 (KiTS19): the paper's three networks at its patch and spacing ----------------


def _conv(cin: int, cout: int, kernel, bias: bool = True) -> int:
    return cin * cout * math.prod(kernel) + (cout if bias else 0)


def _norm(channels: int) -> int:  # InstanceNorm3d(affine=True)
    return 2 * channels


def _v1_plain_decoder(features, kernels, pools, classes: int) -> int:
    """nnU-Net v1's PlainConvUNetDecoder with one conv per stage and deep supervision: per level,
    ConvTranspose3d(bias=False), conv(2f -> f)-IN-nonlin, a 1x1x1 head without bias."""
    total = 0
    for s in range(len(features) - 1):
        total += features[s + 1] * features[s] * math.prod(pools[s + 1])
        total += _conv(2 * features[s], features[s], kernels[s]) + _norm(features[s])
        total += _conv(features[s], classes, (1, 1, 1), bias=False)
    return total


def _v1_encoder(features, kernels, pools, blocks, preact: bool) -> int:
    """v1's ResidualUNetEncoder (BasicResidualBlock: conv-IN-nonlin-conv-IN, shortcut 1x1x1 conv
    without bias + IN when strided or widened) or PreActResidualUNetEncoder (BasicPreAct-
    ResidualBlock: IN-nonlin-conv-IN-nonlin-conv, the same shortcut without IN); the 3x3x3 stem
    is conv-IN-nonlin (residual) or a bare conv (pre-activation)."""
    total = _conv(1, features[0], (3, 3, 3)) + (0 if preact else _norm(features[0]))
    cin = features[0]
    for f, k, p, n in zip(features, kernels, pools, blocks, strict=True):
        for i in range(n):
            c = cin if i == 0 else f
            total += _conv(c, f, k) + _conv(f, f, k) + _norm(c if preact else f) + _norm(f)
            if i == 0 and (any(s != 1 for s in p) or c != f):
                total += _conv(c, f, (1, 1, 1), bias=False) + (0 if preact else _norm(f))
        cin = f
    return total


def test_isensee_2019_kits19_parameter_counts_at_the_papers_patch() -> None:
    """The paper's setup: 3.22 x 1.62 x 1.62 mm, patch 80 x 160 x 160, 3 classes, 1 CT channel.

    Plain: equal to dynamic-network-architectures' PlainConvUNet with 30 base features. Residual
    and pre-activation: nnU-Net v1's FabiansUNet and FabiansPreActUNet (the paper's encoders with
    blocks 1, 2, 3, 4, 4, 4 and one decoder conv per stage) counted by hand from v1's block
    definitions (v1 cannot be installed beside v2): residual_v1 / preact_v1 equal them; the
    nnU-Net v2 blocks (residual / preact) differ by exactly the terms named below."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from ablate.config import PlanConfig
    from ablate.nets.summary import fixed_plan, network_parameters

    plan = fixed_plan(
        PlanConfig(target_spacing_mm=(3.22, 1.62, 1.62), patch_size=(80, 160, 160)), 3
    )
    pools, kernels = plan.pool_kernel_sizes, plan.conv_kernel_sizes
    assert pools == [(1, 1, 1)] + [(2, 2, 2)] * 4 + [(1, 2, 2)]  # down to 5 x 5 x 5
    assert kernels == [(3, 3, 3)] * 6
    plain_features = [30, 60, 120, 240, 320, 320]
    with torch.device("meta"):
        dna = PlainConvUNet(
            1,
            6,
            plain_features,
            nn.Conv3d,
            kernels,
            pools,
            2,
            3,
            2,
            True,
            nn.InstanceNorm3d,
            {"eps": 1e-5, "affine": True},
            None,
            None,
            nn.LeakyReLU,
            {"inplace": True},
            deep_supervision=True,
        )
    plain = network_parameters(TrainConfig(arch="plain", base_features=30), plan)
    assert plain == count_parameters(dna) == 29_286_465

    features, blocks = [24, 48, 96, 192, 320, 320], [1, 2, 3, 4, 4, 4]
    paper = dict(base_features=24, blocks_per_stage=(1, 2, 3, 4), nonlin="relu")
    residual_v1 = network_parameters(TrainConfig(arch="residual_v1", **paper), plan)
    preact_v1 = network_parameters(TrainConfig(arch="preact_v1", **paper), plan)
    residual = network_parameters(TrainConfig(arch="residual", **paper), plan)
    preact = network_parameters(TrainConfig(arch="preact", **paper), plan)
    decoder = _v1_plain_decoder(features, kernels, pools, 3)
    v1_residual = _v1_encoder(features, kernels, pools, blocks, preact=False) + decoder
    v1_preact = (
        _v1_encoder(features, kernels, pools, blocks, preact=True)
        + sum(_norm(f) for f in features[:-1])  # FabiansPreActUNet's IN-nonlin on each skip
        + decoder
    )
    # v2 / DNA conventions: transposed convs and heads with bias; a strided block that keeps its
    # width (stage 5, 320 -> 320) shortcuts by average pooling alone, where v1 adds a 1x1x1 conv
    biases = sum(features[:-1]) + 5 * 3
    v1_same_width_shortcut = 320 * 320
    assert residual == v1_residual + biases - v1_same_width_shortcut - _norm(320)
    # ablate's pre-activation decoder normalises the concatenation (2f) and each head's input
    # (f) where v1 normalises the conv output (f) and the skip (f): 2f more per level
    assert preact == v1_preact + biases - v1_same_width_shortcut + sum(2 * f for f in features[:-1])
    assert (residual, preact) == (61_596_199, 61_596_967)
    assert (v1_residual, v1_preact) == (61_698_544, 61_697_312)
    assert (residual_v1, preact_v1) == (v1_residual, v1_preact)


def test_v1_options_leave_existing_networks_and_their_checkpoint_keys_alone() -> None:
    plan = make_plan(4)
    for arch in ("plain", "residual", "preact"):
        keys = build_network(TrainConfig(arch=arch), plan).state_dict().keys()
        assert not any(k.startswith("skip_units") for k in keys)
    v1 = build_network(TrainConfig(arch="preact_v1"), plan)
    assert len(v1.skip_units) == plan.num_stages - 1  # IN-act on every skip, none on the bottleneck
    assert all(up.bias is None for up in v1.upsamplers) and all(h.bias is None for h in v1.heads)
