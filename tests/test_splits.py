"""Validation / k-shot split manifests, their validation, the Dataset's use of them, and the CLI."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_tiny_dataset

from threecad.cli import main
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.layout import scan_root
from threecad.splits import (MANIFEST_COLUMNS, find_manifest, make_split, read_manifest,
                             summarize, write_manifest)


@pytest.fixture
def wide_root(tmp_path: Path) -> Path:
    """20 training images per category, so that seeds and fractions have room to differ."""
    return make_tiny_dataset(tmp_path / "wide", n_train=20, n_good=1, n_defect=1, size=24)


def _train_files(root: Path, folder: str) -> set[str]:
    return {f"{folder}/train/good/{p.name}" for p in (root / folder / "train" / "good").glob("*.png")}


def test_split_counts_disjoint_and_train_only(wide_root):
    table = scan_root(wide_root).table
    m = make_split(table, val_fraction=0.25, seed=1)
    assert list(m.columns) == MANIFEST_COLUMNS
    for cat, folder in [("ACC", "Aluminum_Camera_Cover"), ("CS", "Copper_Stator")]:
        mine = m[m["category"] == cat]
        train, val = set(mine.loc[mine.subset == "train", "image"]), set(mine.loc[mine.subset == "val", "image"])
        assert len(val) == 5 and len(train) == 15
        assert not train & val
        assert train | val == _train_files(wide_root, folder)
    assert not m["image"].str.contains("/test/").any()


def test_split_seeded_and_category_independent(wide_root):
    table = scan_root(wide_root).table
    a = make_split(table, val_fraction=0.2, seed=3)
    assert a.equals(make_split(table, val_fraction=0.2, seed=3))
    b = make_split(table, val_fraction=0.2, seed=4)
    assert set(a.loc[a.subset == "val", "image"]) != set(b.loc[b.subset == "val", "image"])
    from threecad.catalog import resolve_category
    only_cs = make_split(table, val_fraction=0.2, seed=3, categories=[resolve_category("CS")])
    assert only_cs.reset_index(drop=True).equals(a[a.category == "CS"].reset_index(drop=True))


def test_shots_nested_and_disjoint_from_val(wide_root):
    table = scan_root(wide_root).table
    full = make_split(table, val_fraction=0.1, seed=0)
    val = set(full.loc[full.subset == "val", "image"])
    previous: set[str] = set()
    for k in (1, 2, 5):
        m = make_split(table, val_fraction=0.1, seed=0, shots=k)
        assert set(m.loc[m.subset == "val", "image"]) == val
        train = m[m.subset == "train"]
        assert train.groupby("category").size().tolist() == [k, k]
        assert previous <= set(train["image"]) and not val & set(train["image"])
        previous = set(train["image"])
    with pytest.raises(ThreecadError, match="--shots 19"):
        make_split(table, val_fraction=0.1, seed=0, shots=19)  # 20 - 2 val = 18 left


def test_small_categories_keep_a_training_image(tiny_root):
    table = scan_root(tiny_root).table
    m = make_split(table, val_fraction=0.01)  # 6 images: still one for validation
    assert (m.groupby(["category", "subset"]).size() == pd.Series(
        [5, 1, 5, 1], index=pd.MultiIndex.from_product([["ACC", "CS"], ["train", "val"]]))).all()
    none = make_split(table, val_fraction=0.0)
    assert set(none.subset) == {"train"} and len(none) == 12
    with pytest.raises(ThreecadError, match="val-fraction"):
        make_split(table, val_fraction=1.0)


def test_manifest_roundtrip_and_dataset_uses_it(wide_root, tmp_path):
    table = scan_root(wide_root).table
    m = make_split(table, val_fraction=0.25, shots=4, seed=9)
    assert find_manifest(wide_root) is None
    path = write_manifest(m, wide_root / "split.csv")
    assert find_manifest(wide_root) == path
    assert read_manifest(path, table).equals(m)
    train = ThreeCAD(wide_root, "acc", split="train", image_size=8, cache=tmp_path, manifest=path)
    val = ThreeCAD(wide_root, "acc", split="val", image_size=8, cache=tmp_path, manifest=path, table=table)
    rel = lambda ds: {"/".join(Path(p).parts[-4:]) for p in ds.samples["image_path"]}  # noqa: E731
    acc = m[m.category == "ACC"]
    assert rel(train) == set(acc.loc[acc.subset == "train", "image"]) and len(train) == 4
    assert rel(val) == set(acc.loc[acc.subset == "val", "image"]) and len(val) == 5
    assert train.cache_path != val.cache_path
    test = ThreeCAD(wide_root, "acc", split="test", image_size=8, cache=False, manifest=path)
    assert len(test) == 3  # the official test set, whatever the manifest says
    assert summarize(m, table).to_dict("records") == [
        {"category": "ACC", "official_train": 20, "train": 4, "val": 5},
        {"category": "CS", "official_train": 20, "train": 4, "val": 5}]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.assign(image=m.image.where(m.index != 0, "Copper_Stator/test/good/000.png")),
     "line 2: lists test image"),
    (lambda m: m.assign(category=m.category.where(m.index != 1, "Coper_Stator")), "line 3: .*Did you mean"),
    (lambda m: m.assign(image=m.image.where(m.index != 2, "Copper_Stator/train/good/999.png")),
     "not in the dataset"),
    (lambda m: m.assign(subset=m.subset.where(m.index != 0, "test")), "subset 'test'"),
    (lambda m: pd.concat([m, m.iloc[:1]]), "more than once"),
    (lambda m: m.drop(columns="subset"), "missing column"),
    (lambda m: m.assign(category="ACC"), "belongs to category CS"),
])
def test_bad_manifests_are_refused(tiny_root, edit, message):
    table = scan_root(tiny_root).table
    m = make_split(table)
    m = m[m.category == "CS"].reset_index(drop=True)
    path = tiny_root / "bad.csv"
    edit(m).to_csv(path, index=False)
    with pytest.raises(ThreecadError, match=message):
        read_manifest(path, table)
    with pytest.raises(ThreecadError, match=message):
        ThreeCAD(tiny_root, "CS", manifest=path, cache=False)


def test_manifest_accepts_folder_names_and_missing_categories_are_named(tiny_root):
    table = scan_root(tiny_root).table
    m = make_split(table)
    m = m[m.category == "CS"].assign(category="copper_stator")
    m.to_csv(tiny_root / "m.csv", index=False)
    assert set(read_manifest(tiny_root / "m.csv", table).category) == {"CS"}
    with pytest.raises(ThreecadError, match="no rows for category ACC"):
        ThreeCAD(tiny_root, "ACC", manifest=tiny_root / "m.csv", cache=False)
    with pytest.raises(ThreecadError, match="does not exist"):
        read_manifest(tiny_root / "absent.csv", table)


def test_cli_writes_manifest_and_summary(wide_root, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["split", "--root", str(wide_root), "--val-fraction", "0.2", "--shots", "3"])
    assert res.exit_code == 0, res.output
    written = pd.read_csv(wide_root / "split.csv")
    assert list(written.columns) == MANIFEST_COLUMNS
    assert written.groupby(["category", "subset"]).size().tolist() == [3, 4, 3, 4]
    lines = [ln.split() for ln in res.stdout.splitlines()]
    assert ["ACC", "20", "3", "4"] in lines and ["CS", "20", "3", "4"] in lines
    out = tmp_path / "sub" / "cs.csv"
    res = runner.invoke(main, ["split", "--root", str(wide_root), "--category", "copper_stator",
                               "--out", str(out), "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(out).category) == {"CS"}
    assert not list(out.parent.glob(".*"))  # no temporary left behind


@pytest.mark.parametrize("args, message", [
    (["--category", "Coper_Stator"], "Did you mean 'Copper_Stator'"),
    (["--shots", "50"], "--shots 50"),
])
def test_cli_bad_input_writes_nothing(wide_root, args, message):
    res = CliRunner().invoke(main, ["split", "--root", str(wide_root), *args])
    assert res.exit_code != 0
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert "Traceback" not in res.output
    assert not (wide_root / "split.csv").exists()


def test_bench_uses_a_manifest_written_anywhere(wide_root, tmp_path):
    """`split --out FILE` then `bench --split FILE`: its val images are the run's, recorded in run.json."""
    import json

    runner = CliRunner()
    manifest = tmp_path / "elsewhere" / "m.csv"
    assert runner.invoke(main, ["split", "--root", str(wide_root), "--val-fraction", "0.2",
                                "--out", str(manifest)]).exit_code == 0
    out = tmp_path / "run"
    args = ["bench", "--method", "padim", "--root", str(wide_root), "--category", "ACC", "--preset", "cpu",
            "--set", "image_size=32", "--device", "cpu", "--eval-size", "32", "--pictures", "0"]
    res = runner.invoke(main, [*args, "--split", str(manifest), "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "categories" / "ACC.json").read_text())
    assert (record["n_train"], record["n_val"]) == (16, 4)
    split = json.loads((out / "run.json").read_text())["dataset"]["split"]
    assert split["path"] == str(manifest.resolve()) and split["val_images"] == 4
    missing = runner.invoke(main, [*args, "--split", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "r2")])
    assert missing.exit_code != 0 and "--split" in missing.output and not (tmp_path / "r2").exists()
