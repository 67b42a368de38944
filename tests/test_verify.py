"""`threecad verify`: decoding, mask checks, Table 1 comparison, manifest, CLI behaviour."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_tiny_dataset
from threecad import catalog
from threecad.cli import main
from threecad.errors import DatasetError, ThreecadError
from threecad.manifest import MANIFEST_NAME, read_manifest
from threecad.verify import verify, write_manifest_for

CS = "Copper_Stator"


def _kinds(report, severity="error"):
    return sorted({p.kind for p in report.problems if p.severity == severity})


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_healthy_root_counts_and_no_changes(tiny_root):
    before = _tree_state(tiny_root)
    report = verify(tiny_root, workers=2)
    assert report.ok and report.dataset == "3cad"
    c = report.counts.set_index("category")
    assert c.loc["ACC", ["train_good", "test_good", "test_defect", "defect_types"]].tolist() == [6, 3, 6, 2]
    assert report.files_checked == 2 * (6 + 3 + 6 + 6)  # images + masks
    assert _tree_state(tiny_root) == before  # verify changes nothing


def test_table1_subset_is_a_warning_and_strict_an_error(tiny_root):
    report = verify(tiny_root)
    assert report.compared_to_table1 and report.ok
    assert "table1_subset" in _kinds(report, "warning")  # ACC: fewer of everything
    assert "table1_mismatch" in _kinds(report, "warning")  # CS: 2 defect types where Table 1 has 1
    assert {p.path.split("/")[-1] for p in report.problems if p.kind == "missing_category"} == {
        c.folder for c in catalog.THREECAD if c.abbreviation not in ("ACC", "CS")}
    strict = verify(tiny_root, strict=True)
    assert not strict.ok
    assert {"table1_subset", "table1_mismatch", "missing_category"} <= set(_kinds(strict))


def test_counts_equal_to_table1_pass_strict(tiny_root, monkeypatch):
    fake = catalog.table1().copy()
    fake.loc["ACC", ["train_good", "test_good", "test_defect", "defect_types"]] = [6, 3, 6, 2]
    monkeypatch.setattr(catalog, "table1", lambda: fake)
    report = verify(tiny_root, strict=True, categories=["ACC"])
    assert report.ok, report.problems
    assert report.counts.loc[0, "matches_table1"]
    assert report.counts.loc[0, "table1_train_good"] == 6


def test_synthetic_marker_controls_the_comparison(tiny_root):
    (tiny_root / "synthetic.json").write_text(json.dumps({"scale": 0.01, "seed": 7}))
    report = verify(tiny_root)
    assert report.ok and not report.compared_to_table1 and not report.warnings
    assert report.synthetic["scale"] == 0.01
    assert not verify(tiny_root, strict=True).ok  # --strict compares at any scale
    (tiny_root / "synthetic.json").write_text(json.dumps({"scale": 1.0}))
    assert verify(tiny_root).compared_to_table1


def test_synthetic_marker_counts_catch_a_lost_image(tiny_root):
    written = {"ACC": dict(train_good=6, test_good=3, test_defect=6, defect_types=2),
               "CS": dict(train_good=6, test_good=3, test_defect=6, defect_types=2)}
    (tiny_root / "synthetic.json").write_text(json.dumps({"scale": 0.01, "counts": written}))
    assert verify(tiny_root).ok
    (tiny_root / CS / "train" / "good" / "002.png").unlink()  # no mask involved: only the count tells
    report = verify(tiny_root)
    assert [(p.kind, p.message.split(": ")[-1]) for p in report.errors] == [("synthetic_counts", "train_good 5 vs 6")]


def test_mvtec_root_is_not_compared(tiny_mvtec_root):
    report = verify(tiny_mvtec_root, strict=True)
    assert report.ok and report.dataset == "mvtec" and not report.compared_to_table1
    assert "matches_table1" not in report.counts


def _mask(root: Path, dtype="bump", name="000.png", cat=CS) -> Path:
    return root / cat / "ground_truth" / dtype / name


def test_deleted_mask_fails_and_names_the_file(tiny_root):
    _mask(tiny_root).unlink()
    result = _run("verify", "--root", str(tiny_root), "--no-progress", "--category", "CS")
    assert result.exit_code == 1
    assert f"missing_mask: {tiny_root / CS / 'test' / 'bump' / '000.png'}" in result.output
    assert "PROBLEMS: 20 files decoded, 1 error, 1 warning" in result.output  # Table 1 mismatch: a warning


@pytest.mark.parametrize("make, kind", [
    (lambda a: a[:32, :32], "mask_size"),
    (lambda a: np.where(a > 0, 128, 0).astype(np.uint8), "mask_not_binary"),
    (lambda a: np.zeros_like(a), "empty_mask"),
    (lambda a: np.stack([a, np.zeros_like(a), a], -1), "mask_not_binary"),
])
def test_bad_masks(tiny_root, make, kind):
    path = _mask(tiny_root)
    Image.fromarray(make(np.asarray(Image.open(path)))).save(path)
    report = verify(tiny_root)
    assert not report.ok
    assert [(p.kind, p.path) for p in report.errors] == [(kind, str(path))]


def test_mode_1_mask_is_binary(tiny_root):
    path = _mask(tiny_root)
    Image.open(path).convert("1").save(path)
    assert verify(tiny_root).ok


def test_corrupt_and_fake_images(tiny_root):
    good = tiny_root / CS / "train" / "good" / "000.png"
    good.write_bytes(good.read_bytes()[:60])  # valid header, truncated pixels
    fake = tiny_root / CS / "test" / "good" / "001.png"
    fake.write_text("not an image")
    report = verify(tiny_root)
    got = {(p.kind, p.path) for p in report.errors}
    assert got == {("corrupt_image", str(good)), ("unreadable_image", str(fake))}


def test_mask_for_good_and_orphan_mask(tiny_root):
    src = _mask(tiny_root)
    (tiny_root / CS / "ground_truth" / "good").mkdir()
    (tiny_root / CS / "ground_truth" / "good" / "000.png").write_bytes(src.read_bytes())
    (tiny_root / CS / "ground_truth" / "bump" / "999.png").write_bytes(src.read_bytes())
    assert set(_kinds(verify(tiny_root))) == {"mask_for_good", "orphan_mask"}


def test_category_filter_ignores_other_categories(tiny_root):
    _mask(tiny_root, cat="Aluminum_Camera_Cover").unlink()
    report = verify(tiny_root, categories="cs")
    assert report.ok and list(report.counts.category) == ["CS"]
    assert "missing_category" not in _kinds(report, "warning")
    assert not verify(tiny_root, categories=["ACC"]).ok


def test_workers_do_not_change_the_result(tiny_root):
    for name in ("000.png", "001.png"):
        _mask(tiny_root, name=name).unlink()
    a, b = verify(tiny_root, workers=1), verify(tiny_root, workers=4)
    assert a.problems == b.problems and a.counts.equals(b.counts)


def test_manifest_reports_changed_missing_extra(tiny_root):
    report = verify(tiny_root, hash_all=True)
    path = write_manifest_for(report)
    assert path == tiny_root / MANIFEST_NAME
    manifest = read_manifest(tiny_root)
    assert len(manifest.files) == 42 and MANIFEST_NAME not in manifest.files
    assert verify(tiny_root).manifest_status == "match"

    changed = tiny_root / CS / "train" / "good" / "003.png"
    arr = np.asarray(Image.open(changed)).copy()
    arr[0, 0] ^= 1  # one pixel: same size, still a valid image
    Image.fromarray(arr).save(changed)
    missing = tiny_root / CS / "train" / "good" / "004.png"
    missing.unlink()
    extra = tiny_root / CS / "train" / "good" / "100.png"
    extra.write_bytes(changed.read_bytes())
    report = verify(tiny_root)
    assert not report.ok and report.manifest_status == "differs"
    d = report.manifest_diff
    rel = lambda p: p.relative_to(tiny_root).as_posix()  # noqa: E731
    assert (d.changed, d.missing, d.extra) == ([rel(changed)], [rel(missing)], [rel(extra)])


def test_write_manifest_refuses_a_broken_root(tiny_root):
    _mask(tiny_root).unlink()
    with pytest.raises(DatasetError, match="not writing a manifest"):
        write_manifest_for(verify(tiny_root, hash_all=True))
    assert not (tiny_root / MANIFEST_NAME).exists()


def test_cli_manifest_round_trip_and_json(tiny_root, tmp_path):
    r = _run("verify", "--root", str(tiny_root), "--write-manifest", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "manifest written" in r.output
    (tiny_root / CS / "train" / "good" / "005.png").unlink()
    out = tmp_path / "report.json"
    r = _run("verify", "--root", str(tiny_root), "--json", str(out), "--no-progress")
    assert r.exit_code == 1
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["manifest"]["status"] == "differs"
    assert data["manifest"]["missing"] == [f"{CS}/train/good/005.png"]
    assert {row["category"]: row["train_good"] for row in data["counts"]} == {"ACC": 6, "CS": 5}
    # accepting the change: rewriting the manifest makes the root healthy again
    assert _run("verify", "--root", str(tiny_root), "--write-manifest", "--no-progress").exit_code == 0
    assert _run("verify", "--root", str(tiny_root), "--no-progress").exit_code == 0


def test_cli_json_to_stdout(tiny_root):
    r = _run("verify", "--root", str(tiny_root), "--json", "-", "--no-progress", "--category", "ACC")
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and data["ok"] and [c["category"] for c in data["counts"]] == ["ACC"]


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"),
    ("empty", "no category folders"),
    ("typo", "Did you mean 'Copper_Stator'"),
    ("absent_category", "category AI (Aluminum_Ipad) is not in"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_root, tmp_path, case, expect):
    root, extra = tiny_root, []
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "empty":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "typo":
        extra = ["--category", "Coper_Stator"]
    else:
        extra = ["--category", "AI"]
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["verify", "--root", str(root), "--json", str(out), *extra])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]
    assert "Traceback" not in r.output and not out.exists()
    assert not (root / MANIFEST_NAME).exists()


def test_api_errors_are_threecad_errors(tmp_path):
    with pytest.raises(DatasetError):
        verify(tmp_path / "nowhere")
    make_tiny_dataset(tmp_path / "d", categories=(CS,), n_train=1, n_good=1, n_defect=1)
    with pytest.raises(ThreecadError, match="Did you mean"):
        verify(tmp_path / "d", categories="Coper_Stator")


def test_report_json_round_trips(tiny_root):
    report = verify(tiny_root)
    data = json.loads(report.to_json())
    assert data["n_errors"] == 0 and data["n_warnings"] == len(report.warnings)
    assert pd.DataFrame(data["counts"])[["category", "test_defect"]].values.tolist() == [["ACC", 6], ["CS", 6]]
    assert os.fspath(report.root) == data["root"]
