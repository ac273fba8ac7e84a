import math
import sys
import types

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from ablate.config import InferConfig
from ablate.errors import ConfigError
from ablate.imageio import Geometry, read_image
from ablate.infer import (
    argmax_labels,
    gaussian_importance,
    mirror_combinations,
    predict_case,
    probabilities_to_labels,
    sliding_window_logits,
    window_starts,
)
from ablate.plan import ChannelNormalization, Plan

CPU = torch.device("cpu")
PATCH = (4, 6, 8)  # (z, y, x), non-cubic


class CoordinateEcho(nn.Module):
    """Returns its input as logits; with deep supervision on it would return a list."""

    def __init__(self):
        super().__init__()
        self.deep_supervision = True
        self.calls, self.samples = 0, 0

    def forward(self, x):  # (B, C, Z, Y, X)
        self.calls += 1
        self.samples += x.shape[0]
        return [x, x[:, :, ::2, ::2, ::2]] if self.deep_supervision else x


def coordinate_map(shape) -> np.ndarray:
    return np.stack(np.indices(shape)).astype(np.float32)  # (3, Z, Y, X)


def nnunet_steps(size, patch, step):  # nnunetv2 compute_steps_for_sliding_window, one axis
    num = int(np.ceil((size - patch) / (patch * step))) + 1
    actual = (size - patch) / (num - 1) if num > 1 else 99999999999
    return [int(np.round(actual * i)) for i in range(num)]


def test_mirror_combinations_order_and_prefixes():
    assert mirror_combinations((0, 1, 2), 8) == [
        (),
        (0,),
        (1,),
        (2,),
        (0, 1),
        (0, 2),
        (1, 2),
        (0, 1, 2),
    ]
    assert mirror_combinations((0, 1, 2), 2) == [(), (0,)]
    assert mirror_combinations((1, 2), 4) == [(), (1,), (2,), (1, 2)]
    assert mirror_combinations((), 1) == [()]


def test_mirror_combinations_rejects_too_many():
    with pytest.raises(ConfigError, match="infer.tta: 8 .*give 4"):
        mirror_combinations((0, 1), 8)
    with pytest.raises(ConfigError, match="mirror_axes"):
        mirror_combinations((0, 3), 2)


def test_window_starts_matches_nnunet_formula():
    assert window_starts(10, 4) == [0, 2, 4, 6]
    assert window_starts(11, 4) == [0, 2, 4, 5, 7]  # 5 windows, stride 1.75
    assert window_starts(4, 4) == [0]
    for size in range(8, 40):
        for step in (0.5, 0.33, 1.0):
            assert window_starts(size, 8, step) == nnunet_steps(size, 8, step)
            assert window_starts(size, 8, step)[-1] == size - 8


def test_gaussian_importance_is_nnunets_normalised():
    g = gaussian_importance(PATCH)
    delta = np.zeros(PATCH)
    delta[2, 3, 4] = 1
    ref = gaussian_filter(delta, [p / 8 for p in PATCH], 0, mode="constant", cval=0)
    ref /= ref.max()
    ref[ref == 0] = ref[ref != 0].min()
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    assert g.dtype == np.float32 and g.max() == 1.0 and g[2, 3, 4] == 1.0 and g.min() > 0


@pytest.mark.parametrize("shape", [(9, 13, 20), (4, 6, 8), (3, 5, 11)])  # larger, equal, smaller
def test_sliding_window_reconstructs_position(shape):
    data = coordinate_map(shape)
    model = CoordinateEcho()
    out = sliding_window_logits(model, data, PATCH, 0.5, [()], 2, CPU)
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out.numpy(), data, atol=1e-5)
    assert model.deep_supervision is True and model.training  # restored afterwards


def test_mirror_tta_flips_back():
    data = coordinate_map((9, 13, 20))
    combos = mirror_combinations((0, 1, 2), 8)
    out = sliding_window_logits(CoordinateEcho(), data, PATCH, 0.5, combos, 2, CPU)
    np.testing.assert_allclose(out.numpy(), data, atol=1e-5)


def test_tta_changes_nothing_for_a_pointwise_model():
    gen = torch.Generator().manual_seed(0)
    model = nn.Conv3d(2, 3, kernel_size=1)
    data = torch.randn((2, 7, 9, 12), generator=gen)
    plain = sliding_window_logits(model, data, PATCH, 0.5, [()], 2, CPU)
    tta = sliding_window_logits(model, data, PATCH, 0.5, mirror_combinations((0, 1, 2), 8), 2, CPU)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-5)
    spatial = nn.Conv3d(2, 3, kernel_size=3, padding=1)  # not mirror-symmetric: TTA must matter
    a = sliding_window_logits(spatial, data, PATCH, 0.5, [()], 2, CPU)
    b = sliding_window_logits(spatial, data, PATCH, 0.5, [(), (2,)], 2, CPU)
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("window_batch", [1, 3])
def test_tta_k_runs_k_passes_per_window(k, window_batch):
    shape = (9, 13, 20)
    n_windows = math.prod(len(window_starts(s, p)) for s, p in zip(shape, PATCH, strict=True))
    model = CoordinateEcho()
    combos = mirror_combinations((0, 1, 2), k)
    sliding_window_logits(model, coordinate_map(shape), PATCH, 0.5, combos, window_batch, CPU)
    assert model.samples == k * n_windows
    assert model.calls == k * math.ceil(n_windows / window_batch)


class ConstantLogits(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values).view(1, -1, 1, 1, 1))

    def forward(self, x):  # (B, C, Z, Y, X) -> (B, K, Z, Y, X)
        return self.values.expand(x.shape[0], -1, *x.shape[2:])


def tiny_plan() -> Plan:
    return Plan(
        target_spacing_mm=(2.0, 1.0, 1.0),
        patch_size=PATCH,
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1)],
        conv_kernel_sizes=[(3, 3, 3)],
        features_per_stage=[4],
        num_input_channels=1,
        num_classes=2,
        normalization=[ChannelNormalization("zscore")],
        median_shape=(9, 13, 20),
        anisotropic=False,
    )


def test_predict_case_writes_the_argmax_label_map(tmp_path, monkeypatch):
    # a stand-in for ablate.preprocess so this test does not depend on the preprocessing stage
    image = np.zeros((5, 7, 9), dtype=np.float32)
    geometry = Geometry((2.0, 1.0, 0.5), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    props = types.SimpleNamespace(
        geometry=geometry,
        original_shape=image.shape,
        crop_bbox=((0, 5), (0, 7), (0, 9)),
        shape_after_crop=image.shape,
    )
    fake = types.ModuleType("ablate.preprocess")
    fake.preprocess_images = lambda images, geometry, plan: (np.stack(images), props)
    monkeypatch.setitem(sys.modules, "ablate.preprocess", fake)
    resample = types.ModuleType("ablate.resample")
    resample.resample_data = lambda data, shape, *args, **kwargs: data
    monkeypatch.setitem(sys.modules, "ablate.resample", resample)
    image[:, :, 5:] = 1.0
    model = nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():  # logit of class 1 minus class 0 = 4 * intensity - 2
        model.weight.copy_(torch.tensor([-2.0, 2.0]).view(2, 1, 1, 1, 1))
        model.bias.copy_(torch.tensor([1.0, -1.0]))
    out = tmp_path / "case.nii.gz"
    labels = predict_case([model], [image], geometry, tiny_plan(), InferConfig(tta=2), CPU, out)
    written, written_geometry = read_image(out)
    np.testing.assert_array_equal(labels, image.astype(np.uint8))
    np.testing.assert_array_equal(written, labels)
    assert written_geometry.spacing_mm == geometry.spacing_mm


# --- fold ensembles and region-based (sigmoid) inference ------------------------------------


def random_conv(seed: int, out_channels: int) -> nn.Module:
    with torch.random.fork_rng():  # the caller's global RNG state is restored afterwards
        torch.manual_seed(seed)
        return nn.Conv3d(1, out_channels, kernel_size=3, padding=1)


def test_probabilities_to_labels_argmax_or_regions():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.3], [0.1, 0.5, 0.6]]).reshape(3, 1, 1, 3)
    np.testing.assert_array_equal(probabilities_to_labels(probs)[0, 0], [0, 2, 2])
    regions = {"kidney": (1, 2), "tumor": (2,)}
    region_probs = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.4]]).reshape(2, 1, 1, 3)
    labels = probabilities_to_labels(region_probs, regions)
    np.testing.assert_array_equal(labels[0, 0], [1, 2, 0])
    assert labels.dtype == np.uint8


@pytest.mark.parametrize("slab", [1, 3, 8, 40])
def test_argmax_labels_equals_numpy_argmax_slab_by_slab(slab):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 17, 5, 6)).astype(np.float32)  # 17 slices: a partial last slab
    scores[:, 2] = 1.0  # exact ties: the first class wins, as np.argmax
    scores[1:3, 4, 0, :] = 7.0
    labels = argmax_labels(scores, slab=slab)
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=0))
    assert labels.dtype == np.uint8 and labels[2].max() == 0 and np.all(labels[4, 0] == 1)


def test_case_ensemble_without_models_is_a_config_error():
    from ablate.infer import CaseEnsemble

    with pytest.raises(ConfigError, match="no models"):
        CaseEnsemble(None, tiny_plan()).labels()
    with pytest.raises(ConfigError, match="valid: probabilities, logits"):
        CaseEnsemble(None, tiny_plan(), average="median")


def test_infer_checkpoint_is_final_by_default_and_absent_from_job_keys():
    """Job keys hash the dumped config: the default is left out so old studies keep their keys;
    "best" is kept, so final and best evaluations are different jobs."""
    assert InferConfig().checkpoint == "final"
    assert "checkpoint" not in InferConfig().model_dump(mode="json")
    best = InferConfig(checkpoint="best")
    assert best.model_dump(mode="json")["checkpoint"] == "best"
    assert InferConfig.model_validate_json(best.model_dump_json()) == best
    with pytest.raises(ValueError, match="checkpoint"):
        InferConfig(checkpoint="latest")


def test_model_logits_takes_the_mirror_order_of_its_config(monkeypatch):
    import ablate.infer as infer

    seen = []
    monkeypatch.setattr(infer, "sliding_window_logits", lambda *args: seen.append(args[4]))
    for order in ("nnunet_v2", "nnunet_v1"):
        infer.model_logits(None, None, tiny_plan(), InferConfig(tta=2, mirror_order=order), CPU)
    assert seen == [[(), (0,)], [(), (2,)]]  # TTA 2 flips z (v2) or x, left-right (v1)


def test_unset_window_batch_is_one_for_large_cpu_patches_and_two_otherwise(monkeypatch):
    import ablate.infer as infer

    assert infer.auto_window_batch((112, 128, 128), CPU) == 1  # KiTS-sized: nnU-Net's one
    assert infer.auto_window_batch((20, 80, 80), CPU) == 2  # batch 1 is 2-5x slower per window
    assert infer.auto_window_batch((112, 128, 128), torch.device("cuda")) == 2
    seen = []
    monkeypatch.setattr(infer, "sliding_window_logits", lambda *args: seen.append(args[5]))
    infer.model_logits(None, None, tiny_plan(), InferConfig(), CPU)
    infer.model_logits(None, None, tiny_plan(), InferConfig(window_batch=3), CPU)
    monkeypatch.setattr(infer, "LONE_WINDOW_VOXELS", math.prod(PATCH))
    infer.model_logits(None, None, tiny_plan(), InferConfig(), CPU)
    assert seen == [2, 3, 1]


def test_pad_to_patch_copies_only_when_it_pads():
    from ablate.infer import _pad_to_patch

    data = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    same, crop = _pad_to_patch(data, (4, 5, 3))
    assert same is data and crop == (slice(0, 4), slice(0, 5), slice(0, 6))
    padded, crop = _pad_to_patch(data, (7, 5, 6))  # z padded 1 before, 2 after
    assert padded.shape == (2, 7, 5, 6) and crop[0] == slice(1, 5)
    assert torch.equal(padded[(slice(None), *crop)], data) and padded[:, 0].abs().sum() == 0
