"""Build small, structurally exact copies of the public dataset layouts ablate reads as
downloaded (names, folders, dtypes, affines, NIfTI header codes and dataset.json as the public
sources and nnU-Net's converters write them), for tests and for trying ablate without the data:

    python tests/layouts.py OUT_DIR        # every layout under OUT_DIR/<name>/

Each builder returns the dataset root. Volumes are tiny, non-cubic and anisotropic; labels are
nested boxes so every declared label and region has foreground. KiTS19/21/23 carry the affine of
the real KiTS19 ``case_00002/segmentation.nii.gz`` (slices as the first NIfTI axis, sform code 2,
qform code 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

KITS_AFFINE = np.array(
    [
        [0.0, 0.0, -0.9394, 0.0],
        [0.0, -0.9394, 0.0, 0.0],
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
KITS_SHAPE = (7, 12, 10)  # NIfTI (i, j, k): i is the slice axis, as in KiTS
PLAIN_AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])  # 2.5 mm slices along k
PLAIN_AFFINE[:3, 3] = (-20.0, 15.0, 40.0)
PLAIN_SHAPE = (12, 10, 7)  # NIfTI (i, j, k): k is the slice axis
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


def write_nifti(
    path: Path, data: np.ndarray, affine=PLAIN_AFFINE, sform: int = 1, qform: int = 1
) -> Path:
    """A NIfTI-1 file with `data` in NIfTI (i, j, k) order and the given header codes."""
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=sform)
    image.set_qform(affine, code=qform)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def label_volume(shape, values=(1, 2), seed: int = 0) -> np.ndarray:
    """uint8 nested boxes: value 1 outermost, each later value a box inside it (NIfTI order)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    lo = [1 + int(rng.integers(0, 2)) for _ in shape]
    hi = [n - 1 for n in shape]
    label[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = values[0]
    for k, value in enumerate(values[1:]):
        start = [a + 1 + k % 2 for a in lo]
        label[tuple(slice(s, s + 2) for s in start)] = value
    return label


def ct_volume(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """int16 HU-like image: noise around 40 HU, +60 inside the labels."""
    rng = np.random.default_rng(seed)
    return (rng.normal(40, 10, label.shape) + 60 * (label > 0)).astype(np.int16)


def _json(path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=4))


def nnunet_v2(
    root: Path,
    n: int = 3,
    ending: str = ".nii.gz",
    labels=None,
    values=(1, 2),
    extra: dict | None = None,
    affine=PLAIN_AFFINE,
    shape=PLAIN_SHAPE,
    sform: int = 1,
    qform: int = 1,
) -> Path:
    """nnU-Net v2 raw: imagesTr/<case>_0000<ending>, labelsTr/<case><ending>, dataset.json."""
    labels = labels or {"background": 0, "liver": 1, "tumor": 2}
    for i in range(n):
        seg = label_volume(shape, values, seed=i)
        write_nifti(
            root / "imagesTr" / f"case_{i:03d}_0000{ending}",
            ct_volume(seg, i),
            affine,
            sform,
            qform,
        )
        write_nifti(root / "labelsTr" / f"case_{i:03d}{ending}", seg, affine, sform, qform)
    _json(
        root / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": n,
            "file_ending": ending,
            **(extra or {}),
        },
    )
    return root


def nnunet_kits2023(root: Path, n: int = 3) -> Path:
    """Dataset220_KiTS2023 as nnU-Net's converter writes it: region labels, regions_class_order
    (1, 3, 2), NibabelIOWithReorient, KiTS' slices-first affine."""
    labels = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    extra = {
        "regions_class_order": [1, 3, 2],
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
        "name": "KiTS2023",
    }
    return nnunet_v2(
        root,
        n,
        labels=labels,
        values=(1, 2, 3),
        extra=extra,
        affine=KITS_AFFINE,
        shape=KITS_SHAPE,
        sform=2,
        qform=0,
    )


def nnunet_ignore(root: Path, n: int = 3) -> Path:
    """nnU-Net v2 raw with a partially annotated `ignore` label (the highest value, 3)."""
    return nnunet_v2(
        root, n, labels={"background": 0, "liver": 1, "tumor": 2, "ignore": 3}, values=(1, 2, 3)
    )


def v1_task(root: Path, n: int = 2) -> Path:
    """nnU-Net v1 Task005_Prostate: MSD's dataset.json, images already split per modality."""
    training = []
    for i in range(n):
        seg = label_volume(PLAIN_SHAPE, (1, 2), seed=i)
        for c in range(2):
            write_nifti(
                root / "imagesTr" / f"prostate_{i:02d}_{c:04d}.nii.gz", ct_volume(seg, i + c)
            )
        write_nifti(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", seg)
        training.append(
            {
                "image": f"./imagesTr/prostate_{i:02d}.nii.gz",
                "label": f"./labelsTr/prostate_{i:02d}.nii.gz",
            }
        )
    _json(
        root / "dataset.json",
        {
            "name": "PROSTATE",
            "tensorImageSize": "4D",
            "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "numTraining": n,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return root


def msd(root: Path, n: int = 2, four_d: bool = False) -> Path:
    """MSD as the tarballs ship: Task09_Spleen (3D CT) or Task01_BrainTumour (4D, 4 modalities),
    each NIfTI with a macOS ``._`` AppleDouble sibling."""
    if four_d:
        name, stem, modality = (
            "BrainTumour",
            "BRATS",
            {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        )
        labels = {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        }
        values = (1, 2, 3)
    else:
        name, stem, modality = "Spleen", "spleen", {"0": "CT"}
        labels, values = {"0": "background", "1": "spleen"}, (1,)
    training = []
    for i in range(n):
        seg = label_volume(PLAIN_SHAPE, values, seed=i)
        image = (
            np.stack([ct_volume(seg, i + c).astype(np.float32) for c in range(4)], axis=-1)
            if four_d
            else ct_volume(seg, i)
        )
        file = f"{stem}_{i + 1:03d}.nii.gz" if four_d else f"{stem}_{i + 10}.nii.gz"
        write_nifti(root / "imagesTr" / file, image)
        write_nifti(root / "labelsTr" / file, seg)
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / f"._{file}").write_bytes(APPLEDOUBLE)
        training.append({"image": f"./imagesTr/{file}", "label": f"./labelsTr/{file}"})
    _json(
        root / "dataset.json",
        {
            "name": name,
            "tensorImageSize": "4D" if four_d else "3D",
            "modality": modality,
            "labels": labels,
            "numTraining": n,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    (root / "._dataset.json").write_bytes(APPLEDOUBLE)
    return root


def kits(root: Path, version: int = 19, n: int = 2, test_case: bool = True) -> Path:
    """The kits19 / kits21 / kits23 repositories after their download scripts ran."""
    folder = root / ("dataset" if version == 23 else "data")
    values = (1, 2) if version == 19 else (1, 2, 3)
    for i in range(n):
        case = folder / f"case_{i:05d}"
        seg = label_volume(KITS_SHAPE, values, seed=i)
        write_nifti(case / "imaging.nii.gz", ct_volume(seg, i), KITS_AFFINE, 2, 0)
        if version == 21:
            for kind in ("MAJ", "AND", "OR"):
                write_nifti(case / f"aggregated_{kind}_seg.nii.gz", seg, KITS_AFFINE, 2, 0)
            write_nifti(
                case / "segmentations" / "kidney_instance-1_annotation-1.nii.gz",
                (seg == 1).astype(np.uint8),
                KITS_AFFINE,
                2,
                0,
            )
        else:
            write_nifti(case / "segmentation.nii.gz", seg, KITS_AFFINE, 2, 0)
        if version == 23:
            write_nifti(
                case / "instances" / "kidney_instance-1_annotation-1.nii.gz",
                (seg == 1).astype(np.uint8),
                KITS_AFFINE,
                2,
                0,
            )
    if version == 19 and test_case:  # the challenge test cases ship without segmentation
        write_nifti(
            folder / "case_00210" / "imaging.nii.gz",
            ct_volume(np.zeros(KITS_SHAPE, np.uint8)),
            KITS_AFFINE,
            2,
            0,
        )
    return root


def flare21(root: Path, n: int = 2) -> Path:
    """FLARE21 training data: TrainingImg/train_NNN_0000.nii.gz, TrainingMask/train_NNN.nii.gz."""
    for i in range(n):
        seg = label_volume(PLAIN_SHAPE, (1, 2, 3, 4), seed=i)
        write_nifti(root / "TrainingImg" / f"train_{i:03d}_0000.nii.gz", ct_volume(seg, i))
        write_nifti(root / "TrainingMask" / f"train_{i:03d}.nii.gz", seg)
    return root


def ct_ich(root: Path, ids=(49, 50)) -> Path:
    """PhysioNet CT-ICH 1.3.1: ct_scans/NNN.nii, masks/NNN.nii (0/255), the two CSV files."""
    for i in ids:
        seg = label_volume(PLAIN_SHAPE, (1,), seed=i)
        write_nifti(root / "ct_scans" / f"{i:03d}.nii", ct_volume(seg, i))
        write_nifti(root / "masks" / f"{i:03d}.nii", (seg * 255).astype(np.uint8))
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,"
        "Subdural,No_Hemorrhage,Fracture_Yes_No\n"
    )
    (root / "Patient_demographics.csv").write_text("Patient Number,Age\n")
    return root


def folder(root: Path, n: int = 2, ending: str = ".nii") -> Path:
    """A plain images/ + labels/ folder with matching names."""
    for i in range(n):
        seg = label_volume(PLAIN_SHAPE, (1,), seed=i)
        write_nifti(root / "images" / f"liver_{i}{ending}", ct_volume(seg, i))
        write_nifti(root / "labels" / f"liver_{i}{ending}", seg)
    return root


LAYOUTS = {
    "Dataset001_Liver": nnunet_v2,
    "Dataset220_KiTS2023": nnunet_kits2023,
    "Dataset002_Ignore": nnunet_ignore,
    "Task005_Prostate": v1_task,
    "Task09_Spleen": msd,
    "Task01_BrainTumour": lambda root: msd(root, four_d=True),
    "kits19": kits,
    "kits21": lambda root: kits(root, 21),
    "kits23": lambda root: kits(root, 23),
    "FLARE21": flare21,
    "ct-ich": ct_ich,
    "plain": folder,
}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "layouts")
    for name, build in LAYOUTS.items():
        print(build(out / name))
