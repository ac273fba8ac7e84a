"""Pictures of the cases: per target, the cases where the variants disagree most and the worst
cases of the best variant, as image slices through the structure with the reference and each
shown variant's contour (Okabe-Ito colours and distinct line styles, so colour-blind readers
tell them apart).

Picking reads the analysis (per-case DSC, seeds averaged); drawing reads the raw image, the
reference and each variant's cross-validation prediction from `CaseFiles` (built by the run
layer from the study's work dir). A handful of cases, cropped and at most `MAX_PIXELS` a side:
the report stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.imageio import read_image
from ablate.report.analysis import Analysis
from ablate.report.headline import collapsed_comparisons, collapsed_keys
from ablate.report.plots import subplots
from ablate.report.stats import HIGHER_IS_BETTER

REFERENCE_STYLE = ("#FFFFFF", "-", 2.6)  # white under the coloured contours
VARIANT_STYLES = (  # Okabe-Ito, without yellow and black (lost on a grey CT slice)
    ("#E69F00", "-"),
    ("#56B4E9", "--"),
    ("#009E73", "-."),
    ("#CC79A7", ":"),
    ("#D55E00", "-"),
)
MAX_PIXELS = 160  # a side of a drawn crop, in voxels (bigger crops are subsampled)
MIN_CROP = 48  # voxels a side at least: enough context around a small structure
PANEL_INCHES = 4.6  # width of one slice
PICTURE_DPI = 120  # ~550 pixels a slice: contours a reader can follow
MAX_VARIANTS = 4  # contours on one picture besides the reference


@dataclass(frozen=True)
class CaseFiles:
    """Where a picture's voxels are: each case's image (first channel) and reference label map,
    each variant's predicted label map per case (one seed), and the labels each target unites."""

    images: dict[str, Path]
    references: dict[str, Path]
    predictions: dict[str, dict[str, Path]]  # variant label -> case -> prediction file
    targets: dict[str, tuple[int, ...]]


def case_files(
    cases,
    targets: dict[str, tuple[int, ...]],
    folders: dict[str, list[Path]],
    file_ending: str = ".nii.gz",
) -> CaseFiles:
    """CaseFiles from a dataset's cases (`ablate.data.Case`: images, label) and, per variant
    label, the folders its predictions were written to (one per fold); files absent are left
    out (a job that has not run)."""
    predictions: dict[str, dict[str, Path]] = {}
    for variant, dirs in folders.items():
        found = {}
        for folder in dirs:
            for path in Path(folder).glob(f"*{file_ending}"):
                found.setdefault(path.name[: -len(file_ending)], path)
        predictions[variant] = found
    return CaseFiles(
        images={c.case_id: Path(c.images[0]) for c in cases if c.images},
        references={c.case_id: Path(c.label) for c in cases if c.label is not None},
        predictions=predictions,
        targets={k: tuple(v) for k, v in targets.items()},
    )


@dataclass(frozen=True)
class CasePicture:
    target: str
    case: str
    why: str  # why this case is shown, with the numbers
    variants: tuple[str, ...]  # drawn, besides the reference
    png: bytes

    @property
    def anchor(self) -> str:
        return anchor(self.target, self.case)


def anchor(target: str, case: str) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{target}-{case}")


@dataclass(frozen=True)
class Pick:
    target: str
    case: str
    why: str
    variants: tuple[str, ...]
    values: dict[str, float]  # the case's value per drawn variant (display %)


def pick_cases(a: Analysis, files: CaseFiles | None, per_kind: int = 2) -> list[Pick]:
    """Per target (first metric): the `per_kind` cases with the widest spread between variants,
    then the `per_kind` worst cases of the variant best on the cases every variant has."""
    metric = a.metrics[0]
    hib = HIGHER_IS_BETTER[metric]
    skip = collapsed_keys(a, collapsed_comparisons(a))  # nothing differs there to show
    picks = []
    for (target, mt), m in a.matrices.items():
        if mt != metric or (target, mt) in skip:
            continue
        if files is not None and target not in files.targets:
            continue
        usable = m.loc[[c for c in m.index if files is None or _has_files(files, c)]]
        if usable.empty:
            continue
        chosen: dict[str, str] = {}
        spread = (usable.max(axis=1) - usable.min(axis=1)).dropna().sort_values(ascending=False)
        for case, width in spread[spread > 0].head(per_kind).items():
            chosen[case] = f"the variants disagree most here ({metric.upper()} spread {_p(width)})"
        best = _best_variant(m, hib)
        worst = usable[best].dropna().sort_values(ascending=hib)
        for case, value in worst.items():
            if sum(w.startswith("worst") for w in chosen.values()) >= per_kind:
                break
            chosen.setdefault(case, f"worst case of the best variant, {best} ({_p(value)})")
        for case, why in chosen.items():
            row = m.loc[case]
            drawn = _drawn(a, row, best, hib, files, case)
            values = {v: float(row[v]) for v in drawn}
            picks.append(Pick(target, case, why, tuple(drawn), values))
    return picks


def _p(x: float) -> str:
    return f"{100 * x:.1f}%"


def _has_files(files: CaseFiles, case: str) -> bool:
    return case in files.images and case in files.references


def _best_variant(m: pd.DataFrame, hib: bool) -> str:
    means = m.dropna().mean() if len(m.dropna()) else m.mean()
    return str(means.idxmax() if hib else means.idxmin())


def _drawn(a: Analysis, row: pd.Series, best: str, hib: bool, files, case) -> list[str]:
    """The baseline, the best variant, and this case's best and worst variants (with files)."""
    present = row.dropna()
    ranked = present.sort_values(ascending=not hib)
    wanted = [a.baseline, best, *ranked.index[:1], *ranked.index[-1:], *ranked.index]
    out = []
    for v in wanted:
        has = files is None or case in files.predictions.get(v, {})
        if v not in out and v in present.index and has:
            out.append(v)
    return out[:MAX_VARIANTS]


def case_pictures(a: Analysis, files: CaseFiles | None, labels) -> list[CasePicture]:
    """Render the picked cases; a case whose files cannot be read is skipped, not fatal."""
    if files is None:
        return []
    out = []
    for pick in pick_cases(a, files):
        try:
            png = render_case(files, pick, labels)
        except (OSError, ValueError, RuntimeError):
            continue
        out.append(CasePicture(pick.target, pick.case, pick.why, pick.variants, png))
    return out


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    array, geometry = read_image(path)
    return array, geometry.spacing_mm


def render_case(files: CaseFiles, pick: Pick, labels) -> bytes:
    from ablate.report.plots import png

    return png(case_figure(files, pick, labels), PICTURE_DPI)


def case_figure(files: CaseFiles, pick: Pick, labels):
    """One or two axial slices: through the most reference and through the most disagreement,
    each cropped around where the contours differ."""
    image, spacing = _read(files.images[pick.case])
    values = files.targets[pick.target]
    ref = np.isin(_read(files.references[pick.case])[0], values)
    preds = {v: np.isin(_read(files.predictions[v][pick.case])[0], values) for v in pick.variants}
    slices = _slices(ref, list(preds.values()))
    crops = [_crop(ref[z], [p[z] for p in preds.values()]) for z, _ in slices]
    aspect = spacing[1] / spacing[2]  # (y, x) voxel size: shown in millimetres
    tall = max((c[0].stop - c[0].start) * aspect / max(c[1].stop - c[1].start, 1) for c in crops)
    width = PANEL_INCHES
    height = float(np.clip(width * tall, 0.5 * width, 1.5 * width))
    fig, axes = subplots(1, len(slices), figsize=(width * len(slices), height + 0.9), squeeze=False)
    for ax, (z, title), box in zip(axes[0], slices, crops, strict=True):
        side = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
        step = max(1, -(-side // MAX_PIXELS))
        crop = (slice(box[0].start, box[0].stop, step), slice(box[1].start, box[1].stop, step))
        shown = image[z][crop].astype(float)
        low, high = np.percentile(shown, [1, 99]) if shown.size else (0, 1)
        ax.imshow(shown, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
        _contour(ax, ref[z][crop], *REFERENCE_STYLE)
        for (color, style), mask in zip(VARIANT_STYLES, preds.values(), strict=False):
            _contour(ax, mask[z][crop], color, style, 1.8)
        ax.set_title(f"{pick.case}, {title}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [_handle(*REFERENCE_STYLE, "reference", edge="#000000")]
    for (color, style), v in zip(VARIANT_STYLES, pick.variants, strict=False):
        handles.append(_handle(color, style, 1.8, f"{labels(v)} ({_p(pick.values[v])})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def _slices(ref: np.ndarray, preds: list[np.ndarray]) -> list[tuple[int, str]]:
    """(z, title): the slice with the most reference voxels (else the most predicted), then the
    slice where the predictions and the reference differ most, when that is another one."""
    area = ref.sum(axis=(1, 2))
    union = np.sum([p.sum(axis=(1, 2)) for p in preds], axis=0) if preds else area
    first = int(area.argmax()) if area.any() else int(np.asarray(union).argmax())
    name = "most reference" if area.any() else "most predicted"
    out = [(first, f"slice {first}, {name}")]
    if preds:
        wrong = np.sum([(p ^ ref).sum(axis=(1, 2)) for p in preds], axis=0)
        second = int(wrong.argmax())
        if wrong.any() and second != first:
            out.append((second, f"slice {second}, most disagreement"))
    return out


def _crop(ref: np.ndarray, preds: list[np.ndarray]) -> tuple[slice, slice]:
    """Around where the predictions and the reference differ (else around all masks), grown by
    half its size and to at least MIN_CROP voxels; the whole slice when every mask is empty."""
    wrong = np.any([p ^ ref for p in preds], axis=0) if preds else ref
    focus = wrong if wrong.any() else np.any([ref, *preds], axis=0)
    shape = focus.shape
    if not focus.any():
        return slice(0, shape[0]), slice(0, shape[1])
    out = []
    for axis in (0, 1):
        hit = np.flatnonzero(focus.any(axis=1 - axis))
        low, high = int(hit[0]), int(hit[-1]) + 1
        grow = max((high - low) // 2, (MIN_CROP - (high - low)) // 2, 4)
        low, high = max(0, low - grow), min(shape[axis], high + grow)
        out.append(slice(low, high))
    return out[0], out[1]


def _contour(ax, mask: np.ndarray, color: str, style: str, width: float) -> None:
    if mask.any() and not mask.all():
        lines = ax.contour(
            mask.astype(float),
            levels=[0.5],
            colors=[color],
            linestyles=[style],
            linewidths=[width],
        )
        if color == REFERENCE_STYLE[0]:  # white, outlined so it shows on bright tissue too
            lines.set_path_effects(_outline(width))


def _outline(width: float) -> list:
    import matplotlib.patheffects as effects

    return [effects.Stroke(linewidth=width + 1.6, foreground="#000000"), effects.Normal()]


def _handle(color: str, style: str, width: float, label: str, edge: str | None = None):
    from matplotlib.lines import Line2D

    line = Line2D([], [], color=color, ls=style, lw=width, label=label)
    if edge:
        line.set_path_effects(_outline(width))
    return line
