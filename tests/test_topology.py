import pytest

from ablate.topology import (
    RESENC_ENCODER_BLOCKS,
    determine_transpose,
    features_per_stage,
    pad_to_divisible,
    plain_unet_feature_map_size,
    pool_and_conv_props,
    residual_unet_feature_map_size,
)


def test_isotropic_128_pools_five_times_per_axis():
    t = pool_and_conv_props((1.0, 1.0, 1.0), (128, 128, 128))
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five pools, the next would leave < 4
    assert t.num_pool_per_axis == (5, 5, 5)
    assert t.pool_kernel_sizes == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert t.conv_kernel_sizes == [(3, 3, 3)] * 6
    assert t.patch_size == (128, 128, 128)
    assert t.divisible_by == (32, 32, 32)


def test_anisotropic_coarse_axis_waits_until_within_2x():
    # z spacing 3.0 vs 0.75 in-plane: z pools only once in-plane spacing reaches >= 1.5*2
    t = pool_and_conv_props((3.0, 0.75, 0.75), (20, 160, 160))
    assert t.pool_kernel_sizes[1:3] == [(1, 2, 2), (1, 2, 2)]
    assert t.conv_kernel_sizes[0] == (1, 3, 3) and t.conv_kernel_sizes[1] == (1, 3, 3)
    # after two in-plane pools spacing is (3, 3, 3): z joins, kernel becomes 3
    assert t.pool_kernel_sizes[3] == (2, 2, 2) and t.conv_kernel_sizes[2] == (3, 3, 3)
    # z: 20 -> 10 -> 5 (stops: 5 < 8); in-plane 160 -> ... -> 5
    assert t.num_pool_per_axis == (2, 5, 5)
    assert t.patch_size == (20, 160, 160)


def test_lone_axis_needs_three_times_min_size_and_patch_is_padded():
    # y and x are already too small; only z (size 10 < 12) could pool -> stop immediately
    t = pool_and_conv_props((1.0, 1.0, 1.0), (10, 7, 7))
    assert t.num_pool_per_axis == (0, 0, 0)
    t = pool_and_conv_props((1.0, 1.0, 1.0), (50, 30, 30))
    # 50,30,30 -> 25,15,15 -> 13,8,8 -> 7,4,4 ; 7 < 8 stops
    assert t.num_pool_per_axis == (3, 3, 3)
    assert t.patch_size == (56, 32, 32)


def test_pad_to_divisible():
    assert pad_to_divisible((56, 64, 65), (8, 32, 32)) == (56, 64, 96)


def test_feature_map_size_by_hand_128_cube():
    # a 6-stage 3D PlainConvUNet at 128^3 (1 channel, 3 classes); by hand: encoder
    # 2*sum f*S^3 = 178,626,560; decoder 3*sum f*S^3 (levels 0-4) = 267,878,400; the top head
    # 3*128^3 = 6,291,456 -> 452,796,416 (nnU-Net's planner: no deep supervision); every head
    # 3*(128^3+...+8^3) = 7,190,016 -> 453,694,976
    t = pool_and_conv_props((1.0, 1.0, 1.0), (128, 128, 128))
    feats = features_per_stage(6)
    assert feats == [32, 64, 128, 256, 320, 320]
    assert plain_unet_feature_map_size((128,) * 3, t.pool_kernel_sizes, feats, 3) == 452_796_416
    assert (
        plain_unet_feature_map_size(
            (128,) * 3, t.pool_kernel_sizes, feats, 3, deep_supervision=True
        )
        == 453_694_976
    )


def _dna_plain_unet(topo, features, in_channels, num_classes, deep_supervision):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    with torch.device("meta"):  # shapes only: no weights allocated
        return PlainConvUNet(
            in_channels,
            len(features),
            features,
            torch.nn.Conv3d,
            topo.conv_kernel_sizes,
            topo.pool_kernel_sizes,
            2,
            num_classes,
            2,
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm3d,
            nonlin=torch.nn.LeakyReLU,
            deep_supervision=deep_supervision,
        )


@pytest.mark.parametrize(
    "spacing, patch, features, classes",
    [
        ((1.0, 1.0, 1.0), (128, 128, 128), [32, 64, 128, 256, 320, 320], 3),
        ((2.75, 0.78, 0.78), (40, 224, 192), [32, 64, 128, 256, 320, 320, 320], 4),
        ((3.0, 1.0, 1.0), (14, 64, 56), [8, 16, 32, 64], 2),
    ],
)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_feature_map_size_equals_dynamic_network_architectures(
    spacing, patch, features, classes, deep_supervision
):
    t = pool_and_conv_props(spacing, patch)
    features = features[: len(t.pool_kernel_sizes)]
    net = _dna_plain_unet(t, features, 2, classes, deep_supervision)
    expected = int(net.compute_conv_feature_map_size(t.patch_size))
    assert (
        plain_unet_feature_map_size(
            t.patch_size, t.pool_kernel_sizes, features, classes, deep_supervision=deep_supervision
        )
        == expected
    )


def _dna_resenc_unet(topo, features, in_channels, num_classes, blocks, deep_supervision):
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    with torch.device("meta"):
        return ResidualEncoderUNet(
            in_channels,
            len(features),
            features,
            torch.nn.Conv3d,
            topo.conv_kernel_sizes,
            topo.pool_kernel_sizes,
            blocks,
            num_classes,
            1,
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm3d,
            nonlin=torch.nn.LeakyReLU,
            deep_supervision=deep_supervision,
        )


@pytest.mark.parametrize(
    "spacing, patch, features, classes, blocks",
    [
        ((1.0, 1.0, 1.0), (128, 128, 128), [32, 64, 128, 256, 320, 320], 3, None),
        ((2.75, 0.78, 0.78), (40, 224, 192), [32, 64, 128, 256, 320, 320, 320], 4, None),
        ((3.0, 1.0, 1.0), (14, 64, 56), [8, 16, 32, 64], 2, None),
        ((3.22, 1.62, 1.62), (80, 160, 160), [24, 48, 96, 192, 320, 320], 3, (1, 2, 3, 4, 4, 4)),
    ],
)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_residual_feature_map_size_equals_dynamic_network_architectures(
    spacing, patch, features, classes, blocks, deep_supervision
):
    t = pool_and_conv_props(spacing, patch)
    n = len(t.pool_kernel_sizes)
    features, blocks = features[:n], list((blocks or RESENC_ENCODER_BLOCKS)[:n])
    net = _dna_resenc_unet(t, features, 1, classes, blocks, deep_supervision)
    expected = int(net.compute_conv_feature_map_size(t.patch_size))
    ours = residual_unet_feature_map_size(
        t.patch_size, t.pool_kernel_sizes, features, classes, blocks, 1, deep_supervision
    )
    assert ours == expected


def test_transpose_puts_the_coarsest_axis_first():
    # sagittal: x is coarse -> plan axes (x, z, y); backward[a] = where image axis a went
    assert determine_transpose((1.0, 1.0, 4.0)) == ((2, 0, 1), (1, 2, 0))
    assert determine_transpose((0.8, 5.0, 0.8)) == ((1, 0, 2), (1, 0, 2))
    assert determine_transpose((3.0, 0.8, 0.8)) == ((0, 1, 2), (0, 1, 2))
    assert determine_transpose((1.0, 1.0, 1.0)) == ((0, 1, 2), (0, 1, 2))  # ties: first axis
