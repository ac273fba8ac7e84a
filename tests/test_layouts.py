"""Issue 15: real datasets exactly as downloaded. Each test rebuilds one row of the issue on a
small, structurally exact copy of the layout (tests/layouts.py) and feeds it to the readers,
`ablate verify`, `ablate evaluate` and `ablate convert` as a new user would."""

from __future__ import annotations

import json
import shutil
import typing

import layouts
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from test_plan_nnunet import (  # nnunet_dirs: the fixture
    SAMPLES,
    _assert_fingerprints_equal,
    _assert_plans_equal,
    _nnunet_fingerprint_and_plans,
    nnunet_dirs,  # noqa: F401
)

from ablate.cli import main
from ablate.data.formats import READERS, detect_format, read_dataset
from ablate.data.verify import usable_cases, verify
from ablate.errors import DataError
from ablate.imageio import read_image

# layout -> (format detected, case count, labels, targets)
KITS2X = (
    {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3},
    {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)},
)
EXPECTED = {
    "Dataset001_Liver": (
        "nnunet",
        3,
        {"background": 0, "liver": 1, "tumor": 2},
        {"liver": (1,), "tumor": (2,)},
    ),
    "Dataset220_KiTS2023": (
        "nnunet",
        3,
        {"background": 0, "label_1": 1, "tumor": 2, "label_3": 3},
        KITS2X[1],
    ),
    "Dataset002_Ignore": (
        "nnunet",
        3,
        {"background": 0, "liver": 1, "tumor": 2},
        {"liver": (1,), "tumor": (2,)},
    ),
    "Task005_Prostate": (
        "nnunet_v1",
        2,
        {"background": 0, "PZ": 1, "TZ": 2},
        {"PZ": (1,), "TZ": (2,)},
    ),
    "Task09_Spleen": ("msd", 2, {"background": 0, "spleen": 1}, {"spleen": (1,)}),
    "Task01_BrainTumour": (
        "msd",
        2,
        {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
        {"edema": (1,), "non-enhancing tumor": (2,), "enhancing tumour": (3,)},
    ),
    "kits19": (
        "kits19",
        2,
        {"background": 0, "kidney": 1, "tumor": 2},
        {"kidney": (1, 2), "tumor": (2,)},
    ),
    "kits21": ("kits21", 2, *KITS2X),
    "kits23": ("kits23", 2, *KITS2X),
    "FLARE21": (
        "flare21",
        2,
        {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4},
        None,
    ),
    "ct-ich": ("ct_ich", 2, {"background": 0, "hemorrhage": 1}, {"hemorrhage": (1,)}),
}
PLAIN_LABELS = {"background": 0, "liver": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every layout, built once; tests that change files build their own copy."""
    root = tmp_path_factory.mktemp("layouts")
    return {name: build(root / name) for name, build in layouts.LAYOUTS.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_layout_reads_as_downloaded_and_verifies_clean(built, name):
    fmt, n, labels, targets = EXPECTED[name]
    assert detect_format(built[name]) == fmt
    ds = read_dataset(built[name])
    assert len(ds.cases) == n and ds.labels == labels
    if targets is not None:
        assert ds.targets() == targets
    problems = verify(ds)
    assert not [p for p in problems if p.severity == "error"], [str(p) for p in problems]
    assert usable_cases(ds, problems) == n


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_layout_is_scored_by_ablate_evaluate_as_downloaded(built, name, tmp_path):
    ds = read_dataset(built[name])
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in ds.cases:  # perfect predictions on the grid ablate read
        shutil.copy(case.label, pred / f"{case.case_id}.nii.gz")
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(built[name]), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"case": str})  # CT-ICH's ids are "049", ...
    assert sorted(table.case.unique()) == sorted(c.case_id for c in ds.cases)
    assert list(table.target.unique()) == list(ds.targets())
    assert (table[table.metric == "dsc"].value == 1.0).all()


# --- row 1: region labels, ignore, regions_class_order --------------------------------------------


def test_row1_region_dataset_scores_every_region_and_reads_the_class_order(built, tmp_path):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    root = built["Dataset220_KiTS2023"]
    meta = json.loads((root / "dataset.json").read_text())
    manager = LabelManager(meta["labels"], meta["regions_class_order"])
    ds = read_dataset(root)
    assert ds.region_based and ds.regions_class_order == tuple(manager.regions_class_order)
    assert list(ds.targets().values()) == [(1, 2, 3), (2, 3), (2,)]
    out = tmp_path / "metrics.csv"
    labels_tr = root / "labelsTr"
    assert main(["evaluate", str(labels_tr), str(labels_tr), "--out", str(out)]) == 0
    assert list(pd.read_csv(out).target.unique()) == ["kidney", "masses", "tumor"]


def test_row1_ignore_is_no_class_no_target_and_not_scored(built, tmp_path):
    root = built["Dataset002_Ignore"]
    ds = read_dataset(root)
    assert ds.ignore_label == 3 and ds.num_classes == 3 and "ignore" not in ds.targets()
    # a prediction that labels every ignored voxel as liver scores perfectly: ignore is unscored
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in ds.cases:
        array, _ = read_image(case.label)
        assert (array == 3).any()
        image = sitk.ReadImage(str(case.label))
        out = sitk.GetImageFromArray(np.where(array == 3, 1, array).astype(np.uint8))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(pred / case.label.name))
    csv = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(root / "labelsTr"), "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert set(table.target) == {"liver", "tumor"}
    assert (table[table.metric == "dsc"].value == 1.0).all()


# --- row 2: MSD through a relative path or a symlink ----------------------------------------------


def test_row2_msd_relative_and_symlinked_paths_verify_clean(built, tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Task09_Spleen").symlink_to(built["Task09_Spleen"])
    monkeypatch.chdir(tmp_path / "data")
    for path in (
        "Task09_Spleen",
        "./Task09_Spleen/",
        "../data/Task09_Spleen",
        str(tmp_path / "data" / "Task09_Spleen"),
    ):
        ds = read_dataset(path)
        assert ds.root == tmp_path / "data" / "Task09_Spleen"  # absolute, the link kept
        assert not [p for p in verify(ds) if p.severity == "error"], path
        assert main(["verify", path]) == 0
        assert "0 error(s), 4 warning(s); 2 of 2 cases usable" in capsys.readouterr().out


# --- row 3: KiTS19 with an image not downloaded yet -----------------------------------------------


def test_row3_kits19_labelled_case_without_image_is_an_error(tmp_path, capsys):
    root = layouts.kits(tmp_path / "kits19")
    missing = root / "data" / "case_00001" / "imaging.nii.gz"
    missing.unlink()  # get_imaging interrupted
    ds = read_dataset(root)
    assert [c.case_id for c in ds.cases] == ["case_00000", "case_00001"]
    assert main(["verify", str(root)]) == 2
    out = capsys.readouterr().out
    assert f"error: {missing}: image of labelled case 'case_00001' is missing" in out
    assert "1 of 2 cases usable" in out


# --- row 4 and 5: MSD's label map and AppleDouble files in `ablate evaluate` ----------------------


def test_rows4_5_msd_evaluate_with_its_dataset_json_and_appledouble_files(built, tmp_path):
    root = built["Task01_BrainTumour"]
    assert (root / "labelsTr" / "._BRATS_001.nii.gz").is_file()
    pred = tmp_path / "pred"
    shutil.copytree(root / "labelsTr", pred, ignore=shutil.ignore_patterns("._*"))
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(root / "labelsTr"), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert sorted(table.case.unique()) == ["BRATS_001", "BRATS_002"]
    assert list(table.target.unique()) == ["edema", "non-enhancing tumor", "enhancing tumour"]
    problems = verify(read_dataset(root))
    hidden = [p for p in problems if p.path.name.startswith("._")]
    assert len(hidden) == 4 and all(p.severity == "warning" for p in hidden)


def test_row4_msd_listed_image_missing_is_named(tmp_path, capsys):
    root = layouts.msd(tmp_path / "Task09_Spleen")
    (root / "imagesTr" / "spleen_11.nii.gz").unlink()  # an interrupted extraction
    assert main(["verify", str(root)]) == 2
    out = capsys.readouterr().out
    assert "spleen_11.nii.gz: image of labelled case 'spleen_11' is missing" in out
    assert "1 of 2 cases usable" in out


# --- row 6: PhysioNet CT-ICH ----------------------------------------------------------------------


def test_row6_ct_ich_masks_are_binarised_and_images_read_in_place(built):
    root = built["ct-ich"]
    ds = read_dataset(root)
    assert [c.case_id for c in ds.cases] == ["049", "050"]
    assert ds.cases[0].images == (root / "ct_scans" / "049.nii",)
    label, geometry = read_image(ds.cases[0].label)
    raw, raw_geometry = read_image(root / "masks" / "049.nii")
    assert set(np.unique(raw)) == {0, 255} and set(np.unique(label)) == {0, 1}
    assert np.array_equal(label, (raw != 0).astype(np.uint8)) and geometry == raw_geometry


# --- row 7 and 8: folder datasets, .nii, empty, labels on the command line ------------------------


def test_rows7_8_folder_of_nii_files_and_labels_on_the_command_line(built, capsys):
    root = built["plain"]
    ds = read_dataset(root, "folder", PLAIN_LABELS)
    assert [c.case_id for c in ds.cases] == ["liver_0", "liver_1"] and ds.file_ending == ".nii"
    assert (
        main(["verify", str(root), "--format", "folder", "--labels", "background=0,liver=1"]) == 0
    )
    assert "2 of 2 cases usable" in capsys.readouterr().out
    assert main(["verify", str(root), "--format", "folder", "--labels", "liver"]) == 2
    assert "--labels 'liver': give name=value pairs" in capsys.readouterr().err


def test_row7_empty_dataset_fails_verify(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert main(["verify", str(tmp_path / "empty"), "--labels", "background=0,liver=1"]) == 2
    out = capsys.readouterr().out
    assert f"error: {tmp_path / 'empty'}: no cases found" in out and "0 of 0 cases usable" in out


def test_mixed_endings_and_images_without_labels_get_one_line_each(tmp_path, capsys):
    root = layouts.folder(tmp_path / "plain", ending=".nii.gz")
    layouts.folder(tmp_path / "other", n=1, ending=".nii")
    shutil.copy(tmp_path / "other" / "images" / "liver_0.nii", root / "images" / "liver_9.nii")
    assert main(["verify", str(root), "--labels", "background=0,liver=1"]) == 2
    out = capsys.readouterr().out
    assert "liver_9.nii: ending .nii differs from .nii.gz of the other 2 files here" in out
    assert "case 'liver_9' has no label file" in out and "2 of 3 cases usable" in out


# --- row 9: .nii datasets in `ablate evaluate` ----------------------------------------------------


def test_row9_evaluate_uses_the_datasets_file_ending(tmp_path):
    root = layouts.nnunet_v2(tmp_path / "Dataset003_Nii", n=2, ending=".nii")
    out = tmp_path / "metrics.csv"
    labels_tr = str(root / "labelsTr")
    assert main(["evaluate", labels_tr, labels_tr, "--out", str(out)]) == 0
    assert sorted(pd.read_csv(out).case.unique()) == ["case_000", "case_001"]


# --- row 10: NibabelIOWithReorient ----------------------------------------------------------------


def test_row10_reorient_reader_gives_nnunets_arrays_and_keeps_world_positions(built):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    root = built["Dataset220_KiTS2023"]
    ds = read_dataset(root)
    case = ds.cases[0]
    theirs, props = NibabelIOWithReorient().read_seg(str(root / "labelsTr" / "case_000.nii.gz"))
    ours, geometry = read_image(case.label)
    assert np.array_equal(ours, theirs[0]) and ours.shape[0] == layouts.KITS_SHAPE[0]
    assert list(geometry.spacing_mm) == pytest.approx(props["spacing"])
    image, _ = read_image(case.images[0])
    theirs_image, _ = NibabelIOWithReorient().read_images(
        [str(root / "imagesTr" / "case_000_0000.nii.gz")]
    )
    assert np.array_equal(image, theirs_image[0])
    _assert_same_world_positions(root / "labelsTr" / "case_000.nii.gz", case.label)


def _assert_same_world_positions(original, converted):
    """Every labelled voxel sits at the same world position in both files (nibabel's RAS)."""
    a, b = nib.load(str(original)), nib.load(str(converted))
    ia, ib = np.asarray(a.dataobj), np.asarray(b.dataobj)
    for value in np.unique(ia)[1:]:
        wa = nib.affines.apply_affine(a.affine, np.argwhere(ia == value))
        wb = nib.affines.apply_affine(b.affine, np.argwhere(ib == value))
        key = np.lexsort(wa.T), np.lexsort(wb.T)
        assert np.allclose(wa[key[0]], wb[key[1]], atol=1e-4)


# --- row 11: nnU-Net v1 tasks ---------------------------------------------------------------------


def test_row11_v1_task_is_read_not_refused(built):
    root = built["Task005_Prostate"]
    ds = read_dataset(root)
    assert ds.channels == ("T2", "ADC")
    assert ds.cases[0].images == (
        root / "imagesTr" / "prostate_00_0000.nii.gz",
        root / "imagesTr" / "prostate_00_0001.nii.gz",
    )


# --- row 12: predictions back in KiTS19's grid ----------------------------------------------------


def test_row12_predictions_go_back_to_kits19s_native_grid_and_score_there(built, tmp_path):
    root = built["kits19"]
    ds = read_dataset(root)
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in ds.cases:  # "predictions" on the grid ablate read: the reoriented labels
        shutil.copy(case.label, pred / f"{case.case_id}.nii.gz")
    out = tmp_path / "submission"
    assert main(["convert", str(root), str(out), "--predictions", str(pred)]) == 0
    for case in ds.cases:
        native = root / "data" / case.case_id / "segmentation.nii.gz"
        sub = nib.load(str(out / f"prediction_{case.case_id[5:]}.nii.gz"))
        ref = nib.load(str(native))
        assert np.allclose(sub.affine, ref.affine, atol=1e-4)
        assert np.array_equal(np.asarray(sub.dataobj), np.asarray(ref.dataobj))
    # the submission, in the native slices-first grid, is scored against the dataset as is
    csv = tmp_path / "metrics.csv"
    assert main(["evaluate", str(out), str(root), "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert set(table.target) == {"kidney", "tumor"} and table.case.nunique() == 2
    assert (table[table.metric == "dsc"].value == 1.0).all()


def test_row12_reorient_reader_predictions_go_back_to_the_files_grid(built, tmp_path):
    from ablate.data.convert import predictions_to_source_grid

    root = built["Dataset220_KiTS2023"]
    ds = read_dataset(root)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(ds.cases[0].label, pred / "case_000.nii.gz")
    (written,) = predictions_to_source_grid(root, "nnunet", pred, tmp_path / "out")
    original = nib.load(str(root / "labelsTr" / "case_000.nii.gz"))
    back = nib.load(str(written))
    assert np.allclose(back.affine, original.affine, atol=1e-4)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(original.dataobj))


# --- row 13: KiTS21 and KiTS23 --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kits19", "kits21", "kits23"])
def test_row13_kits_family_is_slices_first_with_world_positions_kept(built, name):
    ds = read_dataset(built[name])
    image, geometry = read_image(ds.cases[0].images[0])
    assert image.shape[0] == layouts.KITS_SHAPE[0]  # the slice axis first
    assert geometry.spacing_mm[0] == pytest.approx(1.0)
    label_file = "aggregated_MAJ_seg.nii.gz" if name == "kits21" else "segmentation.nii.gz"
    folder = "dataset" if name == "kits23" else "data"
    _assert_same_world_positions(
        built[name] / folder / "case_00000" / label_file, ds.cases[0].label
    )
    if name != "kits19":
        assert ds.region_based and ds.regions_class_order == (1, 3, 2)


# --- row 14: the study schema's formats are the readers -------------------------------------------


def test_row14_study_formats_are_the_readers(tmp_path):
    from ablate.study import FORMATS
    from ablate.study_load import load_study

    assert set(typing.get_args(FORMATS)) == set(READERS) | {"auto"}
    layouts.folder(tmp_path / "plain")
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\ndataset: {path: plain, format: folder, labels: {background: 0, liver: 1}}\n"
    )
    assert load_study(study).dataset.format == "folder"


# --- convert: nnU-Net's integrity check and planner accept each converted layout ------------------


@pytest.fixture
def integrity_check(monkeypatch):
    """nnU-Net's verify_dataset_integrity with its process pool run in threads (no spawn)."""
    from multiprocessing.pool import ThreadPool
    from types import SimpleNamespace

    from nnunetv2.experiment_planning import verify_dataset_integrity as module

    threads = SimpleNamespace(get_context=lambda _method: SimpleNamespace(Pool=ThreadPool))
    monkeypatch.setattr(module, "multiprocessing", threads)
    return module.verify_dataset_integrity


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_convert_gives_a_dataset_nnunet_accepts(built, tmp_path, integrity_check, name, capsys):
    out = tmp_path / "Dataset900_Converted"
    assert main(["convert", str(built[name]), str(out)]) == 0
    integrity_check(str(out), num_processes=1)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out
    source, converted = read_dataset(built[name]), read_dataset(out)
    # label names that only a region carries cannot pass through nnU-Net's labels (KiTS21's cyst)
    assert sorted(converted.labels.values()) == sorted(source.labels.values())
    assert converted.targets() == source.targets()
    assert converted.ignore_label == source.ignore_label
    assert [c.case_id for c in converted.cases] == [c.case_id for c in source.cases]
    for a, b in zip(source.cases, converted.cases, strict=True):
        assert np.array_equal(read_image(a.label)[0], read_image(b.label)[0])
        assert read_image(a.label)[1] == read_image(b.label)[1]


def test_convert_a_folder_dataset_with_labels_from_the_command_line(built, tmp_path, capsys):
    out = tmp_path / "Dataset901_Plain"
    assert main(["convert", str(built["plain"]), str(out), "--labels", "background=0,liver=1"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == PLAIN_LABELS and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "liver_0_0000.nii.gz",
        "liver_1_0000.nii.gz",
    ]
    assert "wrote 2 cases" in capsys.readouterr().out


def test_convert_refuses_an_existing_folder_and_a_broken_dataset(built, tmp_path, capsys):
    assert main(["convert", str(built["kits19"]), str(tmp_path)]) == 2
    assert "already exists; choose a new folder" in capsys.readouterr().err
    root = layouts.nnunet_v2(tmp_path / "broken", n=2)
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    assert main(["convert", str(root), str(tmp_path / "out")]) == 2
    assert "image of labelled case 'case_001' is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converted_dataset_plans_as_ablate_plans_the_source(built, nnunet_dirs, name):  # noqa: F811
    """Acceptance: nnU-Net's fingerprint and 3d_fullres plan of the converted dataset equal
    ablate's of the dataset as downloaded."""
    from ablate.config import PlanConfig
    from ablate.plan import fingerprint, make_plan

    out = nnunet_dirs.raw / "Dataset900_Converted"
    assert main(["convert", str(built[name]), str(out)]) == 0
    theirs_fp, theirs = _nnunet_fingerprint_and_plans(out.name, 8.0)
    source = read_dataset(built[name])
    ours_fp = fingerprint(source, workers=0, total_samples=SAMPLES)
    _assert_fingerprints_equal(ours_fp, theirs_fp)
    plan = make_plan(ours_fp, source, PlanConfig(gpu_memory_gb=8.0), workers=0)
    _assert_plans_equal(plan, theirs)


STUDY_ON_KITS19 = """
name: kits19-as-downloaded
dataset: {path: kits19, format: kits19}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 8}
train: {epochs: 1, iterations_per_epoch: 1, val_iterations: 1, data_workers: 0}
infer: {window_batch: 2}
folds: {k: 2}
workdir: work
report_dir: report
"""


@pytest.mark.slow
def test_a_short_run_on_kits19_as_downloaded_scores_kidney_and_tumor(tmp_path):
    from ablate.run.results import fetch_results
    from ablate.run.store import default_tracking_uri
    from ablate.run.study_data import workdir_of
    from ablate.study_load import load_study

    layouts.kits(tmp_path / "kits19", n=4)
    (tmp_path / "study.yaml").write_text(STUDY_ON_KITS19)
    assert main(["run", str(tmp_path / "study.yaml")]) == 0
    study = load_study(tmp_path / "study.yaml")
    results = fetch_results(default_tracking_uri(study, workdir_of(study)), study.name)
    dsc = results.tidy[results.tidy.metric == "dsc"]
    assert set(dsc.target) == {"kidney", "tumor"}
    assert sorted(dsc.case.unique()) == [f"case_{i:05d}" for i in range(4)]


def test_nibabelio_reader_choice_reads_files_as_they_are(tmp_path):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    root = layouts.nnunet_v2(
        tmp_path / "Dataset004_NibabelIO",
        n=1,
        extra={"overwrite_image_reader_writer": "NibabelIO"},
        affine=layouts.KITS_AFFINE,
        shape=layouts.KITS_SHAPE,
        sform=2,
        qform=0,
    )
    ds = read_dataset(root)
    assert ds.cases[0].label == root / "labelsTr" / "case_000.nii.gz"  # read in place
    theirs, props = NibabelIO().read_seg(str(ds.cases[0].label))
    ours, geometry = read_image(ds.cases[0].label)
    assert np.array_equal(ours, theirs[0]) and list(geometry.spacing_mm) == props["spacing"]
    bad = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**bad, "overwrite_image_reader_writer": "X"}))
    with pytest.raises(DataError, match=r"overwrite_image_reader_writer 'X' is not supported"):
        read_dataset(root)


def test_nnunet_dataset_key_lists_files_and_a_missing_channel_is_named(
    tmp_path, capsys, monkeypatch
):
    root = layouts.nnunet_v2(tmp_path / "Dataset005_Listed", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    listed = {
        f"case_{i:03d}": {
            "images": [f"imagesTr/case_{i:03d}_0000.nii.gz"],
            "label": f"labelsTr/case_{i:03d}.nii.gz",
        }
        for i in range(2)
    }
    (root / "dataset.json").write_text(json.dumps({**meta, "dataset": listed}))
    shutil.move(root / "imagesTr", root / "elsewhere")
    listed["case_001"]["images"] = ["$LAYOUT_DATA/case_001_0000.nii.gz"]
    listed["case_000"]["images"] = ["elsewhere/case_000_0000.nii.gz"]
    (root / "dataset.json").write_text(json.dumps({**meta, "dataset": listed}))
    monkeypatch.setenv("LAYOUT_DATA", str(root / "elsewhere"))
    ds = read_dataset(root)
    assert [c.images[0].parent for c in ds.cases] == [root / "elsewhere"] * 2
    assert not [p for p in verify(ds) if p.severity == "error"]
    two = layouts.nnunet_v2(tmp_path / "Dataset006_Two", n=2)
    meta = json.loads((two / "dataset.json").read_text())
    (two / "dataset.json").write_text(
        json.dumps({**meta, "channel_names": {"0": "CT", "1": "PET"}})
    )
    for i in range(2):
        shutil.copy(
            two / "imagesTr" / f"case_00{i}_0000.nii.gz",
            two / "imagesTr" / f"case_00{i}_0001.nii.gz",
        )
    (two / "imagesTr" / "case_001_0000.nii.gz").unlink()  # only its second channel is there
    assert main(["verify", str(two)]) == 2
    assert "case_001_0000.nii.gz: image of labelled case 'case_001' is missing" in (
        capsys.readouterr().out
    )


def test_row3_kits23_case_without_its_label_is_named_not_dropped(tmp_path, capsys):
    root = layouts.kits(tmp_path / "kits23", version=23)
    (root / "dataset" / "case_00001" / "segmentation.nii.gz").unlink()
    assert [c.label is None for c in read_dataset(root).cases] == [False, True]
    assert main(["verify", str(root)]) == 2
    assert "case 'case_00001' has no label file" in capsys.readouterr().out
