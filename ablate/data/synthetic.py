"""A KiTS-like synthetic abdominal CT dataset in the nnU-Net v2 raw layout.

Each case is drawn in two steps: `draw_case` samples every random parameter into a `CaseSpec`
(recorded, inspectable), then `render_case` turns the spec into a Hounsfield-unit image and a
label map. Anatomy is laid out in millimetres as fractions of the field of view, so a small
`fov_mm` gives a small "phantom" body with the same proportions.

Labels: 0 background, 1 kidney, 2 tumour (tumour voxels always lie inside a kidney). Cases whose
index is 2 mod 6 have no tumour (`has_tumour`), so any dataset of 3 or more cases has both kinds.

The tumour is an avidly enhancing mass (as clear-cell carcinoma in the corticomedullary phase):
the brightest tissue of the image (400-440 HU), and large (a sphere of 0.9-1.2 times the kidney's
middle semi-axis, cut to the kidney). The vertebral body is cancellous bone (220-260 HU).
Generator version 1 drew a small hypodense tumour (30-60 HU, 2% of the foreground) whose values
sat at the floor of nnU-Net's CT clipping window, level with the soft tissue around the kidney:
the demo's networks never learned it. Version 2 made it enhancing (320-360 HU) beside a 400-700 HU
vertebra: both clipped to the window's ceiling, and the demo's networks marked the vertebra as
tumour. Version 3 (340-380 HU, 0.7-1.0 of the semi-axis, every third case without a tumour):
with the demo's 160 iterations, a fold model without deep supervision never predicted a tumour
(its tumour logit near-constant) for 2 of 3 seeds on one fold, and the failing seeds still failed
with 10 epochs, a 3x lower learning rate, or every sixth case without a tumour. Version 4 (these
values, and every sixth case without a tumour; KiTS19's cases all have one): the same fold
learned it with each of the 3 seeds (tumour DSC 0.65-0.95 per case).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ablate.data.dataset import Dataset, read_nnunet_raw
from ablate.errors import DataError
from ablate.imageio import Geometry, write_image

DEFAULT_FOV_MM = (100.0, 110.0, 110.0)  # (z, y, x): ~25-40 x 116-157 x 116-157 voxels
LABELS = {"background": 0, "kidney": 1, "tumor": 2}
REGIONS = {"kidney": [1, 2], "tumor": [2]}
GENERATOR_VERSION = 4
TUMOUR_FREE_EVERY = 6  # case index 2 mod 6 has no tumour
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

HU_AIR, HU_FAT, HU_SOFT_TISSUE, HU_LIVER, HU_AORTA = -1000.0, -100.0, 40.0, 60.0, 200.0
TUMOUR_HU = (400.0, 440.0)  # above the cortex (230-270 HU) and the vertebra (220-260)
SPINE_HU = (220.0, 260.0)  # cancellous bone: below the tumour, so the two never share a value
TUMOUR_RADIUS = (0.9, 1.2)  # of the kidney's middle semi-axis
TUMOUR_DEPTH = 0.4  # the centre lies within this normalised radius of its kidney


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in mm about the FOV centre; yaw turns it in the axial plane, tilt in (z, y)."""

    center_mm: tuple[float, float, float]  # (z, y, x) offset from the FOV centre
    semi_axes_mm: tuple[float, float, float]  # (z, y, x) before rotation
    yaw_deg: float = 0.0
    tilt_deg: float = 0.0


@dataclass(frozen=True)
class CaseSpec:
    """Every random choice for one case; `render_case` is a pure function of it."""

    spacing_mm: tuple[float, float, float]  # (z, y, x); y == x
    shape: tuple[int, int, int]  # (Z, Y, X)
    origin: tuple[float, float, float]  # SimpleITK (x, y, z)
    body_semi_axes_mm: tuple[float, float]  # (y, x), an elliptic cylinder along z
    fat_thickness_mm: float
    spine_center_mm: tuple[float, float]  # (y, x)
    spine_radius_mm: float
    spine_hu: float
    aorta_center_mm: tuple[float, float]  # (y, x)
    aorta_radius_mm: float
    liver: Ellipsoid
    kidneys: tuple[Ellipsoid, Ellipsoid]
    medulla_hu: float
    cortex_hu: float
    cortex_fraction: float  # normalised ellipsoid radius where cortex begins
    tumour: Ellipsoid | None  # a sphere (equal semi-axes) centred inside one kidney
    tumour_hu: float
    noise_sd_hu: float
    blur_sigma_mm: float
    noise_seed: int


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _jitter(rng: np.random.Generator, value: float, rel: float) -> float:
    return value * _u(rng, 1.0 - rel, 1.0 + rel)


def _draw_kidney(rng: np.random.Generator, fov: tuple[float, float, float], side: int) -> Ellipsoid:
    fz, fy, fx = fov
    center = (_u(rng, -0.08, 0.08) * fz, _u(rng, 0.08, 0.15) * fy, side * _u(rng, 0.21, 0.26) * fx)
    semi = (
        _jitter(rng, 0.24 * fz, 0.12),
        _jitter(rng, 0.11 * fy, 0.12),
        _jitter(rng, 0.08 * fx, 0.12),
    )
    return Ellipsoid(center, semi, yaw_deg=side * _u(rng, 5.0, 25.0), tilt_deg=_u(rng, -10.0, 10.0))


def _draw_tumour(rng: np.random.Generator, kidney: Ellipsoid, min_radius_mm: float) -> Ellipsoid:
    middle = sorted(kidney.semi_axes_mm)[1]
    radius = max(_u(rng, *TUMOUR_RADIUS) * middle, min_radius_mm)
    # a point within TUMOUR_DEPTH of the kidney's normalised radius, in the kidney's own frame
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    local = direction * _u(rng, 0.0, TUMOUR_DEPTH) * np.asarray(kidney.semi_axes_mm)
    offset = _rotation(kidney.yaw_deg, kidney.tilt_deg).T @ local  # kidney frame -> FOV frame
    center = tuple(float(c + o) for c, o in zip(kidney.center_mm, offset, strict=True))
    return Ellipsoid(center, (radius, radius, radius))


def draw_case(
    rng: np.random.Generator, fov_mm: tuple[float, float, float], has_tumour: bool
) -> CaseSpec:
    """Sample one case's spacing, anatomy, intensities and noise."""
    fz, fy, fx = fov_mm
    in_plane = _u(rng, 0.7, 0.95)
    spacing = (_u(rng, 2.5, 4.0), in_plane, in_plane)
    shape = tuple(max(8, round(f / s)) for f, s in zip(fov_mm, spacing, strict=True))
    kidneys = (_draw_kidney(rng, fov_mm, -1), _draw_kidney(rng, fov_mm, +1))
    # at least 0.75 slice thickness so a tumour always crosses a slice centre, even in tiny FOVs
    chosen = kidneys[int(rng.integers(2))]
    tumour = _draw_tumour(rng, chosen, 0.75 * spacing[0]) if has_tumour else None
    liver_center = (_u(rng, 0.0, 0.15) * fz, _u(rng, -0.12, -0.04) * fy, _u(rng, -0.22, -0.15) * fx)
    liver_semi = (
        _jitter(rng, 0.4 * fz, 0.1),
        _jitter(rng, 0.17 * fy, 0.1),
        _jitter(rng, 0.2 * fx, 0.1),
    )
    liver = Ellipsoid(liver_center, liver_semi, yaw_deg=_u(rng, -15.0, 15.0))
    return CaseSpec(
        spacing_mm=spacing,
        shape=shape,
        origin=(-fx / 2, -fy / 2, _u(rng, -200.0, 0.0)),
        body_semi_axes_mm=(_jitter(rng, 0.36 * fy, 0.05), _jitter(rng, 0.45 * fx, 0.05)),
        fat_thickness_mm=_jitter(rng, 0.05 * min(fy, fx), 0.3),
        spine_center_mm=(_u(rng, 0.19, 0.23) * fy, _u(rng, -0.01, 0.01) * fx),
        spine_radius_mm=_jitter(rng, 0.07 * min(fy, fx), 0.1),
        spine_hu=_u(rng, *SPINE_HU),
        aorta_center_mm=(_u(rng, 0.04, 0.08) * fy, _u(rng, 0.02, 0.06) * fx),
        aorta_radius_mm=_jitter(rng, 0.035 * min(fy, fx), 0.1),
        liver=liver,
        kidneys=kidneys,
        medulla_hu=_u(rng, 135.0, 165.0),
        cortex_hu=_u(rng, 230.0, 270.0),
        cortex_fraction=_u(rng, 0.7, 0.8),
        tumour=tumour,
        tumour_hu=_u(rng, *TUMOUR_HU),
        noise_sd_hu=_u(rng, 10.0, 20.0),
        blur_sigma_mm=_u(rng, 0.5, 1.0),
        noise_seed=int(rng.integers(2**31)),
    )


def _rotation(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    """(3, 3) matrix taking FOV-frame (z, y, x) offsets into the ellipsoid's own frame."""
    a, b = math.radians(yaw_deg), math.radians(tilt_deg)
    yaw = np.array([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]])
    tilt = np.array([[math.cos(b), math.sin(b), 0], [-math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return tilt @ yaw


def _grid_mm(spec: CaseSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm relative to the FOV centre, broadcastable to (Z, Y, X)."""
    axes = [
        ((np.arange(n) + 0.5) * s - n * s / 2).astype(np.float32)
        for n, s in zip(spec.shape, spec.spacing_mm, strict=True)
    ]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipsoid_radius(e: Ellipsoid, grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """Normalised radius (1 on the surface) of every voxel; (Z, Y, X) float32."""
    offsets = [g - np.float32(c) for g, c in zip(grid, e.center_mm, strict=True)]
    rot = _rotation(e.yaw_deg, e.tilt_deg).astype(np.float32)
    total = 0.0
    for row, semi in zip(rot, e.semi_axes_mm, strict=True):
        local = row[0] * offsets[0] + row[1] * offsets[1] + row[2] * offsets[2]  # (Z, Y, X)
        total = total + (local / np.float32(semi)) ** 2
    return np.sqrt(total)


def _disc(
    grid: tuple[np.ndarray, ...],
    center: tuple[float, float],
    semi: tuple[float, float],
    shape: tuple[int, int, int],
) -> np.ndarray:
    """A cylinder along z with an elliptic (y, x) cross-section; (Z, Y, X) bool."""
    dy, dx = (grid[1] - center[0]) / semi[0], (grid[2] - center[1]) / semi[1]
    r2 = dy**2 + dx**2  # (1, Y, X)
    return np.broadcast_to(r2 <= 1.0, shape)


def render_case(spec: CaseSpec) -> tuple[np.ndarray, np.ndarray]:
    """Paint the HU image (int16) and label map (uint8), both (Z, Y, X)."""
    grid = _grid_mm(spec)
    by, bx = spec.body_semi_axes_mm
    t = spec.fat_thickness_mm
    body = _disc(grid, (0.0, 0.0), (by, bx), spec.shape)
    hu = np.where(body, np.float32(HU_FAT), np.float32(HU_AIR))
    hu[_disc(grid, (0.0, 0.0), (by - t, bx - t), spec.shape)] = HU_SOFT_TISSUE
    hu[_ellipsoid_radius(spec.liver, grid) <= 1.0] = HU_LIVER
    r = spec.aorta_radius_mm
    hu[_disc(grid, spec.aorta_center_mm, (r, r), spec.shape)] = HU_AORTA
    r = spec.spine_radius_mm
    hu[_disc(grid, spec.spine_center_mm, (r, r), spec.shape)] = spec.spine_hu
    label = np.zeros(spec.shape, dtype=np.uint8)
    for kidney in spec.kidneys:
        radius = _ellipsoid_radius(kidney, grid)
        hu[radius <= 1.0] = spec.cortex_hu
        hu[radius <= spec.cortex_fraction] = spec.medulla_hu
        label[radius <= 1.0] = 1
    if spec.tumour is not None:
        tumour = (_ellipsoid_radius(spec.tumour, grid) <= 1.0) & (label == 1)
        hu[tumour] = spec.tumour_hu
        label[tumour] = 2
    hu = gaussian_filter(hu, sigma=[spec.blur_sigma_mm / s for s in spec.spacing_mm])
    noise_rng = np.random.default_rng(spec.noise_seed)
    hu += noise_rng.normal(0.0, spec.noise_sd_hu, size=spec.shape).astype(np.float32)
    hu[~body] = HU_AIR  # scanners report exact air outside the patient; keeps the body edge crisp
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def has_tumour(index: int) -> bool:
    return index % TUMOUR_FREE_EVERY != 2


def case_rng(seed: int, index: int) -> np.random.Generator:
    """Per-case generator: case i is the same whatever the total number of cases."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _prepare_out_dir(out_dir: Path) -> None:
    meta_path = out_dir / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        if "ablate_synthetic" not in meta:
            raise DataError(
                f"{meta_path}: exists and is not an ablate synthetic dataset; "
                "choose an empty output folder"
            )
    for sub in ("imagesTr", "labelsTr"):
        for stale in (out_dir / sub).glob("case_*.nii.gz"):
            stale.unlink()


def make_synthetic_dataset(
    out_dir: str | Path,
    cases: int,
    seed: int,
    fov_mm: tuple[float, float, float] = DEFAULT_FOV_MM,
    name: str = "SyntheticKiTS",
) -> Dataset:
    """Write `cases` KiTS-like CT cases (case_00000, ...) in nnU-Net v2 raw layout; return them.

    Deterministic: the same (seed, fov_mm) gives byte-identical arrays. Rewriting an existing
    synthetic folder replaces its cases; any other existing dataset.json raises DataError.
    """
    if cases < 1:
        raise DataError(f"make_synthetic_dataset: cases must be >= 1, got {cases}")
    if len(fov_mm) != 3 or min(fov_mm) <= 0:
        raise DataError(
            "make_synthetic_dataset: fov_mm must be three positive mm values "
            f"(z, y, x), got {fov_mm}"
        )
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    fov = tuple(float(f) for f in fov_mm)
    for index in range(cases):
        spec = draw_case(case_rng(seed, index), fov, has_tumour=has_tumour(index))
        image, label = render_case(spec)
        geometry = Geometry(spec.spacing_mm, spec.origin, IDENTITY_DIRECTION)
        write_image(image, geometry, out_dir / "imagesTr" / f"case_{index:05d}_0000.nii.gz")
        write_image(label, geometry, out_dir / "labelsTr" / f"case_{index:05d}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "ablate_regions": REGIONS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": name,
        "ablate_synthetic": {"seed": seed, "fov_mm": list(fov), "version": GENERATOR_VERSION},
    }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2))
    return read_nnunet_raw(out_dir)


def case_spec_json(spec: CaseSpec) -> dict:
    """The drawn parameters of a case as plain JSON (for logging or debugging a phantom)."""
    return asdict(spec)
