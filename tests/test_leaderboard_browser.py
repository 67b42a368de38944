"""The leaderboard page in a real browser: it loads without console errors and its headers sort.

Debian's headless `chromium`, driven by selenium through Debian's `chromium-driver`, opens
the page of `threecad leaderboard show --format html` from a loopback HTTP server that the
test starts. Skipped, with the reason, where the browser, the driver or selenium is absent.
"""
from __future__ import annotations

import functools
import struct
import threading
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_leaderboard import run_results, write_run
from threecad.cli import main
from threecad.leaderboard import init_table, submit_run

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402

from browser import chromium, needs_chromium  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = needs_chromium


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":  # the browser asks for it; a 404 would be a console error
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def page_url(tmp_path: Path):
    """The HTML view of a table with the paper's rows and one partial 3cad-paper run, served on loopback."""
    table = tmp_path / "results.csv"
    init_table(table)
    data = run_results(run_id="browser-run", protocol="3cad-paper")  # ACC and IS only: blanks elsewhere
    submit_run(write_run(tmp_path / "run", data), table)
    site = tmp_path / "site"
    site.mkdir()
    result = CliRunner().invoke(main, ["leaderboard", "show", "--csv", str(table), "--format", "html",
                                       "--out", str(site / "index.html")])
    assert result.exit_code == 0, result.output
    # a control page, to show that a script error does reach the browser log this test reads
    (site / "broken.html").write_text("<!DOCTYPE html><title>x</title><script>notDefined();</script>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser(tmp_path: Path):
    yield from chromium(tmp_path)


def _column(driver, section: str, col: int) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"section[id='{section}'] table tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-value") for r in rows]


def _header(driver, section: str, text: str):
    heads = driver.find_elements(By.CSS_SELECTOR, f"section[id='{section}'] table thead th")
    return [h for h in heads if h.text.strip() == text][0], [h.text.strip() for h in heads].index(text)


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(kind + body)
    return struct.unpack(">II", body[:8])


def test_page_loads_without_errors_and_headers_sort(browser, page_url, tmp_path):
    browser.get(page_url)
    section = "3cad-3cad-paper-p_auroc"
    WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.ID, section)))
    assert browser.title == "threecad leaderboard"

    # as rendered: sorted by Mean, complete entries first, the partial run last
    means = _column(browser, section, -1)
    assert len(means) == 12 and means[0] == "93.4" and float(means[-1]) == pytest.approx(50 * (0.96 + 0.915), abs=0.1)

    ai, ai_col = _header(browser, section, "AI")
    before = _column(browser, section, ai_col)
    ai.click()  # a numeric column sorts highest first
    after = _column(browser, section, ai_col)
    numbers = [float(v) for v in after if v]
    assert numbers == sorted((float(v) for v in before if v), reverse=True)
    assert after[-1] == "" and after != before  # the run has no AI value: blanks stay last
    assert "desc" in ai.get_attribute("class")
    ai.click()  # again: lowest first, blanks still last
    again = _column(browser, section, ai_col)
    assert [float(v) for v in again if v] == sorted(numbers) and again[-1] == ""

    method, method_col = _header(browser, section, "Method")
    method.click()  # a text column sorts A to Z
    names = _column(browser, section, method_col)
    assert names == sorted(names, key=str.casefold) and names[0] == "CFRG" and names[-1] == "UniAD"

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    table = browser.find_element(By.CSS_SELECTOR, f"section[id='{section}'] table")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", table)
    shot = tmp_path / "leaderboard.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert len(data) > 10_000  # a rendered page, not a blank image
    assert _png_size(data) == tuple(browser.execute_script("return [window.innerWidth, window.innerHeight];"))

    browser.get(page_url.replace("index.html", "broken.html"))
    control = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert len(control) == 1 and "notDefined" in control[0]["message"]
