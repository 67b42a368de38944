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
