"""The study report: compute (stats), render (plots), assemble (html).

`build_report` is imported on first use so that `ablate.run.tracking` can import `Results` without
loading matplotlib and seaborn.
"""

from ablate.report.collect import Results, synthetic_results

__all__ = ["Results", "build_report", "synthetic_results"]


def __getattr__(name: str):
    if name == "build_report":
        from ablate.report.html import build_report

        return build_report
    raise AttributeError(f"module 'ablate.report' has no attribute {name!r}")
