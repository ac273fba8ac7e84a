"""What a job hands back to the driver (`Outcome`) and the states a job goes through
(`JobState`). Plain values: an Outcome is pickled back from worker processes and nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """A finished job's results, recorded by the driver on the job's MLflow run.

    metrics:   final metrics (step 0)
    history:   a training's per-epoch metrics (train_loss, val_loss, pseudo_dice, lr, ...)
    rows:      an evaluation's per-case scores {case, target, metric, value}; a test job's rows
               also carry the model that made the prediction: {model, fold, ...} (`HeldOutModel`)
    params:    extra run params
    artifacts: (file, folder in the run; None: its root)
    """

    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class HeldOutModel:
    """A model scored on the held-out test set: fold `fold`'s model, or the ensemble of every
    fold model (`fold` None)."""

    fold: int | None

    @property
    def name(self) -> str:
        """The `model` column of the test tables: "fold <n>" or "ensemble"."""
        return "ensemble" if self.fold is None else f"fold {self.fold}"

    @property
    def folder(self) -> str:
        """Its predictions' folder in the job folder."""
        return self.name.replace(" ", "_")

    @property
    def prefix(self) -> str:
        """Its metrics' prefix: `fold<n>_dsc_<target>`, `ensemble_dsc_<target>`."""
        return "ensemble_" if self.fold is None else f"fold{self.fold}_"

    @property
    def tracked_fold(self) -> int:
        """The `fold` column of its rows; -1 for the ensemble (every fold's model)."""
        return -1 if self.fold is None else self.fold


class JobState(str, Enum):
    """A job's state, best first. The tag `ablate.state` of its runs holds the value; a job
    without a run is PENDING."""

    DONE = "done"
    RUNNING = "running"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # left running by a killed `ablate run`, replaced by a later one
    PENDING = "pending"

    def better_than(self, other: JobState | None) -> bool:
        """Whether this state wins over `other` when a job has several runs."""
        order = list(JobState)
        return other is None or order.index(self) < order.index(other)
