"""Read the common public dataset layouts into the one `Dataset` view.

Formats (registry `READERS`): ``nnunet`` (nnU-Net v2 raw), ``msd`` (Medical Segmentation
Decathlon), ``kits19``, ``flare21`` and ``folder`` (``images/`` + ``labels/`` with matching names).

Two layouts are rewritten once into a cache folder next to the dataset,
``<root>_ablate_converted/`` (rewritten only when a source file is newer than its copy):

- MSD multi-modal images are 4D files; `Case.images` holds one 3D file per channel, so each 4D
  file is split into ``<case>_0000.nii.gz, <case>_0001.nii.gz, ...``. 3D MSD tasks stay in place.
- KiTS19 stores the axial slice axis as the first NIfTI axis (so SimpleITK's x is the slice axis
  and numpy arrays come back (512, 512, slices)), with a permuting direction matrix. Each case is
  reoriented losslessly (axis permutation and flips only; physical placement unchanged) to an
  identity direction so arrays are (Z, Y, X) with slices first like every other dataset.
  Cases without segmentation.nii.gz (the challenge test set) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ablate.data.dataset import Case, Dataset, read_nnunet_raw
from ablate.errors import DataError
from ablate.imageio import Geometry, read_image, write_image

ENDING = ".nii.gz"
KITS19_LABELS = {"background": 0, "kidney": 1, "tumor": 2}
KITS19_REGIONS = {"kidney": (1, 2), "tumor": (2,)}
FLARE21_LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}

HOW_TO_OBTAIN = {
    "nnunet": "convert one with nnU-Net v2's dataset_conversion scripts, or run `ablate synth`",
    "msd": "download a Task*.tar from http://medicaldecathlon.com/ and extract it",
    "kits19": "git clone https://github.com/neheller/kits19; python -m starter_code.get_imaging",
    "flare21": "register at https://flare.grand-challenge.org/ and download FLARE21 training data",
    "folder": "create images/ and labels/ folders holding files with matching names",
}


def _all_hints() -> str:
    return "; ".join(f"{fmt}: {how}" for fmt, how in HOW_TO_OBTAIN.items())


def converted_root(root: Path) -> Path:
    """The cache folder for rewritten files: a sibling of the dataset root."""
    return root.parent / f"{root.name}_ablate_converted"


def _kits19_cases_dir(root: Path) -> Path:
    # the kits19 repository keeps the cases under data/; accept the repo or data/ itself
    return root / "data" if (root / "data").is_dir() else root


def detect_format(path: str | Path) -> str:
    """Name the layout of the dataset at `path` (a key of `READERS`); DataError if none fits."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found; to obtain one: {_all_hints()}")
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            keys = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        if "training" in keys and "channel_names" not in keys:
            return "msd"
        return "nnunet"
    if (root / "TrainingImg").is_dir():
        return "flare21"
    if any(_kits19_cases_dir(root).glob("case_*/imaging.nii.gz")):
        return "kits19"
    if (root / "images").is_dir():
        return "folder"
    raise DataError(f"{root}: unknown dataset layout; expected dataset.json (nnU-Net v2 or MSD), "
                    "TrainingImg/ (FLARE21), case_*/imaging.nii.gz (KiTS19) or images/ + labels/; "
                    "pass fmt= explicitly")


def read_dataset(path: str | Path, fmt: str | None = None,
                 labels: dict[str, int] | None = None) -> Dataset:
    """Read a dataset in any known layout; `labels` (name -> value) overrides the format's map."""
    root = Path(path)
    if fmt is not None and fmt not in READERS:
        raise DataError(f"unknown dataset format {fmt!r}; choose one of {sorted(READERS)}")
    if not root.exists():
        hint = HOW_TO_OBTAIN[fmt] if fmt else _all_hints()
        raise DataError(f"{root}: dataset folder not found; to obtain it: {hint}")
    fmt = fmt or detect_format(root)
    if labels is not None and labels.get("background") != 0:
        raise DataError(f"{root}: the labels map must map 'background' to 0, got {labels}")
    return READERS[fmt](root, labels)


def _read_nnunet(root: Path, labels: dict[str, int] | None) -> Dataset:
    ds = read_nnunet_raw(root)
    if labels is None:
        return ds
    return Dataset(root=ds.root, name=ds.name, channels=ds.channels, labels=dict(labels),
                   cases=ds.cases, regions=ds.regions, file_ending=ds.file_ending)


def _strip(name: str) -> str:
    return name[: -len(ENDING)] if name.endswith(ENDING) else Path(name).stem


def _read_folder(root: Path, labels: dict[str, int] | None) -> Dataset:
    if labels is None:
        raise DataError(f"{root}: a plain images/ + labels/ folder needs a labels map, e.g. "
                        "labels={'background': 0, 'organ': 1}")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not found; {HOW_TO_OBTAIN['folder']}")
    cases = []
    for image in sorted(images_dir.glob(f"*{ENDING}")):
        label = root / "labels" / image.name
        cases.append(Case(_strip(image.name), (image,), label if label.is_file() else None))
    return Dataset(root=root, name=root.name, channels=("image",), labels=dict(labels),
                   cases=tuple(cases))


def _read_flare21(root: Path, labels: dict[str, int] | None) -> Dataset:
    images_dir, masks_dir = root / "TrainingImg", root / "TrainingMask"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not found; {HOW_TO_OBTAIN['flare21']}")
    suffix = f"_0000{ENDING}"
    cases = []
    for image in sorted(images_dir.glob(f"*{suffix}")):
        cid = image.name[: -len(suffix)]
        label = masks_dir / f"{cid}{ENDING}"
        cases.append(Case(cid, (image,), label if label.is_file() else None))
    return Dataset(root=root, name="FLARE21", channels=("CT",),
                   labels=dict(labels or FLARE21_LABELS), cases=tuple(cases))


def _read_msd(root: Path, labels: dict[str, int] | None) -> Dataset:
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text())
    for key in ("training", "modality", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r} of a Decathlon dataset.json")
    channels = tuple(meta["modality"][k] for k in sorted(meta["modality"], key=int))
    declared = {name: int(value) for value, name in meta["labels"].items()}
    cases = []
    for entry in sorted(meta["training"], key=lambda e: e["image"]):
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        if not image.is_file():
            raise DataError(f"{image}: listed in {meta_path} but missing; re-extract the task")
        cid = _strip(image.name)
        images = _msd_channels(image, cid, len(channels), converted_root(root) / "imagesTr")
        cases.append(Case(cid, images, label if label.is_file() else None))
    return Dataset(root=root, name=meta.get("name", root.name), channels=channels,
                   labels=dict(labels or declared), cases=tuple(cases))


def _image_dimension_and_channels(path: Path) -> tuple[int, int]:
    """Read only the header: (dimension, size of the 4th axis or 1)."""
    import SimpleITK as sitk  # header-only 4D access that imageio's 3D reader does not offer

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot read the image header; re-extract the file") from exc
    size = reader.GetSize()
    return len(size), (size[3] if len(size) == 4 else 1)


def _is_fresh(copy: Path, source: Path) -> bool:
    return copy.is_file() and copy.stat().st_mtime_ns >= source.stat().st_mtime_ns


def _msd_channels(image: Path, cid: str, n_channels: int, out_dir: Path) -> tuple[Path, ...]:
    dimension, found = _image_dimension_and_channels(image)
    if dimension == 3 and n_channels == 1:
        return (image,)
    if dimension != 4 or found != n_channels:
        raise DataError(f"{image}: has {found} channel(s) in {dimension}D but dataset.json "
                        f"declares {n_channels} modalities; fix 'modality' or the file")
    outputs = tuple(out_dir / f"{cid}_{c:04d}{ENDING}" for c in range(n_channels))
    if not all(_is_fresh(p, image) for p in outputs):
        _split_4d(image, outputs)
    return outputs


def _split_4d(image: Path, outputs: tuple[Path, ...]) -> None:
    """Write each 3D volume of a 4D (x, y, z, c) file to its own file, keeping its geometry."""
    import SimpleITK as sitk  # imageio reads 3D only; the 4D split lives here

    img = sitk.ReadImage(str(image))
    x, y, z, _ = img.GetSize()
    for channel, out in enumerate(outputs):
        volume = sitk.Extract(img, [x, y, z, 0], [0, 0, 0, channel])
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".partial_{out.name}")
        sitk.WriteImage(volume, str(partial), useCompression=True)
        partial.replace(out)  # atomic: an interrupted run never leaves a truncated channel


def reorient_to_identity(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Permute and flip a (Z, Y, X) array so its direction becomes the identity.

    Only for axis-aligned directions (a signed permutation, as in KiTS19); the world position of
    every voxel is unchanged. DataError for oblique directions.
    """
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # columns: sitk x, y, z
    world_axis = np.abs(direction).argmax(axis=0)  # for each sitk index axis
    unit = np.allclose(np.abs(direction).max(axis=0), 1.0, atol=1e-3)
    if sorted(world_axis) != [0, 1, 2] or not unit:
        raise DataError(f"direction {geometry.direction} is oblique; only axis-aligned images can "
                        "be reoriented losslessly")
    signs = direction[world_axis, [0, 1, 2]]
    spacing_xyz = np.asarray(geometry.spacing_mm[::-1])
    size_xyz = np.asarray(array.shape[::-1])
    origin = np.asarray(geometry.origin, dtype=float)
    data = array
    for j in range(3):
        if signs[j] < 0:  # flip so this axis runs along +world; the far corner becomes the origin
            origin = origin + direction[:, j] * spacing_xyz[j] * (size_xyz[j] - 1)
            data = np.flip(data, axis=2 - j)
    # numpy axis (2 - j) holds sitk axis j; new sitk axis w is the old one pointing along world w
    old_for_new = [int(np.where(world_axis == w)[0][0]) for w in range(3)]
    data = np.ascontiguousarray(np.transpose(data, [2 - old_for_new[2 - a] for a in range(3)]))
    new_spacing_xyz = [float(spacing_xyz[j]) for j in old_for_new]
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return data, Geometry(tuple(new_spacing_xyz[::-1]), tuple(float(o) for o in origin), identity)


def _reoriented_copy(source: Path, out: Path) -> Path:
    if not _is_fresh(out, source):
        array, geometry = read_image(source)
        array, geometry = reorient_to_identity(array, geometry)
        partial = out.with_name(f".partial_{out.name}")
        write_image(array, geometry, partial)
        partial.replace(out)
    return out


def _read_kits19(root: Path, labels: dict[str, int] | None) -> Dataset:
    cases_dir = _kits19_cases_dir(root)
    out_dir = converted_root(root)
    cases = []
    for folder in sorted(p for p in cases_dir.glob("case_*") if p.is_dir()):
        image = folder / "imaging.nii.gz"
        if not image.is_file():
            continue
        seg = folder / "segmentation.nii.gz"
        if not seg.is_file():  # the 90 challenge test cases ship without labels: not training data
            continue
        cid = folder.name
        new_image = _reoriented_copy(image, out_dir / "imagesTr" / f"{cid}_0000{ENDING}")
        new_label = _reoriented_copy(seg, out_dir / "labelsTr" / f"{cid}{ENDING}")
        cases.append(Case(cid, (new_image,), new_label))
    if not cases:
        raise DataError(f"{cases_dir}: no case_*/ with imaging.nii.gz and segmentation.nii.gz; "
                        f"{HOW_TO_OBTAIN['kits19']}")
    regions = dict(KITS19_REGIONS) if labels is None else {}
    return Dataset(root=root, name="KiTS19", channels=("CT",),
                   labels=dict(labels or KITS19_LABELS), cases=tuple(cases), regions=regions)


READERS: dict[str, Callable[[Path, dict[str, int] | None], Dataset]] = {
    "nnunet": _read_nnunet,
    "msd": _read_msd,
    "kits19": _read_kits19,
    "flare21": _read_flare21,
    "folder": _read_folder,
}
