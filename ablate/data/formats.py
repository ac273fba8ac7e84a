"""Read the common public dataset layouts, exactly as downloaded, into the one `Dataset` view.

Formats (registry `READERS`): ``nnunet`` (nnU-Net v2 raw), ``nnunet_v1`` (nnU-Net v1
``TaskNNN_Name``) and ``msd`` (Medical Segmentation Decathlon; both in ablate.data.msd),
``kits19``, ``kits21``, ``kits23`` (ablate.data.kits), ``flare21``, ``ct_ich`` (PhysioNet
CT-ICH) and ``folder`` (``images/`` + ``labels/`` with matching names, ``.nii.gz`` or ``.nii``).

Files a layout cannot be used as are rewritten once into a cache folder next to the dataset,
``<root>_ablate_converted/`` (rewritten only when a source file is newer than its copy):

- MSD multi-modal images are 4D files; each is split into ``<case>_0000.nii.gz, ...``.
- KiTS and nnU-Net datasets whose dataset.json names ``NibabelIOWithReorient`` are reoriented
  losslessly (ablate.data.orient) so arrays are slices-first, as nnU-Net reads them.
- CT-ICH masks are binarised (any nonzero voxel -> 1, uint8): label 1 is haemorrhage.

A labelled case whose image is missing is kept (with the image path it should have) so that
`verify` names it; nothing is dropped in silence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ablate.data.dataset import (
    Case,
    Dataset,
    load_json,
    read_nnunet_raw,
)
from ablate.data.orient import RAS, is_fresh, reorient_to_identity, reoriented_copy
from ablate.errors import DataError
from ablate.imageio import read_image, write_image

__all__ = ["READERS", "converted_root", "detect_format", "read_dataset", "reorient_to_identity"]

ENDING = ".nii.gz"
ENDINGS = (".nii.gz", ".nii")
FLARE21_LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
CT_ICH_LABELS = {"background": 0, "hemorrhage": 1}

HOW_TO_OBTAIN = {
    "nnunet": "convert one with nnU-Net v2's dataset_conversion scripts or `ablate convert`, or "
    "run `ablate synth`",
    "nnunet_v1": "an nnU-Net v1 TaskNNN_Name folder (nnUNet_raw_data/TaskNNN_Name)",
    "msd": "download a Task*.tar from http://medicaldecathlon.com/ and extract it",
    "kits19": "git clone https://github.com/neheller/kits19; python -m starter_code.get_imaging",
    "kits21": "git clone https://github.com/neheller/kits21; python kits21/data/get_imaging.py",
    "kits23": "git clone https://github.com/neheller/kits23; kits23_download_data",
    "flare21": "register at https://flare.grand-challenge.org/ and download FLARE21 training data",
    "ct_ich": "download https://physionet.org/content/ct-ich/1.3.1/ (ct_scans/, masks/)",
    "folder": "create images/ and labels/ folders holding files with matching names",
}


def _all_hints() -> str:
    return "; ".join(f"{fmt}: {how}" for fmt, how in HOW_TO_OBTAIN.items())


def converted_root(root: Path) -> Path:
    """The cache folder for rewritten files: a sibling of the dataset root."""
    return root.parent / f"{root.name}_ablate_converted"


def strip_ending(name: str) -> str:
    for ending in ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def visible(paths) -> list[Path]:
    """Sorted paths without hidden files (macOS ``._*`` AppleDouble files in MSD tarballs)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def detect_format(path: str | Path) -> str:
    """Name the layout of the dataset at `path` (a key of `READERS`); DataError if none fits."""
    from ablate.data.kits import detect_kits

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found; to obtain one: {_all_hints()}")
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = load_json(meta_path)
        if "channel_names" in meta:
            return "nnunet"
        if "training" in meta or "modality" in meta:
            from ablate.data.msd import is_v1_task

            return "nnunet_v1" if is_v1_task(root, meta) else "msd"
        return "nnunet"
    if (root / "TrainingImg").is_dir():
        return "flare21"
    if (root / "ct_scans").is_dir():
        return "ct_ich"
    kits = detect_kits(root)
    if kits:
        return kits
    if (root / "images").is_dir():
        return "folder"
    raise DataError(
        f"{root}: unknown dataset layout; expected dataset.json (nnU-Net v2/v1 or "
        "MSD), TrainingImg/ (FLARE21), ct_scans/ (CT-ICH), case_*/ (KiTS19/21/23) or "
        "images/ + labels/; pass the format explicitly"
    )


def read_dataset(
    path: str | Path, fmt: str | None = None, labels: dict[str, int] | None = None
) -> Dataset:
    """Read a dataset in any known layout; `labels` (name -> value) overrides the format's map.

    A relative path or one through a symlink is made absolute (not resolved), so every case path
    and the conversion cache sit where the user pointed."""
    root = Path(os.path.abspath(path))
    if fmt is not None and fmt not in READERS:
        raise DataError(f"unknown dataset format {fmt!r}; choose one of {sorted(READERS)}")
    if not root.exists():
        hint = HOW_TO_OBTAIN[fmt] if fmt else _all_hints()
        raise DataError(f"{root}: dataset folder not found; to obtain it: {hint}")
    fmt = fmt or detect_format(root)
    if labels is not None and labels.get("background") != 0:
        raise DataError(f"{root}: the labels map must map 'background' to 0, got {labels}")
    return READERS[fmt](root, labels)


def with_labels(ds: Dataset, labels: dict[str, int] | None) -> Dataset:
    """The dataset with a user's labels map instead of its own (no regions then)."""
    if labels is None:
        return ds
    import dataclasses

    return dataclasses.replace(
        ds,
        labels=dict(labels),
        regions={},
        region_based=False,
        regions_class_order=None,
        ignore_label=None,
    )


def _read_nnunet(root: Path, labels: dict[str, int] | None) -> Dataset:
    import dataclasses

    ds = read_nnunet_raw(root)
    reader = load_json(root / "dataset.json").get("overwrite_image_reader_writer")
    if reader == "NibabelIOWithReorient":  # nnU-Net turns every file to RAS before use
        out = converted_root(root)
        cases = tuple(_reoriented_case(case, out) for case in ds.cases)
        ds = dataclasses.replace(ds, cases=cases)
    elif reader not in (None, "None", "SimpleITKIO", "NibabelIO"):
        raise DataError(
            f"{root / 'dataset.json'}: overwrite_image_reader_writer {reader!r} is "
            "not supported; ablate reads SimpleITKIO, NibabelIO and "
            "NibabelIOWithReorient datasets"
        )
    return ds if labels is None else dataclasses.replace(ds, labels=dict(labels))


def _reoriented_case(case: Case, out: Path) -> Case:
    images = tuple(
        reoriented_copy(p, out / "imagesTr" / p.name, RAS) if p.is_file() else p
        for p in case.images
    )
    label = case.label
    if label is not None:
        label = reoriented_copy(label, out / "labelsTr" / label.name, RAS)
    return Case(case.case_id, images, label)


def _read_folder(root: Path, labels: dict[str, int] | None) -> Dataset:
    if labels is None:
        raise DataError(
            f"{root}: a plain images/ + labels/ folder needs a labels map: "
            "dataset.labels in the study, --labels background=0,organ=1 on the "
            "command line"
        )
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not found; {HOW_TO_OBTAIN['folder']}")
    images = {strip_ending(p.name): p for p in _nifti_files(images_dir)}
    found = {strip_ending(p.name): p for p in _nifti_files(labels_dir)}
    cases = []
    for cid in sorted(images.keys() | found.keys()):
        image = images.get(cid, images_dir / (found[cid].name if cid in found else cid))
        cases.append(Case(cid, (image,), found.get(cid)))
    endings = [_ending(p.name) for p in images.values()]
    ending = max(set(endings), key=endings.count) if endings else ENDING
    return Dataset(
        root=root,
        name=root.name,
        channels=("image",),
        labels=dict(labels),
        cases=tuple(cases),
        file_ending=ending,
    )


def _ending(name: str) -> str:
    return next((e for e in ENDINGS if name.endswith(e)), Path(name).suffix)


def _nifti_files(folder: Path) -> list[Path]:
    return (
        visible(p for p in folder.glob("*.nii*") if p.name.endswith(ENDINGS))
        if folder.is_dir()
        else []
    )


def _read_flare21(root: Path, labels: dict[str, int] | None) -> Dataset:
    images_dir, masks_dir = root / "TrainingImg", root / "TrainingMask"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not found; {HOW_TO_OBTAIN['flare21']}")
    suffix = f"_0000{ENDING}"
    ids = {p.name[: -len(suffix)] for p in visible(images_dir.glob(f"*{suffix}"))}
    ids |= {strip_ending(p.name) for p in visible(masks_dir.glob(f"*{ENDING}"))}
    cases = []
    for cid in sorted(ids):
        label = masks_dir / f"{cid}{ENDING}"
        cases.append(
            Case(cid, (images_dir / f"{cid}{suffix}",), label if label.is_file() else None)
        )
    return Dataset(
        root=root,
        name="FLARE21",
        channels=("CT",),
        labels=dict(labels or FLARE21_LABELS),
        cases=tuple(cases),
    )


def _read_ct_ich(root: Path, labels: dict[str, int] | None) -> Dataset:
    """PhysioNet CT-ICH 1.3.1: ct_scans/NNN.nii and masks/NNN.nii (binary haemorrhage masks
    whose foreground value is not 1 in every release); masks are binarised into the cache."""
    scans, masks = root / "ct_scans", root / "masks"
    if not scans.is_dir():
        raise DataError(f"{scans}: not found; {HOW_TO_OBTAIN['ct_ich']}")
    ids = {strip_ending(p.name) for p in _nifti_files(scans)}
    ids |= {strip_ending(p.name) for p in _nifti_files(masks)}
    out = converted_root(root) / "labelsTr"
    cases = []
    for cid in sorted(ids):
        image = next(
            (scans / f"{cid}{e}" for e in ENDINGS if (scans / f"{cid}{e}").is_file()),
            scans / f"{cid}.nii",
        )
        mask = next((masks / f"{cid}{e}" for e in ENDINGS if (masks / f"{cid}{e}").is_file()), None)
        label = _binarised(mask, out / f"{cid}{ENDING}") if mask is not None else None
        cases.append(Case(cid, (image,), label))
    return Dataset(
        root=root,
        name="CT-ICH",
        channels=("CT",),
        labels=dict(labels or CT_ICH_LABELS),
        cases=tuple(cases),
    )


def _binarised(mask: Path, out: Path) -> Path:
    if not is_fresh(out, mask):
        array, geometry = read_image(mask)
        partial = out.with_name(f".partial_{out.name}")
        write_image((array != 0).astype(np.uint8), geometry, partial)
        partial.replace(out)
    return out


def _kits(name: str) -> Callable[[Path, dict[str, int] | None], Dataset]:
    def read(root: Path, labels: dict[str, int] | None) -> Dataset:
        from ablate.data.kits import read_kits

        return with_labels(read_kits(root, name), labels)

    return read


def _msd(name: str) -> Callable[[Path, dict[str, int] | None], Dataset]:
    def read(root: Path, labels: dict[str, int] | None) -> Dataset:
        from ablate.data import msd

        return with_labels(msd.read_msd(root) if name == "msd" else msd.read_v1(root), labels)

    return read


READERS: dict[str, Callable[[Path, dict[str, int] | None], Dataset]] = {
    "nnunet": _read_nnunet,
    "nnunet_v1": _msd("nnunet_v1"),
    "msd": _msd("msd"),
    "kits19": _kits("kits19"),
    "kits21": _kits("kits21"),
    "kits23": _kits("kits23"),
    "flare21": _read_flare21,
    "ct_ich": _read_ct_ich,
    "folder": _read_folder,
}
