"""Browser checks: the HTML report and MLflow's UI as headless Chromium renders them.

Skipped with the install hint when chromium/chromedriver are absent (see tests/browser.py).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re

import browser as chromium
import numpy as np
import pandas as pd
import pytest
from browser import free_port, headless_chromium, mlflow_ui, require_chromium, wait_http
from PIL import Image

from ablate.report import build_report, synthetic_results
from ablate.report.collect import Results
from ablate.run.tracking import Tracker

REPORT_SECTIONS = (
    "The answer",
    "Summary",
    "Accuracy per target",
    "Cases",
    "Statistics",
    "Runtime and memory",
    "Methods",
)
# with a held-out test set the accuracy heading says "(cross-validation)"
DSC = {"plain": 0.8125, "residual": 0.875}  # exact in binary and short in the UI

RENDERED_REPORT = """
const visible = e => e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().height > 0;
const summary = document.querySelectorAll('ul.summary li');
const tables = [...document.querySelectorAll('table')];
const images = [...document.images];
return {
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  summaryItems: summary.length,
  summaryVisible: summary.length > 0 && visible(summary[0]),
  tables: tables.length,
  tablesWithRows: tables.filter(t => t.querySelectorAll('tbody tr').length > 0 && visible(t))
                        .length,
  images: images.length,
  decoded: images.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0
                              && visible(i)).length,
  fetched: performance.getEntriesByType('resource').map(r => r.name)
                      .filter(n => !n.startsWith('data:')),
};
"""


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with headless_chromium() as session:
        yield session


PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5"
    "CYII="
)  # a valid 1x1 PNG


def test_missing_chromium_skips_with_the_install_line(monkeypatch):
    monkeypatch.setattr(chromium, "CHROMIUM_CANDIDATES", ("/nonexistent/chromium",))
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        require_chromium()


def test_wait_http_gives_up_naming_the_server():
    with pytest.raises(TimeoutError, match="toy server did not answer"):
        wait_http(f"http://127.0.0.1:{free_port()}/", 0.5, what="toy server")


def test_a_broken_image_is_caught(browser, tmp_path):
    """The decode check can fail: one valid and one corrupt embedded PNG."""
    page = tmp_path / "page.html"
    page.write_text(
        f'<h2>Summary</h2><img src="data:image/png;base64,{PIXEL}" width="9">'
        '<img src="data:image/png;base64,AAAA" width="9">'
    )
    browser.get(page.as_uri())
    dom = browser.script(RENDERED_REPORT)
    assert dom["images"] == 2 and dom["decoded"] == 1


def _assert_real_screenshot(path, min_width: int) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{path}: not a real PNG"
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert pixels.shape[1] >= min_width
    ink = (pixels < 200).mean()  # MLflow's pages: ~1-2 %, the report: more; a blank page: 0
    assert pixels.std() > 8 and ink > 0.004, f"{path}: looks blank ({ink:.2%} dark pixels)"


def _with_held_out_test_set(results: Results) -> Results:
    """Add test-set rows: 2 fold models and their ensemble per variant, 6 cases."""
    rng = np.random.default_rng(0)
    rows, cost = [], []
    for variant in ("plain", "residual"):
        for model, fold in (("fold 0", 0), ("fold 1", 1), ("ensemble", -1)):
            for case, target, metric in itertools.product(
                [f"t{i}" for i in range(6)], ("kidney", "tumor"), ("dsc", "nsd")
            ):
                rows.append(
                    {
                        "variant": variant,
                        "arch": variant,
                        "model": model,
                        "fold": fold,
                        "seed": 0,
                        "case": case,
                        "target": target,
                        "metric": metric,
                        "value": rng.uniform(0.7, 0.9),
                    }
                )
        for model in ("single", "ensemble"):
            cost.append(
                {
                    "variant": variant,
                    "arch": variant,
                    "model": model,
                    "fold": -1,
                    "seed": 0,
                    "infer_seconds_per_case": 1.0,
                    "peak_infer_memory_mb": 9.0,
                }
            )
    return dataclasses.replace(results, test=pd.DataFrame(rows), test_cost=pd.DataFrame(cost))


# every section folded, then opened one by one by clicking its heading
OPEN_EVERY_SECTION = """
const details = [...document.querySelectorAll('section > details')];
details.forEach(d => d.open = false);
const content = d => d.querySelector('summary ~ *');
const seen = d => content(d) !== null && content(d).checkVisibility();
const folded = details.filter(seen).length;
details.forEach(d => d.querySelector('summary').click());
return {sections: details.length, visibleWhenFolded: folded,
        opened: details.filter(d => d.open && seen(d)).length};
"""
# pixels of each image that are not white, drawn on a canvas (data: URLs do not taint it)
INK = """
return [...document.images].map(img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const px = g.getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] < 600) ink++;
  return ink / (px.length / 4);
});
"""
# the first number of each cell of column `col` in table `id`, in the rows' shown order
COLUMN = """
const t = document.getElementById(arguments[0]);
return [...t.tBodies[0].rows].map(r => parseFloat(r.cells[arguments[1]].textContent));
"""


@pytest.mark.slow
def test_report_renders_opens_sorts_and_every_image_decodes(browser, tmp_path):
    from test_report_pictures import write_case_study

    (tmp_path / "cases").mkdir()
    case_results, files, _ = write_case_study(tmp_path / "cases")
    results = synthetic_results(
        {"arch": ["plain", "residual"]}, n_cases=12, folds=2, effects={"residual": 0.05}, epochs=3
    )
    results = _with_held_out_test_set(results)
    meta = {
        "name": "browser check",
        "baseline": "plain",
        "nsd_tolerance_mm": {"kidney": 1.0, "tumor": 2.0},
    }
    page = build_report(results, meta, tmp_path / "report")
    _check_rendered_report(browser, page, tmp_path, filter_box=True)
    assert "Held-out test set" in browser.script(RENDERED_REPORT)["headings"]
    meta = {"name": "pictures", "baseline": "plain"}
    page = build_report(case_results, meta, tmp_path / "pictures", cases=files)
    _check_rendered_report(browser, page, tmp_path, filter_box=False)
    pictures = browser.script("return document.querySelectorAll('figure[id^=case-] img').length")
    assert pictures >= 2


def _check_rendered_report(browser, page, tmp_path, filter_box: bool) -> None:
    served_images = len(re.findall(r"<img\b", page.read_text(encoding="utf-8")))
    browser.get(page.absolute().as_uri())
    rendered = browser.wait_for(
        "return document.readyState === 'complete' && [...document.images].every(i => i.complete)",
        30,
        "report",
    )
    assert rendered
    opened = browser.script(OPEN_EVERY_SECTION)
    assert opened["sections"] >= 7 and opened["visibleWhenFolded"] == 0
    assert opened["opened"] == opened["sections"], opened
    dom = browser.script(RENDERED_REPORT)
    assert all(any(h.startswith(s) for h in dom["headings"]) for s in REPORT_SECTIONS), dom[
        "headings"
    ]
    assert dom["summaryItems"] >= 1 and dom["summaryVisible"]
    empty = browser.script(
        "return [...document.querySelectorAll('table')].filter(t => !t.querySelector('tbody tr'))"
        ".map(t => t.id)"
    )
    assert dom["tables"] >= 4 and dom["tablesWithRows"] == dom["tables"], empty
    assert served_images >= 5 and dom["images"] == served_images
    assert dom["decoded"] == served_images, f"{served_images - dom['decoded']} image(s) broken"
    assert dom["fetched"] == [], "the report must not load anything"
    ink = browser.script(INK)
    assert min(ink) > 0.005, f"an image is blank: ink shares {ink}"
    _sort_and_filter(browser, filter_box)
    shot = browser.screenshot(tmp_path / f"{page.parent.name}.png")
    _assert_real_screenshot(shot, min_width=1000)


def _sort_and_filter(browser, filter_box: bool) -> None:
    """Click the header of a numeric column of the per-case table: ascending, then descending;
    type in its filter box (tables past 8 rows have one): only matching rows stay."""
    ident, col = browser.script(
        "const t = [...document.querySelectorAll('table.sortable')]"
        ".find(t => t.id.includes('every-case'));"
        "return [t.id, [...t.tHead.rows[0].cells].findIndex(c => c.textContent.includes('(%)'))];"
    )
    before = browser.script(COLUMN, ident, col)
    header = f"document.getElementById('{ident}').tHead.rows[0].cells[{col}]"
    browser.script(f"{header}.click()")
    ascending = browser.script(COLUMN, ident, col)
    assert (
        ascending == sorted(before)
        and browser.script(f"return {header}.getAttribute('aria-sort')") == "ascending"
    )
    browser.script(f"{header}.click()")
    assert browser.script(COLUMN, ident, col) == sorted(before, reverse=True)
    if not filter_box:
        return
    shown = browser.script(
        "const box = document.querySelector(`input.filter[data-table='${arguments[0]}']`);"
        "const t = document.getElementById(arguments[0]);"
        "const first = t.tBodies[0].rows[0].cells[0].textContent;"
        "box.value = first; box.dispatchEvent(new Event('input'));"
        "return [...t.tBodies[0].rows].filter(r => r.style.display !== 'none')"
        ".map(r => r.cells[0].textContent);",
        ident,
    )
    assert len(shown) == 1, shown


@pytest.mark.slow
def test_the_experiment_opens_on_its_runs(browser, tmp_path):
    """The link ablate prints (`experiment_link`: the experiment's default page, no tab named)
    opens on the runs table: the parent and its children without a click, axis values and DSC
    as columns, the Datasets column; not the GenAI traces overview. MLflow 3.17's UI decides its
    landing view by a browser-wide workflow switch (default GenAI) and ignores the experiment
    kind tag, which ablate sets anyway (checked in test_tracking.py), so the link names the
    view."""
    from ablate.run.tracking import DatasetRecord, experiment_link

    uri, tracker, run_ids = _tiny_store(tmp_path)
    tracker.log_datasets(
        tracker.parent_run_id,
        [DatasetRecord("synthetic-kits", "d1g3st", tmp_path, "source", {"cases": 6})],
    )
    tracker.set_runs_view(["arch"], ["dsc_kidney", "nsd_kidney"])
    with mlflow_ui(uri, timeout_s=120) as base:
        browser.get(experiment_link(base, tracker.experiment_id))
        names = ["browser_study", *run_ids]
        browser.wait_for(
            "return arguments[0].every(n => document.body.innerText.includes(n))",
            60,
            f"parent and child runs {names} without a click",
            names,
        )
        assert "/traces" not in browser.script("return location.href")
        text = browser.wait_for(
            "const t = document.body.innerText; return t.includes('dsc_kidney') && t",
            30,
            "the DSC column",
        )
        assert "axis.arch" in text and "residual" in text  # the axis column and its values
        assert "0.875" in text and "synthetic-kits" in text  # a DSC value, the Datasets column
        assert text.index("eval residual") < text.index("eval plain")  # best DSC first
        shot = browser.screenshot(tmp_path / "default.png", full_page=False)
        _assert_real_screenshot(shot, min_width=1000)


def _tiny_store(tmp_path) -> tuple[str, Tracker, dict[str, str]]:
    """A study parent run with two finished eval child runs; no network is trained."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "browser_study", tmp_path / "artifacts")
    tracker.start_study({"study": "browser_study"}, {}, axes=["arch"])
    run_ids = {}
    for arch, dsc in DSC.items():
        name = f"eval {arch} fold 0"
        run_id = tracker.start_job(
            f"eval-{arch}", name, "eval", {"fold": 0, "seed": 0}, {}, variant={"arch": arch}
        )
        tracker.log_metrics(run_id, {"dsc_kidney": dsc, "nsd_kidney": dsc - 0.05})
        tracker.end_job(run_id, ok=True)
        run_ids[name] = run_id
    tracker.end_study(ok=True)
    return uri, tracker, run_ids


@pytest.mark.slow
def test_mlflow_ui_lists_the_study_its_runs_and_their_dsc(browser, tmp_path):
    uri, tracker, run_ids = _tiny_store(tmp_path)
    with mlflow_ui(uri, timeout_s=120) as base:
        experiment = f"{base}/#/experiments/{tracker.experiment_id}"
        # MLflow 3 opens experiments in its GenAI view; the runs table is the ML view.
        browser.get(f"{experiment}/runs?workflowType=machine_learning")
        expanders = "document.querySelectorAll('button[data-component-id*=runnamecellrenderer]')"
        browser.wait_for(
            f"return document.body.innerText.includes('browser_study') && {expanders}.length > 0",
            60,
            "the study's parent run in the runs table",
        )
        browser.script(f"{expanders}.forEach(b => b.click())")  # child runs sit under the parent
        names = list(run_ids)
        browser.wait_for(
            "return arguments[0].every(n => document.body.innerText.includes(n))",
            30,
            f"child runs {names}",
            names,
        )
        shot = browser.screenshot(tmp_path / "runs.png", full_page=False)
        _assert_real_screenshot(shot, min_width=1000)

        for (name, run_id), dsc in zip(run_ids.items(), DSC.values(), strict=True):
            browser.get(f"{experiment}/runs/{run_id}")
            text = browser.wait_for(
                "const t = document.body.innerText; return t.includes('dsc_kidney') && t",
                60,
                f"metrics of run {name!r}",
            )
            assert name in text and "browser_study" in text  # run and its parent
            assert re.search(rf"dsc_kidney\s+{dsc}\b", text), f"dsc_kidney {dsc} not listed"
