"""The CUDA paths: AMP training, the reported peak GPU memory, sliding-window inference on the GPU
and the pinned-memory batch transfer. Marked `cuda`; without a CUDA device they skip with the
reason (`bench/gpu.py` runs them with `pytest -m cuda` on a GPU machine)."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.config import TrainConfig
from ablate.device import peak_memory_mb, reset_peak_memory
from ablate.infer import mirror_combinations, sliding_window_logits
from ablate.nets import build_network
from ablate.plan import ChannelNormalization, Plan
from ablate.train import _to_device, train

REPO = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason=f"no CUDA device (torch {torch.__version__}): run bench/gpu.py on a GPU"
)

PATCH = (8, 16, 16)
SHAPE = (12, 24, 28)


def small_plan() -> Plan:
    return Plan(
        target_spacing_mm=(2.0, 1.0, 1.0),
        patch_size=PATCH,
        batch_size=2,
        pool_kernel_sizes=[(1, 1, 1), (2, 2, 2), (2, 2, 2)],
        conv_kernel_sizes=[(3, 3, 3)] * 3,
        features_per_stage=[4, 8, 16],
        num_input_channels=1,
        num_classes=3,
        normalization=[ChannelNormalization("zscore")],
        median_shape=SHAPE,
        anisotropic=False,
    )


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


class SmallData:
    """Stand-in for PreprocessedData: three random cases with a kidney-like box and a tumour."""

    ignore_label = None

    def __init__(self):
        self.plan = small_plan()
        self.case_ids = ("a", "b", "c")
        self.folds = [Fold(("a", "b"), ("c",))]
        rng = np.random.default_rng(0)
        self.cases = {}
        for case_id in self.case_ids:
            seg = np.zeros(SHAPE, dtype=np.int8)
            seg[3:9, 6:18, 8:20] = 1
            seg[5:7, 9:13, 11:15] = 2
            data = (seg[None] + rng.normal(0, 0.5, (1, *SHAPE))).astype(np.float32)
            self.cases[case_id] = (data, seg)

    def load_case(self, case_id):
        return (*self.cases[case_id], None)

    def class_locations(self, case_id):
        seg = self.cases[case_id][1]
        return {c: np.argwhere(seg == c) for c in (1, 2)}


def train_cfg(**kwargs) -> TrainConfig:
    defaults = dict(
        epochs=2,
        iterations_per_epoch=3,
        val_iterations=1,
        data_workers=1,
        device="cuda",
        augmentation="mirror",
        base_features=4,
    )
    return TrainConfig(**{**defaults, **kwargs})


@needs_cuda
@pytest.mark.cuda
def test_training_step_runs_under_amp_with_a_grad_scaler(tmp_path, monkeypatch):
    seen_dtypes = []
    real_build = build_network

    def build_and_watch(cfg, plan):
        net = real_build(cfg, plan)
        first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
        first_conv.register_forward_hook(lambda m, i, o: seen_dtypes.append(o.dtype))
        return net

    monkeypatch.setattr("ablate.nets.build_network", build_and_watch)
    scales = []
    real_update = torch.amp.GradScaler.update

    def update_and_record(self, *args, **kwargs):
        scales.append(self.get_scale())
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update_and_record)
    result = train(train_cfg(), SmallData(), 0, 0, tmp_path)
    assert seen_dtypes and set(seen_dtypes) == {torch.float16}  # autocast on every forward
    assert len(scales) == 2 * 3  # one scaler update per training step
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    weights = [v for v in _tensors(state) if v.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


@needs_cuda
@pytest.mark.cuda
def test_reported_peak_gpu_memory_is_torch_max_memory_allocated(tmp_path):
    device = torch.device("cuda")
    result = train(train_cfg(epochs=1), SmallData(), 0, 0, tmp_path)
    expected = torch.cuda.max_memory_allocated(device) / 2**20
    assert result.peak_memory_mb["peak_gpu_allocated_mb"] == expected
    assert result.peak_memory_mb["peak_gpu_reserved_mb"] >= expected > 0
    reset_peak_memory(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB more
    peaks = peak_memory_mb(device)
    assert peaks["peak_gpu_allocated_mb"] == torch.cuda.max_memory_allocated(device) / 2**20
    assert peaks["peak_gpu_allocated_mb"] >= 64
    del block


@needs_cuda
@pytest.mark.cuda
def test_sliding_window_on_cuda_equals_cpu():
    plan = small_plan()
    torch.manual_seed(0)
    net = build_network(TrainConfig(base_features=4), plan)
    volume = torch.randn((1, 20, 40, 36), generator=torch.Generator().manual_seed(1))
    combos = mirror_combinations((0, 1, 2), 8)
    on_cpu = sliding_window_logits(net, volume, PATCH, 0.5, combos, 2, torch.device("cpu"))
    on_gpu = sliding_window_logits(net.cuda(), volume, PATCH, 0.5, combos, 2, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    on_gpu = on_gpu.cpu()
    # autocast runs the network in fp16 on CUDA: logits agree to fp16's precision
    scale = on_cpu.abs().max()
    assert torch.allclose(on_gpu, on_cpu, atol=2e-2 * float(scale), rtol=0)
    agree = (on_gpu.argmax(0) == on_cpu.argmax(0)).float().mean()
    assert agree > 0.99


@needs_cuda
@pytest.mark.cuda
def test_batches_reach_the_gpu_through_pinned_memory(monkeypatch):
    pinned = []
    real_pin = torch.Tensor.pin_memory

    def pin_and_record(self, *args, **kwargs):
        out = real_pin(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_and_record)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 1, *PATCH)).astype(np.float32)
    seg = rng.integers(0, 3, size=(2, 1, *PATCH)).astype(np.int16)
    data_t, seg_t = _to_device((data, seg), torch.device("cuda"))
    torch.cuda.synchronize()
    assert pinned == [True, True]  # both tensors went through page-locked host memory
    assert data_t.device.type == "cuda" and seg_t.dtype == torch.int64
    np.testing.assert_array_equal(data_t.cpu().numpy(), data)
    np.testing.assert_array_equal(seg_t.cpu().numpy(), seg.astype(np.int64))
    cpu_data, _ = _to_device((data, seg), torch.device("cpu"))
    assert pinned == [True, True]  # no pinning for a CPU device
    assert not cpu_data.is_pinned()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message a machine without CUDA gets")
def test_gpu_bench_without_cuda_stops_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], done.stderr
    assert done.stdout == ""
