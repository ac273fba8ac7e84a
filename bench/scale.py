"""KiTS-sized data: peak memory and time per stage, ablate against nnU-Net v2 on the same cases.

Run (heavy: 32 minutes on 2 cores at load 3, with the dataset generated once; take the lock):
    flock /tmp/ablate-heavy.lock .venv/bin/python bench/scale.py [--cases 10]
        [--predict-cases 1] [--features 4 8 16 32 32 32] [--work-dir /tmp/ablate-bench-scale]
        [--nnunet-python .venv/bin/python]

Data: `--cases` generated KiTS-like CT cases of 512 x 512 x (200-400) voxels (ablate's synthetic
generator: each case's anatomy is drawn for a field of view of 512 in-plane voxels at its own
drawn spacing and `slices` slices; the generator's defaults are untouched), written once as the
nnU-Net raw dataset Dataset902_SyntheticKiTSScale (kept between runs).

Stages, each tool's in its own subprocess (2 torch threads, 2 worker processes where a tool has
workers), measured by wall time, the peak RSS of the largest process of its tree (os.wait4's
ru_maxrss: the child and the workers it reaped) and the peak of the tree's summed RSS (sampled
every 0.25 s from /proc):
  * plan + preprocess: ablate `prepare(dataset, PlanConfig(), workers=2)` (fingerprint, plan,
    preprocess to the blosc2 cache) vs `nnUNetv2_plan_and_preprocess -d 902 -c 3d_fullres -np 2
    -npfp 2`; both from an empty cache, nnU-Net's 1e8 intensity samples on both sides.
  * predict: sliding window (Gaussian, `--step` of a patch, default 1.0 = nnU-Net's
    `-step_size 1`: 48-84 windows per case instead of 180-300 at 0.5, the only way 8 mirrorings
    fit a CPU budget; the accumulators and the export, which set the memory, do not depend on
    it), TTA 8 (all mirrorings), export back to the original grid and NIfTI written, from the
    raw images, on the `--predict-cases` cases with the fewest slices: ablate
    `infer.predict_case` (its default window batch: 1 at this patch on CPU, infer.auto_window_batch)
    vs `nnUNetPredictor.predict_from_files`
    (window batch 1, 1 preprocessing and 1 export process: `nnUNetv2_predict -npp 1 -nps 1`).
    One network for both: dynamic_network_architectures' PlainConvUNet of nnU-Net's 3d_fullres
    plan with `--features` per stage instead of 32..320 (the last value repeated for deeper
    plans), random weights (seed 0) saved once as nnU-Net's fold_0/checkpoint_final.pth and
    loaded by both. Each tool uses its own plan (the patch sizes are printed).
  * evaluate: every case's reference against a "prediction" made from it (the label map shifted
    by (1, 3, -2) voxels, written once for both tools): ablate `evaluate_folder` (DSC,
    NSD 2 mm, HD95, ASSD, RVD, volumes per target, one process) vs nnU-Net's
    `compute_metrics_on_folder` (Dice, IoU, counts; 2 processes), targets kidney (1, 2) and
    tumour (2).
Goals: ablate's peak memory and time at most nnU-Net's per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATASET_ID = 902
DATASET_NAME = f"Dataset{DATASET_ID}_SyntheticKiTSScale"
IN_PLANE = 512
SLICES = (200, 400)  # (--in-plane and --slices change them for a quick check)
SEED = 0
TARGETS = {"kidney": (1, 2), "tumor": (2,)}
SHIFT = (1, 3, -2)  # the evaluation's "prediction": the reference rolled by these voxels


@dataclass(frozen=True)
class StageCost:
    seconds: float
    peak_rss_mb: float  # the largest single process of the stage's tree
    peak_tree_mb: float  # the summed RSS of the tree, sampled
    load: tuple[float, float]  # 1-minute load average before and after


def _rss_by_pid() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS in pages) of every process, from /proc/<pid>/stat."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name
        table[int(entry.name)] = (int(fields[1]), int(fields[21]))
    return table


def tree_rss_mb(root: int) -> float:
    table = _rss_by_pid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_measured(command: list[str], env: dict | None = None) -> tuple[StageCost, str]:
    """Run `command` to the end; its cost and stdout. Fails loudly with its last output."""
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    with open(os.devnull) as devnull:
        proc = subprocess.Popen(
            command, env=env, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    peak_tree = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak_tree[0] = max(peak_tree[0], tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read().decode(errors="replace")  # (drains the pipe until exit)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise RuntimeError(f"{command[0]} -c <stage script>: exit {proc.returncode}; see above")
    cost = StageCost(
        seconds=seconds,
        peak_rss_mb=usage.ru_maxrss / 1024,
        peak_tree_mb=peak_tree[0],
        load=(load_before, os.getloadavg()[0]),
    )
    return cost, output


def python_job(python: Path, code: str, job: dict) -> list[str]:
    return [
        str(python),
        "-c",
        f"import sys, json; job = json.loads(sys.argv[1])\n{code}",
        json.dumps(job),
    ]


# ---- the dataset ------------------------------------------------------------------------------

GENERATE = r"""
import dataclasses, json
from pathlib import Path
import numpy as np
from ablate.data import synthetic
from ablate.imageio import Geometry, write_image

out = Path(job["out"])
for index in range(job["cases"]):
    # the anatomy is laid out for the field of view this case's spacing gives 512 x 512 x slices
    rng = synthetic.case_rng(job["seed"], index)
    nominal = synthetic.draw_case(rng, (300.0, 400.0, 400.0), True)
    low, high = job["slices"]
    slices = int(np.random.default_rng([job["seed"], index, 7]).integers(low, high + 1))
    sz, sy, sx = nominal.spacing_mm
    fov = (slices * sz, job["in_plane"] * sy, job["in_plane"] * sx)
    spec = synthetic.draw_case(
        synthetic.case_rng(job["seed"], index), fov, index % 3 != 2  # as measured: 3 of 10 empty
    )
    spec = dataclasses.replace(spec, shape=(slices, job["in_plane"], job["in_plane"]))
    image, label = synthetic.render_case(spec)
    geometry = Geometry(spec.spacing_mm, spec.origin, synthetic.IDENTITY_DIRECTION)
    write_image(image, geometry, out / "imagesTr" / f"case_{index:05d}_0000.nii.gz")
    write_image(label, geometry, out / "labelsTr" / f"case_{index:05d}.nii.gz")
    shifted = np.roll(label, job["shift"], axis=(0, 1, 2))
    write_image(shifted, geometry, out.parent.parent / "shifted" / f"case_{index:05d}.nii.gz")
    spacing = tuple(round(s, 3) for s in spec.spacing_mm)
    print(f"case_{index:05d}: {image.shape} voxels at {spacing} mm", flush=True)
meta = {
    "channel_names": {"0": "CT"},
    "labels": synthetic.LABELS,
    "ablate_regions": synthetic.REGIONS,
    "numTraining": job["cases"],
    "file_ending": ".nii.gz",
    "name": "SyntheticKiTSScale",
    "scale_bench": {k: job[k] for k in ("cases", "seed", "slices", "in_plane", "shift")},
}
(out / "dataset.json").write_text(json.dumps(meta, indent=2))
"""


def dataset_dir(work: Path) -> Path:
    return work / "nnUNet_raw" / DATASET_NAME


def ensure_dataset(args, python: Path) -> StageCost | None:
    """Generate the dataset unless the same one is already on disk; the cost, or None if kept."""
    out = dataset_dir(args.work_dir)
    job = {
        "out": str(out),
        "cases": args.cases,
        "seed": SEED,
        "slices": list(args.slices),
        "in_plane": args.in_plane,
        "shift": list(SHIFT),
    }
    meta_path = out / "dataset.json"
    wanted = {k: job[k] for k in ("cases", "seed", "slices", "in_plane", "shift")}
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("scale_bench") == wanted:
        return None
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(args.work_dir / "shifted", ignore_errors=True)
    for sub in (out / "imagesTr", out / "labelsTr", args.work_dir / "shifted"):
        sub.mkdir(parents=True)
    cost, output = run_measured(python_job(python, GENERATE, job), ablate_env(1))
    print(output.rstrip())
    return cost


# ---- the two tools' stages --------------------------------------------------------------------

ABLATE_PREPARE = r"""
import torch
from ablate.config import PlanConfig
from ablate.data.dataset import read_nnunet_raw
from ablate.preprocess import prepare
torch.set_num_threads(job["threads"])
data = prepare(read_nnunet_raw(job["raw"]), PlanConfig(), job["cache"], workers=2)
plan = data.plan
found = {"patch": plan.patch_size, "spacing": plan.target_spacing_mm, "root": str(data.root)}
print("PLAN=" + json.dumps(found))
"""

NNUNET_PREPARE = r"""
import torch
torch.set_num_threads(job["threads"])
from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry
sys.argv = ["nnUNetv2_plan_and_preprocess", "-d", str(job["id"]), "-c", "3d_fullres"]
sys.argv += ["-np", "2", "-npfp", "2"]
plan_and_preprocess_entry()
"""

# both tools' network: PlainConvUNet of nnU-Net's plan, features shrunk, random weights (seed 0)
MAKE_MODEL = r"""
import pydoc
from pathlib import Path
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
plans = json.load(open(job["plans"]))
config = plans["configurations"]["3d_fullres"]
kwargs = config["architecture"]["arch_kwargs"]
stages = kwargs["n_stages"]  # --features, its last value repeated for deeper plans
kwargs["features_per_stage"] = (job["features"] + job["features"][-1:] * stages)[:stages]
model = Path(job["model"])
(model / "fold_0").mkdir(parents=True, exist_ok=True)
json.dump(plans, open(model / "plans.json", "w"), indent=1)
json.dump(json.load(open(job["dataset_json"])), open(model / "dataset.json", "w"), indent=1)
imported = config["architecture"]["_kw_requires_import"]
built = {k: pydoc.locate(v) if k in imported and v else v for k, v in kwargs.items()}
torch.manual_seed(0)
net = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=False, **built)
checkpoint = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
              "init_args": {"configuration": "3d_fullres"},
              "inference_allowed_mirroring_axes": (0, 1, 2)}
torch.save(checkpoint, model / "fold_0" / "checkpoint_final.pth")
print("PARAMETERS=" + str(sum(p.numel() for p in net.parameters())))
"""

ABLATE_PREDICT = r"""
import pydoc, time
from pathlib import Path
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from ablate.config import InferConfig
from ablate.imageio import read_image
from ablate.infer import predict_case
from ablate.plan import Plan
torch.set_num_threads(job["threads"])
model = Path(job["model"])
config = json.load(open(model / "plans.json"))["configurations"]["3d_fullres"]
kwargs = config["architecture"]["arch_kwargs"]
imported = config["architecture"]["_kw_requires_import"]
built = {k: pydoc.locate(v) if k in imported and v else v for k, v in kwargs.items()}
net = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=False, **built)
checkpoint = model / "fold_0" / "checkpoint_final.pth"
weights = torch.load(checkpoint, map_location="cpu", weights_only=False)
net.load_state_dict(weights["network_weights"])
plan = Plan.from_json(json.load(open(Path(job["cache_root"]) / "plan.json")))
calls = [0]
net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + a[0].shape[0]))
for case in job["cases"]:
    began = time.perf_counter()
    image, geometry = read_image(Path(job["raw"]) / "imagesTr" / f"{case}_0000.nii.gz")
    cfg = InferConfig(tta=8, step_size=job["step"])
    out = Path(job["out"]) / f"{case}.nii.gz"
    predict_case([net], [image], geometry, plan, cfg, torch.device("cpu"), out)
    print(f"{case}: {time.perf_counter() - began:.1f} s, {calls[0]} window forwards", flush=True)
"""

NNUNET_PREDICT = r"""
import time
from pathlib import Path
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
torch.set_num_threads(job["threads"])
predictor = nnUNetPredictor(tile_step_size=job["step"], use_gaussian=True, use_mirroring=True,
                            perform_everything_on_device=False, device=torch.device("cpu"),
                            allow_tqdm=False)
predictor.initialize_from_trained_model_folder(job["model"], use_folds=(0,),
                                               checkpoint_name="checkpoint_final.pth")
calls = [0]
count = lambda module, args: calls.__setitem__(0, calls[0] + args[0].shape[0])
predictor.network.register_forward_pre_hook(count)
images = [[str(Path(job["raw"]) / "imagesTr" / f"{case}_0000.nii.gz")] for case in job["cases"]]
began = time.perf_counter()
predictor.predict_from_files(images, [str(Path(job["out"]) / case) for case in job["cases"]],
                             save_probabilities=False, overwrite=True,
                             num_processes_preprocessing=1, num_processes_segmentation_export=1)
seconds = time.perf_counter() - began
print(f"{len(images)} case(s): {seconds:.1f} s, {calls[0]} window forwards", flush=True)
"""

ABLATE_EVALUATE = r"""
from ablate.evaluate import evaluate_folder
targets = {k: tuple(v) for k, v in job["targets"].items()}
table = evaluate_folder(job["pred"], job["ref"], targets, 2.0)
dice = table[table.metric == "dsc"].groupby("target").value.mean()
print("DICE=" + json.dumps({k: float(v) for k, v in dice.items()}))
"""

NNUNET_EVALUATE = r"""
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
result = compute_metrics_on_folder(job["ref"], job["pred"], job["out"], SimpleITKIO(), ".nii.gz",
                                   [tuple(v) for v in job["targets"].values()], num_processes=2)
print("DICE=" + json.dumps({str(k): v["Dice"] for k, v in result["mean"].items()}))
"""


def ablate_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def nnunet_env(work: Path, threads: int) -> dict:
    return dict(
        os.environ,
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        OMP_NUM_THREADS=str(threads),
        nnUNet_compile="false",
    )


def tagged(output: str, tag: str) -> str:
    return next(line[len(tag) :] for line in output.splitlines() if line.startswith(tag))


@dataclass
class Row:
    stage: str
    ablate: StageCost
    nnunet: StageCost | None
    note: str = ""


def stage_prepare(args, ours_py: Path, theirs_py: Path | None) -> tuple[Row, dict]:
    work = args.work_dir
    shutil.rmtree(work / "ablate_cache", ignore_errors=True)
    job = {"raw": str(dataset_dir(work)), "cache": str(work / "ablate_cache"), "threads": 2}
    ours, output = run_measured(python_job(ours_py, ABLATE_PREPARE, job), ablate_env(2))
    plan = json.loads(tagged(output, "PLAN="))
    print(f"  ablate plan: patch {plan['patch']}, spacing {plan['spacing']}", flush=True)
    theirs = None
    if theirs_py:
        shutil.rmtree(work / "nnUNet_preprocessed" / DATASET_NAME, ignore_errors=True)
        job = {"id": DATASET_ID, "threads": 2}
        theirs, _ = run_measured(python_job(theirs_py, NNUNET_PREPARE, job), nnunet_env(work, 2))
        config = json.loads(nnunet_plans_path(work).read_text())["configurations"]["3d_fullres"]
        print(f"  nnU-Net plan: patch {config['patch_size']}, spacing {config['spacing']}")
        plan["nnunet_patch"] = config["patch_size"]
    note = "" if plan.get("nnunet_patch", plan["patch"]) == plan["patch"] else "patches differ"
    return Row("plan + preprocess", ours, theirs, note), plan


def existing_plan(work: Path) -> dict:
    """The plan of an earlier run's prepare stage (to predict again without preprocessing)."""
    found = sorted((work / "ablate_cache").glob("*/plan.json"))
    if not found or not nnunet_plans_path(work).is_file():
        raise SystemExit(f"{work}: no earlier prepare stage; run with --stages prepare first")
    return {"root": str(found[0].parent)}


def nnunet_plans_path(work: Path) -> Path:
    return work / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"


def model_dir(work: Path) -> Path:
    return work / "nnUNet_results" / DATASET_NAME / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def stage_predict(args, ours_py: Path, theirs_py: Path | None, plan: dict) -> Row:
    work = args.work_dir
    model = model_dir(work)
    shutil.rmtree(model, ignore_errors=True)
    job = {
        "plans": str(nnunet_plans_path(work)),
        "dataset_json": str(dataset_dir(work) / "dataset.json"),
        "model": str(model),
        "features": list(args.features),
    }
    _, output = run_measured(python_job(theirs_py or ours_py, MAKE_MODEL, job), ablate_env(1))
    print(f"  network: PlainConvUNet, {tagged(output, 'PARAMETERS=')} parameters", flush=True)
    cases = fewest_slices(dataset_dir(work), args.predict_cases)
    common = {"model": str(model), "raw": str(dataset_dir(work)), "cases": cases, "threads": 2}
    common["step"] = args.step
    out = work / "pred_ablate"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    job = {**common, "out": str(out), "cache_root": plan["root"]}
    ours, output = run_measured(python_job(ours_py, ABLATE_PREDICT, job), ablate_env(2))
    print("  ablate: " + output.strip().replace("\n", "\n  ablate: "), flush=True)
    theirs = None
    if theirs_py:
        out = work / "pred_nnunet"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        job = {**common, "out": str(out)}
        theirs, output = run_measured(
            python_job(theirs_py, NNUNET_PREDICT, job), nnunet_env(work, 2)
        )
        print("  nnU-Net: " + output.strip().splitlines()[-1], flush=True)
        agree = labels_agree(work / "pred_ablate", work / "pred_nnunet", cases)
        print(f"  label agreement ablate vs nnU-Net (voxel fraction per case): {agree}", flush=True)
    return Row(f"predict {len(cases)} case(s), TTA 8", ours, theirs, ", ".join(cases))


def fewest_slices(raw: Path, count: int) -> list[str]:
    """The `count` cases with the fewest slices (the cheapest to predict), by case id."""
    import SimpleITK as sitk

    slices = {}
    for path in sorted((raw / "imagesTr").glob("*_0000.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        slices[path.name[: -len("_0000.nii.gz")]] = reader.GetSize()[2]
    return sorted(sorted(slices, key=lambda c: (slices[c], c))[:count])


def labels_agree(a: Path, b: Path, cases: list[str]) -> list[float]:
    from ablate.imageio import read_image

    fractions = []
    for case in cases:
        left, _ = read_image(a / f"{case}.nii.gz")
        right, _ = read_image(b / f"{case}.nii.gz")
        fractions.append(
            round(float(np.mean(left == right)), 5) if left.shape == right.shape else 0.0
        )
    return fractions


def stage_evaluate(args, ours_py: Path, theirs_py: Path | None) -> Row:
    work = args.work_dir
    common = {
        "ref": str(dataset_dir(work) / "labelsTr"),
        "pred": str(work / "shifted"),
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }
    ours, output = run_measured(python_job(ours_py, ABLATE_EVALUATE, common), ablate_env(1))
    print(f"  ablate mean Dice: {tagged(output, 'DICE=')}", flush=True)
    theirs = None
    if theirs_py:
        job = {**common, "out": str(work / "nnunet_summary.json")}
        theirs, output = run_measured(
            python_job(theirs_py, NNUNET_EVALUATE, job), nnunet_env(work, 1)
        )
        print(f"  nnU-Net mean Dice: {tagged(output, 'DICE=')}", flush=True)
    return Row(f"evaluate {args.cases} cases", ours, theirs)


def print_table(rows: list[Row]) -> None:
    print(
        f"\n{'stage':<28} {'ablate s':>9} {'nnU-Net s':>9} {'ratio':>6}   "
        f"{'ablate MB':>9} {'nnU-Net MB':>10} {'ratio':>6}   "
        f"{'ablate tree MB':>14} {'nnU-Net tree MB':>15}   load"
    )
    for row in rows:
        a, n = row.ablate, row.nnunet
        if n is None:
            print(f"{row.stage:<28} {a.seconds:9.1f} {'-':>9} {'':6}   {a.peak_rss_mb:9.0f}")
            continue
        print(
            f"{row.stage:<28} {a.seconds:9.1f} {n.seconds:9.1f} {a.seconds / n.seconds:6.2f}   "
            f"{a.peak_rss_mb:9.0f} {n.peak_rss_mb:10.0f} {a.peak_rss_mb / n.peak_rss_mb:6.2f}   "
            f"{a.peak_tree_mb:14.0f} {n.peak_tree_mb:15.0f}   "
            f"{a.load[0]:.1f}-{a.load[1]:.1f} / {n.load[0]:.1f}-{n.load[1]:.1f}"
        )
    print("(MB: the largest process; tree MB: the sampled peak of the whole process tree)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--predict-cases", type=int, default=1)
    parser.add_argument("--step", type=float, default=1.0, help="sliding-window step (of a patch)")
    parser.add_argument("--in-plane", type=int, default=IN_PLANE, help="voxels per in-plane axis")
    parser.add_argument("--slices", type=int, nargs=2, default=SLICES, help="slice count range")
    parser.add_argument("--features", type=int, nargs="+", default=[4, 8, 16, 32, 32, 32])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ablate-bench-scale"))
    parser.add_argument(
        "--nnunet-python",
        type=Path,
        default=Path(sys.executable),
        help="python with nnunetv2 (default: this one); 'none' skips nnU-Net",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["prepare", "predict", "evaluate"],
        choices=["prepare", "predict", "evaluate"],
    )
    args = parser.parse_args()
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ours_py = Path(sys.executable)
    theirs_py = None if str(args.nnunet_python) == "none" else args.nnunet_python
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()}; {now}")
    generated = ensure_dataset(args, ours_py)
    if generated:
        print(f"generated in {generated.seconds:.0f} s (peak {generated.peak_rss_mb:.0f} MB)")
    rows: list[Row] = []
    plan = None
    if "prepare" in args.stages:
        print("\n[plan + preprocess]", flush=True)
        row, plan = stage_prepare(args, ours_py, theirs_py)
        rows.append(row)
    elif "predict" in args.stages:
        plan = existing_plan(args.work_dir)
    if "predict" in args.stages:
        print("\n[predict]", flush=True)
        rows.append(stage_predict(args, ours_py, theirs_py, plan))
    if "evaluate" in args.stages:
        print("\n[evaluate]", flush=True)
        rows.append(stage_evaluate(args, ours_py, theirs_py))
    print_table(rows)
    print(f"load at the end {os.getloadavg()}; {time.strftime('%H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
