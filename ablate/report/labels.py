"""Short variant labels for figures and dense tables, with the legend that maps them back.

Full labels ("residual · dice_topk · ds=last3 · tta=2") are kept where they fit; past
`MAX_FULL` characters every variant gets a short code (V1 = the baseline, V2, ...), and the page
shows the legend once, near the top.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FULL = 18  # longest label drawn as it is on an axis (the demo's "ds=nnunet · tta=1" fits)


@dataclass(frozen=True)
class VariantLabels:
    """Full label -> the label drawn in figures (the same text when all labels are short)."""

    short: dict[str, str]

    @property
    def abbreviated(self) -> bool:
        return any(k != v for k, v in self.short.items())

    def __call__(self, variant: str) -> str:
        return self.short.get(variant, variant)

    def many(self, variants) -> list[str]:
        return [self(v) for v in variants]

    def legend(self) -> list[tuple[str, str]]:
        """(short, full) pairs in the report's order; empty when no label was shortened."""
        return list((v, k) for k, v in self.short.items()) if self.abbreviated else []


def variant_labels(order: list[str], max_full: int = MAX_FULL) -> VariantLabels:
    """V1..Vn (V1: the baseline, first in `order`) when any label is longer than `max_full`."""
    if all(len(v) <= max_full for v in order):
        return VariantLabels({v: v for v in order})
    return VariantLabels({v: f"V{i + 1}" for i, v in enumerate(order)})
