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


def test_evaluate_scores_a_prediction_folder(tmp_path, capsys) -> None:
    import shutil

    import pandas as pd

    from ablate.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(tmp_path / "ds", cases=2, seed=0, fov_mm=(40, 50, 50))
    pred = tmp_path / "pred"
    shutil.copytree(dataset.root / "labelsTr", pred)
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(dataset.root / "labelsTr"), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert set(table.case) == {c.case_id for c in dataset.cases}
    assert set(table.target) == {"kidney", "tumor"}
    assert (table[table.metric == "dsc"].value == 1.0).all()

    (pred / f"{dataset.cases[1].case_id}.nii.gz").unlink()
    assert main(["evaluate", str(pred), str(dataset.root / "labelsTr"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "prediction missing" in err and len(err.strip().splitlines()) == 1
