"""RUN/report.html: a real run's page holds its table, curves whose areas are the recorded
metrics, its pictures (every one a PNG that decodes) and the leaderboard variant submit
would give it; it is built, with a note, when the dataset root is gone, a category failed,
the run is unfinished or the card no longer builds; a folder that is not a run is one line.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_tiny_dataset
from threecad.cli import main
from threecad.harness.predictions import file_xxh3
from threecad.harness.runmanifest import RunManifest
from threecad.leaderboard.runs import rows_from_run

CATEGORIES = ("ACC", "CS")


def bench(base: Path, method: str = "padim", *extra: str) -> tuple[Path, Path]:
    """A real run of `method`'s cpu preset on the tiny dataset (seconds); (root, run)."""
    root = make_tiny_dataset(base / "data")
    run = base / "run"
    result = CliRunner().invoke(main, ["bench", "--method", method, "--root", str(root), "--preset", "cpu",
                                       "--set", "image_size=64", *extra, "--device", "cpu", "--eval-size", "64",
                                       "--out", str(run)], env={"THREECAD_CACHE": str(base / "cache")})
    assert result.exit_code == 0, result.output
    return root, run


def report(run: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["report", str(run), *args])
    assert result.exit_code == code, result.output
    return result.output


class Page(HTMLParser):
    """What the tests read of a page: its images, the metrics table's rows, its text and links."""

    def __init__(self, html: str):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.rows: list[list[str]] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self._in_metrics = self._in_body = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table" and a.get("id") == "metrics":
            self._in_metrics = True
        if self._in_metrics and tag == "tbody":
            self._in_body = True
        if self._in_body and tag == "tr":
            self.rows.append([])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_metrics = self._in_body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_body and self.rows and data.strip():
            self.rows[-1].append(data.strip())

    @property
    def words(self) -> str:
        return " ".join("".join(self.text).split())


def decode(img: dict[str, str]) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True)))
    picture.load()
    return picture


@pytest.fixture(scope="module")
def padim_run(tmp_path_factory):
    return bench(tmp_path_factory.mktemp("report"))


def copy_run(padim_run, tmp_path: Path) -> Path:
    shutil.copytree(padim_run[1], tmp_path / "run")
    return tmp_path / "run"


def edit_results(run: Path, change) -> None:
    path = run / "results.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_the_page_shows_the_run_and_is_listed_in_its_manifest(padim_run, tmp_path):
    root, source = padim_run
    run = copy_run(padim_run, tmp_path)
    assert report(run) == f"report written: {run / 'report.html'}\n"
    html = (run / "report.html").read_text()
    page = Page(html)
    results = json.loads((run / "results.json").read_text())

    assert [r[0] for r in page.rows] == [*CATEGORIES, "Mean"]
    for row, key in zip(page.rows, CATEGORIES):
        assert row[1:] == [f"{100 * results['categories'][key]['metrics'][m]:.1f}"
                           for m in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")]
    assert page.rows[-1][1] == f"{100 * results['mean']['i_auroc']:.1f}"

    alts = [img["alt"] for img in page.images]
    assert alts == [f"{c}: {what}" for c in CATEGORIES for what in (
        "ROC and PRO curves", "highest-scored good and lowest-scored defective test images")]
    for img in page.images:
        assert decode(img).size[0] > 100
    pictures = [img for img in page.images if "hardest" in img["alt"] or "highest" in img["alt"]]
    assert [base64.b64decode(p["src"].split(",", 1)[1]) for p in pictures] == [
        (run / "pictures" / f"{c}.png").read_bytes() for c in CATEGORIES]  # the run's own pictures, as they are
    assert all(u.startswith(("data:", "#")) for u in page.urls)  # self-contained: nothing fetched
    assert "<script" not in html

    variant = rows_from_run(run).rows["variant"].iloc[0]
    assert variant == "cpu+image_size=64"
    assert f"would enter it as PaDiM, variant {variant}" in page.words
    assert "No loss history: PaDiM does not train in epochs." in page.words
    assert "backbone efficientnet_lite0" in page.words  # the model card's parts
    assert "left out" not in page.words and "unfinished" not in page.words

    manifest = RunManifest(run).read()
    assert manifest["report.html"] == file_xxh3(run / "report.html")
    assert RunManifest(run).check_all() == []


@pytest.mark.parametrize("mode, tolerance", [("exact", 1e-12), ("streaming", 1e-4)])
def test_the_curves_areas_are_the_recorded_metrics(padim_run, mode, tolerance):
    """In exact mode the areas are the recorded numbers; a run whose metrics streamed gets
    binned pixel curves (bounded memory), as close as the streaming bound."""
    from threecad.report.curves import GroundTruth, category_curves

    root, run = padim_run
    results = json.loads((run / "results.json").read_text())
    truth = GroundTruth(root)
    for abbr in CATEGORIES:
        record = {**results["categories"][abbr], "metrics_mode": mode}
        found = category_curves(run, record, "standard", abbr, truth)
        metrics = record["metrics"]
        assert found.notes == []
        assert found.image_roc.area == pytest.approx(metrics["i_auroc"], abs=1e-12)
        assert found.pixel_roc.area == pytest.approx(metrics["p_auroc"], abs=tolerance)
        assert found.pro.area == pytest.approx(metrics["au_pro"], abs=tolerance)
        for curve in (found.image_roc, found.pixel_roc, found.pro):
            assert curve.x[0] == 0 and curve.x[-1] == pytest.approx(1) and (curve.x[1:] >= curve.x[:-1]).all()


def test_a_missing_dataset_root_leaves_out_the_pixel_curves_with_a_note(padim_run, tmp_path):
    run = copy_run(padim_run, tmp_path)
    gone = tmp_path / "moved-away"
    edit_results(run, lambda d: d["dataset"].update(root=str(gone)))
    report(run)
    page = Page((run / "report.html").read_text())
    assert [r[0] for r in page.rows] == [*CATEGORIES, "Mean"]
    assert page.words.count("pixel ROC and PRO curves left out: the dataset root cannot be read") == 2
    assert str(gone) in page.words
    for img in page.images:  # the image ROC is still drawn, and the pictures are the run's
        decode(img)
    assert len(page.images) == 4


def test_a_mask_that_is_not_the_one_the_run_saw_is_not_used(padim_run, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(padim_run[0], root)
    mask = next((root / "Aluminum_Camera_Cover" / "ground_truth").rglob("*.png"))
    Image.new("L", (64, 64), 255).save(mask)
    report(padim_run[1], "--root", str(root), "--out", str(tmp_path / "r.html"))
    words = Page((tmp_path / "r.html").read_text()).words
    assert "is not the file the run saw" in words and words.count("left out") == 1  # ACC only


def test_a_failed_category_and_an_unfinished_run_are_said(padim_run, tmp_path):
    run = copy_run(padim_run, tmp_path)
    (run / "failures").mkdir()
    (run / "failures" / "CS.txt").write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")

    def fail(d):
        d["categories"]["CS"] = {"status": "failed", "error": "RuntimeError: out of memory",
                                 "traceback": "failures/CS.txt"}
        del d["finished"]
    edit_results(run, fail)
    report(run)
    page = Page((run / "report.html").read_text())
    assert page.rows == [page.rows[0], ["CS", "failed: RuntimeError: out of memory"], page.rows[2]]
    assert [page.rows[0][0], page.rows[2][0]] == ["ACC", "Mean"]
    words = page.words
    assert "This run is unfinished" in words
    assert "would refuse this run: " in words and "has no 'finished' time" in words
    assert "it would be entered as PaDiM, variant cpu+image_size=64" in words
    assert "Failed: RuntimeError: out of memory" in words and "The end of failures/CS.txt" in words


def test_a_card_that_cannot_be_built_is_shown_as_its_error(padim_run, tmp_path):
    run = copy_run(padim_run, tmp_path)
    edit_results(run, lambda d: d["overrides"].update(no_such_field=3))
    report(run)
    words = Page((run / "report.html").read_text()).words
    assert "The model card cannot be built: ThreecadError: unknown config key 'no_such_field'" in words


def test_bench_writes_the_report_and_lists_it_in_the_manifest(padim_run):
    run = padim_run[1]
    assert [r[0] for r in Page((run / "report.html").read_text()).rows] == [*CATEGORIES, "Mean"]
    assert RunManifest(run).read()["report.html"] == file_xxh3(run / "report.html")


def test_out_elsewhere_leaves_the_run_untouched(padim_run, tmp_path):
    run = padim_run[1]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    report(run, "--out", str(tmp_path / "elsewhere.html"))
    assert Page((tmp_path / "elsewhere.html").read_text()).rows[-1][0] == "Mean"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: p])
def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, make):
    out = report(make(tmp_path), code=2)
    assert out.count("\n") == 1 and re.match(r"error: .* is not a run directory \(no run\.json\)", out)


def test_loss_curves_are_embedded_or_drawn_from_the_csv(tmp_path):
    _, run = bench(tmp_path, "fastflow", "--set", "epochs=2", "--category", "ACC")
    report(run)
    [loss] = [img for img in Page((run / "report.html").read_text()).images if img["alt"] == "ACC: loss per epoch"]
    assert base64.b64decode(loss["src"].split(",", 1)[1]) == (run / "pictures" / "ACC-losses.png").read_bytes()

    edit_results(run, lambda d: d["categories"]["ACC"].update(loss_curve=None))  # as after --pictures 0
    report(run)
    [drawn] = [img for img in Page((run / "report.html").read_text()).images if img["alt"] == "ACC: loss per epoch"]
    assert decode(drawn).size[0] > 300 and drawn["src"] != loss["src"]
