"""Shared helpers of the side-by-side benchmarks against nnU-Net v2 (preprocess, train step).

nnU-Net lives in its own venv (never in ours, never committed); the benches reach it only through
`--nnunet-python PATH` and run it in a subprocess whose environment alone carries nnU-Net's
folder variables. Layout under the work dir:
    nnUNet_raw/Dataset901_SyntheticKiTS/   the synthetic dataset (also what ablate reads)
    nnUNet_preprocessed/, nnUNet_results/  nnU-Net's outputs
    ablate_cache/                          ablate's preprocessing cache
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_SyntheticKiTS"
CASES = 12
FOV_MM = (100.0, 110.0, 110.0)
SEED = 0


def add_common_arguments(parser) -> None:
    parser.add_argument(
        "--nnunet-python",
        type=Path,
        default=None,
        help="python of a venv with nnunetv2 installed; omitted: skip nnU-Net",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/ablate-bench"),
        help="scratch folder for datasets, caches and nnU-Net outputs",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")


def nnunet_skip_reason(python: Path | None) -> str | None:
    """None when `python` can import nnunetv2; else a one-line reason to skip the nnU-Net side."""
    if python is None:
        return "no --nnunet-python given"
    if not Path(python).is_file():
        return f"--nnunet-python {python}: no such file"
    probe = subprocess.run([str(python), "-c", "import nnunetv2"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"--nnunet-python {python}: cannot import nnunetv2 ({last})"
    return None


def raw_root(work_dir: Path) -> Path:
    return work_dir / "nnUNet_raw"


def dataset_dir(work_dir: Path) -> Path:
    return raw_root(work_dir) / DATASET_NAME


def make_dataset(work_dir: Path, cases: int = CASES, fov_mm=FOV_MM):
    """The synthetic dataset in nnU-Net raw layout (regenerated: identical bytes per seed)."""
    from ablate.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        dataset_dir(work_dir), cases=cases, seed=SEED, fov_mm=tuple(fov_mm)
    )


def nnunet_env(work_dir: Path, threads: int, extra: dict[str, str] | None = None) -> dict:
    """The subprocess environment: nnU-Net's three folders, thread counts, no compile."""
    env = dict(os.environ)
    env.update(
        {
            "nnUNet_raw": str(raw_root(work_dir)),
            "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
            "nnUNet_results": str(work_dir / "nnUNet_results"),
            "OMP_NUM_THREADS": str(threads),
            "nnUNet_compile": "false",
        }
    )
    env.update(extra or {})
    return env


def run_nnunet(python: Path, code: str, argv: list[str], env: dict) -> tuple[float, str]:
    """Run `code` in nnU-Net's python with sys.argv = argv; (wall seconds, stdout)."""
    script = f"import sys; sys.argv = {['nnunet', *argv]!r}\n{code}"
    began = time.perf_counter()
    done = subprocess.run([str(python), "-c", script], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise RuntimeError(f"nnU-Net subprocess failed (exit {done.returncode}); see above")
    return seconds, done.stdout


PLAN_AND_PREPROCESS = (
    "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints "
    "import plan_and_preprocess_entry; plan_and_preprocess_entry()"
)


def nnunet_plan_and_preprocess(python: Path, work_dir: Path, threads: int) -> float:
    """`nnUNetv2_plan_and_preprocess -d 901 -c 3d_fullres -np 2 -npfp 2` from scratch; seconds."""
    shutil.rmtree(work_dir / "nnUNet_preprocessed" / DATASET_NAME, ignore_errors=True)
    argv = ["-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2", "-npfp", "2"]
    seconds, _ = run_nnunet(python, PLAN_AND_PREPROCESS, argv, nnunet_env(work_dir, threads))
    return seconds


def nnunet_plans(work_dir: Path) -> dict:
    path = work_dir / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    return json.loads(path.read_text())


def nnunet_intensity_properties(work_dir: Path) -> list[dict]:
    """nnU-Net's foreground intensity statistics per channel (its dataset fingerprint)."""
    path = work_dir / "nnUNet_preprocessed" / DATASET_NAME / "dataset_fingerprint.json"
    per_channel = json.loads(path.read_text())["foreground_intensity_properties_per_channel"]
    return [per_channel[k] for k in sorted(per_channel, key=int)]


def nnunet_plan_summary(plans: dict) -> dict:
    """nnU-Net's 3d_fullres plan in ablate's axis order (its arrays are z, y, x too)."""
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    return summary(
        config["spacing"],
        config["patch_size"],
        arch["strides"],
        config["batch_size"],
        config["normalization_schemes"],
        arch["features_per_stage"],
    )


def ablate_plan_summary(plan) -> dict:
    schemes = [
        {"ct": "CTNormalization", "zscore": "ZScoreNormalization", "noNorm": "NoNormalization"}.get(
            n.scheme, n.scheme
        )
        for n in plan.normalization
    ]
    return summary(
        plan.target_spacing_mm,
        plan.patch_size,
        plan.pool_kernel_sizes,
        plan.batch_size,
        schemes,
        plan.features_per_stage,
    )


def summary(spacing, patch, strides, batch, schemes, features) -> dict:
    return {
        "target spacing (mm)": tuple(round(float(s), 4) for s in spacing),
        "normalisation": tuple(schemes),
        "patch size": tuple(int(p) for p in patch),
        "pooling per axis": tuple(int(sum(int(s[a]) > 1 for s in strides)) for a in range(3)),
        "batch size": int(batch),
        "features per stage": tuple(int(f) for f in features),
    }


def nnunet_configuration_from(plan, base: dict, batch_size: int) -> dict:
    """nnU-Net's 3d_fullres configuration rewritten to train exactly ablate's planned network."""
    config = json.loads(json.dumps(base))
    arch = config["architecture"]["arch_kwargs"]
    stages = plan.num_stages
    arch.update(
        {
            "n_stages": stages,
            "features_per_stage": list(plan.features_per_stage),
            "kernel_sizes": [list(k) for k in plan.conv_kernel_sizes],
            "strides": [list(p) for p in plan.pool_kernel_sizes],
            "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1),
        }
    )
    config["patch_size"] = list(plan.patch_size)
    config["batch_size"] = int(batch_size)
    return config
