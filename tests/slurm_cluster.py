"""A real one-node Slurm for the executor tests: munge and slurmctld/slurmd started here (as root,
from Debian's slurm-wlm and munge packages) and stopped at the end. When that cannot be done the
tests that need it are skipped with the reason; a Slurm that already answers `sinfo` is reused.

Install: apt-get install -y --no-install-recommends slurm-wlm munge
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")

SLURM_CONF = """\
ClusterName=ablate-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SlurmUser=root
SlurmdUser=root
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SchedulerParameters=sched_interval=2
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _answers() -> bool:
    try:
        out = _run("sinfo", "-h", "-o", "%t", timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(
        s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()
    )


def _munge_works() -> bool:
    try:
        return (
            subprocess.run(
                "munge -n | unmunge", shell=True, capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except subprocess.SubprocessError:
        return False


def _start_munge() -> int | None:
    """Start munged as the munge user; its pid (None when it already ran)."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    out = _run("runuser", "-u", "munge", "--", "munged")
    if out.returncode != 0:
        raise RuntimeError(f"munged did not start: {out.stderr.strip()}")
    for _ in range(50):
        if _munge_works():
            pid_file = run_dir / "munged.pid"
            return int(pid_file.read_text()) if pid_file.exists() else None
        time.sleep(0.1)
    raise RuntimeError("munged started but `munge -n | unmunge` fails")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _write_conf(root: Path) -> Path:
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=socket.gethostname().split(".")[0],
            root=root,
            ctld_port=_free_port(),
            d_port=_free_port(),
            cpus=os.cpu_count() or 1,
            mem_mb=max(512, mem_mb // 2),
        )
    )
    return conf


def _why_not() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (
            f"Slurm not installed ({', '.join(missing)} missing); apt-get install -y "
            "--no-install-recommends slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "starting munge/slurmctld/slurmd needs root, and no running Slurm answers sinfo"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Path]:
    """Yields the slurm.conf in use (SLURM_CONF is set for the session's subprocesses)."""
    if shutil.which("sinfo") and _answers():
        yield Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
        return
    reason = _why_not()
    if reason:
        print(f"\nSKIP slurm: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    conf = _write_conf(root)
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    processes: list[subprocess.Popen] = []
    munge_pid = None
    try:
        munge_pid = _start_munge()
        for daemon in ("slurmctld", "slurmd"):
            processes.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            time.sleep(1.0)
        deadline = time.monotonic() + 30
        while not _answers() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _answers():
            logs = "".join(
                (root / f).read_text()[-600:]
                for f in ("slurmctld.log", "slurmd.log")
                if (root / f).exists()
            )
            raise RuntimeError(f"node not idle within 30 s; logs:\n{logs}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _stop(processes, munge_pid, old_conf)
        print(f"\nSKIP slurm: could not start a one-node Slurm: {exc}")
        pytest.skip(f"could not start a one-node Slurm: {exc}")
    try:
        yield conf
    finally:
        _stop(processes, munge_pid, old_conf)


def _drain_queue(timeout_s: float = 30) -> None:
    """Cancel every job of this private cluster and wait for them to leave: a job step whose
    slurmd is gone would linger."""
    try:
        ids = _run("squeue", "-h", "-o", "%A").stdout.split()
        if ids:
            _run("scancel", *sorted(set(ids)))
        deadline = time.monotonic() + timeout_s
        while _run("squeue", "-h", "-o", "%A").stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError):
        pass


def _stop(processes: list[subprocess.Popen], munge_pid: int | None, old_conf: str | None) -> None:
    if processes:
        _drain_queue()
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    if munge_pid is not None:
        try:
            os.kill(munge_pid, 15)
        except ProcessLookupError:
            pass
    if old_conf is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old_conf
