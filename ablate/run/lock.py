"""One study, one runner: `ablate run` holds `<workdir>/run.lock` while it runs.

The lock is an advisory `flock` on the file, so the kernel drops it when its process dies, even
by SIGKILL: a lock file whose flock is free is stale and the next run takes it over. The file
names the holder (pid, host, start time) so a refused run can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ablate.errors import AblateError

LOCK_NAME = "run.lock"


class StudyBusy(AblateError):
    """Another `ablate run` of the same study holds its lock."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: float  # time.time()

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host}, started {when}"


def read_holder(path: Path) -> Holder | None:
    """Who the lock file names (None for an empty or unreadable file)."""
    try:
        data = json.loads(Path(path).read_text())
        return Holder(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StudyLock:
    """`with StudyLock(workdir, study_file):` runs the body as the study's only runner.

    Raises `StudyBusy` (one line: holder, how to wait or take over) when another live process
    holds it. `took_over` names the holder of a stale lock that was taken over, else None.
    """

    def __init__(self, workdir: Path, study_file: str = "<study>"):
        self.path = Path(workdir) / LOCK_NAME
        self.study_file = study_file
        self.took_over: Holder | None = None
        self._fd: int | None = None

    def acquire(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another process"
            stop = f"stop it (kill {holder.pid} on {holder.host})" if holder else "stop it"
            raise StudyBusy(
                f"this study is already running: {who} (lock {self.path}); wait for it "
                f"(ablate status {self.study_file}) or {stop} and run again to take over"
            ) from None
        self.took_over = read_holder(self.path)  # a stale lock: its holder died without unlock
        me = Holder(os.getpid(), socket.gethostname(), time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: nobody holds it
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
