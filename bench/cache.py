"""Preprocessed cache: bytes on disk and patch-read throughput, ablate against nnU-Net v2's loader.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/cache.py [--cases 4] [--patches 200]
     [--fov-mm 300 250 250] [--work-dir /tmp/ablate-bench-cache]

ablate's `prepare` builds its cache from a generated KiTS-like dataset (`make_synthetic_dataset`);
the very same preprocessed arrays are then stored three ways: ablate's (`ablate.storage`:
blosc2, chunked for the plan's patch, labels int8), nnU-Net v2's (`nnUNetDatasetBlosc2.save_case`
with `comp_blosc2_params`, as its DefaultPreprocessor: data float32, labels int16) and the
uncompressed `.npy` ablate used before. A patch read is what one training sample costs: open
the case (ablate: `PreprocessedData.load_case`; nnU-Net: `nnUNetDatasetBlosc2.load_case`; npy:
`np.load(mmap_mode="r")`) and crop the plan's patch from data and labels at a random position
(`ablate.sampler.crop_padded`, the same crop for all three); the three are interleaved patch by
patch, in one process, single-threaded. Goals: ablate's bytes <= nnU-Net's, throughput >= it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import ablate.train
from ablate.config import PlanConfig, TrainConfig
from ablate.data.synthetic import make_synthetic_dataset
from ablate.preprocess import prepare
from ablate.sampler import crop_padded
from ablate.study_load import load_study

REPO = Path(__file__).resolve().parent.parent


def folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffixes))


def store_nnunet(data, out: Path) -> None:
    """Every case of `data` as nnU-Net's DefaultPreprocessor.run_case_save stores it."""
    from nnunetv2.training.dataloading.nnunet_dataset import (
        comp_blosc2_params,
        nnUNetDatasetBlosc2,
    )

    patch = tuple(data.plan.patch_size)
    for case in data.case_ids:
        image, seg, props = data.load_case(case)
        image = np.asarray(image[...], dtype=np.float32)
        seg = np.asarray(seg[...], dtype=np.int16)[None]  # nnU-Net: (1, Z, Y, X) int16
        blocks, chunks = comp_blosc2_params(image.shape, patch, image.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(
            image,
            seg,
            {"case": case},
            str(out / case),
            chunks=chunks,
            blocks=blocks,
            chunks_seg=chunks_seg,
            blocks_seg=blocks_seg,
        )


def store_npy(data, out: Path) -> None:
    for case in data.case_ids:
        image, seg, _ = data.load_case(case)
        np.save(out / f"{case}_data.npy", np.asarray(image[...]))
        np.save(out / f"{case}_seg.npy", np.asarray(seg[...]))


def readers(data, nnunet_dir: Path, npy_dir: Path):
    """name -> read(case, start) returning (data patch, seg patch)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    patch = tuple(data.plan.patch_size)
    nnunet = nnUNetDatasetBlosc2(str(nnunet_dir))

    def ours(case, start):
        image, seg, _ = data.load_case(case)
        return crop_padded(image, start, patch, 0.0), crop_padded(seg, start, patch, -1)

    def theirs(case, start):
        image, seg, _, _ = nnunet.load_case(case)
        return crop_padded(image, start, patch, 0.0), crop_padded(seg, start, patch, -1)[0]

    def npy(case, start):
        image = np.load(npy_dir / f"{case}_data.npy", mmap_mode="r")
        seg = np.load(npy_dir / f"{case}_seg.npy", mmap_mode="r")
        return crop_padded(image, start, patch, 0.0), crop_padded(seg, start, patch, -1)

    return {"ablate (blosc2)": ours, "nnU-Net v2 (blosc2)": theirs, "ablate before (npy)": npy}


def as_npy_cache(data, out: Path):
    """The same preprocessed cache with its arrays as uncompressed `.npy` (the cache of before,
    which `ablate.storage.open_array` still reads)."""
    shutil.copytree(data.root, out, ignore=shutil.ignore_patterns("*.b2nd"))
    store_npy(data, out)
    return dataclasses.replace(data, root=out)


def train_waiting(data, workers: int, epochs: int, iterations: int, work: Path) -> dict:
    """Per epoch after the first: seconds blocked on the next training batch, and the rest."""
    waits: list[float] = []
    real = ablate.train.iterate_batches

    def timed(make_batch, count, workers_, prefetch=2):
        batches = real(make_batch, count, workers_, prefetch)
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            waits.append(time.perf_counter() - began)
            yield batch

    cfg = TrainConfig(
        epochs=epochs,
        iterations_per_epoch=iterations,
        val_iterations=0,
        batch_size=2,
        data_workers=workers,
        augmentation="nnunet",
        device="cpu",
    )
    ablate.train.iterate_batches = timed
    try:
        with tempfile.TemporaryDirectory(dir=work) as out:
            result = ablate.train.train(cfg, data, fold=0, seed=0, out_dir=Path(out))
    finally:
        ablate.train.iterate_batches = real
    per_epoch = [sum(waits[e * iterations : (e + 1) * iterations]) for e in range(epochs)]
    seconds = [h["epoch_seconds"] for h in result.history]
    return {
        "wait": [w / iterations for w in per_epoch[1:]],
        "step": [(s - w) / iterations for s, w in zip(seconds[1:], per_epoch[1:], strict=True)],
    }


def data_wait(dataset, work: Path, epochs: int, iterations: int = 8) -> None:
    plan_cfg = load_study(REPO / "studies" / "demo.yaml", check_paths=False).plan
    blosc = prepare(
        dataset,
        plan_cfg,
        work / "cache_demo",
        folds=2,
        workers=1,
        intensity_samples=plan_cfg.intensity_samples,
    )
    storages = {"blosc2": blosc, "npy": as_npy_cache(blosc, work / "cache_demo_npy")}
    print(
        f"\ntrainer data wait, demo plan: patch {tuple(blosc.plan.patch_size)}, features "
        f"{blosc.plan.features_per_stage}, batch 2, augmentation nnunet, {epochs - 1} timed "
        f"epochs x {iterations} iterations (load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"  {'data_workers':>12s} {'storage':8s} {'wait ms/it':>11s} {'step ms/it':>11s} "
        f"{'wait share':>10s}"
    )
    for workers in (0, 1):
        found = {name: {"wait": [], "step": []} for name in storages}
        for _ in range(2):  # the storages alternate, one training each per turn
            for name, data in storages.items():
                part = train_waiting(data, workers, epochs, iterations, work)
                for key in part:
                    found[name][key] += part[key]
        for name, part in found.items():
            wait, step = statistics.median(part["wait"]), statistics.median(part["step"])
            print(
                f"  {workers:12d} {name:8s} {1000 * wait:11.1f} {1000 * step:11.1f} "
                f"{wait / (wait + step):10.1%}"
            )
        ratio = statistics.median(found["blosc2"]["wait"]) / statistics.median(found["npy"]["wait"])
        print(f"  data_workers {workers}: wait blosc2 / npy = {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--patches", type=int, default=200)
    parser.add_argument("--fov-mm", type=float, nargs=3, default=(300.0, 250.0, 250.0))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ablate-bench-cache"))
    parser.add_argument("--trainer-epochs", type=int, default=3, help="0: skip the data wait")
    parser.add_argument("--skip-patches", action="store_true", help="only the data wait")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load before: {os.getloadavg()}")
    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    dataset = make_synthetic_dataset(work / "raw", args.cases, seed=0, fov_mm=tuple(args.fov_mm))
    if not args.skip_patches:
        patch_reads(args, dataset, work)
    if args.trainer_epochs:
        data_wait(dataset, work, args.trainer_epochs)
    print(f"load after: {os.getloadavg()}")


def patch_reads(args, dataset, work: Path) -> None:
    began = time.perf_counter()
    data = prepare(
        dataset,
        PlanConfig(intensity_samples=10**6),
        work / "cache",
        folds=2,
        workers=1,
        intensity_samples=1e6,
    )
    print(
        f"prepare (ablate, blosc2): {time.perf_counter() - began:.1f} s; patch "
        f"{tuple(data.plan.patch_size)}; case shapes "
        f"{[tuple(data.load_case(c)[0].shape) for c in data.case_ids]}"
    )
    (work / "nnunet").mkdir()
    (work / "npy").mkdir()
    store_nnunet(data, work / "nnunet")
    store_npy(data, work / "npy")
    sizes = {
        "ablate (blosc2)": folder_bytes(data.root, ("_data.b2nd", "_seg.b2nd")),
        "nnU-Net v2 (blosc2)": folder_bytes(work / "nnunet", (".b2nd",)),
        "ablate before (npy)": folder_bytes(work / "npy", (".npy",)),
    }
    read = readers(data, work / "nnunet", work / "npy")
    rng = np.random.default_rng(0)
    seconds = dict.fromkeys(read, 0.0)
    patch = np.asarray(data.plan.patch_size)
    for _ in range(args.patches):
        case = data.case_ids[int(rng.integers(len(data.case_ids)))]
        shape = np.asarray(data.load_case(case)[1].shape)
        start = tuple(
            int(s) for s in rng.integers(-patch // 3, np.maximum(shape - 2 * patch // 3, 1))
        )
        results = {}
        for name, fn in read.items():  # interleaved: each patch read by all three
            began = time.perf_counter()
            results[name] = fn(case, start)
            seconds[name] += time.perf_counter() - began
        for name, (image, seg) in results.items():  # same patches everywhere
            np.testing.assert_array_equal(image, results["ablate before (npy)"][0], err_msg=name)
            np.testing.assert_array_equal(seg, results["ablate before (npy)"][1], err_msg=name)
    print(
        f"\n{args.cases} cases, {args.patches} random patches of {tuple(data.plan.patch_size)} "
        "(data + labels), interleaved:"
    )
    print(f"  {'storage':22s} {'cache MB':>9s} {'patches/s':>10s} {'ms/patch':>9s}")
    for name in read:
        rate = args.patches / seconds[name]
        print(f"  {name:22s} {sizes[name] / 1e6:9.1f} {rate:10.1f} {1000 / rate:9.2f}")
    ours, theirs = "ablate (blosc2)", "nnU-Net v2 (blosc2)"
    print(
        f"bytes ablate / nnU-Net: {sizes[ours] / sizes[theirs]:.3f} (goal <= 1); throughput "
        f"ablate / nnU-Net: {seconds[theirs] / seconds[ours]:.2f} (goal >= 1)"
    )


if __name__ == "__main__":
    main()
