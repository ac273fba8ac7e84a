"""`ablate validate --power-from`: the planned study's design, the pilot's store read (never
created), and one-line errors."""

import numpy as np
from test_planning import _pilot

PLANNED = """name: planned
dataset: {synthetic: {cases: 48, seed: 0}, test: {holdout: 8}}
axes: {train.deep_supervision: [nnunet, none], infer.tta: [1, 2]}
folds: {k: 5}
seeds: [0, 1]
analysis: {noninferiority_margin: {dsc: 0.01}}
"""


def test_validate_power_from_a_pilot_prints_the_planned_design(tmp_path, monkeypatch, capsys):
    from ablate.cli import main

    pilot = _pilot(np.random.default_rng(8))
    asked = []

    def fetch(uri, name):
        asked.append((uri, name))
        return pilot

    monkeypatch.setattr("ablate.run.results.fetch_results", fetch)
    planned = tmp_path / "planned.yaml"
    planned.write_text(PLANNED)
    pilot_yaml = tmp_path / "pilot.yaml"
    pilot_yaml.write_text(
        PLANNED.replace("name: planned", "name: pilot").replace("[0, 1]", "[0, 1, 2]")
    )
    assert main(["validate", str(planned), "--power-from", str(pilot_yaml)]) == 0
    out = capsys.readouterr().out
    assert asked == [(f"sqlite:///{tmp_path / 'runs' / 'pilot' / 'mlflow.db'}", "pilot")]
    assert "for this study (40 cases, 5 fold models x 2 seed(s))" in out  # 48 - 8 held out
    assert "kidney DSC, training comparisons (configuration level" in out
    assert "kidney DSC, inference-only comparisons (case level" in out
    assert "to detect 1.00 points:" in out  # the study's non-inferiority margin
    # a work dir names the study by its folder; --detect and --cases override the study's own
    args = ["validate", str(planned), "--power-from", str(tmp_path), "--detect", "dsc=0.03"]
    assert main([*args, "--cases", "100"]) == 0
    out = capsys.readouterr().out
    assert asked[-1] == (f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path.name)
    assert "for this study (100 cases" in out and "to detect 3.00 points:" in out


def test_validate_power_from_a_pilot_that_never_ran_exits_2_and_creates_nothing(tmp_path, capsys):
    from ablate.cli import main

    planned = tmp_path / "planned.yaml"
    planned.write_text(PLANNED)
    pilot_dir = tmp_path / "runs" / "pilot"
    pilot_dir.mkdir(parents=True)
    assert main(["validate", str(planned), "--power-from", str(pilot_dir)]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store" in err and len(err.strip().splitlines()) == 1
    assert list(pilot_dir.iterdir()) == []
    assert main(["validate", str(planned), "--power-from", str(pilot_dir), "--detect", "dsc"]) == 2
    assert "--detect 'dsc': give metric=difference pairs" in capsys.readouterr().err
