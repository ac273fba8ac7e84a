"""Progress outside a terminal (a line per job start and end with counts and time left, an epoch
line at most once a minute) and the live-curve event files (whole lines, one value per step)."""

from __future__ import annotations

import json
import re
import time

from ablate.run.live import EpochEvents, LiveCurves, read_events
from ablate.run.progress import PlainProgress, human_duration, left_text


def test_human_durations():
    assert [human_duration(s) for s in (0.44, 35, 90, 720, 4 * 3600 + 12 * 60, 2.1 * 86400)] == [
        "0.4 s",
        "35 s",
        "1.5 min",
        "12 min",
        "4 h 12 min",
        "2.1 days",
    ]


def test_time_left_counts_parallelism_and_names_untimed_kinds():
    assert left_text({"train": 4}, {"train": 3600.0}, 2) == "4 left, about 2 h 0 min"
    text = left_text({"train": 1, "eval": 3}, {"train": 600.0, "eval": None}, 1)
    assert text == "4 left, about 10 min + the evaluations (not timed yet)"
    assert (
        left_text({"eval": 2}, {}, 1) == "2 left, time unknown until the first evaluation has ended"
    )


def test_plain_lines_per_job_with_count_and_eta(capsys, monkeypatch):
    clock = iter([0.0, 3 * 3600.0, 3 * 3600.0, 4 * 3600.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    progress = PlainProgress()
    progress.start({"train": 3}, capacity=1, typical={})
    progress.job_started("k1", "train", "residual · fold 3")
    progress.job_ended("k1", True)
    progress.job_started("k2", "train", "plain · fold 0")
    progress.job_ended("k2", False, "RuntimeError: out of memory")
    lines = [re.sub(r"^\[ *[\d.]+s\] ", "", line) for line in capsys.readouterr().out.splitlines()]
    assert (
        lines[0]
        == "to run: 3 trainings (1 at a time); 3 left, time unknown until the first training "
        "has ended"
    )
    assert lines[1] == "[1/3] train residual · fold 3 ..."
    assert (
        lines[2] == "[1/3] train residual · fold 3 ... done in 3 h 0 min; 2 left, about 6 h 0 min"
    )
    assert lines[4].startswith(
        "[2/3] train plain · fold 0 ... FAILED after 60 min; 1 left, about 3 h 0 min"
    )
    assert lines[5] == "RuntimeError: out of memory"


def test_epoch_lines_at_most_once_a_minute(capsys):
    progress = PlainProgress(epoch_every_s=60)
    for epoch in range(1, 4):
        progress.epoch(
            "k", "plain · fold 0", epoch, 1000, {"train_loss": 0.5, "epoch_seconds": 130}
        )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "train plain · fold 0: epoch 1/1000, train loss 0.5000, 2.2 min/epoch" in out


def test_read_events_leaves_a_partial_line_for_later(tmp_path):
    path = tmp_path / "events.jsonl"
    EpochEvents(path, 3)(0, {"train_loss": 1.0})
    with open(path, "a") as out:
        out.write('{"step": 1, "epo')  # still being written
    events, offset = read_events(path)
    assert [e["step"] for e in events] == [0]
    with open(path, "a") as out:
        out.write('chs": 3, "metrics": {"train_loss": 0.5}}\n')
    events, _ = read_events(path, offset)
    assert [(e["step"], e["metrics"]) for e in events] == [(1, {"train_loss": 0.5})]


class _Store:
    def __init__(self):
        self.logged: list[tuple[int, dict]] = []
        self.artifacts: list[str] = []

    def log_epoch(self, run_id, step, metrics):
        self.logged.append((step, metrics))

    def log_artifact(self, run_id, path, artifact_path=None):
        self.artifacts.append(path.name)


def test_a_resumed_training_logs_each_step_once(tmp_path):
    """The event file of a killed training holds epochs 0-1; the resumed one appends 1 again
    (a repeated line) and 2; the run gets steps 0, 1, 2 once each."""
    path = tmp_path / "events.jsonl"
    lines = [(0, 1.0), (1, 0.8), (1, 0.8), (2, 0.6)]
    path.write_text(
        "".join(
            json.dumps({"step": s, "epochs": 3, "metrics": {"train_loss": v}}) + "\n"
            for s, v in lines
        )
    )
    store = _Store()
    epochs = []
    live = LiveCurves(store, lambda key, *epoch: epochs.append(epoch[0]), poll_s=60)
    try:
        live.watch("run", "key", path)
        steps = live.finish("run", [{"train_loss": v} for _, v in lines[1:]])
    finally:
        live.close()
    assert [s for s, _ in store.logged] == [0, 1, 2] and steps == {0, 1, 2}
    assert epochs == [1, 2, 3]
    assert store.artifacts == ["training_curves.png"]
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
