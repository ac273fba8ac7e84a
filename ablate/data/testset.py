"""The held-out test set (`dataset.test`): labelled cases kept out of planning and
cross-validation, predicted afterwards by every fold model and by their ensemble."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ablate.data.dataset import Case, Dataset
from ablate.errors import DataError


def hold_out(dataset: Dataset, n: int, seed: int, folds: int) -> tuple[Dataset, tuple[Case, ...]]:
    """Draw `n` labelled cases (seeded, from the sorted case ids) as the test set; the rest, at
    least `folds` cases, stay for planning and cross-validation."""
    labelled = sorted(c.case_id for c in dataset.cases if c.label is not None)
    if n > len(labelled) - folds:
        raise DataError(
            f"dataset.test.holdout: {n} of {len(labelled)} labelled cases would leave "
            f"fewer than folds.k = {folds} for cross-validation; lower the holdout"
        )
    chosen = set(np.random.default_rng(seed).choice(labelled, size=n, replace=False).tolist())
    kept = tuple(c for c in dataset.cases if c.case_id not in chosen)
    test = tuple(c for c in dataset.cases if c.case_id in chosen)
    return dataclasses.replace(dataset, cases=kept), test


def check_test_dataset(train: Dataset, test: Dataset) -> tuple[Case, ...]:
    """The cases of a separate test dataset, refused unless it matches the training set."""
    where = f"dataset.test.path {test.root}"
    if test.channels != train.channels:
        raise DataError(
            f"{where}: channels {list(test.channels)} differ from the training set's "
            f"{list(train.channels)}; give a test set with the same channels"
        )
    if test.labels != train.labels:
        raise DataError(
            f"{where}: labels {test.labels} differ from the training set's "
            f"{train.labels}; give a test set with the same labels"
        )
    unlabelled = [c.case_id for c in test.cases if c.label is None]
    if unlabelled:
        raise DataError(
            f"{where}: case {unlabelled[0]} has no label ({len(unlabelled)} in all); "
            "a test set is scored, so every case needs its reference label"
        )
    shared = sorted({c.case_id for c in test.cases} & {c.case_id for c in train.cases})
    if shared:
        raise DataError(
            f"{where}: case {shared[0]} is also a training case ({len(shared)} in "
            "all); a held-out test set must not overlap the training set"
        )
    if not test.cases:
        raise DataError(f"{where}: no cases found; check the folder and dataset.test.format")
    return test.cases


def held_out_key(cases: tuple[Case, ...]) -> str:
    """Identity of the test cases' files (names, sizes, modification times)."""
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.case_id):
        for path in (*case.images, case.label):
            if not path.is_file():  # refused by `verify`; `ablate status` still answers
                h.update(f"{case.case_id}:{path.name}:missing".encode())
                continue
            st = path.stat()
            h.update(f"{case.case_id}:{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
