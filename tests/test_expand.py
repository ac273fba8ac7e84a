"""Job keys are the identity of finished runs: a rerun skips every job whose key has a FINISHED
run. These keys were computed with the code before ablate/run/ existed (commit 77a49ca's
expand.py and jobs.py) and are hard-coded so that moving or retyping the run machinery never
changes them (a change would re-run every existing study from scratch)."""

from __future__ import annotations

import os
from pathlib import Path

from ablate.data.dataset import Case
from ablate.expand import expand, expand_ensembles, expand_externals, expand_tests
from ablate.folds import Fold
from ablate.study import Study

STUDY = {
    "name": "pinned",
    "dataset": {"synthetic": {"cases": 6}, "test": {"holdout": 2}},
    "train": {"epochs": 3, "iterations_per_epoch": 2},
    "infer": {"ensemble_folds": True},
    "folds": {"k": 2},
    "seeds": [0, 1],
    "axes": {"arch": ["plain", "residual"], "infer.tta": [1, 8]},
    "ensembles": {"both": [{"arch": "plain"}, {"arch": "residual"}]},
}

# (kind, name, key), computed before the move; do not regenerate them from the current code
PINNED = [
    ("train", "plain · fold 0 · seed 0", "ea24f365c3bb6b62"),
    ("train", "plain · fold 1 · seed 0", "3db6703647e81e2e"),
    ("train", "plain · fold 0 · seed 1", "136e17a473bea0ca"),
    ("train", "plain · fold 1 · seed 1", "055f4a3f9d7fa4dd"),
    ("train", "residual · fold 0 · seed 0", "8c6f6b30118b6cde"),
    ("train", "residual · fold 1 · seed 0", "11ccacfb6421f293"),
    ("train", "residual · fold 0 · seed 1", "305af6863189a6c0"),
    ("train", "residual · fold 1 · seed 1", "f7a158cd4aea4c76"),
    ("eval", "plain · tta=1 · fold 0 · seed 0", "bf470349da904876"),
    ("eval", "plain · tta=1 · fold 1 · seed 0", "97d5acc8920e2f12"),
    ("eval", "plain · tta=1 · fold 0 · seed 1", "fbbb8ae5138a80b6"),
    ("eval", "plain · tta=1 · fold 1 · seed 1", "dd7fd6a96adadfb3"),
    ("eval", "plain · tta=8 · fold 0 · seed 0", "65be2ca83aad1fb8"),
    ("eval", "plain · tta=8 · fold 1 · seed 0", "a5c40556127add9a"),
    ("eval", "plain · tta=8 · fold 0 · seed 1", "d7c1e40ec6a90fa0"),
    ("eval", "plain · tta=8 · fold 1 · seed 1", "940dc5c3988b9578"),
    ("eval", "residual · tta=1 · fold 0 · seed 0", "bdaed3b2693aac63"),
    ("eval", "residual · tta=1 · fold 1 · seed 0", "cb12a81f71f6ac4d"),
    ("eval", "residual · tta=1 · fold 0 · seed 1", "37e9c2f536d69896"),
    ("eval", "residual · tta=1 · fold 1 · seed 1", "b93c1d787eb923d5"),
    ("eval", "residual · tta=8 · fold 0 · seed 0", "a195348cea94f200"),
    ("eval", "residual · tta=8 · fold 1 · seed 0", "42ee47036c2fbb87"),
    ("eval", "residual · tta=8 · fold 0 · seed 1", "7f4cbb9d59344815"),
    ("eval", "residual · tta=8 · fold 1 · seed 1", "0d578217a839689d"),
    ("test", "plain · tta=1 · test · 2 fold models + ensemble · seed 0", "19af7b3805c9845b"),
    ("test", "plain · tta=1 · test · 2 fold models + ensemble · seed 1", "077c8420ea018f88"),
    ("test", "plain · tta=8 · test · 2 fold models + ensemble · seed 0", "4c59771ce692f267"),
    ("test", "plain · tta=8 · test · 2 fold models + ensemble · seed 1", "2c057b93c94f729f"),
    ("test", "residual · tta=1 · test · 2 fold models + ensemble · seed 0", "f7c49f0e6657e037"),
    ("test", "residual · tta=1 · test · 2 fold models + ensemble · seed 1", "4a56d828e201b956"),
    ("test", "residual · tta=8 · test · 2 fold models + ensemble · seed 0", "5bff8eab9edaa83c"),
    ("test", "residual · tta=8 · test · 2 fold models + ensemble · seed 1", "518f5be646616868"),
    ("ensemble", "both · ensemble · fold 0 · seed 0", "93cd69757cff52ad"),
    ("ensemble", "both · ensemble · fold 0 · seed 1", "b0e6fe3dae59d694"),
    ("ensemble", "both · ensemble · fold 1 · seed 0", "01912963f433a63c"),
    ("ensemble", "both · ensemble · fold 1 · seed 1", "5c8099e4e010efeb"),
]

PINNED_EXTERNAL = [
    ("nnunet · external · fold 0", "08f3123b9d3c253b"),
    ("nnunet · external · fold 1", "8f92cc29efd55145"),
    ("nnunet · external · test", "8bf02469ae916cd4"),
]


def test_job_keys_are_those_computed_before_the_move() -> None:
    study = Study.model_validate(STUDY)
    train, evals = expand(study, "data-key")
    jobs = [
        ("train", train),
        ("eval", evals),
        ("test", expand_tests(study, evals, "test-key")),
        ("ensemble", expand_ensembles(study, evals)),
    ]
    assert [(kind, j.name, j.key) for kind, some in jobs for j in some] == PINNED


def test_external_job_keys_are_those_computed_before_the_move(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the key holds the folder as written in the study: relative
    Path("pred").mkdir()
    for case_id in ("a", "b", "x"):
        path = Path("pred") / f"{case_id}.nii.gz"
        path.write_bytes(b"label")  # and each file's name, size and mtime
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    study = Study.model_validate(
        {"name": "pinned", "dataset": {"synthetic": {"cases": 4}}, "external": {"nnunet": "pred"}}
    )
    folds = [Fold(("b",), ("a",)), Fold(("a",), ("b",))]
    jobs = expand_externals(study, "data-key", folds, ".nii.gz", (Case("x", (), None),))
    assert [(j.name, j.key) for j in jobs] == PINNED_EXTERNAL
