"""Preprocess a dataset once into a shared, content-keyed cache (nnU-Net v2's default preprocessor).

Per case: transpose (coarsest axis first) -> crop to nonzero -> normalise -> resample to the plan
spacing. The cache lives in `<cache_root>/<key>/` (key = hash of the dataset files, the
PlanConfig and PREPROCESS_VERSION) and holds plan.json, fingerprint.json, splits.json and per
case `<id>_data.b2nd` (float32 C,Z,Y,X), `<id>_seg.b2nd` (int8, int16 past label 127; Z,Y,X; -1
outside the nonzero mask), both blosc2 chunked for the plan's patch as nnU-Net v2 stores them
(`ablate.storage`; caches written before hold `.npy` and still load), `<id>.json` (properties)
and `<id>_locs.npz` (sampled voxel indices per foreground label). It is built in a temporary
folder under an exclusive file lock and renamed into place, so concurrent callers build it once
and never see half-written data.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.folds import Fold, check_splits, make_folds, read_splits, write_splits
from ablate.imageio import Geometry
from ablate.plan import (
    FOREGROUND_SAMPLES_TOTAL,
    ChannelNormalization,
    Fingerprint,
    Plan,
    crop_to_nonzero,
    data_spacing_mm,
    fingerprint,
    make_plan,
    read_case_arrays,
)
from ablate.resample import new_shape_for, resample_data, resample_seg
from ablate.storage import open_array, save_array

PREPROCESS_VERSION = "2"  # 2: transpose, int16 labels past 127, cubic resampling clipped
LOCATIONS_PER_LABEL = 10000
ANNOTATED = "annotated"  # the locations key of the annotated (not ignored) voxels
MIN_LOCATION_COVERAGE = 0.01


@dataclass(frozen=True)
class CaseProperties:
    case_id: str
    geometry: Geometry  # original image geometry, the image's (z, y, x) order
    # the rest in the plan's (transposed) frame, as nnU-Net's properties
    original_shape: tuple[int, int, int]  # before cropping
    crop_bbox: tuple[tuple[int, int], ...]  # (start, stop) per axis
    shape_after_crop: tuple[int, int, int]
    shape_after_resample: tuple[int, int, int]

    def to_json(self) -> dict:
        return {
            "case_id": self.case_id,
            "geometry": self.geometry.to_json(),
            "original_shape": list(self.original_shape),
            "crop_bbox": [list(b) for b in self.crop_bbox],
            "shape_after_crop": list(self.shape_after_crop),
            "shape_after_resample": list(self.shape_after_resample),
        }

    @classmethod
    def from_json(cls, d: dict) -> CaseProperties:
        return cls(
            d["case_id"],
            Geometry.from_json(d["geometry"]),
            tuple(d["original_shape"]),
            tuple(tuple(b) for b in d["crop_bbox"]),
            tuple(d["shape_after_crop"]),
            tuple(d["shape_after_resample"]),
        )


def normalize(data: np.ndarray, seg: np.ndarray, schemes: list[ChannelNormalization]):
    """Per channel, in place on a float32 copy; `seg` (-1 outside the nonzero mask) masks zscore."""
    data = data.astype(np.float32, copy=True)
    for c, norm in enumerate(schemes):
        image = data[c]
        if norm.scheme == "ct":
            np.clip(image, norm.lower, norm.upper, out=image)
            image -= norm.mean
            image /= max(norm.std, 1e-8)
        elif norm.scheme == "zscore" and norm.use_mask:
            mask = seg >= 0
            mean, std = image[mask].mean(), image[mask].std()
            image[mask] = (image[mask] - mean) / max(std, 1e-8)
        elif norm.scheme == "zscore":
            image -= image.mean()
            image /= max(image.std(), 1e-8)
        elif norm.scheme == "rescale_to_0_1":
            image -= image.min()
            image /= np.clip(image.max(), a_min=1e-8, a_max=None)
        elif norm.scheme == "rgb_to_0_1":
            image /= 255.0
    return data


# ---- one case --------------------------------------------------------------------------------


def to_plan_frame(values, plan: Plan) -> tuple:
    """Per-axis `values` of the image's (z, y, x) order in the plan's (transposed) order."""
    return tuple(values[a] for a in plan.transpose_forward)


def _transform(data, seg, geometry: Geometry, plan: Plan, case_id: str):
    """nnU-Net's order: transpose -> crop -> normalise -> resample. The properties' shapes and
    crop box are in the plan's (transposed) frame, as nnU-Net's; the geometry is the image's."""
    data = data.transpose((0, *(a + 1 for a in plan.transpose_forward)))
    if seg is not None:
        seg = seg.transpose(plan.transpose_forward)
    spacing_mm = to_plan_frame(geometry.spacing_mm, plan)
    original_shape = tuple(int(s) for s in data.shape[1:])
    labelled = seg is not None
    data, seg, bbox = crop_to_nonzero(data, seg)
    shape_after_crop = tuple(int(s) for s in data.shape[1:])
    target_mm = data_spacing_mm(plan, spacing_mm)  # 2d: the case's own slice spacing
    new_shape = new_shape_for(shape_after_crop, spacing_mm, target_mm)
    data = normalize(data, seg, plan.normalization)
    data = resample_data(data, new_shape, spacing_mm, target_mm)
    # unlabelled (inference): the nonzero mask served normalisation only; resampling it cost a
    # 512x512x200 case 7 s and 1.9 GB of float64 indicators for nothing
    seg = resample_seg(seg, new_shape, spacing_mm, target_mm) if labelled else None
    props = CaseProperties(case_id, geometry, original_shape, bbox, shape_after_crop, new_shape)
    return data, seg, props


def preprocess_images(
    images: list[np.ndarray], geometry: Geometry, plan: Plan
) -> tuple[np.ndarray, CaseProperties]:
    """The training transform for unseen images (one (Z, Y, X) array per channel)."""
    data = np.stack([np.asarray(i, dtype=np.float32) for i in images])
    data, _, props = _transform(data, None, geometry, plan, case_id="")
    return data, props


def preprocess_images_and_labels(
    images: list[np.ndarray], labels: np.ndarray, geometry: Geometry, plan: Plan
) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """The training transform for unseen images with a label map on their grid (the cascade's
    previous-stage prediction: nnU-Net's preprocessor given a segmentation); the labels come
    back -1 outside the nonzero mask, as training labels do."""
    data = np.stack([np.asarray(i, dtype=np.float32) for i in images])
    return _transform(data, np.asarray(labels, dtype=np.int16), geometry, plan, case_id="")


def sample_class_locations(
    seg: np.ndarray, classes_or_regions, seed: int = 1234
) -> dict[int | tuple[int, ...], np.ndarray]:
    """nnU-Net's `_sample_foreground_locations`: per label (int) or region (tuple of labels), up to
    10000 voxel indices (N, 3) of its voxels, at least 1 % of them, from one seeded RandomState
    drawn in the given order. A region samples its labels' voxels as one set (label by label)."""
    rs = np.random.RandomState(seed)
    out: dict[int | tuple[int, ...], np.ndarray] = {}
    for entry in classes_or_regions:
        key = tuple(int(v) for v in entry) if isinstance(entry, (tuple, list)) else int(entry)
        labels = key if isinstance(key, tuple) else (key,)
        coords = np.concatenate([np.argwhere(seg == label) for label in labels])
        if len(coords) == 0:
            out[key] = np.zeros((0, seg.ndim), dtype=np.int64)
            continue
        n = max(
            min(LOCATIONS_PER_LABEL, len(coords)), int(np.ceil(len(coords) * MIN_LOCATION_COVERAGE))
        )
        out[key] = coords[rs.choice(len(coords), n, replace=False)]
    return out


def label_dtype(seg: np.ndarray) -> type:
    """nnU-Net's cached label dtype: int8, or int16 once a label exceeds 127."""
    return np.int16 if seg.size and seg.max() > 127 else np.int8


def _preprocess_case(case, plan: Plan, labels: list, folder: Path) -> str:
    """`labels`: the foreground labels, then (with an ignore label) the annotated set."""
    data, seg, geometry = read_case_arrays(case)
    data, seg, props = _transform(data, seg, geometry, plan, case.case_id)
    locations = sample_class_locations(seg, labels)
    save_array(folder, f"{case.case_id}_data", data.astype(np.float32), plan.patch_size)
    save_array(folder, f"{case.case_id}_seg", seg.astype(label_dtype(seg)), plan.patch_size)
    names = {k: ANNOTATED if isinstance(k, tuple) else str(k) for k in locations}
    np.savez(folder / f"{case.case_id}_locs.npz", **{names[k]: v for k, v in locations.items()})
    (folder / f"{case.case_id}.json").write_text(json.dumps(props.to_json()))
    return case.case_id


@functools.lru_cache(maxsize=1024)
def _region_locations(root: Path, case_id: str, regions: tuple[tuple[int, ...], ...]):
    return sample_class_locations(np.asarray(open_array(root, f"{case_id}_seg")[...]), regions)


# ---- the shared cache ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessedData:
    root: Path  # <cache_root>/<key>/
    key: str  # content hash of dataset files + PlanConfig + preprocessing code version
    plan: Plan
    fingerprint: Fingerprint
    case_ids: tuple[str, ...]
    folds: list[Fold]
    ignore_label: int | None = None  # the dataset's: never a class, left out of loss and metrics

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
        """Data float32 (C, Z, Y, X), seg int8/int16 (Z, Y, X), properties. The arrays are
        memory-mapped blosc2 arrays (or numpy memmaps in an older cache): slicing one reads and
        decompresses only the chunks the slice touches; np.asarray reads it whole."""
        data = open_array(self.root, f"{case_id}_data")
        seg = open_array(self.root, f"{case_id}_seg")
        props = CaseProperties.from_json(json.loads((self.root / f"{case_id}.json").read_text()))
        return data, seg, props

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        with np.load(self.root / f"{case_id}_locs.npz") as locs:
            return {int(k): locs[k] for k in locs.files if k != ANNOTATED}

    def annotated_locations(self, case_id: str) -> np.ndarray:
        """With an ignore label: sampled voxels that are not ignored (nnU-Net's
        annotated_classes_key), where crops that are not forced to foreground are centred."""
        with np.load(self.root / f"{case_id}_locs.npz") as locs:
            return locs[ANNOTATED]

    def region_locations(self, case_id: str, regions) -> dict[tuple[int, ...], np.ndarray]:
        """Foreground locations per region, as nnU-Net stores them for region training (the
        regions are a training setting, so they are sampled from the cached labels on first use
        and kept in memory)."""
        return _region_locations(
            self.root, case_id, tuple(tuple(int(v) for v in r) for r in regions)
        )


def cache_key(dataset, cfg, intensity_samples: float = FOREGROUND_SAMPLES_TOTAL) -> str:
    h = hashlib.sha256()
    for part in (
        dataset.content_hash(),
        cfg.model_dump_json(),
        PREPROCESS_VERSION,
        repr(float(intensity_samples)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _build(
    dataset, cfg, folder: Path, folds: list[Fold], workers: int, intensity_samples: float
) -> None:
    started = time.time()
    fp = fingerprint(dataset, workers, intensity_samples)
    plan = make_plan(fp, dataset, cfg, workers)
    (folder / "fingerprint.json").write_text(json.dumps(fp.to_json(), indent=1))
    labels: list = sorted(v for v in dataset.labels.values() if v != 0)
    if dataset.ignore_label is not None:  # nnU-Net: the annotated voxels, for unforced crops
        labels.append((-1, *sorted(dataset.labels.values())))
    cases = list(dataset.cases)
    if workers <= 1:
        for case in cases:
            _preprocess_case(case, plan, labels, folder)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(
                pool.map(
                    _preprocess_case,
                    cases,
                    [plan] * len(cases),
                    [labels] * len(cases),
                    [folder] * len(cases),
                )
            )
    write_splits(folds, folder / "splits.json")
    (folder / "build_info.json").write_text(
        json.dumps(
            {"pid": os.getpid(), "seconds": time.time() - started, "version": PREPROCESS_VERSION}
        )
    )
    (folder / "plan.json").write_text(json.dumps(plan.to_json(), indent=1))


def _build_once(
    dataset,
    cfg,
    cache_root: Path,
    key: str,
    folds: list[Fold],
    workers: int,
    intensity_samples: float,
) -> None:
    """Build `<cache_root>/<key>` under an exclusive lock; the rename makes it appear whole."""
    final = cache_root / key
    with open(cache_root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():
                return  # another caller built it while we waited
            tmp = cache_root / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                _build(dataset, cfg, tmp, folds, workers, intensity_samples)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(
    dataset,
    cfg,
    cache_root: Path,
    folds: int = 5,
    folds_seed: int = 12345,
    workers: int = 2,
    intensity_samples: float = FOREGROUND_SAMPLES_TOTAL,
    splits_file: Path | None = None,
) -> PreprocessedData:
    """Fingerprint, plan, preprocess and split `dataset` once; later calls reuse the cache.

    Folds come from `splits_file`, else `<dataset.root>/splits_final.json` when present
    (nnU-Net's custom splits), else `make_folds(case ids, folds, folds_seed)`. `intensity_samples`
    is nnU-Net's 1e8 foreground-sample budget; lower it for quick runs (it is part of the cache
    key).
    """
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    key = cache_key(dataset, cfg, intensity_samples)
    case_ids = tuple(sorted(c.case_id for c in dataset.cases))
    custom = splits_file or Path(dataset.root) / "splits_final.json"
    if custom.is_file():
        split = read_splits(custom)
        check_splits(split, case_ids, folds, custom)
    else:
        split = make_folds(case_ids, folds, folds_seed)
    if not (cache_root / key).is_dir():
        _build_once(dataset, cfg, cache_root, key, split, workers, intensity_samples)
    root = cache_root / key
    plan = Plan.from_json(json.loads((root / "plan.json").read_text()))
    fp = Fingerprint.from_json(json.loads((root / "fingerprint.json").read_text()))
    return PreprocessedData(
        root=root,
        key=key,
        plan=plan,
        fingerprint=fp,
        case_ids=case_ids,
        ignore_label=dataset.ignore_label,
        folds=split,
    )
