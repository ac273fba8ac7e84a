"""The typed view of a raw dataset (nnU-Net v2 raw layout) that every later stage reads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
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
    """A raw dataset. `labels` maps name -> integer class value (background included, nnU-Net's
    `ignore` label never: it is `ignore_label`).

    `regions` maps an evaluation target name to the label values it unites, e.g. KiTS'
    ``{"kidney": (1, 2), "tumor": (2,)}``. When a dataset declares no regions, every foreground
    label is its own target (see `targets`). `region_based` marks a dataset.json that declares
    nnU-Net regions (some entry a list of more than one label): nnU-Net trains it with one sigmoid
    output per region, painted in `regions_class_order`. Voxels labelled `ignore_label` are no
    class, no target and are left out of every metric.
    """

    root: Path
    name: str
    channels: tuple[str, ...]  # channel names from dataset.json, e.g. ("CT",)
    labels: dict[str, int]
    cases: tuple[Case, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    file_ending: str = ".nii.gz"
    ignore_label: int | None = None
    region_based: bool = False
    regions_class_order: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        """Number of output classes for softmax training, background included (ignore not)."""
        return max(self.labels.values()) + 1

    def targets(self) -> dict[str, tuple[int, ...]]:
        """Evaluation targets: the declared regions, else one per foreground label."""
        if self.regions:
            return dict(self.regions)
        return {name: (value,) for name, value in self.labels.items() if value != 0}

    def declared_values(self) -> set[int]:
        """Every value a label file may hold: the classes and the ignore label."""
        ignore = {self.ignore_label} if self.ignore_label is not None else set()
        return set(self.labels.values()) | ignore

    def content_hash(self) -> str:
        """Hash of every case file's name, size and modification time plus the labels/channels."""
        h = hashlib.sha256()
        h.update(json.dumps([self.channels, self.labels, sorted(self.regions.items())]).encode())
        if self.ignore_label is not None:  # appended only when set: existing keys stay
            h.update(f"ignore:{self.ignore_label}".encode())
        for case in sorted(self.cases, key=lambda c: c.case_id):
            for path in (*case.images, *([case.label] if case.label else [])):
                if not path.is_file():  # `verify` refuses it; `ablate status` still answers
                    h.update(f"{path.name}:missing".encode())
                    continue
                st = path.stat()
                h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class LabelSpec:
    """What a dataset.json's `labels` (and `regions_class_order`) mean, by nnU-Net v2's rules
    (nnunetv2.utilities.label_handling.LabelManager)."""

    labels: dict[str, int]  # class values, background included, ignore excluded
    targets: dict[str, tuple[int, ...]]  # every non-background entry except ignore, in order
    ignore_label: int | None = None
    region_based: bool = False
    regions_class_order: tuple[int, ...] | None = None


def _members(name: str, value, where: Path) -> tuple[int, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: label {name!r} must be an int or a list of ints, got {value!r}")
    return tuple(values)


def parse_labels(raw: dict, where: Path, class_order=None) -> LabelSpec:
    """nnU-Net v2 labels: ints, or lists for regions. A dataset is region-based when some entry
    is a list of more than one label; then every non-background entry (an int is a one-label
    region) is a region in declared order, painted by `regions_class_order` (read, or derived
    for nested regions as nnU-Net's converters write it). `ignore` is never a class or target
    and must be the highest value (nnU-Net refuses anything else)."""
    if (
        not isinstance(raw, dict)
        or raw.get("background") != 0
        or isinstance(raw.get("background"), bool)
    ):
        raise DataError(f"{where}: labels must map 'background' to 0")
    entries = {name: _members(name, value, where) for name, value in raw.items()}
    ignore = raw.get("ignore")
    if ignore is not None and not isinstance(ignore, int):
        raise DataError(
            f"{where}: label 'ignore' must be one int (the highest label value), got {ignore!r}"
        )
    entries.pop("ignore", None)
    region_based = any(len(v) > 1 for v in entries.values())
    targets = {n: v for n, v in entries.items() if set(v) != {0}}
    values = sorted({v for members in entries.values() for v in members})
    if ignore is not None and ignore != max(values) + 1:
        raise DataError(
            f"{where}: label 'ignore' is {ignore} but must be the highest value "
            f"({max(values) + 1}, one above every other label), as nnU-Net requires"
        )
    if not region_based:
        labels = {n: v[0] for n, v in entries.items()}
        return LabelSpec(labels, {n: v for n, v in targets.items()}, ignore)
    names = {v[0]: n for n, v in entries.items() if len(v) == 1}
    labels = {names.get(v, f"label_{v}") if v else "background": v for v in values}
    return LabelSpec(labels, targets, ignore, True, _class_order(targets, class_order, where))


def _class_order(targets, class_order, where: Path) -> tuple[int, ...]:
    from ablate.errors import ConfigError
    from ablate.regions import default_region_order

    if class_order is None:
        try:
            return default_region_order(targets)
        except ConfigError as exc:
            raise DataError(
                f"{where}: regions need 'regions_class_order' (the label each region "
                f"paints, in order); add it ({exc})"
            ) from exc
    order = tuple(class_order)
    if len(order) != len(targets) or not all(isinstance(v, int) for v in order):
        raise DataError(
            f"{where}: regions_class_order {list(order)} must give one int per region "
            f"({len(targets)}: {', '.join(targets)})"
        )
    return order


def _parse_labels(raw: dict, where: Path) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """(labels, regions) of a dataset.json label map; regions only for region-based ones."""
    spec = parse_labels(raw, where)
    return spec.labels, (spec.targets if spec.region_based else {})


def load_json(path: Path) -> dict:
    """A dataset.json as a dict; DataError naming the file when it is missing or not JSON."""
    if not path.is_file():
        raise DataError(f"{path}: not found; a dataset needs its dataset.json")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object (labels, channel_names, ...)")
    return meta


def msd_labels(raw: dict, where: Path) -> dict[str, int]:
    """A Decathlon / nnU-Net v1 label map ({"0": "background", "1": "edema"}) as name -> value."""
    try:
        return {str(name): int(value) for value, name in raw.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f'{where}: labels must map values ("0", "1", ...) to names') from exc


def label_spec(meta: dict, where: Path) -> LabelSpec:
    """The labels of any dataset.json ablate reads: nnU-Net v2, or Decathlon / nnU-Net v1 style
    (values as keys); `ablate_regions` adds evaluation-only targets."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{where}: missing key 'labels' (name -> value, background 0)")
    if all(isinstance(v, str) for v in raw.values()):
        raw = msd_labels(raw, where)
    spec = parse_labels(raw, where, meta.get("regions_class_order"))
    extra = {k: tuple(v) for k, v in meta.get("ablate_regions", {}).items()}
    if not extra:
        return spec
    targets = {**(spec.targets if spec.region_based else {}), **extra}
    return dataclasses.replace(spec, targets=targets)


def read_nnunet_raw(root: str | Path) -> Dataset:
    """Read an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path}: not found; an nnU-Net v2 raw dataset needs dataset.json "
            "next to imagesTr/ and labelsTr/"
        )
    meta = load_json(meta_path)
    for key in ("channel_names", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r}")
    channels = tuple(meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int))
    spec = label_spec(meta, meta_path)
    regions = spec.targets if spec.region_based or "ablate_regions" in meta else {}
    ending = meta.get("file_ending", ".nii.gz")
    if "dataset" in meta:  # nnU-Net v2's explicit file lists instead of imagesTr/labelsTr
        cases = _listed_cases(root, meta["dataset"], meta_path)
    else:
        cases = _folder_cases(root, len(channels), ending)
    return Dataset(
        root=root,
        name=meta.get("name", root.name),
        channels=channels,
        labels=spec.labels,
        cases=cases,
        regions=regions,
        file_ending=ending,
        ignore_label=spec.ignore_label,
        region_based=spec.region_based,
        regions_class_order=spec.regions_class_order,
    )


def _folder_cases(root: Path, n_channels: int, ending: str) -> tuple[Case, ...]:
    """imagesTr/<case>_XXXX<ending> and labelsTr/<case><ending>. Every case named by any channel
    file or label is kept, so a missing channel or image is named by `verify`; hidden files
    (macOS AppleDouble copies) are no cases."""
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(
            f"{images_dir}: not found; put the training images there as <case>_0000{ending}"
        )
    channel_file = re.compile(r"(.+)_\d{4}" + re.escape(ending))
    ids = {m.group(1) for p in images_dir.iterdir() if (m := channel_file.fullmatch(p.name))}
    ids |= {p.name[: -len(ending)] for p in labels_dir.glob(f"*{ending}")}
    cases = []
    for cid in sorted(i for i in ids if not i.startswith(".")):
        images = tuple(images_dir / f"{cid}_{c:04d}{ending}" for c in range(n_channels))
        label = labels_dir / f"{cid}{ending}"
        cases.append(Case(cid, images, label if label.is_file() else None))
    return tuple(cases)


def _listed_cases(root: Path, listed, where: Path) -> tuple[Case, ...]:
    """dataset.json's "dataset": {case: {"images": [...], "label": ...}}, paths relative to the
    dataset folder (environment variables expanded, as nnU-Net does)."""

    def path(text: str) -> Path:
        expanded = Path(os.path.expandvars(text))
        return expanded if expanded.is_absolute() else root / expanded

    try:
        return tuple(
            Case(cid, tuple(path(i) for i in entry["images"]), path(entry["label"]))
            for cid, entry in sorted(listed.items())
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise DataError(
            f'{where}: \'dataset\' must map each case to {{"images": [...], "label": ...}}'
        ) from exc


def evaluation_spec(path: str | Path) -> tuple[LabelSpec, str]:
    """(labels and targets, file ending) that a dataset.json declares, for scoring a folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: not found; pass --dataset-json pointing at the dataset.json that "
            "declares the labels"
        )
    meta = load_json(path)
    return label_spec(meta, path), meta.get("file_ending", ".nii.gz")


def targets_from_dataset_json(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Evaluation targets declared by a dataset.json: every non-background entry except
    `ignore`, in declared order (regions as their label sets)."""
    return evaluation_spec(path)[0].targets
