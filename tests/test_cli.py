"""The CLI turns user errors into one line on stderr and exit code 2."""

from __future__ import annotations

from ablate.cli import main


def test_missing_study_file_exits_2(tmp_path, capsys) -> None:
    code = main(["validate", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "nope.yaml" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_key_exits_2(tmp_path, capsys) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text("name: bad\ndataset: {synthetic: {cases: 4, seed: 0}}\ntrian: {epochs: 1}\n")
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "trian" in err and "train" in err
    assert len(err.strip().splitlines()) == 1
