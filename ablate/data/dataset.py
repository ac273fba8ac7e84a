"""The typed view of a raw dataset (nnU-Net v2 raw layout) that every later stage reads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ablate.errors import DataError


@dataclass(frozen=True)
class Case:
    case_id: str
    images: tuple[Path, ...]  # one file per channel, in channel order
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A raw dataset. `labels` maps name -> integer value (background included).

    `regions` maps an evaluation/training target name to the label values it unites, e.g. KiTS'
    ``{"kidney": (1, 2), "tumor": (2,)}``. When a dataset declares no regions, every foreground
    label is its own target (see `targets`).
    """

    root: Path
    name: str
    channels: tuple[str, ...]  # channel names from dataset.json, e.g. ("CT",)
    labels: dict[str, int]
    cases: tuple[Case, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    file_ending: str = ".nii.gz"

    @property
    def num_classes(self) -> int:
        """Number of output classes for softmax training, background included."""
        return max(self.labels.values()) + 1

    def targets(self) -> dict[str, tuple[int, ...]]:
        """Evaluation targets: the declared regions, else one per foreground label."""
        if self.regions:
            return dict(self.regions)
        return {name: (value,) for name, value in self.labels.items() if value != 0}

    def content_hash(self) -> str:
        """Hash of every case file's name, size and modification time plus the labels/channels."""
        h = hashlib.sha256()
        h.update(json.dumps([self.channels, self.labels, sorted(self.regions.items())]).encode())
        for case in sorted(self.cases, key=lambda c: c.case_id):
            for path in (*case.images, *([case.label] if case.label else [])):
                st = path.stat()
                h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def _parse_labels(raw: dict, where: Path) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """nnU-Net v2 labels: plain ints, or lists/tuples for region-based datasets."""
    labels: dict[str, int] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in raw.items():
        if isinstance(value, int):
            labels[name] = value
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            regions[name] = tuple(value)
        else:
            raise DataError(f"{where}: label {name!r} must be an int or a list of ints, "
                            f"got {value!r}")
    if regions:
        # region-based dataset.json: the integer labels are the union of the region members
        values = sorted({v for r in regions.values() for v in r} | set(labels.values()))
        labels = {"background": 0, **{f"label_{v}": v for v in values if v != 0}}
    if labels.get("background", 0) != 0 or 0 not in labels.values():
        raise DataError(f"{where}: labels must map 'background' to 0")
    return labels, regions


def read_nnunet_raw(root: str | Path) -> Dataset:
    """Read an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found; an nnU-Net v2 raw dataset needs dataset.json "
                        "next to imagesTr/ and labelsTr/")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    for key in ("channel_names", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r}")
    channels = tuple(meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int))
    labels, regions = _parse_labels(meta["labels"], meta_path)
    regions.update({k: tuple(v) for k, v in meta.get("ablate_regions", {}).items()})
    ending = meta.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not found; put the training images there as "
                        f"<case>_0000{ending}")
    suffix = f"_0000{ending}"
    ids = sorted(p.name[: -len(suffix)] for p in images_dir.glob(f"*{suffix}"))
    cases = []
    for cid in ids:
        images = tuple(images_dir / f"{cid}_{c:04d}{ending}" for c in range(len(channels)))
        label = labels_dir / f"{cid}{ending}"
        cases.append(Case(cid, images, label if label.is_file() else None))
    return Dataset(root=root, name=meta.get("name", root.name), channels=channels, labels=labels,
                   cases=tuple(cases), regions=regions, file_ending=ending)


def targets_from_dataset_json(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Evaluation targets declared by a dataset.json (regions, else one per foreground label)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --dataset-json pointing at the dataset.json that "
                        "declares the labels")
    meta = json.loads(path.read_text())
    labels, regions = _parse_labels(meta.get("labels", {}), path)
    regions.update({k: tuple(v) for k, v in meta.get("ablate_regions", {}).items()})
    if regions:
        return regions
    return {name: (value,) for name, value in labels.items() if value != 0}
