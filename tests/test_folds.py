import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split

from ablate.errors import ConfigError
from ablate.folds import Fold, make_folds, read_splits, write_splits

IDS = [f"case_{i:02d}" for i in range(10)]


def test_folds_match_hand_computed_kfold():
    # RandomState(12345).shuffle(arange(10)) == [0 7 3 9 6 4 1 8 5 2]; 5 folds of 2, each sorted
    folds = make_folds(reversed(IDS), k=5, seed=12345)  # input order must not matter
    assert [f.val for f in folds] == [
        ("case_00", "case_07"),
        ("case_03", "case_09"),
        ("case_04", "case_06"),
        ("case_01", "case_08"),
        ("case_02", "case_05"),
    ]
    assert folds[0].train == tuple(i for i in IDS if i not in ("case_00", "case_07"))


def test_uneven_fold_sizes_first_folds_larger():
    # RandomState(12345).shuffle(arange(7)) == [6 3 4 0 1 5 2]; sizes 3, 2, 2
    folds = make_folds([f"c{i}" for i in range(7)], k=3)
    assert [f.val for f in folds] == [("c3", "c4", "c6"), ("c0", "c1"), ("c2", "c5")]
    for f in folds:
        assert set(f.train) | set(f.val) == {f"c{i}" for i in range(7)}
        assert not set(f.train) & set(f.val)


@pytest.mark.parametrize("n, k, seed", [(23, 5, 12345), (7, 3, 12345), (40, 5, 1), (10, 10, 7)])
def test_folds_equal_nnunets_generate_crossval_split(n, k, seed):
    """nnU-Net sorts the case identifiers, then splits with sklearn's shuffled KFold."""
    ids = [f"case_{i:03d}" for i in range(n)]
    theirs = generate_crossval_split(sorted(ids), seed=seed, n_splits=k)
    ours = make_folds(list(reversed(ids)), k=k, seed=seed)
    assert [(f.train, f.val) for f in ours] == [
        (tuple(sorted(s["train"])), tuple(sorted(s["val"]))) for s in theirs
    ]


def test_splits_roundtrip(tmp_path):
    folds = make_folds(IDS, k=2, seed=1)
    write_splits(folds, tmp_path / "splits_final.json")
    assert read_splits(tmp_path / "splits_final.json") == folds
    assert isinstance(folds[0], Fold)


def test_too_many_folds_is_config_error():
    with pytest.raises(ConfigError, match="folds"):
        make_folds(["a", "b"], k=5)
