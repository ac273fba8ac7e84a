"""Scoring a model's predictions case by case: postprocess, write, score against the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class CaseScorer:
    """Postprocesses, writes and scores one model's predictions one case at a time, keeping the
    rows and costs (never the label maps: a KiTS-sized map is ~100 MB)."""

    def __init__(
        self,
        steps,
        targets,
        tolerance_mm,
        out_dir: Path,
        ending: str,
        raw_dir: Path | None = None,
        ignore_label: int | None = None,
    ):
        self.steps, self.targets, self.tolerance_mm = steps, targets, tolerance_mm
        self.ignore_label = ignore_label  # reference voxels holding it are scored in no target
        self.out_dir, self.ending, self.raw_dir = out_dir, ending, raw_dir
        self.rows: list[dict] = []
        self.seconds: list[float] = []
        self.peaks: dict[str, float] = {}

    def add(self, case_id: str, labels, geometry, cost: dict, reference: Path) -> None:
        """With `steps` and a `raw_dir`, the labels before postprocessing are written there."""
        from ablate.evaluate import evaluate_case
        from ablate.imageio import read_image, write_image
        from ablate.postprocess import keep_largest_component

        if self.steps and self.raw_dir is not None:
            write_image(labels, geometry, self.raw_dir / f"{case_id}{self.ending}")
        for values in self.steps:
            labels = keep_largest_component(labels, values)
        cost = dict(cost)
        self.seconds.append(cost.pop("seconds"))
        for key, value in cost.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        write_image(labels, geometry, self.out_dir / f"{case_id}{self.ending}")
        ref, ref_geometry = read_image(reference)
        for row in evaluate_case(
            labels, ref, ref_geometry.spacing_mm, self.targets, self.tolerance_mm, self.ignore_label
        ):
            self.rows.append({"case": case_id, **row})

    def metrics(self) -> dict[str, float]:
        from ablate.device import headline_peak_mb

        metrics = {
            "infer_seconds_per_case": float(np.mean(self.seconds)),
            "peak_infer_memory_mb": headline_peak_mb(self.peaks),
            **{f"infer_{k}": v for k, v in self.peaks.items()},
        }
        for target in self.targets:
            for metric in ("dsc", "nsd"):
                values = [
                    r["value"] for r in self.rows if r["target"] == target and r["metric"] == metric
                ]
                metrics[f"{metric}_{target}"] = (
                    float(np.nanmean(values)) if values else float("nan")
                )
        return metrics


def all_labels(targets: dict[str, tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """largest_component: one step on the union of every target's labels."""
    return (tuple(sorted({v for values in targets.values() for v in values})),)
