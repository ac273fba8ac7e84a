"""What the report writes beside its page: tidy and cost tables as CSV and Parquet, the
comparisons as CSV, every display table as Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.report.analysis import Analysis
from ablate.report.tables import Table


def table_markdown(t: Table) -> str:
    def cell(i, j, value):
        text = str(value).replace("|", "\\|")
        return f"**{text}**" if t.bold is not None and bool(t.bold.iat[i, j]) else text

    lines = [
        f"### {t.title}",
        "",
        "| " + " | ".join(map(str, t.frame.columns)) + " |",
        "|" + "---|" * len(t.frame.columns),
    ]
    for i in range(len(t.frame)):
        lines.append("| " + " | ".join(cell(i, j, v) for j, v in enumerate(t.frame.iloc[i])) + " |")
    return "\n".join(lines + (["", t.note] if t.note else []))


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def table_latex(t: Table) -> str:
    def cell(i, j, value):
        text = _latex_escape(str(value))
        return rf"\textbf{{{text}}}" if t.bold is not None and bool(t.bold.iat[i, j]) else text

    cols = "l" + "r" * (len(t.frame.columns) - 1)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{_latex_escape(t.title)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\hline",
        " & ".join(_latex_escape(str(c)) for c in t.frame.columns) + r" \\",
        r"\hline",
    ]
    for i in range(len(t.frame)):
        lines.append(" & ".join(cell(i, j, v) for j, v in enumerate(t.frame.iloc[i])) + r" \\")
    return "\n".join(lines + [r"\hline", r"\end{tabular}", r"\end{table}"])


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as strings: axis values may mix types, which Parquet cannot store."""
    out = frame.copy()
    for col in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return out


def export(results, a: Analysis, tables: dict, out_dir: Path) -> None:
    frames = [("tidy", results.tidy), ("cost", results.cost)]
    if not results.test.empty:
        frames += [("test", results.test), ("test_cost", results.test_cost)]
    for name, frame in frames:
        frame.to_csv(out_dir / f"{name}.csv", index=False)
        _parquet_safe(frame).to_parquet(out_dir / f"{name}.parquet", index=False)
    if not a.compare.empty:
        a.compare.to_csv(out_dir / "comparisons.csv", index=False)
    flat = [t for section in tables.values() for t in section.values()]
    (out_dir / "tables.md").write_text("\n\n".join(map(table_markdown, flat)) + "\n")
    (out_dir / "tables.tex").write_text("\n\n".join(map(table_latex, flat)) + "\n")
