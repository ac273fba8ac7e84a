"""Cross-validation folds identical to nnU-Net v2's (sklearn KFold, shuffled, seed 12345).

nnU-Net splits the *sorted* case ids with `KFold(n_splits=5, shuffle=True, random_state=12345)`
and saves them as `splits_final.json` (a list of {"train": [...], "val": [...]}). We reproduce
KFold without importing sklearn: shuffle the index array with `RandomState(seed)`, cut it into
folds of n // k (the first n % k folds one larger); both train and validation ids come back in
sorted order, exactly as KFold yields them (it returns index masks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.errors import ConfigError, DataError


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_folds(case_ids, k: int = 5, seed: int = 12345) -> list[Fold]:
    """K folds over the sorted case ids, identical to sklearn's shuffled KFold."""
    ids = sorted(case_ids)
    n = len(ids)
    if k < 2 or k > n:
        raise ConfigError(
            f"folds: need 2 <= k <= number of cases ({n}), got k={k}; "
            "lower the number of folds or add cases"
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    folds, start = [], 0
    for size in sizes:
        val_idx = order[start : start + size]
        in_val = np.zeros(n, dtype=bool)
        in_val[val_idx] = True
        train = tuple(ids[i] for i in np.flatnonzero(~in_val))
        folds.append(Fold(train=train, val=tuple(ids[i] for i in np.flatnonzero(in_val))))
        start += size
    return folds


def write_splits(folds: list[Fold], path: str | Path) -> None:
    """Write folds in nnU-Net's splits_final.json format."""
    data = [{"train": list(f.train), "val": list(f.val)} for f in folds]
    Path(path).write_text(json.dumps(data, indent=2))


def read_splits(path: str | Path) -> list[Fold]:
    """Read an nnU-Net splits_final.json (list of {"train", "val"})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [Fold(train=tuple(d["train"]), val=tuple(d["val"])) for d in data]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not an nnU-Net splits file (expected a list of "
            f"{{'train': [...], 'val': [...]}}): {exc}"
        ) from exc


def check_splits(folds: list[Fold], case_ids, k: int, path: str | Path) -> None:
    """Refuse custom splits that do not fit the study: another number of folds, or a case that is
    not one of the cross-validation cases (a held-out test case must never be trained on)."""
    if len(folds) != k:
        raise DataError(
            f"{path}: {len(folds)} folds but the study's folds.k is {k}; set "
            f"folds.k: {len(folds)} or fix the splits"
        )
    known = set(case_ids)
    for i, fold in enumerate(folds):
        unknown = sorted(set(fold.train + fold.val) - known)
        if unknown:
            raise DataError(
                f"{path}: fold {i} names case {unknown[0]!r}, which is not a "
                "cross-validation case (missing, or held out as a test case); fix "
                "the splits"
            )
