"""What a running study shows: bars on a terminal, a few plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import sys
import time
from typing import Protocol


class Progress(Protocol):
    def message(self, text: str) -> None: ...  # always shown

    def phase(self, name: str, total: int) -> None: ...  # a new phase of `total` jobs

    def job(self, text: str) -> None: ...  # a job started (detail)

    def advance(self, name: str) -> None: ...  # a job of phase `name` ended

    def close(self) -> None: ...


class PlainProgress:
    """Timestamped lines: messages, phase starts and ends; per-job lines only when verbose."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.start = time.perf_counter()
        self.counts: dict[str, list[int]] = {}

    def message(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {text}", flush=True)

    def phase(self, name: str, total: int) -> None:
        self.counts[name] = [0, total]
        self.message(f"{name}: {total} to run")

    def job(self, text: str) -> None:
        if self.verbose:
            self.message(text)

    def advance(self, name: str) -> None:
        count = self.counts.setdefault(name, [0, 0])
        count[0] += 1
        if count[0] == count[1]:
            self.message(f"{name}: all {count[1]} ended")

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar per phase on a terminal (rich)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(
            TextColumn("{task.fields[name]:12s}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self.tasks: dict[str, int] = {}
        self.bars.start()

    def message(self, text: str) -> None:
        self.bars.console.log(text)

    def phase(self, name: str, total: int) -> None:
        self.tasks[name] = self.bars.add_task("", total=total, name=name)

    def job(self, text: str) -> None:
        for task in self.tasks.values():
            if not self.bars.tasks[task].finished:
                self.bars.update(task, description=text)

    def advance(self, name: str) -> None:
        self.bars.advance(self.tasks[name])

    def close(self) -> None:
        self.bars.stop()


def for_terminal() -> Progress:
    """Bars when stdout is a terminal, else quiet plain lines."""
    return RichProgress() if sys.stdout.isatty() else PlainProgress()
