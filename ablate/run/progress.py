"""What a running study shows: bars on a terminal, plain lines elsewhere (SLURM logs, nohup, CI).

Plain lines: one when a job starts and one when it ends, with the count and the time left
(`[12/135] train residual · fold 3 ... done in 4 h 12 min; 123 left, about 2.1 days`), and a
training's epoch line at most once a minute. The time left is the jobs left of each kind times
that kind's mean duration (this run's jobs, else earlier runs'), divided by the executor's
parallelism; `ablate status` computes it the same way (`time_left`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

KIND_WORDS = {"train": "train", "eval": "evaluate", "test": "test"}
PLURAL = {"train": "trainings", "eval": "evaluations", "test": "test-set evaluations"}


class Progress(Protocol):
    def message(self, text: str) -> None: ...  # always shown

    def start(self, todo: dict[str, int], capacity: int, typical: dict[str, float]) -> None: ...

    def phase(self, name: str, total: int) -> None: ...  # a new phase of `total` jobs

    def job_started(self, key: str, kind: str, name: str) -> None: ...

    def job_ended(self, key: str, ok: bool, error: str = "") -> None: ...

    def epoch(
        self, key: str, name: str, epoch: int, epochs: int, metrics: dict[str, float]
    ) -> None: ...  # a training finished `epoch` of `epochs` (1-based)

    def close(self) -> None: ...


def human_duration(seconds: float) -> str:
    """0.4 s, 35 s, 1.5 min, 12 min, 4 h 12 min, 2.1 days."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 10:
        return f"{minutes:.1f} min"
    if minutes < 90:
        return f"{minutes:.0f} min"
    if seconds < 36 * 3600:
        hours, rest = divmod(round(minutes), 60)
        return f"{hours} h {rest} min"
    return f"{seconds / 86400:.1f} days"


def time_left(
    left: dict[str, int], mean_seconds: dict[str, float | None], capacity: int
) -> tuple[float, list[str]]:
    """Seconds for the jobs left of each kind at the executor's parallelism, and the kinds
    left that have no duration yet (not counted)."""
    seconds, untimed = 0.0, []
    for kind, n in left.items():
        if n <= 0:
            continue
        if mean_seconds.get(kind) is None:
            untimed.append(kind)
        else:
            seconds += n * mean_seconds[kind]
    return seconds / max(1, capacity), untimed


def left_text(left: dict[str, int], mean_seconds: dict[str, float | None], capacity: int) -> str:
    """`123 left, about 2.1 days` (+ the kinds not timed yet)."""
    n = sum(max(0, v) for v in left.values())
    if n == 0:
        return "none left"
    seconds, untimed = time_left(left, mean_seconds, capacity)
    if len(untimed) == len([k for k, v in left.items() if v > 0]):
        first = " or ".join(PLURAL.get(k, k)[:-1] for k in untimed)
        return f"{n} left, time unknown until the first {first} has ended"
    text = f"{n} left, about {human_duration(seconds)}"
    if untimed:
        text += " + the " + " and ".join(PLURAL.get(k, k) for k in untimed) + " (not timed yet)"
    return text


@dataclass
class Tally:
    """The counts and durations both progress displays show."""

    todo: dict[str, int] = field(default_factory=dict)  # jobs to run in this run, per kind
    capacity: int = 1
    typical: dict[str, float] = field(default_factory=dict)  # earlier runs' mean seconds
    seconds: dict[str, list[float]] = field(default_factory=dict)  # this run's durations
    ended: dict[str, int] = field(default_factory=dict)
    started: int = 0
    running: dict[str, tuple[int, str, str, float]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.todo.values())

    def begin(self, key: str, kind: str, name: str) -> int:
        self.started += 1
        self.running[key] = (self.started, kind, name, time.monotonic())
        return self.started

    def end(self, key: str, ok: bool) -> tuple[int, str, str, float]:
        index, kind, name, began = self.running.pop(key)
        took = time.monotonic() - began
        self.ended[kind] = self.ended.get(kind, 0) + 1
        if ok:
            self.seconds.setdefault(kind, []).append(took)
        return index, kind, name, took

    def mean_seconds(self) -> dict[str, float | None]:
        kinds = set(self.todo) | set(self.typical)
        return {
            k: (sum(s) / len(s) if (s := self.seconds.get(k)) else self.typical.get(k))
            for k in kinds
        }

    def left(self) -> str:
        left = {k: n - self.ended.get(k, 0) for k, n in self.todo.items()}
        return left_text(left, self.mean_seconds(), self.capacity)


def _epoch_text(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    shown = [f"epoch {epoch}/{epochs}"]
    for key, label in (
        ("train_loss", "train loss"),
        ("val_loss", "val loss"),
        ("pseudo_dice", "pseudo Dice"),
        ("ema_pseudo_dice", "EMA"),
    ):
        if key in metrics:
            shown.append(f"{label} {metrics[key]:.4f}")
    if "epoch_seconds" in metrics:
        shown.append(f"{human_duration(metrics['epoch_seconds'])}/epoch")
    return ", ".join(shown)


class PlainProgress:
    """Timestamped lines: messages, each job's start and end with counts and time left, and a
    training's epoch at most every `epoch_every_s`."""

    def __init__(self, epoch_every_s: float = 60.0):
        self.begun = time.perf_counter()
        self.tally = Tally()
        self.epoch_every_s = epoch_every_s
        self._epoch_shown: dict[str, float] = {}

    def message(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.begun:7.1f}s] {text}", flush=True)

    def start(self, todo: dict[str, int], capacity: int, typical: dict[str, float]) -> None:
        self.tally = Tally(dict(todo), capacity, dict(typical))
        parts = [f"{n} {PLURAL.get(k, k)}" for k, n in todo.items() if n]
        if parts:
            self.message(f"to run: {', '.join(parts)} ({capacity} at a time); {self.tally.left()}")

    def phase(self, name: str, total: int) -> None:
        self.message(f"{name}: {total} to run")

    def job_started(self, key: str, kind: str, name: str) -> None:
        index = self.tally.begin(key, kind, name)
        self.message(f"[{index}/{self.tally.total}] {KIND_WORDS.get(kind, kind)} {name} ...")

    def job_ended(self, key: str, ok: bool, error: str = "") -> None:
        index, kind, name, took = self.tally.end(key, ok)
        self._epoch_shown.pop(key, None)
        what = f"done in {human_duration(took)}" if ok else f"FAILED after {human_duration(took)}"
        self.message(
            f"[{index}/{self.tally.total}] {KIND_WORDS.get(kind, kind)} {name} ... {what}; "
            f"{self.tally.left()}" + (f"\n{error}" if error else "")
        )

    def epoch(self, key: str, name: str, epoch: int, epochs: int, metrics: dict[str, float]):
        now = time.monotonic()
        if now - self._epoch_shown.get(key, float("-inf")) < self.epoch_every_s and epoch < epochs:
            return
        self._epoch_shown[key] = now
        self.message(f"  train {name}: {_epoch_text(epoch, epochs, metrics)}")

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar per phase (with the time left) and one per running training (epoch x/N)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(
            TextColumn("{task.fields[name]:24.24s}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self.tally = Tally()
        self.phases: dict[str, int] = {}
        self.current: str | None = None
        self.trainings: dict[str, int] = {}
        self.bars.start()

    def message(self, text: str) -> None:
        self.bars.console.log(text)

    def start(self, todo: dict[str, int], capacity: int, typical: dict[str, float]) -> None:
        self.tally = Tally(dict(todo), capacity, dict(typical))

    def phase(self, name: str, total: int) -> None:
        self.current = name
        self.phases[name] = self.bars.add_task(self.tally.left(), total=total, name=name)

    def job_started(self, key: str, kind: str, name: str) -> None:
        self.tally.begin(key, kind, name)
        if kind == "train":
            self.trainings[key] = self.bars.add_task("", total=None, name=f"  {name}")

    def job_ended(self, key: str, ok: bool, error: str = "") -> None:
        _, kind, name, took = self.tally.end(key, ok)
        if key in self.trainings:
            self.bars.remove_task(self.trainings.pop(key))
        if not ok:
            self.message(f"FAILED {name} after {human_duration(took)}: {error}")
        if self.current is not None:
            self.bars.update(self.phases[self.current], advance=1, description=self.tally.left())

    def epoch(self, key: str, name: str, epoch: int, epochs: int, metrics: dict[str, float]):
        if key in self.trainings:
            text = _epoch_text(epoch, epochs, metrics).split(", ", 1)[-1]
            self.bars.update(self.trainings[key], completed=epoch, total=epochs, description=text)

    def close(self) -> None:
        self.bars.stop()


def for_terminal() -> Progress:
    """Bars when stdout is a terminal, else plain lines."""
    return RichProgress() if sys.stdout.isatty() else PlainProgress()
