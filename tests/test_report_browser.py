"""htsr report in a real browser: headless Chromium with networking cut off opens the file, draws every chart with
no console error and no request, the chart and the table have one mark/row per layer, clicking a layer (in the
table or the chart) shows its ESD. Skipped, with the reason, where chromium/chromedriver/selenium are missing.

``HTSR_REPORT_SCREENSHOT=docs/img/report.png`` also writes the screenshot of the MiniLM report used in the docs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import report_browser as B
from tests import report_fixtures as F

pytestmark = pytest.mark.skipif(B.missing() is not None, reason=B.missing() or "")

MARKS = "#{} g.mark-symbol.role-mark path"


@pytest.fixture(scope="module")
def driver():
    d = B.start()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import torch

    from htsr.spectra.analysis import analyze
    from tests.conftest import heavy_tailed

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sd = {f"blocks.{i}.weight": heavy_tailed(160 + 10 * i, 80, seed=i) for i in range(5)}
        sd["tiny.weight"] = torch.ones(3, 2)
        an = analyze(sd)
    finally:
        torch.set_num_threads(n)
    d = tmp_path_factory.mktemp("browser")
    an.save(d / "an.json", include_evals=True)
    return an, d


def _open(driver, path) -> dict:
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get_log("performance")
    state = B.open_report(driver, path)
    assert state["errors"] == [], state["errors"]
    return state


def _clean(driver) -> None:
    assert B.severe_logs(driver) == []
    assert B.requests(driver) == []


def _wait(driver, js: str, timeout: float = 10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(0.1)
    raise TimeoutError(js)


def test_analysis_report_renders_and_links_layers(driver, small, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from htsr.report import write_report

    an, d = small
    out = tmp_path / "r.html"
    write_report(d / "an.json", out)
    state = _open(driver, out)
    fitted = [r["name"] for r in an.rows if r["status"] == "success"]
    assert len(fitted) == 5
    assert state["shown"] == fitted[0]
    assert len(driver.find_elements(By.CSS_SELECTOR, MARKS.format("alpha"))) == len(fitted)
    rows = driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")
    assert len(rows) == len(an.rows)
    # the ESD of the first fitted layer is drawn: histogram bars and the CCDF line
    assert driver.find_element(By.CSS_SELECTOR, "#esd h3").text == fitted[0]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#esd g.mark-rect.role-mark path")) > 5
    # click a table row -> its ESD
    rows[3].click()
    _wait(driver, f"return window.htsrReport.shown === {fitted[3]!r}")
    _wait(driver, f"return document.querySelector('#esd h3').textContent === {fitted[3]!r}")
    n3 = driver.execute_script("return window.htsrReport.views.esd.data('esd').length")
    assert n3 > 10
    # click a point of the alpha chart -> its ESD
    point = driver.find_elements(By.CSS_SELECTOR, MARKS.format("alpha"))[1]
    ActionChains(driver).move_to_element(point).click().perform()
    _wait(driver, f"return window.htsrReport.shown === {fitted[1]!r}")
    assert "sel" in rows[1].get_attribute("class")
    # sort by alpha (ascending), then filter
    header = driver.find_element(By.CSS_SELECTOR, "#table th[data-key='alpha']")
    header.click()
    first = driver.find_element(By.CSS_SELECTOR, "#table tbody tr td").text
    assert first == min(fitted, key=lambda n: an[n]["alpha"])
    box = driver.find_element(By.CSS_SELECTOR, "#table .controls input")
    box.send_keys("blocks.2")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")) == 1
    _clean(driver)


@pytest.mark.parametrize("kind", ["pruning", "tempbalance", "tinymem", "mdtree-diagnosis", "mdtree", "comparison"])
def test_method_reports_render(driver, small, tmp_path, kind):
    from selenium.webdriver.common.by import By

    from htsr.report import write_report

    _, d = small
    src = {"pruning": lambda: F.pruning_dir(tmp_path / "p"), "tempbalance": lambda: F.tempbalance_dir(tmp_path / "t"),
           "tinymem": lambda: F.tinymem_dir(tmp_path / "m"),
           "mdtree-diagnosis": lambda: F.mdtree_diagnosis(tmp_path / "d.json"),
           "mdtree": lambda: F.mdtree_tree(tmp_path / "tree.json"), "comparison": lambda: d / "an.json"}[kind]()
    out = tmp_path / "r.html"
    rep = write_report(src, out, base=d / "an.json" if kind == "comparison" else None)
    assert rep.kind == kind
    _open(driver, out)
    charts = [s["id"] for s in rep.sections if s["type"] in ("chart", "esd")]
    views = driver.execute_script("return Object.keys(window.htsrReport.views)")
    assert sorted(views) == sorted(charts)
    for c in charts:
        assert driver.find_elements(By.CSS_SELECTOR, f"#{c} svg.marks"), c
    if kind == "pruning":
        assert len(driver.find_elements(By.CSS_SELECTOR, MARKS.format("metric"))) == 7  # 8 layers, 1 without metric
    if kind == "tinymem":
        assert len(driver.find_elements(By.CSS_SELECTOR, MARKS.format("scatter"))) == 3
    if kind == "comparison":
        assert len(driver.find_elements(By.CSS_SELECTOR, MARKS.format("alpha"))) == 10  # 5 layers x 2 models
    _clean(driver)


def test_minilm_report_screenshot(driver, minilm_dir, tmp_path):
    from selenium.webdriver.common.by import By

    from htsr.report import write_report

    out = tmp_path / "minilm.html"
    rep = write_report(minilm_dir, out)
    _open(driver, out)
    n_fit = sum(r.get("status") == "success" for r in next(s for s in rep.sections if s["id"] == "table")["rows"])
    assert len(driver.find_elements(By.CSS_SELECTOR, MARKS.format("alpha"))) == n_fit
    _clean(driver)
    shot = os.environ.get("HTSR_REPORT_SCREENSHOT")
    path = Path(shot) if shot else tmp_path / "report.png"
    driver.set_window_size(1400, 1900)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def test_a_hostile_layer_name_is_shown_as_text(driver, small, tmp_path):
    from htsr.report import write_report
    from htsr.spectra.analysis import Analysis

    _, d = small
    an = Analysis.load(d / "an.json")
    evil = '<img src=x onerror="window.pwned=1"></script><script>window.pwned=2</script>'
    old = an.rows[0]["name"]
    an.rows[0]["name"] = evil
    an.evals[evil] = an.evals.pop(old)
    out = tmp_path / "e.html"
    write_report(an, out)
    _open(driver, out)
    assert driver.execute_script("return window.pwned === undefined")
    assert driver.execute_script("return document.querySelector('#table tbody td').textContent") == evil
    assert driver.execute_script("return document.querySelectorAll('main img').length") == 0
    _clean(driver)
