"""The HTML report: self-contained, escaped, with its summary, tables, figures and exports."""

import re

import pandas as pd
import pytest

from ablate.errors import ConfigError
from ablate.report import build_report, synthetic_results
from ablate.report.collect import Results

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    axes = {"arch": ["plain", "residual", EVIL]}
    results = synthetic_results(axes, n_cases=10, effects={"residual": 0.05}, epochs=3)
    tidy = results.tidy.copy()
    tidy.loc[tidy["case"] == "case_00003", "case"] = f"case_{EVIL}"
    results = Results(tidy, results.cost, results.curves, results.axes, [f"job {EVIL}"])
    meta = {
        "name": "demo <study>",
        "baseline": "plain",
        "config_yaml": f"note: {EVIL}\n",
        "plan": {"patch_size": [64, 128, 128]},
        "environment": {"torch": "2.13.0+cpu"},
        "nsd_tolerance_mm": {"kidney": 1.0, "tumor": 2.0},
        "tracking_uri": "file:./mlruns",
    }
    out = tmp_path_factory.mktemp("report")
    path = build_report(results, meta, out)
    return path, path.read_text(encoding="utf-8")


def test_summary_tables_and_sections(report):
    _, page = report
    summary = page.split("<h2>Summary</h2>")[1].split("</section>")[0]
    answer = page.split("<h2>The answer</h2>")[1].split("</section>")[0]
    assert page.index("<h2>The answer</h2>") < page.index("<h2>Summary</h2>")
    assert "in words" in answer and "<figure>" in answer  # the forest plots and sentences
    assert "significantly better after Holm (configuration level)" in answer
    assert "residual vs plain, kidney DSC (training): mean paired difference +" in summary
    assert "(configuration level, family H-DSC): significantly better" in summary
    assert "Case level, these trained models: Wilcoxon" in summary
    for heading in (
        "kidney: accuracy per variant",
        "Each variant vs plain",
        "Friedman",
        "Runtime and memory",
        "KiTS composite Dice",
        "Methods",
        "NSD tolerance per target: kidney: 1.0 mm, tumor: 2.0 mm",
    ):
        assert heading in page
    assert "mean ± sd" in page and "median [IQR]" in page and "<b>" in page


def test_every_figure_is_embedded_and_nothing_is_fetched(report):
    _, page = report
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    # forest per target (2), 2 targets x 2 metrics violins, significance maps, rank stability,
    # cost bars, pareto, curves
    assert len(sources) == 11
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page)
    # one inline script (sorting, filtering), nothing loaded
    assert "<link" not in page and page.count("<script") == 1 and "<script src" not in page


def test_table_of_contents_folding_sections_and_sortable_tables(report):
    _, page = report
    toc = page.split('<nav class="toc"')[1].split("</nav>")[0]
    sections = re.findall(r'<section id="([^"]+)"><details( open)?>', page)
    assert [s for s, _ in sections] == re.findall(r'href="#([^"]+)"', toc)
    assert {"answer", "summary", "cases", "statistics", "methods"} <= {s for s, _ in sections}
    assert dict(sections)["answer"] == " open"
    tables = re.findall(r'<table class="sortable" id="([^"]+)"', page)
    assert len(tables) == len(set(tables)) == page.count("<table")
    filters = re.findall(r'<input type="search" class="filter" data-table="([^"]+)"', page)
    assert filters and set(filters) <= set(tables)  # tables past 8 rows get a filter box


def test_strings_from_data_are_escaped(report):
    _, page = report
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # variant label, config, missing job
    assert "demo &lt;study&gt;" in page


def test_exports_beside_the_page(report):
    path, _ = report
    folder = path.parent
    for name in ("tidy.csv", "tidy.parquet", "cost.csv", "cost.parquet", "tables.md", "tables.tex"):
        assert (folder / name).stat().st_size > 0
    tidy = pd.read_parquet(folder / "tidy.parquet")
    assert f"case_{EVIL}" in set(tidy["case"]) and len(tidy) == 3 * 10 * 2 * 2
    assert "| variant |" in (folder / "tables.md").read_text()
    assert r"\begin{tabular}" in (folder / "tables.tex").read_text()


def test_unknown_baseline_and_missing_name_are_config_errors(tmp_path):
    results = synthetic_results(n_cases=6)
    with pytest.raises(ConfigError, match="baseline 'nope' is not a variant"):
        build_report(results, {"name": "s", "baseline": "nope"}, tmp_path)
    with pytest.raises(ConfigError, match="'name' is missing"):
        build_report(results, {}, tmp_path)


def _degenerate(n_variants: int, n_cases: int) -> Results:
    """Tiny demo-like results: few cases, NaN distances, `empty` flags, no cost, no curves."""
    axes = {"arch": ["plain", "residual", "preact"][:n_variants]}
    base = synthetic_results(axes, n_cases=n_cases, folds=2)
    tidy = base.tidy
    extra = tidy[tidy["metric"] == "dsc"].assign(metric="empty", value=0.0)
    extra.loc[extra.index[:1], "value"] = 1.0  # one case with an empty reference
    hd95 = tidy[tidy["metric"] == "dsc"].assign(metric="hd95", value=float("nan"))
    tidy = pd.concat([tidy, extra, hd95], ignore_index=True)
    tidy.loc[tidy.index[0], "value"] = float("nan")
    return Results(tidy, base.cost.iloc[:0], base.curves.iloc[:0], base.axes, ["job x"])


@pytest.mark.parametrize("n_variants, n_cases", [(1, 3), (2, 3), (3, 4)])
def test_degenerate_studies_still_report(tmp_path, n_variants, n_cases):
    results = _degenerate(n_variants, n_cases)
    page = build_report(results, {"name": "tiny", "missing": ["job x"]}, tmp_path).read_text()
    assert "<h2>Summary</h2>" in page and "1 job(s) have no results" in page
    assert page.count("job x") == 1  # missing jobs from meta and Results are not listed twice
    if n_variants > 1:
        assert "too few for a test" in page
    empty = pd.read_csv(tmp_path / "tidy.csv")
    assert len(empty) == len(results.tidy)


def test_paper_layouts_are_named_and_common_cases_are_counted_per_metric():
    """The demo's tumour: DSC/NSD on all 12 cases, |RVD| on the 9 with tumour, HD95/ASSD on
    none; the note counted 9 for every metric before."""
    from test_report_figures import _demo_with_a_tumour_nobody_learned

    from ablate.report.analysis import analyse
    from ablate.report.html import build_tables

    results, baseline = _demo_with_a_tumour_nobody_learned()
    tidy = results.tidy
    rvd = (tidy["target"] == "tumor") & (tidy["metric"] == "rvd")
    empty_ref = tidy["case"].isin(["case_00000", "case_00005", "case_00007"])
    tidy.loc[rvd & empty_ref, "value"] = float("nan")  # RVD is NaN on an empty reference
    a = analyse(results, {"name": "t", "baseline": baseline}, n_boot=50)
    tables = build_tables(a)["accuracy"]
    assert "(DSC, NSD: 12 cases; HD95, ASSD: 0 cases; |RVD|: 9 cases (distances" in (
        tables["tumor"].note
    )
    assert "DSC, NSD, HD95, ASSD, |RVD|: 12 cases;" in tables["kidney"].note
    assert (
        tables["table4"].title == "Cross-validation results (layout of Zhou 2021, FLARE21, Table 4)"
    )
    assert tables["kits"].title == "KiTS composite Dice (layout of Isensee 2019, KiTS19, Table 1)"
