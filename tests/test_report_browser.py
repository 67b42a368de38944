"""A run's report.html in a real browser: it loads from the file alone without console errors,
every image decodes, and the metrics table has one row per category and the Mean.

Debian's headless `chromium`, driven by selenium through Debian's `chromium-driver`, opens the
page as a file:// URL, as a person opens it from the run folder. Skipped, with the reason,
where the browser, the driver or selenium is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_report import CATEGORIES, bench, report

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402

from browser import chromium, needs_chromium  # noqa: E402

# every <img>: loaded, and decoded to a picture of some width
DECODED = "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"

pytestmark = needs_chromium


@pytest.fixture
def browser(tmp_path: Path):
    yield from chromium(tmp_path)


def test_the_report_loads_without_errors_and_every_image_decodes(browser, tmp_path):
    _, run = bench(tmp_path)
    report(run)
    browser.get((run / "report.html").as_uri())
    assert browser.title.startswith("threecad report: padim-cpu-")
    rows = browser.find_elements(By.CSS_SELECTOR, "table#metrics tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == [*CATEGORIES, "Mean"]
    images = browser.execute_script(DECODED)
    assert len(images) == 2 * len(CATEGORIES)
    assert [alt for alt, complete, width in images if not (complete and width > 0)] == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    # a control page: a PNG that does not decode and a script error, caught by the same checks
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><title>x</title><link rel="icon" href="data:,">'
                      '<img alt="bad" src="data:image/png;base64,iVBORw0KGgoAAAA="><script>notDefined();</script>')
    browser.get(broken.as_uri())
    assert [(alt, width) for alt, _, width in browser.execute_script(DECODED)] == [("bad", 0)]
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert len(severe) == 1 and "notDefined" in severe[0]
