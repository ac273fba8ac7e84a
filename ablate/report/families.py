"""The report's Holm families, named once: Methods lists them and every table repeats its own.

Holm controls the family-wise error within one family only; a pair tested in two families (a
post-hoc table and a significance map, say) can get different verdicts there, so each verdict
names the family it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Family:
    key: str  # short id shown beside a verdict: "H-DSC", "W-DSC", "post-hoc kidney DSC", ...
    table: str  # where its verdicts are printed
    tests: str  # what is tested, in words
    m: int  # number of tests Holm adjusts over (tests with a p-value)

    def text(self) -> str:
        return f"Holm family {self.key}: {self.tests} ({self.m} tests; {self.table})"


def _per_metric(frame: pd.DataFrame, column: str, prefix: str, table: str, tests: str):
    out = []
    for metric, part in frame.groupby("metric", sort=False):
        m = int(part[column].notna().sum())
        out.append(Family(f"{prefix}-{metric.upper()}", table, tests.format(M=metric.upper()), m))
    return out


def report_families(
    compare, posthoc, sig_maps, effects, held_out, baseline, noninferiority=None
) -> list[Family]:
    """Every family of the report, in the order of its sections."""
    fams: list[Family] = []
    table = f"table 'Each variant vs {baseline}'"
    if compare is not None and not compare.empty:
        fams += _per_metric(
            compare,
            "p",
            "H",
            table,
            "headline verdict of every variant vs the baseline on {M}, all "
            "targets (configuration level for training variants, case level "
            "for inference-only ones)",
        )
        fams += _per_metric(
            compare,
            "wilcoxon_p",
            "W",
            table,
            "case-level Wilcoxon (these trained models differ) of every variant "
            "vs the baseline on {M}, all targets",
        )
    if noninferiority is not None and not noninferiority.empty:
        fams += _per_metric(
            noninferiority,
            "p",
            "NI",
            "table 'Non-inferiority'",
            "one-sided non-inferiority tests on {M}, all pairs and targets",
        )
    if posthoc is not None and not posthoc.empty:
        for (target, metric), part in posthoc.groupby(["target", "metric"], sort=False):
            fams.append(
                Family(
                    f"P-{target}-{metric.upper()}",
                    "post-hoc table",
                    f"all unordered pairs on {target} {metric.upper()} (two-sided "
                    "case-level Wilcoxon)",
                    int(part["p"].notna().sum()),
                )
            )
    for (target, metric), m in (sig_maps or {}).items():
        k = len(m)
        fams.append(
            Family(
                f"S-{target}-{metric.upper()}",
                "significance map",
                f"all ordered pairs on {target} {metric.upper()} (one-sided case-level Wilcoxon)",
                k * (k - 1),
            )
        )
    if effects is not None and not effects.empty:
        fams.append(
            Family(
                "E",
                "table 'Main effect of each axis'",
                "every level vs its reference on every axis, target and metric",
                int(effects["p"].notna().sum()),
            )
        )
    if held_out is not None:
        e = held_out.ensemble_vs_single
        if not e.empty:
            fams.append(
                Family(
                    "T-ens",
                    "held-out table 'fold ensemble vs single fold models'",
                    "ensemble vs single fold models, every variant, target and metric",
                    int(e["p"].notna().sum()),
                )
            )
        if not held_out.configuration.empty:
            fams += _per_metric(
                held_out.configuration,
                "p",
                "T-cfg",
                "held-out table 'configuration level'",
                "test-set comparisons with the baseline on {M} at configuration level "
                "(training runs crossed with the test cases)",
            )
        if not held_out.compare.empty:
            fams += _per_metric(
                held_out.compare,
                "p",
                "T",
                f"held-out table 'each variant vs {baseline}'",
                "test-set comparisons with the baseline on {M} (paired t on the cases)",
            )
            fams += _per_metric(
                held_out.compare,
                "wilcoxon_p",
                "TW",
                f"held-out table 'each variant vs {baseline}'",
                "test-set case-level Wilcoxon of every variant vs the baseline on {M}",
            )
    return fams


def family_of(families: list[Family], key: str) -> Family | None:
    return next((f for f in families if f.key == key), None)
