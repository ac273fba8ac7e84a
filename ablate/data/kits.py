"""The KiTS challenges' repositories as downloaded: KiTS19, KiTS21 and KiTS23.

| format | cases | label file | labels |
|---|---|---|---|
| kits19 | ``data/case_*/`` | ``segmentation.nii.gz`` | 1 kidney, 2 tumor |
| kits21 | ``data/case_*/`` | ``aggregated_MAJ_seg.nii.gz`` (majority) | kidney, tumor, cyst |
| kits23 | ``dataset/case_*/`` | ``segmentation.nii.gz`` | kidney, tumor, cyst |

All three store the axial slice axis first in the NIfTI file; each case is reoriented losslessly
into ``<root>_ablate_converted/`` (identity direction, arrays (Z, Y, X) with slices first).
KiTS19 is scored on kidney = kidney + tumor and tumor (Isensee 2019); KiTS21/23 are region-based as
nnU-Net's Dataset220_KiTS2023: kidney (1, 2, 3), masses (2, 3), tumor (2), painted (1, 3, 2).
KiTS19's unlabelled challenge test cases (210-299) are left out; any other case missing its image
(not downloaded yet) or its label is kept, so `verify` names the file.
"""

from __future__ import annotations

from pathlib import Path

from ablate.data.dataset import Case, Dataset
from ablate.data.orient import reoriented_copy
from ablate.errors import DataError

ENDING = ".nii.gz"
KITS19_LABELS = {"background": 0, "kidney": 1, "tumor": 2}
KITS19_REGIONS = {"kidney": (1, 2), "tumor": (2,)}
KITS2X_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
KITS2X_REGIONS = {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
KITS2X_ORDER = (1, 3, 2)
LABEL_FILE = {
    "kits19": "segmentation.nii.gz",
    "kits21": "aggregated_MAJ_seg.nii.gz",
    "kits23": "segmentation.nii.gz",
}
GET_IMAGING = {
    "kits19": "python -m starter_code.get_imaging (github.com/neheller/kits19)",
    "kits21": "python kits21/data/get_imaging.py (github.com/neheller/kits21)",
    "kits23": "kits23_download_data (github.com/neheller/kits23)",
}


def cases_dir(root: Path, fmt: str) -> Path:
    """The folder holding case_*/: the repository's data/ (dataset/ for KiTS23) or itself."""
    sub = root / ("dataset" if fmt == "kits23" else "data")
    return sub if sub.is_dir() else root


def detect_kits(root: Path) -> str | None:
    """kits23 (dataset/ or instances/), kits21 (aggregated_MAJ_seg), kits19 (case_*/ with an
    image or a segmentation), else None."""
    if any((root / "dataset").glob("case_*")) or any(root.glob("case_*/instances")):
        return "kits23"
    folder = cases_dir(root, "kits19")
    if any(folder.glob("case_*/aggregated_MAJ_seg.nii.gz")):
        return "kits21"
    if any(folder.glob("case_*/imaging.nii.gz")) or any(folder.glob("case_*/segmentation.nii.gz")):
        return "kits19"
    return None


def _is_test_case(fmt: str, case_id: str) -> bool:
    """KiTS19's cases 210-299 are its unlabelled challenge test set; KiTS21/23 label every case."""
    number = case_id.removeprefix("case_")
    return fmt == "kits19" and number.isdigit() and 210 <= int(number) <= 299


def read_kits(root: Path, fmt: str) -> Dataset:
    from ablate.data.formats import converted_root

    folder, out = cases_dir(root, fmt), converted_root(root)
    cases = []
    for case in sorted(p for p in folder.glob("case_*") if p.is_dir()):
        image, seg = case / "imaging.nii.gz", case / LABEL_FILE[fmt]
        if not seg.is_file() and _is_test_case(fmt, case.name):
            continue  # KiTS19's 90 challenge test cases ship without labels
        cid = case.name
        new_image = (
            reoriented_copy(image, out / "imagesTr" / f"{cid}_0000{ENDING}")
            if image.is_file()
            else image
        )  # not downloaded yet: verify names it
        new_label = (
            reoriented_copy(seg, out / "labelsTr" / f"{cid}{ENDING}") if seg.is_file() else None
        )  # a training case without its label: verify names it
        cases.append(Case(cid, (new_image,), new_label))
    if not any(c.label for c in cases):
        raise DataError(
            f"{folder}: no case_*/ with {LABEL_FILE[fmt]}; clone the {fmt} repository "
            f"and run {GET_IMAGING[fmt]}"
        )
    if fmt == "kits19":
        return Dataset(
            root=root,
            name="KiTS19",
            channels=("CT",),
            labels=dict(KITS19_LABELS),
            cases=tuple(cases),
            regions=dict(KITS19_REGIONS),
        )
    return Dataset(
        root=root,
        name=fmt.replace("kits", "KiTS"),
        channels=("CT",),
        labels=dict(KITS2X_LABELS),
        cases=tuple(cases),
        regions=dict(KITS2X_REGIONS),
        region_based=True,
        regions_class_order=KITS2X_ORDER,
    )
