"""Medical Segmentation Decathlon tasks and nnU-Net v1 ``TaskNNN_Name`` folders.

Both carry the Decathlon dataset.json (``modality``, ``labels`` as value -> name, a
``training`` list). MSD lists 3D or 4D files (4D multi-modal images are split once into
``<root>_ablate_converted/imagesTr/<case>_XXXX.nii.gz``); nnU-Net v1 lists
``./imagesTr/<case>.nii.gz`` while the files on disk are already split per modality as
``<case>_XXXX.nii.gz``. A listed image that is missing stays a case, so `verify` names it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ablate.data.dataset import Case, Dataset, label_spec, load_json
from ablate.data.formats import ENDING, converted_root, strip_ending, visible
from ablate.data.orient import is_fresh
from ablate.errors import DataError


def is_v1_task(root: Path, meta: dict) -> bool:
    """nnU-Net v1 keeps the MSD-style dataset.json but splits images into <case>_0000.nii.gz."""
    training = meta.get("training") or []
    if training:
        image = root / os.path.normpath(training[0].get("image", ""))
        return not image.is_file() and _v1_image(root, image.name, 0).is_file()
    return any(visible((root / "imagesTr").glob(f"*_0000{ENDING}")))


def read_msd(root: Path) -> Dataset:
    """An MSD task as extracted: the dataset.json's training list; 4D images split per channel."""
    meta_path = root / "dataset.json"
    meta = load_json(meta_path)
    for key in ("training", "modality", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r} of a Decathlon dataset.json")
    channels = tuple(meta["modality"][k] for k in sorted(meta["modality"], key=int))
    spec = label_spec(meta, meta_path)
    cases = []
    for entry in sorted(meta["training"], key=lambda e: e["image"]):
        image = root / os.path.normpath(entry["image"])
        label = root / os.path.normpath(entry["label"])
        cid = strip_ending(image.name)
        images = (
            _msd_channels(image, cid, len(channels), converted_root(root) / "imagesTr")
            if image.is_file()
            else (image,)
        )  # missing: verify names it
        cases.append(Case(cid, images, label if label.is_file() else None))
    ds = Dataset(
        root=root,
        name=meta.get("name", root.name),
        channels=channels,
        labels=spec.labels,
        cases=tuple(cases),
        ignore_label=spec.ignore_label,
    )
    return ds


def _v1_image(root: Path, name: str, channel: int) -> Path:
    return root / "imagesTr" / f"{strip_ending(name)}_{channel:04d}{ENDING}"


def read_v1(root: Path) -> Dataset:
    """nnU-Net v1 TaskNNN_Name: MSD's dataset.json, images already split per modality."""
    meta_path = root / "dataset.json"
    meta = load_json(meta_path)
    for key in ("modality", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r} of an nnU-Net v1 dataset.json")
    channels = tuple(meta["modality"][k] for k in sorted(meta["modality"], key=int))
    spec = label_spec(meta, meta_path)
    listed = [Path(os.path.normpath(e["image"])).name for e in meta.get("training", [])]
    if not listed:  # v1 allows an empty list; the folder is the truth then
        listed = [
            p.name.replace(f"_0000{ENDING}", ENDING)
            for p in visible((root / "imagesTr").glob(f"*_0000{ENDING}"))
        ]
    cases = []
    for name in sorted(listed):
        label = root / "labelsTr" / name
        images = tuple(_v1_image(root, name, c) for c in range(len(channels)))
        cases.append(Case(strip_ending(name), images, label if label.is_file() else None))
    ds = Dataset(
        root=root,
        name=meta.get("name", root.name),
        channels=channels,
        labels=spec.labels,
        cases=tuple(cases),
        ignore_label=spec.ignore_label,
    )
    return ds


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


def _msd_channels(image: Path, cid: str, n_channels: int, out_dir: Path) -> tuple[Path, ...]:
    dimension, found = _image_dimension_and_channels(image)
    if dimension == 3 and n_channels == 1:
        return (image,)
    if dimension != 4 or found != n_channels:
        raise DataError(
            f"{image}: has {found} channel(s) in {dimension}D but dataset.json "
            f"declares {n_channels} modalities; fix 'modality' or the file"
        )
    outputs = tuple(out_dir / f"{cid}_{c:04d}{ENDING}" for c in range(n_channels))
    if not all(is_fresh(p, image) for p in outputs):
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
