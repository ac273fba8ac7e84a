"""The executor contract, run against every implementation (in-process, local processes, Ray on
a local cluster started here, SLURM on a one-node cluster started here), then a tiny study run
with 2 local workers that must log every job once and match the in-process numbers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture

from ablate.errors import ConfigError
from ablate.run.executors import executor_for, make_executor
from ablate.run.executors.local import InProcessExecutor, LocalExecutor
from ablate.run.phases import PhaseCount
from ablate.run.progress import PlainProgress
from ablate.study import ExecutorSpec, RaySpec, SlurmSpec

KINDS = ["inprocess", "local", "ray", "slurm"]


def _register_by_value() -> None:
    """Ray and submitit workers cannot import this test module; ship its functions by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        from ray import cloudpickle as ray_cloudpickle

        ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except ImportError:
        pass


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def interval(seconds: float) -> tuple[float, float, str]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


def count_attempts(path: str) -> int:
    """Counts its runs in a file, like a training that resumes from its checkpoint."""
    counter = Path(path)
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if attempt == 1:
        time.sleep(120)  # preempted while it sleeps
    return attempt


@pytest.fixture(params=KINDS)
def executor(request, tmp_path):
    kind = request.param
    if kind in ("ray", "slurm"):
        _register_by_value()
    if kind == "inprocess":
        ex = InProcessExecutor()
    elif kind == "local":
        ex = LocalExecutor(2)
    elif kind == "ray":
        request.getfixturevalue("ray_cluster")
        ex = make_executor(ExecutorSpec(kind="ray", workers=2, ray=RaySpec(num_cpus=1)))
    else:
        pytest.importorskip("submitit", reason="submitit not installed (pip install submitit)")
        request.getfixturevalue("slurm_cluster")
        spec = ExecutorSpec(
            kind="slurm",
            slurm=SlurmSpec(
                gpus_per_job=0,
                cpus_per_job=1,
                mem_gb=0.25,
                time_min=5,
                array_parallelism=2,
                folder=tmp_path / "slurm",
            ),
        )
        ex = make_executor(spec, tmp_path)
        ex._poll_s, ex._squeue_every_s = 0.3, 1.0  # the test waits on tiny jobs
    yield ex
    ex.shutdown(cancel=True)


def test_results_come_back(executor) -> None:
    futures = {executor.submit(square, x): x for x in (2, 3, 4)}
    done = list(executor.as_completed(futures))
    assert sorted(f.result(timeout=120) for f in done) == [4, 9, 16]
    assert all(f.result() == futures[f] ** 2 for f in futures)


def test_exceptions_come_back_as_exceptions(executor) -> None:
    ok = executor.submit(square, 5)
    bad = executor.submit(fail, "boom in the job")
    cf.wait([ok, bad], timeout=120)
    with pytest.raises(ValueError, match="boom in the job"):
        bad.result()
    assert ok.result() == 25


def test_several_jobs_in_flight(executor) -> None:
    if executor.capacity < 2:
        assert isinstance(executor, InProcessExecutor)  # the only serial executor
        return
    futures = [executor.submit(interval, 2.0) for _ in range(2)]
    if type(executor).__name__ == "SlurmExecutor":
        deadline = time.monotonic() + 30
        while len(executor._running) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        ids = sorted(job.job_id for job in executor._running.values())
        assert len({i.split("_")[0] for i in ids}) == 1, f"not one job array: {ids}"
    (s1, e1, dev1), (s2, e2, dev2) = [f.result(timeout=180) for f in futures]
    assert max(s1, s2) < min(e1, e2), "the two jobs did not overlap"
    if isinstance(executor, LocalExecutor):
        assert dev1 == dev2 == ""  # CPU-only workers hide every GPU


def test_shutdown_cancel_drops_pending_work(executor) -> None:
    if isinstance(executor, InProcessExecutor):
        assert executor.submit(square, 3).result() == 9  # runs at submit: nothing is pending
        executor.shutdown(cancel=True)
        return
    futures = [executor.submit(interval, 60.0) for _ in range(executor.capacity + 2)]
    time.sleep(2.0)
    start = time.monotonic()
    executor.shutdown(cancel=True)
    assert time.monotonic() - start < 20
    done, _ = cf.wait(futures, timeout=5)  # a waiting runner must wake up, too
    assert done == set(futures)
    assert not any(not f.cancelled() and f.exception() is None for f in futures)
    assert any(f.cancelled() for f in futures)  # queued beyond capacity: never started


def test_ctrl_c_stops_local_workers_without_waiting() -> None:
    ex = LocalExecutor(1)
    future = ex.submit(interval, 60.0)
    time.sleep(1.0)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            ex.shutdown()  # what the runner's `finally` does
    assert time.monotonic() - start < 15
    assert future.done() and (future.cancelled() or future.exception() is not None)


def test_make_executor_reads_the_study_section(tmp_path: Path) -> None:
    from ablate.study import Study

    study = Study.model_validate(
        {"name": "s", "dataset": {"synthetic": {"cases": 2}}, "workdir": str(tmp_path)}
    )
    assert isinstance(executor_for(study), InProcessExecutor)
    local = make_executor("local", workers=3)
    assert local.capacity == 3
    local.shutdown()
    with pytest.raises(ConfigError, match="executor.kind"):
        make_executor("kubernetes")
    with pytest.raises(ConfigError, match="2 GPUs for 3 workers"):
        make_executor(ExecutorSpec(kind="local", workers=3, gpus=[0, 1]))


def test_slurm_parameters_follow_the_spec() -> None:
    pytest.importorskip("submitit")
    from ablate.run.executors.slurm import slurm_parameters

    spec = SlurmSpec(
        partition="gpu",
        time_min=90,
        gpus_per_job=1,
        cpus_per_job=8,
        mem_gb=40,
        array_parallelism=6,
        extra={"account": "lab"},
    )
    params = slurm_parameters(spec, threads=4)
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 90
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert params["mem_gb"] == 40 and params["slurm_array_parallelism"] == 6
    assert params["slurm_additional_parameters"] == {"account": "lab"}
    assert params["slurm_setup"] == ["export OMP_NUM_THREADS=4"]


TINY_STUDY = {
    "name": "tiny-exec",
    "dataset": {"synthetic": {"cases": 6, "seed": 3, "fov_mm": [60, 70, 70]}},
    "plan": {
        "gpu_memory_gb": 0.02,
        "base_features": 4,
        "max_features": 16,
        "intensity_samples": 10000,
    },
    "train": {"epochs": 2, "iterations_per_epoch": 2, "val_iterations": 1, "data_workers": 0},
    # one mirror pass: these tests are about executors, and nnU-Net's 8 took most of their time
    "infer": {"window_batch": 4, "tta": 1},
    "evaluation": {"nsd_tolerance_mm": 2.0},
    "axes": {"train.deep_supervision": ["nnunet", "none"]},
    "folds": {"k": 2},
    "workers": 1,
}


class Messages(PlainProgress):
    """A Progress that keeps every line, to look for tracking errors."""

    def __init__(self):
        super().__init__(epoch_every_s=0)
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def _run_tiny(root: Path, executor) -> tuple:
    from ablate.run.driver import run_study
    from ablate.run.results import fetch_results
    from ablate.study import Study

    study = Study.model_validate(
        {**TINY_STUDY, "workdir": str(root / "work"), "report_dir": str(root / "report")}
    )
    messages = Messages()
    summary = run_study(study, progress=messages, make_report=False, executor=executor)
    uri = f"sqlite:///{root / 'work' / 'mlflow.db'}"
    return summary, messages.lines, uri, fetch_results(uri, study.name)


@pytest.mark.slow
def test_two_local_workers_match_in_process_and_log_each_job_once(tmp_path: Path, capfd) -> None:
    import mlflow
    import torch

    # bitwise-equal numbers need the same intra-op thread count as the 1-thread workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial, _, _, expected = _run_tiny(tmp_path / "serial", InProcessExecutor())
    finally:
        torch.set_num_threads(threads)
    summary, messages, uri, got = _run_tiny(tmp_path / "local", LocalExecutor(2))
    assert summary.failed == [] and serial.failed == []
    assert (summary.trainings.run, summary.evaluations.run) == (4, 4)
    out, err = capfd.readouterr()
    assert not any("database is locked" in m for m in [*messages, out, err])
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-exec")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
        if r.data.tags.get("ablate.kind") in ("train", "eval")
    ]
    keys = [r.data.tags["ablate.job_key"] for r in runs]
    assert len(keys) == 8 and len(set(keys)) == 8  # every job exactly once
    assert all(r.info.status == "FINISHED" for r in runs)
    order = ["variant", "fold", "seed", "case", "target", "metric"]
    left = expected.tidy.sort_values(order).reset_index(drop=True)
    right = got.tidy.sort_values(order).reset_index(drop=True)
    assert len(left) > 0 and left[order].equals(right[order])
    assert left["value"].equals(right["value"])  # same seeds, CPU: identical numbers


def test_slurm_job_cancelled_on_the_cluster_fails_its_future(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("submitit")
    import subprocess

    from ablate.run.executors.slurm import SlurmExecutor

    _register_by_value()
    spec = SlurmSpec(gpus_per_job=0, cpus_per_job=1, mem_gb=0.25, time_min=5)
    executor = SlurmExecutor(spec, tmp_path / "slurm", poll_s=0.3, squeue_every_s=1.0)
    future = executor.submit(interval, 60.0)
    deadline = time.monotonic() + 30
    while not executor._running and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scancel", next(iter(executor._running.values())).job_id], check=True)
    try:
        assert isinstance(future.exception(timeout=30), RuntimeError)
        with pytest.raises(RuntimeError, match="ended without a result"):
            future.result()
    finally:
        executor.shutdown(cancel=True)


def _start_requeued_now(job_id: str, counter: Path) -> None:
    """Slurm holds a requeued job back (its BeginTime lies ahead); the test needn't wait."""
    import subprocess

    deadline = time.monotonic() + 60
    while counter.read_text() == "1" and time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
        ).stdout.strip()
        if state == "PENDING":
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True
            )
        time.sleep(0.5)


@pytest.mark.slow  # 8 s alone, up to 40 s when Slurm delays the requeued job
def test_slurm_requeues_a_preempted_job_and_runs_it_again(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("submitit")
    import subprocess

    _register_by_value()
    spec = ExecutorSpec(
        kind="slurm",
        slurm=SlurmSpec(
            gpus_per_job=0, cpus_per_job=1, mem_gb=0.25, time_min=5, folder=tmp_path / "slurm"
        ),
    )
    executor = make_executor(spec, tmp_path)
    counter = tmp_path / "attempts.txt"
    future = executor.submit(count_attempts, str(counter))
    deadline = time.monotonic() + 60
    while not counter.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert counter.exists(), "the job never started"
    time.sleep(1.0)  # let submitit install its signal handlers
    job_id = next(iter(executor._running.values())).job_id
    for signal in ("SIGTERM", "USR2"):  # what SLURM sends on preemption (submitit's _interrupt)
        subprocess.run(["scancel", job_id, "--signal", signal], check=True)
    _start_requeued_now(job_id, counter)
    try:
        assert future.result(timeout=240) == 2  # requeued, ran again, "resumed"
    finally:
        executor.shutdown(cancel=True)


def test_study_yaml_executor_section(tmp_path: Path) -> None:
    from ablate.study_load import load_study

    text = """
name: s
dataset: {synthetic: {cases: 2}}
executor:
  kind: slurm
  threads_per_worker: 2
  slurm: {partition: gpu, time_min: 30, gpus_per_job: 1, array_parallelism: 4}
"""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    study = load_study(path)
    study = study[0] if isinstance(study, tuple) else study
    assert study.executor.kind == "slurm" and study.executor.slurm.partition == "gpu"
    assert study.executor.slurm.array_parallelism == 4 and study.executor.ray.num_gpus == 0
    path.write_text(text.replace("kind: slurm", "kind: kubernetes"))
    with pytest.raises(ConfigError, match="executor.kind"):
        load_study(path)


@pytest.fixture(scope="module")
def live_study(tmp_path_factory):
    """The tiny study with trainings long enough to watch (5 epochs of about a second), and its
    preprocessed data, prepared once for every executor."""
    from ablate.run.study_data import load_dataset, prepare_data
    from ablate.study import Study

    root = tmp_path_factory.mktemp("live")
    train = {**TINY_STUDY["train"], "epochs": 5, "iterations_per_epoch": 6}
    study = Study.model_validate({**TINY_STUDY, "train": train, "workdir": str(root)})
    dataset, _ = load_dataset(study)
    return study, prepare_data(study, dataset)


def test_live_curves_grow_in_mlflow_while_the_training_runs(
    executor, live_study, tmp_path: Path
) -> None:
    """Every executor: a real training's MLflow run shows its epochs while it is RUNNING, the
    driver being the only writer; at the end one value per step and the curve figure."""
    import threading

    import mlflow

    from ablate.expand import expand
    from ablate.run.jobs import execute_training
    from ablate.run.live import LiveCurves
    from ablate.run.phases import PhaseContext, run_phase
    from ablate.run.tracking import Tracker

    study, data = live_study
    job = expand(study, data.key)[0][0]
    epochs = job.train.epochs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "live", tmp_path / "artifacts")
    tracker.start_study({}, {})
    progress = Messages()
    live = LiveCurves(
        tracker, lambda key, *epoch: progress.epoch(key, job.name, *epoch), poll_s=0.2
    )
    ctx = PhaseContext(executor, tracker, progress, live, tmp_path / "jobs", [])
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def observe() -> None:  # a reader beside the driver, as `mlflow ui` is
        reader = mlflow.MlflowClient(uri)
        while not stop.wait(0.2):
            runs = reader.search_runs([tracker.experiment_id], "tags.`ablate.kind` = 'train'")
            for run in runs:
                points = reader.get_metric_history(run.info.run_id, "train_loss")
                seen.append((run.info.status, len(points)))

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        run_phase(
            [job],
            "trainings",
            lambda j: (execute_training, (j, data, tmp_path / "jobs" / j.key)),
            ctx,
            PhaseCount(),
        )
    finally:
        stop.set()
        watcher.join()
        live.close()
    assert ctx.failed == []
    growing = sorted({n for status, n in seen if status == "RUNNING"})
    assert len([n for n in growing if 0 < n < epochs]) >= 2, seen  # seen growing, not at the end
    run = tracker.client.search_runs([tracker.experiment_id], "tags.`ablate.kind` = 'train'")[0]
    assert run.info.status == "FINISHED"
    for metric in ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr"):
        steps = [p.step for p in tracker.client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == list(range(epochs)), metric  # one value per step
    artifacts = [a.path for a in tracker.client.list_artifacts(run.info.run_id)]
    assert "training_curves.png" in artifacts
    assert any(f"train {job.name}: epoch 3/{epochs}" in line for line in progress.lines)
