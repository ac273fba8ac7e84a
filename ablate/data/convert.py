"""`ablate convert`: any dataset ablate reads, written as an nnU-Net v2 raw dataset, and
predictions written back in the source dataset's own grid.

The nnU-Net dataset holds exactly the labelled cases ablate trains on, as ablate reads them
(MSD 4D files split, KiTS reoriented, CT-ICH masks binarised), with a dataset.json that nnU-Net's
``verify_dataset_integrity`` accepts: channel names, labels (regions as lists with
``regions_class_order`` for region-based datasets, ``ignore``), ``numTraining`` and
``file_ending`` (.nii.gz). Evaluation-only regions (KiTS19's kidney = kidney + tumor) go to
``ablate_regions``, which nnU-Net leaves alone. Nothing is half-written: the folder is built
beside OUT and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ablate.data.dataset import Dataset
from ablate.data.orient import to_source_grid
from ablate.errors import DataError
from ablate.imageio import read_image, write_image

ENDING = ".nii.gz"


def dataset_json(dataset: Dataset, n_training: int) -> dict:
    """The nnU-Net v2 dataset.json of `dataset` (see the module docstring)."""
    if dataset.region_based:
        labels = {
            "background": 0,
            **{name: list(v) if len(v) > 1 else v[0] for name, v in dataset.regions.items()},
        }
    else:
        labels = dict(sorted(dataset.labels.items(), key=lambda item: item[1]))
    if dataset.ignore_label is not None:
        labels["ignore"] = dataset.ignore_label
    meta = {
        "name": dataset.name,
        "channel_names": {str(i): name for i, name in enumerate(dataset.channels)},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": ENDING,
    }
    if dataset.region_based:
        meta["regions_class_order"] = list(dataset.regions_class_order or ())
    elif dataset.regions:
        meta["ablate_regions"] = {name: list(v) for name, v in dataset.regions.items()}
    return meta


def _copy(source: Path, dest: Path) -> None:
    if source.name.endswith(ENDING):
        shutil.copyfile(source, dest)
    else:  # .nii and others: rewritten, same voxels, dtype and geometry
        write_image(*read_image(source), dest)


def convert(dataset: Dataset, out: str | Path) -> Path:
    """Write the verified `dataset` as an nnU-Net v2 raw dataset at `out` (which must not exist);
    DataError on a dataset with errors (run `ablate verify`) or an existing `out`."""
    from ablate.data.verify import raise_on_errors, verify

    out = Path(os.path.abspath(out))
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new folder or delete this one")
    raise_on_errors(verify(dataset))
    partial = out.with_name(f".{out.name}.partial{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    cases = [c for c in dataset.cases if c.label is not None]
    try:
        (partial / "imagesTr").mkdir(parents=True)
        (partial / "labelsTr").mkdir()
        for case in cases:
            for channel, image in enumerate(case.images):
                _copy(image, partial / "imagesTr" / f"{case.case_id}_{channel:04d}{ENDING}")
            _copy(case.label, partial / "labelsTr" / f"{case.case_id}{ENDING}")
        meta = dataset_json(dataset, len(cases))
        (partial / "dataset.json").write_text(json.dumps(meta, indent=2))
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def source_image(root: Path, fmt: str, case_id: str) -> Path:
    """The file as downloaded whose grid a case's prediction goes back to."""
    from ablate.data.kits import cases_dir

    if fmt.startswith("kits"):
        return cases_dir(root, fmt) / case_id / "imaging.nii.gz"
    meta = json.loads((root / "dataset.json").read_text()) if fmt == "nnunet" else {}
    ending = meta.get("file_ending", ENDING)
    return root / "imagesTr" / f"{case_id}_0000{ending}"


def submission_name(fmt: str, case_id: str) -> str:
    """KiTS19's submission names (prediction_00210.nii.gz), else <case id>.nii.gz."""
    if fmt == "kits19" and case_id.startswith("case_"):
        return f"prediction_{case_id.removeprefix('case_')}{ENDING}"
    return f"{case_id}{ENDING}"


def predictions_to_source_grid(
    root: str | Path, fmt: str, pred_dir: str | Path, out: str | Path
) -> list[Path]:
    """Write every prediction <case><ending> in `pred_dir` (on the grid ablate read the case
    in) onto the grid of the case's image as downloaded: KiTS' slices-first orientation and
    NibabelIOWithReorient datasets are reoriented back; other layouts are copied unchanged."""
    from ablate.data.formats import strip_ending

    root, pred_dir, out = Path(os.path.abspath(root)), Path(pred_dir), Path(out)
    preds = sorted(p for p in pred_dir.glob("*.nii*") if not p.name.startswith("."))
    if not preds:
        raise DataError(f"{pred_dir}: no predictions (<case>.nii.gz) found")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for pred in preds:
        case_id = strip_ending(pred.name)
        source = source_image(root, fmt, case_id)
        if not source.is_file():
            raise DataError(
                f"{pred}: no source image {source} for case {case_id}; predict the "
                "cases of this dataset"
            )
        array, geometry = read_image(pred)
        src_array, src_geometry = read_image(source)
        array = to_source_grid(array, geometry, src_geometry, src_array.shape, pred)
        dest = out / submission_name(fmt, case_id)
        write_image(array, src_geometry, dest)
        written.append(dest)
    return written
