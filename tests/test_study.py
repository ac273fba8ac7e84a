"""Study schema errors, grid expansion counts, job-key stability, and the seed studies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablate.errors import ConfigError
from ablate.expand import describe, expand, expand_ensembles, expand_tests
from ablate.study import Study, grid_cells, resolve_variant, variant_label
from ablate.study_load import load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"
BASE = """
name: tiny
dataset: {synthetic: {cases: 4}}
train: {epochs: 2, iterations_per_epoch: 3}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _load(tmp_path: Path, extra: str = "", **kwargs) -> Study:
    return load_study(_write(tmp_path, BASE + textwrap.dedent(extra)), **kwargs)


@pytest.mark.parametrize(
    "extra, match",
    [
        ("trian: {epochs: 1}\n", r"unknown key 'trian'; did you mean 'train'\?"),
        ("infer: {ttta: 2}\n", r"unknown key 'infer.ttta'; did you mean 'tta'\?"),
        ("infer: {count: 2}\n", r"unknown key 'infer.count'; valid keys: tta, mirror_axes"),
        ("folds: {k: many}\n", r"folds.k: Input should be a valid integer.*got 'many'"),
        (
            "axes: {train.los: [dice_ce]}\n",
            r"axes.train.los: unknown axis; did you mean 'train.loss'",
        ),
        (
            "axes: {colour: [red]}\n",
            r"axes.colour: unknown axis; axes are presets \(arch, ct_window",
        ),
        (
            "axes: {train.loss: [dice_ce, dice_tpk]}\n",
            r"axes.train.loss\[1\]: train.loss: unknown value 'dice_tpk'; "
            r"valid: dice_ce, dice_topk",
        ),
        (
            "axes: {train.deep_supervision: [last2]}\n",
            r"unknown mode .last2.; valid: last3, nnunet, none",
        ),
        (
            "axes: {infer.tta: [8, 3]}\n",
            r"axes.infer.tta\[1\]: invalid value 3: Input should be 1, 2",
        ),
        (
            "axes: {arch: [plain, resnet]}\n",
            r"axes.arch\[1\]: unknown value 'resnet' for preset axis",
        ),
        ("axes: {infer.tta: [8, 8]}\n", r"axes.infer.tta\[1\]: duplicate 8"),
        (
            "axes: {infer.tta: [8, 2]}\nbaseline: {infer.tta: 4}\n",
            r"baseline.infer.tta: 4 is not among the axis values",
        ),
        (
            "axes: {infer.tta: [8, 2]}\ninclude: [{train.loss: dice_ce}]\n",
            r"include\[0\]: 'train.loss' is not an axis of this study; use one of: infer.tta",
        ),
        ("folds: {k: 3, run: [0, 3]}\n", r"folds.run \[3\] outside 0..2"),
        ("train: {loss: focal}\n", r"train.loss: unknown value 'focal'"),
        (
            "infer: {ensemble_folds: true}\n",
            r"infer.ensemble_folds: .*declare a held-out test set \(dataset.test",
        ),
        (
            "dataset: {synthetic: {cases: 4}, test: {holdout: 1}}\n"
            "axes: {infer.ensemble_folds: [no]}\n",
            r"axes.infer.ensemble_folds: not an axis: .*set infer.ensemble_folds instead",
        ),
        (
            "dataset: {synthetic: {cases: 4}, test: {holdout: 1, path: t}}\n",
            r"dataset.test: give exactly one of dataset.test.holdout or dataset.test.path",
        ),
        ("dataset: {synthetic: {cases: 4}, test: {}}\n", r"dataset.test: give exactly one of"),
        (
            "dataset: {synthetic: {cases: 4}, test: {holdout: 0}}\n",
            r"dataset.test.holdout: Input should be greater than or equal to 1",
        ),
        (
            "dataset: {synthetic: {cases: 4}, test: {holdout: 1}}\ninfer: {ensemble_folds: true}\n"
            "folds: {k: 3, run: [1]}\n",
            r"infer.ensemble_folds: folds.run \[1\] gives one fold model",
        ),
        (
            "axes: {arch: [plain, residual]}\nensembles: {both: [{arch: plain}]}\n",
            r"ensembles.both: 1 member\(s\); an ensemble needs at least two grid cells",
        ),
        (
            "axes: {arch: [plain, residual]}\nensembles: {both: [{arch: plain}, {arch: preact}]}\n",
            r"ensembles.both\[1\]: preact is not a cell of the grid",
        ),
        (
            "axes: {arch: [plain, residual]}\nensembles: {both: [{arch: plain}, {loss: x}]}\n",
            r"ensembles.both\[1\]: 'loss' is not an axis of this study",
        ),
        (
            "axes: {arch: [plain, residual]}\nensembles: {both: [{arch: plain}, {arch: plain}]}\n",
            r"ensembles.both\[1\]: plain is listed twice",
        ),
        (
            "axes: {arch: [plain, residual]}\n"
            "ensembles: {plain: [{arch: plain}, {arch: residual}]}\n",
            r"ensembles.plain: the name is already a variant's label",
        ),
        (
            "infer: {ensemble_average: logits}\naxes: {ct_window: ['on', 'off']}\n"
            "ensembles: {w: [{ct_window: 'on'}, {ct_window: 'off'}]}\n",
            r"ensembles.w: members differ in plan settings, which only "
            r"infer.ensemble_average: probabilities can average",
        ),
        (
            "infer: {ensemble_average: median}\n",
            r"infer.ensemble_average: Input should be 'probabilities' or 'logits'",
        ),
        ("infer: {postprocess: always}\n", r"infer.postprocess: Input should be 'none', "),
    ],
)
def test_schema_errors_name_the_key_and_the_fix(tmp_path, extra, match):
    text = BASE.replace("train: {epochs: 2, iterations_per_epoch: 3}\n", "") + extra
    with pytest.raises(ConfigError, match=match) as info:
        load_study(_write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "study.yaml")) and "\n" not in message


def test_yaml_syntax_error_has_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"YAML syntax error at line 3, column 8: mapping values"):
        load_study(_write(tmp_path, "name: x\ndataset: {synthetic: {}}\naxes: a: b\n"))


def test_dataset_needs_exactly_one_source(tmp_path):
    text = "name: x\ndataset: {path: d, synthetic: {cases: 2}}\n"
    with pytest.raises(ConfigError, match=r"dataset: give exactly one of dataset.path"):
        load_study(_write(tmp_path, text))


def test_missing_dataset_path_says_how_to_get_it(tmp_path):
    text = "name: x\ndataset: {path: data/kits19}\n"
    with pytest.raises(
        ConfigError,
        match=r"data/kits19 does not exist; clone "
        r"github.com/neheller/kits19",
    ):
        load_study(_write(tmp_path, text))
    (tmp_path / "data" / "kits19").mkdir(parents=True)
    study = load_study(_write(tmp_path, text))
    assert study.dataset.path == tmp_path / "data" / "kits19"  # relative to the YAML's folder


GRID = """
axes:
  arch: [plain, residual, preact]
  train.loss: [dice_ce, dice_topk, ce_to_dice]
  train.deep_supervision: [nnunet, last3, none]
  infer.tta: [8, 2, 1]
"""


def test_grid_3x3x3x3_over_5_folds_is_135_trainings_405_evaluations(tmp_path):
    study = _load(tmp_path, GRID)
    train_jobs, eval_jobs = expand(study, "data1")
    assert (len(train_jobs), len(eval_jobs)) == (135, 405)
    assert len({j.key for j in train_jobs}) == 135 and len({j.key for j in eval_jobs}) == 405
    train_keys = {j.key for j in train_jobs}
    assert all(e.train_key in train_keys for e in eval_jobs)
    assert train_jobs[0].name == "plain · dice_ce · ds=nnunet · fold 0"
    assert train_jobs[0].train.base_features == 30 and train_jobs[-1].train.base_features == 24
    assert "infer.tta" not in train_jobs[0].variant
    assert eval_jobs[-1].name == "preact · ce_to_dice · ds=none · tta=1 · fold 4"
    text = describe(study, (train_jobs, eval_jobs))
    assert "trainings: 135; evaluations: 405" in text and "810 training iterations" in text


def test_keys_change_by_exactly_the_options_that_matter(tmp_path):
    def keys(extra: str, data_key: str = "d") -> tuple[list[str], list[str]]:
        train_jobs, eval_jobs = expand(_load(tmp_path, extra), data_key)
        return [j.key for j in train_jobs], [j.key for j in eval_jobs]

    base_train, base_eval = keys("")
    assert keys("") == (base_train, base_eval)
    tta_train, tta_eval = keys("infer: {tta: 2}\n")
    assert tta_train == base_train and set(tta_eval).isdisjoint(base_eval)
    assert set(
        keys("train: {epochs: 2, iterations_per_epoch: 3, loss: dice_topk}\n")[0]
    ).isdisjoint(base_train)
    assert keys("train: {epochs: 2, iterations_per_epoch: 3, data_workers: 0}\n") == (
        base_train,
        base_eval,
    )  # speed-only options do not re-run anything
    assert keys("infer: {window_batch: 7}\n") == (base_train, base_eval)
    assert set(keys("", data_key="other")[0]).isdisjoint(base_train)
    eval_only = keys("evaluation: {nsd_tolerance_mm: 1.0}\n")
    assert eval_only[0] == base_train and set(eval_only[1]).isdisjoint(base_eval)


def test_one_test_set_job_per_cell_and_seed_over_every_fold_model(tmp_path):
    def jobs(infer: str, test_key: str = "t1"):
        study = _load(
            tmp_path,
            f"""
            dataset: {{synthetic: {{cases: 9}}, test: {{holdout: 3}}}}
            infer: {infer}
            axes: {{train.loss: [dice_ce, dice_topk], infer.tta: [1, 2]}}
            folds: {{k: 3}}
            seeds: [0, 1]
        """,
        )
        train_jobs, eval_jobs = expand(study, "d")
        return train_jobs, eval_jobs, expand_tests(study, eval_jobs, test_key)

    train_jobs, eval_jobs, tests = jobs("{ensemble_folds: true}")
    assert len(tests) == 4 * 2 and len({j.key for j in tests}) == 8  # cells x seeds
    train_of = {j.key: j for j in train_jobs}
    for job in tests:
        assert job.folds == (0, 1, 2) and job.fold == -1
        assert [train_of[k].fold for k in job.train_keys] == [0, 1, 2]
        assert {train_of[k].seed for k in job.train_keys} == {job.seed}
        assert {train_of[k].variant["train.loss"] for k in job.train_keys} == {
            job.variant["train.loss"]
        }
    assert all(j.eval_key in {e.key for e in eval_jobs} for j in tests)
    assert tests[0].name == "dice_ce · tta=1 · test · 3 fold models + ensemble · seed 0"

    # the ensemble settings change test jobs only, never cross-validation
    _, eval_off, tests_off = jobs("{ensemble_folds: false}")
    assert [j.key for j in eval_off] == [j.key for j in eval_jobs]
    assert {j.key for j in tests_off}.isdisjoint(j.key for j in tests)
    assert tests_off[0].name == "dice_ce · tta=1 · test · 3 fold models · seed 0"
    _, _, tests_off_logits = jobs("{ensemble_folds: false, ensemble_average: logits}")
    assert [j.key for j in tests_off_logits] == [j.key for j in tests_off]  # no ensemble: moot
    _, _, tests_logits = jobs("{ensemble_folds: true, ensemble_average: logits}")
    assert {j.key for j in tests_logits}.isdisjoint(j.key for j in tests)
    _, _, tests_other = jobs("{ensemble_folds: true}", test_key="t2")  # other test files
    assert {j.key for j in tests_other}.isdisjoint(j.key for j in tests)
    no_test = _load(tmp_path, "")
    assert expand_tests(no_test, expand(no_test, "d")[1], "t1") == []


def test_cross_validation_ensembles_one_job_per_fold_and_seed(tmp_path):
    study = _load(
        tmp_path,
        """
        axes: {arch: [plain, residual, preact], infer.tta: [1, 2]}
        ensembles: {all3: [{arch: plain}, {arch: residual}, {arch: preact}],
                    tta2: [{arch: plain, infer.tta: 2}, {arch: residual, infer.tta: 2}]}
        folds: {k: 3}
        seeds: [0, 1]
    """,
    )
    _, eval_jobs = expand(study, "d")
    jobs = expand_ensembles(study, eval_jobs)
    assert len(jobs) == 2 * 3 * 2 and len({j.key for j in jobs}) == 12  # ensembles x folds x seeds
    first = jobs[0]
    assert first.name == "all3 · ensemble · fold 0 · seed 0" and first.label == "all3"
    assert [m.variant for m in first.members] == [
        {"arch": a, "infer.tta": 1} for a in ("plain", "residual", "preact")
    ]  # baseline tta
    assert all(m.fold == first.fold and m.seed == first.seed for m in first.members)
    assert [m.variant["infer.tta"] for m in jobs[-1].members] == [2, 2]
    logits = _load(
        tmp_path,
        """
        axes: {arch: [plain, residual, preact], infer.tta: [1, 2]}
        ensembles: {all3: [{arch: plain}, {arch: residual}, {arch: preact}],
                    tta2: [{arch: plain, infer.tta: 2}, {arch: residual, infer.tta: 2}]}
        infer: {ensemble_average: logits}
        folds: {k: 3}
        seeds: [0, 1]
    """,
    )
    assert {j.key for j in expand_ensembles(logits, expand(logits, "d")[1])}.isdisjoint(
        j.key for j in jobs
    )
    assert "ensemble all3: plain · tta=1, residual · tta=1, preact · tta=1" in describe(
        study, expand(study, "d")
    )


def test_test_set_path_resolves_against_the_study_and_must_exist(tmp_path):
    extra = "dataset: {synthetic: {cases: 4}, test: {path: ../held}}\n"
    text = BASE.replace("dataset: {synthetic: {cases: 4}}\n", "") + extra
    (tmp_path / "s").mkdir()
    path = tmp_path / "s" / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"dataset.test.path .*held does not exist; point it at"):
        load_study(path)
    (tmp_path / "held").mkdir()
    assert load_study(path).dataset.test.path == tmp_path / "held"


def test_keys_are_stable_across_processes(tmp_path):
    path = _write(tmp_path, BASE + GRID)
    code = (
        "from ablate.expand import expand; from ablate.study_load import load_study; "
        f"print(expand(load_study({str(path)!r}), 'd')[1][-1].key)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == expand(load_study(path), "d")[1][-1].key


def test_include_exclude_and_baseline(tmp_path):
    study = _load(
        tmp_path,
        """
        axes: {train.loss: [dice_ce, dice_topk], infer.tta: [8, 2]}
        baseline: {train.loss: dice_topk}
        exclude: [{train.loss: dice_ce}]
        include: [{infer.tta: 1}]
        folds: {k: 2, run: [1]}
        seeds: [0, 7]
    """,
    )
    cells = grid_cells(study)
    assert cells == [
        {"train.loss": "dice_topk", "infer.tta": 8},
        {"train.loss": "dice_topk", "infer.tta": 2},
        {"train.loss": "dice_topk", "infer.tta": 1},
    ]  # include: baseline + tta=1
    train_jobs, eval_jobs = expand(study, "d")
    assert [(j.fold, j.seed) for j in train_jobs] == [(1, 0), (1, 7)]
    assert len(eval_jobs) == 6 and eval_jobs[0].name == "dice_topk · tta=8 · fold 1 · seed 0"


def test_presets_and_labels(tmp_path):
    study = _load(tmp_path, "axes: {ct_window: ['off', 'on']}\n")
    plan, _, _ = resolve_variant(study, {"ct_window": "on"})
    assert (plan.ct_window.level, plan.ct_window.width) == (96, 59)
    assert resolve_variant(study, {"ct_window": "off"})[0].ct_window is None
    assert variant_label({"train.deep_supervision": "none", "infer.tta": 1}) == "ds=none · tta=1"
    assert variant_label({"plan.patch_size": [32, 64, 64], "infer.ensemble_folds": True}) == (
        "patch_size=32x64x64 · ensemble=on"
    )
    assert variant_label({}) == "default"


def test_plan_presets_take_their_memory_targets_and_networks(tmp_path):
    study = _load(tmp_path, "axes: {plans: [nnunet, resenc_m, resenc_l, resenc_xl]}\n")
    resolved = [resolve_variant(study, cell) for cell in grid_cells(study)]
    assert [(p.preset, p.gpu_memory_gb, t.arch) for p, t, _ in resolved] == [
        ("nnunet", 8.0, "plain"),
        ("resenc_m", 8.0, "residual"),
        ("resenc_l", 24.0, "residual"),
        ("resenc_xl", 40.0, "residual"),
    ]
    # a memory target the study sets is every preset's (nnU-Net's -gpu_memory_target)
    study = _load(tmp_path, "plan: {gpu_memory_gb: 4}\naxes: {plans: [nnunet, resenc_l]}\n")
    assert {resolve_variant(study, c)[0].gpu_memory_gb for c in grid_cells(study)} == {4.0}
    # the dotted axis plans the same; a ResEnc preset needs the residual encoder U-Net
    study = _load(
        tmp_path,
        "train: {epochs: 2, iterations_per_epoch: 3, arch: residual}\n"
        "axes: {plan.preset: [nnunet, resenc_l]}\n",
    )
    assert [resolve_variant(study, c)[0].gpu_memory_gb for c in grid_cells(study)] == [8, 24]
    with pytest.raises(
        ConfigError, match=r"axes.plan.preset\[1\]: plan.preset resenc_l: .* train.arch: residual"
    ):
        _load(tmp_path, "axes: {plan.preset: [nnunet, resenc_l]}\n")
    assert variant_label({"plans": "resenc_l"}) == "resenc_l"


def test_kits19_networks_preset_is_the_papers(tmp_path):
    study = _load(tmp_path, "axes: {kits19_net: [plain, residual, preact]}\n")
    trains = [resolve_variant(study, c)[1] for c in grid_cells(study)]
    assert [(t.arch, t.base_features, t.blocks_per_stage, t.nonlin) for t in trains] == [
        ("plain", 30, None, "leaky_relu"),
        ("residual_v1", 24, (1, 2, 3, 4), "relu"),
        ("preact_v1", 24, (1, 2, 3, 4), "relu"),
    ]


def test_new_options_at_their_defaults_leave_every_key_alone(tmp_path):
    from ablate.config import InferConfig, PlanConfig, TrainConfig

    assert {"preset", "batch_dice"}.isdisjoint(PlanConfig().model_dump())
    assert "nonlin" not in TrainConfig().model_dump()
    assert "mirror_order" not in InferConfig().model_dump_json()
    train_jobs, eval_jobs = expand(_load(tmp_path), "d")
    spelled_out = _load(
        tmp_path,
        "plan: {preset: nnunet, gpu_memory_gb: 8}\ninfer: {mirror_order: nnunet_v2}\n"
        "train: {epochs: 2, iterations_per_epoch: 3, nonlin: leaky_relu}\n",
    )
    assert expand(spelled_out, "d") == (train_jobs, eval_jobs)
    v1 = expand(_load(tmp_path, "infer: {mirror_order: nnunet_v1}\n"), "d")
    assert [j.key for j in v1[0]] == [j.key for j in train_jobs]
    assert {j.key for j in v1[1]}.isdisjoint(j.key for j in eval_jobs)


def _stand_in_dataset(root: Path) -> None:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}}')


@pytest.mark.parametrize(
    "name, trainings, evaluations", [("kits", 15, 15), ("flare21", 30, 90), ("ich", 10, 10)]
)
def test_seed_studies_load_and_expand(tmp_path, name, trainings, evaluations):
    # their data is not here: validate the schema without the path check, then again with a
    # stand-in folder put where the study expects it
    study = load_study(STUDIES / f"{name}.yaml", check_paths=False)
    train_jobs, eval_jobs = expand(study, "d")
    assert (len(train_jobs), len(eval_jobs)) == (trainings, evaluations)
    copy = tmp_path / "studies" / f"{name}.yaml"
    copy.parent.mkdir()
    copy.write_text((STUDIES / f"{name}.yaml").read_text())
    _stand_in_dataset(tmp_path / "data" / study.dataset.path.name)
    assert load_study(copy).dataset.path == tmp_path / "data" / study.dataset.path.name


@pytest.mark.parametrize(
    ("name", "stand_in"),
    [(n, s) for n in ("kits", "flare21", "ich", "nnunet") for s in (True, False)]
    + [("demo", False)],  # synthetic: its data is generated, and the time measured
)
def test_dry_run_of_every_seed_study(tmp_path, name, stand_in, capsys):
    """With the dataset's folder missing (as after a clone) or empty, the grid is shown and the
    estimate says why it was not measured; exit 0."""
    from ablate.cli import main

    copy = tmp_path / "studies" / f"{name}.yaml"
    copy.parent.mkdir()
    copy.write_text((STUDIES / f"{name}.yaml").read_text())
    study = load_study(copy, check_paths=False)
    if study.dataset.path is not None and stand_in:
        _stand_in_dataset(tmp_path / "data" / study.dataset.path.name)
    assert main(["run", str(copy), "--dry-run"]) == 0
    out = capsys.readouterr().out
    train_jobs, eval_jobs = expand(study, "d")
    assert f"trainings: {len(train_jobs)}; evaluations: {len(eval_jobs)}" in out
    if study.dataset.path is not None:  # an empty stand-in: the grid is shown, the timing is not
        assert "time estimate: not measured: " in out


def test_validate_prints_each_networks_topology_and_parameters(tmp_path, capsys):
    from ablate.cli import main

    for name in ("kits", "flare21"):
        copy = tmp_path / "studies" / f"{name}.yaml"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text((STUDIES / f"{name}.yaml").read_text())
        _stand_in_dataset(tmp_path / "data" / load_study(copy, check_paths=False).dataset.path.name)
        assert main(["validate", str(copy)]) == 0
    out = capsys.readouterr().out
    # Isensee 2019's setup: spacing, patch, six stages down to 5 x 5 x 5, the paper's widths
    at = "patch 80x160x160 at 3.22x1.62x1.62 mm, 6 stages (pools 2x2x2-2x2x2-2x2x2-2x2x2-1x2x2)"
    narrow = "features [24, 48, 96, 192, 320, 320]"
    assert f"network plain: plain, {at}, features [30, 60, 120, 240, 320, 320], 29,286,465" in out
    assert f"network residual: residual_v1, {at}, {narrow}, 61,698,544 parameters" in out
    assert f"network preact: preact_v1, {at}, {narrow}, 61,697,312 parameters" in out
    assert "network dice_ce · ds=nnunet: plain; topology and parameters need the data's" in out
