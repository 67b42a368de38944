from pathlib import Path

import pytest

from threecad import catalog
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import image_size, scan_root


def test_table1_totals_match_the_paper():
    t = catalog.table1()
    assert list(t.index) == [c.abbreviation for c in catalog.THREECAD]
    assert t["train_good"].sum() == catalog.TOTAL_TRAIN
    assert t["test_all"].sum() == catalog.TOTAL_TEST
    assert (t["test_good"] + t["test_defect"] == t["test_all"]).all()
    assert t["defect_types"].sum() == catalog.TOTAL_DEFECT_TYPES


@pytest.mark.parametrize("name", ["acc", "ACC", "aluminum_camera_cover", "Aluminum_Camera_Cover"])
def test_category_any_spelling(name):
    assert catalog.resolve_category(name).abbreviation == "ACC"


def test_category_typo_suggests():
    with pytest.raises(ThreecadError, match="Did you mean 'Copper_Stator'"):
        catalog.resolve_category("Coper_Stator")


def test_resolve_categories_lists_and_all():
    got = catalog.resolve_categories(["ACC,cs", "ACC"])
    assert [c.abbreviation for c in got] == ["ACC", "CS"]
    assert len(catalog.resolve_categories(["all"])) == 8
    assert len(catalog.resolve_categories(None)) == 8


@pytest.mark.parametrize("values", ["", ",,", ["ACC", ""], "ACC,"])
def test_resolve_categories_refuses_an_empty_name(values):
    """An empty name is never read as `all` (the CLI and Python callers alike)."""
    with pytest.raises(ThreecadError, match="empty name"):
        catalog.resolve_categories(values)


def test_scan_3cad_naming(tiny_root):
    scan = scan_root(tiny_root)
    t = scan.table
    assert scan.mask_naming == {"ACC": "same", "CS": "same"}
    assert not [p for p in scan.problems if p.severity == "error"]
    assert len(t) == 2 * (6 + 3 + 6)
    defect = t[t.label == 1]
    assert defect.mask_path.notna().all()
    assert (t[t.label == 0].mask_path.isna()).all()
    assert set(t.height.unique()) == {64}
    assert scan.dataset == "3cad"


def test_scan_mvtec_naming(tiny_mvtec_root):
    scan = scan_root(tiny_mvtec_root)
    assert scan.mask_naming == {"bottle": "_mask", "screw": "_mask"}
    assert scan.table[scan.table.label == 1].mask_path.str.endswith("_mask.png").all()
    assert scan.dataset == "mvtec"


def test_scan_reports_odd_files(tiny_root):
    cat = tiny_root / "Copper_Stator"
    (cat / "ground_truth" / "scratch" / "000.png").unlink()  # missing mask
    (cat / "ground_truth" / "bump" / "999.png").write_bytes(b"x")  # orphan mask
    (cat / "test" / "good" / "notes.txt").write_text("hi")  # non-image
    (tiny_root / "stuff").mkdir()  # unknown folder
    (cat / "test" / "good" / "broken.png").write_bytes(b"not a png")
    kinds = {p.kind for p in scan_root(tiny_root).problems}
    assert {"missing_mask", "orphan_mask", "non_image", "unknown_folder", "unreadable_image"} <= kinds


def test_scan_missing_and_empty_root(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_root(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no category folders"):
        scan_root(tmp_path)


def test_image_size_from_header(tiny_root):
    p = next((tiny_root / "Copper_Stator" / "train" / "good").glob("*.png"))
    assert image_size(p) == (64, 64)


def test_every_command_lists_categories_in_catalog_order(tmp_path: Path):
    """On disk Aluminum_New_Ipad (ANI) sorts before Aluminum_New_Middle_Frame (ANMF); the
    catalog (and the paper) put ANMF first. Every command follows the catalog."""
    import json

    from click.testing import CliRunner

    from conftest import make_tiny_dataset
    from threecad.cli import main
    from threecad.stats import compute_stats
    from threecad.verify import verify

    folders = ("Iron_Stator", "Aluminum_New_Ipad", "Aluminum_New_Middle_Frame", "Aluminum_Camera_Cover")
    root = make_tiny_dataset(tmp_path / "r", categories=folders, n_train=2, n_good=1, n_defect=1,
                             defect_types=("bump",), size=24)
    expected = ["ACC", "ANMF", "ANI", "IS"]
    assert [c.abbreviation for c in scan_root(root).categories] == expected
    assert list(dict.fromkeys(scan_root(root).table["category"])) == expected
    assert verify(root, progress=False).counts["category"].tolist() == expected
    assert verify(root, categories="IS,ANI,ACC", progress=False).counts["category"].tolist() == ["ACC", "ANI", "IS"]
    stats = compute_stats(scan_root(root), workers=1, cache=False, progress=False)
    assert list(stats.summary.index) == [*expected, "all"]
    out = tmp_path / "split.csv"
    r = CliRunner().invoke(main, ["split", "--root", str(root), "--out", str(out), "--category", "IS,ANMF"])
    assert r.exit_code == 0, r.output
    assert [line.split()[0] for line in r.output.splitlines()[1:3]] == ["ANMF", "IS"]
    js = tmp_path / "v.json"
    CliRunner().invoke(main, ["verify", "--root", str(root), "--json", str(js), "--no-progress"])
    assert [c["category"] for c in json.loads(js.read_text())["counts"]] == expected


def test_layout_errors_are_what_changes_results(tiny_root):
    from PIL import Image

    from threecad.layout import layout_errors

    cat = tiny_root / "Copper_Stator"
    half = cat / "ground_truth" / "bump" / "000.png"
    Image.new("L", (32, 32), 255).save(half)
    (cat / "ground_truth" / "scratch" / "001.png").unlink()
    (cat / "ground_truth" / "bump" / "999.png").write_bytes(half.read_bytes())  # orphan: untidy only
    scan = scan_root(tiny_root)
    got = sorted((p.kind, Path(p.path).relative_to(tiny_root).as_posix()) for p in layout_errors(scan))
    assert got == [("mask_size", "Copper_Stator/ground_truth/bump/000.png"),
                   ("missing_mask", "Copper_Stator/test/scratch/001.png")]
    assert {p.kind for p in layout_errors(scan, kinds=None)} == {"mask_size", "missing_mask", "orphan_mask"}
