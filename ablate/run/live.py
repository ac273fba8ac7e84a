"""Live training curves: a training appends one JSON line per finished epoch to `events.jsonl` in
its job folder (`EpochEvents`, in the worker, wherever it runs); the driver's `LiveCurves`
thread reads new lines every few seconds and logs them on the job's MLflow run, so the store
keeps its single writer on every executor. Steps already logged are skipped, so a resumed
training (whose earlier epochs are in the same file) has one value per step.

Event line: {"step": epoch, "epochs": total, "metrics": {"train_loss": ..., ...}, "time": t}.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS_NAME = "events.jsonl"
FIGURE_NAME = "training_curves.png"


class EpochEvents:
    """`train`'s on_epoch_end: append the epoch's metrics to the job folder's event file."""

    def __init__(self, path: Path, epochs: int):
        self.path, self.epochs = Path(path), epochs

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        line = {"step": int(epoch), "epochs": self.epochs, "metrics": metrics, "time": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as out:  # one short write: readers see whole lines or none
            out.write(json.dumps(line) + "\n")


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete lines after byte `offset`, and the offset after them."""
    try:
        with open(path, "rb") as src:
            src.seek(offset)
            data = src.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    events = []
    for raw in data[:end].splitlines():
        try:
            events.append(json.loads(raw))
        except ValueError:  # a torn line (e.g. a node died mid-write): skip it
            continue
    return events, offset + end


@dataclass
class _Watched:
    key: str  # the job's key, handed to on_epoch
    path: Path
    offset: int = 0
    steps: set[int] = field(default_factory=set)
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    figure_at: float = 0.0  # when the curve figure was last logged


class LiveCurves:
    """Forwards the event files of running trainings to their MLflow runs from a thread.

    `tracker`: log_epoch(run_id, step, metrics) and log_artifact(run_id, path) (thread-safe);
    `on_epoch(key, epoch, epochs, metrics)` (epoch 1-based): progress. The curve figure is
    logged at most every `figure_every_s` and when the training ends."""

    def __init__(
        self,
        tracker,
        on_epoch: Callable[..., None] | None = None,
        poll_s: float = 2.0,
        figure_every_s: float = 180.0,
    ):
        self.tracker, self.on_epoch = tracker, on_epoch
        self.poll_s, self.figure_every_s = poll_s, figure_every_s
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()  # guards _watched
        self._forwarding = threading.Lock()  # one reader per event file at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ablate-live-curves", daemon=True)
        self._thread.start()

    def watch(self, run_id: str, key: str, events: Path) -> None:
        with self._lock:
            self._watched[run_id] = _Watched(key, Path(events), figure_at=time.monotonic())

    def finish(self, run_id: str, history: list[dict[str, float]] | None = None) -> set[int]:
        """Stop watching a training: forward what is left of its events and, given its full
        `history`, log the final curve figure. Returns the steps logged, so the driver logs
        only the rest of the history (epochs whose line never came)."""
        with self._forwarding:  # the thread may be forwarding this file right now
            with self._lock:
                watched = self._watched.pop(run_id, None)
            if watched is None:
                return set()
            self._forward(run_id, watched)
            if history:
                self._log_figure(run_id, dict(enumerate(history)), watched.path.parent)
        return watched.steps

    def stop_all(self) -> None:
        with self._lock:
            self._watched.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                watched = list(self._watched.items())
            for run_id, item in watched:
                try:
                    with self._forwarding:
                        if run_id not in self._watched:  # finished meanwhile
                            continue
                        self._forward(run_id, item)
                        if time.monotonic() - item.figure_at >= self.figure_every_s:
                            item.figure_at = time.monotonic()
                            self._log_figure(run_id, item.history, item.path.parent)
                except Exception:  # noqa: BLE001 - a store hiccup must not end the study
                    continue  # the next poll tries again from the same offset

    def _forward(self, run_id: str, item: _Watched) -> None:
        events, offset = read_events(item.path, item.offset)
        for event in events:
            step = int(event["step"])
            item.history[step] = event["metrics"]
            if step in item.steps:  # already logged (a resumed training's earlier epochs)
                continue
            self.tracker.log_epoch(run_id, step, event["metrics"])
            item.steps.add(step)
            if self.on_epoch is not None:
                self.on_epoch(item.key, step + 1, event["epochs"], event["metrics"])
        item.offset = offset

    def _log_figure(self, run_id: str, history: dict[int, dict[str, float]], folder: Path):
        if not history:
            return
        path = Path(folder) / FIGURE_NAME
        curve_figure(history, path)
        self.tracker.log_artifact(run_id, path)


def curve_figure(history: dict[int, dict[str, float]], path: Path) -> Path:
    """Losses, pseudo Dice (and its EMA) and the learning rate over epochs, as nnU-Net's
    progress.png, written to `path`."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe off the main thread

    steps = sorted(history)

    def series(name: str) -> list[float]:
        return [history[s].get(name, float("nan")) for s in steps]

    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, series("train_loss"), label="train loss")
    top.plot(steps, series("val_loss"), label="val loss")
    top.set_ylabel("loss")
    dice = top.twinx()
    dice.plot(steps, series("pseudo_dice"), "g.", label="pseudo Dice")
    dice.plot(steps, series("ema_pseudo_dice"), "g-", label="EMA pseudo Dice")
    dice.set_ylabel("pseudo Dice")
    top.legend(loc="upper left")
    dice.legend(loc="upper right")
    bottom.plot(steps, series("lr"), label="learning rate")
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("learning rate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
