"""threecad stats: region analysis on hand-made masks, the cache, the sidecar, Table 1, the CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from conftest import make_tiny_dataset
from threecad import stats as st
from threecad.catalog import table1
from threecad.cli import main
from threecad.errors import DatasetError
from threecad.layout import scan_root
from threecad.masks import read_mask
from threecad.stats import pool

EIGHT = np.ones((3, 3), bool)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))


def _fields(result: st.MaskResult) -> pd.DataFrame:
    return pd.DataFrame(result.regions, columns=list(st.REGION_FIELDS))


def _save_mask(path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


# ---------------------------------------------------------------- hand-made masks

def test_regions_touching_at_a_corner_are_one_region():
    mask = np.zeros((32, 32), bool)
    mask[4:8, 4:8] = True
    mask[8:12, 8:12] = True      # touches the first square only at a corner
    mask[20:22, 25:27] = True    # separate
    result = st.analyze_mask_array(mask)
    assert result.n_regions == 2
    assert ndimage.label(mask)[1] == 3  # with 4-connectivity the corner pair would split
    assert sorted(_fields(result)["area"]) == [4, 32]


def test_bar_rotated_45_degrees_has_its_own_aspect_ratio():
    # A staircase bar: row i holds columns i..i+k-1. By hand: the pixel centres span a
    # parallelogram whose smallest rectangle lies at 45 degrees, (2n+k-3)/sqrt2 long and
    # (k-1)/sqrt2 wide; each side + 1 pixel.
    n, k = 30, 3
    mask = np.zeros((48, 48), bool)
    for i in range(n):
        mask[5 + i, 5 + i:5 + i + k] = True
    r = _fields(st.analyze_mask_array(mask)).iloc[0]
    long_side, short_side = (2 * n + k - 3) / np.sqrt(2) + 1, (k - 1) / np.sqrt(2) + 1
    assert (r["rect_long"], r["rect_short"]) == pytest.approx((long_side, short_side))
    assert r["rect_long"] / r["rect_short"] == pytest.approx(long_side / short_side)
    assert r["angle"] == pytest.approx(45.0)
    box_aspect = (r["x1"] - r["x0"]) / (r["y1"] - r["y0"])
    assert box_aspect == pytest.approx((n + k - 1) / n)  # the axis-aligned box is nearly square


@pytest.mark.parametrize("degrees", [45.0, 30.0, 120.0])
def test_rasterised_rotated_bar_keeps_length_over_width(degrees):
    length, width = 80.0, 10.0
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    t = np.radians(degrees)
    u = (xx - 64) * np.cos(t) + (yy - 64) * np.sin(t)
    v = -(xx - 64) * np.sin(t) + (yy - 64) * np.cos(t)
    mask = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    r = _fields(st.analyze_mask_array(mask)).iloc[0]
    # its own sides to within the one-pixel ambiguity of digitising an edge
    assert abs(r["rect_long"] - length) <= 1.5 and abs(r["rect_short"] - width) <= 1.5
    box_h, box_w = r["y1"] - r["y0"], r["x1"] - r["x0"]
    assert max(box_h, box_w) / min(box_h, box_w) < 3 < r["rect_long"] / r["rect_short"]
    assert min(abs(r["angle"] - degrees % 180), 180 - abs(r["angle"] - degrees % 180)) < 3


def test_area_ratios_exact_and_thin_shapes():
    mask = np.zeros((48, 64), bool)
    mask[2:5, 3:7] = True        # 3 x 4 block
    mask[10, 10] = True          # one pixel: a 1 x 1 square
    mask[20, 5:12] = True        # horizontal line of 7
    mask[30:37, 50] = True       # vertical line of 7
    for i in range(5):
        mask[40 + i, 20 + i] = True  # diagonal line of 5: sqrt2 * 4 + 1 long, 1 wide
    result = st.analyze_mask_array(mask)
    f = _fields(result).sort_values(["area", "y0"], kind="stable")
    assert list(f["area"]) == [1, 5, 7, 7, 12]
    assert (result.height, result.width) == (48, 64)
    single = f.iloc[0]
    assert (single["rect_long"], single["rect_short"]) == (1.0, 1.0)
    assert (f.iloc[1]["rect_long"], f.iloc[1]["rect_short"]) == pytest.approx((4 * np.sqrt(2) + 1, 1.0))
    aspects = sorted(f["rect_long"] / f["rect_short"])
    assert aspects == pytest.approx([1.0, 4 / 3, 4 * np.sqrt(2) + 1, 7.0, 7.0])


def test_area_ratio_in_the_dataset_tables_is_exact(tmp_path):
    root = make_tiny_dataset(tmp_path / "r", categories=("Copper_Stator",), n_defect=1,
                             defect_types=("scratch",), size=64)
    mask = np.zeros((64, 64), bool)
    mask[2:5, 3:7] = True
    mask[40, 40] = True
    _save_mask(root / "Copper_Stator/ground_truth/scratch/000.png", mask)
    s = st.compute_stats(scan_root(root), progress=False)
    assert sorted(s.regions["area_ratio"]) == [1 / 4096, 12 / 4096]
    assert s.summary.at["CS", "n_regions"] == 2


def _plain_rect_sides(coords: np.ndarray) -> tuple[float, float]:
    """Independent reference: qhull on every pixel centre, then each hull edge's direction
    tried in a plain loop; sides + 1 pixel, and among rectangles of equal area around the
    centres the one smaller after the + 1 (the module's conventions)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = coords[:, ::-1].astype(float)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except QhullError:  # a line or a single pixel
        span = np.ptp(pts, axis=0)
        return float(np.hypot(*span)) + 1, 1.0
    best = None
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        d = (b - a) / np.linalg.norm(b - a)
        u, v = pts @ d, pts @ np.array([-d[1], d[0]])
        sides = (np.ptp(u), np.ptp(v))
        key = (round(sides[0] * sides[1], 6), (sides[0] + 1) * (sides[1] + 1))
        if best is None or key < best[0]:
            best = (key, sides)
    best = best[1]
    return max(best) + 1, min(best) + 1


def test_fast_rectangle_matches_the_plain_one_on_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(30):
        seeds = rng.random((50, 50)) < 0.02
        mask = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 4))) & (rng.random((50, 50)) < 0.85)
        result = st.analyze_mask_array(mask)
        labels, n = ndimage.label(mask, structure=EIGHT)
        assert result.n_regions == n
        f = _fields(result)
        for k in range(1, n + 1):
            coords = np.argwhere(labels == k)
            row = f[(f["py"] == coords[0, 0]) & (f["px"] == coords[0, 1])].iloc[0]
            long_side, short_side = _plain_rect_sides(coords)
            assert row["area"] == len(coords)
            assert (row["rect_long"], row["rect_short"]) == pytest.approx((long_side, short_side))
        # pixel runs are kept exactly for the regions whose boxes overlap another's
        boxes = f[["y0", "y1", "x0", "x1"]].to_numpy()
        for idx, (y0, y1, x0, x1) in enumerate(boxes):
            others = np.delete(boxes, idx, axis=0)
            overlaps = ((others[:, 0] < y1) & (y0 < others[:, 1]) & (others[:, 2] < x1) & (x0 < others[:, 3])).any()
            mine = result.runs[result.runs[:, 0] == idx]
            assert bool(len(mine)) == bool(overlaps)
            if overlaps:
                painted = np.zeros_like(mask)
                for _, y, a, b in mine:
                    painted[y, a:b] = True
                label = labels[int(f.iloc[idx]["py"]), int(f.iloc[idx]["px"])]
                assert np.array_equal(painted, labels == label)


def test_empty_mask_and_one_bit_mask(tmp_path):
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(empty)
    assert st.analyze_mask(empty).n_regions == 0
    onebit = tmp_path / "onebit.png"
    m = np.zeros((10, 12), bool)
    m[2:4, 2:4] = True
    Image.fromarray(m).convert("1").save(onebit)
    assert _fields(st.analyze_mask(onebit))["area"].tolist() == [4]
    assert st.analyze_mask(tmp_path / "missing.png").error is not None


@pytest.mark.parametrize("kind", ["L", "1", "grey_levels", "RGB", "palette"])
def test_mask_files_read_like_a_plain_threshold(tmp_path, kind):
    rng = np.random.default_rng(7)
    m = ndimage.binary_dilation(rng.random((70, 53)) < 0.02, iterations=2)
    grey = (m * rng.integers(0, 256, m.shape)).astype(np.uint8)
    img = {
        "L": Image.fromarray(m.astype(np.uint8) * 255),
        "1": Image.fromarray(m),
        "grey_levels": Image.fromarray(grey),
        "RGB": Image.fromarray(grey).convert("RGB"),
        "palette": Image.fromarray(grey).convert("P"),
    }[kind]
    path = tmp_path / "m.png"
    img.save(path)
    with Image.open(path) as im:
        expected = np.asarray(im, dtype=bool) if im.mode == "1" else np.asarray(im.convert("L")) > 127
    assert np.array_equal(read_mask(path), expected)
    from_file = st.analyze_mask(path)
    from_array = st.analyze_mask_array(expected)
    assert (from_file.height, from_file.width) == expected.shape
    assert np.array_equal(from_file.regions, from_array.regions)
    assert np.array_equal(from_file.runs, from_array.runs)


# ---------------------------------------------------------------- cache and workers

def test_cache_reuses_unchanged_files_and_recomputes_changed_ones(tmp_path, monkeypatch):
    paths = []
    for i in range(3):
        m = np.zeros((16, 16), bool)
        m[i:i + 2, 0:2] = True
        paths.append(str(tmp_path / f"m{i}.png"))
        _save_mask(paths[-1], m)
    calls = []
    real = pool.analyze_mask
    monkeypatch.setattr(pool, "analyze_mask", lambda p: calls.append(p) or real(p))
    first = st.analyze_masks(paths, workers=1, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 3
    second = st.analyze_masks(paths, workers=1, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 3
    assert [r.regions.tolist() for r in first] == [r.regions.tolist() for r in second]

    m = np.zeros((16, 16), bool)
    m[0, 0] = m[5, 5] = m[9, 9] = True
    _save_mask(paths[1], m)
    os.utime(paths[1], ns=(os.stat(paths[1]).st_atime_ns, os.stat(paths[1]).st_mtime_ns + 10**9))
    third = st.analyze_masks(paths, workers=1, cache_dir=tmp_path / "c", progress=False)
    assert calls[3:] == [os.path.abspath(paths[1])]
    assert third[1].n_regions == 3
    no_cache = st.analyze_masks(paths, workers=1, cache=False, progress=False)
    assert len(calls) == 7 and no_cache[1].n_regions == 3


def test_process_pool_gives_the_serial_answer(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        m = ndimage.binary_dilation(rng.random((40, 40)) < 0.01, iterations=2)
        paths.append(str(tmp_path / f"{i}.png"))
        _save_mask(paths[-1], m)
    serial = st.analyze_masks(paths, workers=1, cache=False, progress=False)
    pooled = st.analyze_masks(paths, workers=2, cache=False, progress=False)
    assert [r.regions.tolist() for r in serial] == [r.regions.tolist() for r in pooled]


# ---------------------------------------------------------------- sidecar (TE)

def _write_sidecar(cat_dir: Path, rows: list[tuple]) -> None:
    pd.DataFrame(rows, columns=list(st.SIDECAR_COLUMNS)).to_csv(cat_dir / st.SIDECAR_NAME, index=False)


def test_sidecar_gives_te_and_region_types(tmp_path):
    root = make_tiny_dataset(tmp_path / "r", categories=("Aluminum_Ipad",), n_defect=2,
                             defect_types=("scratch",), size=64)
    cat = root / "Aluminum_Ipad"
    # 000: an L-shaped scratch whose box holds a separate dot of another type (the dot's
    # point lies in both boxes, so the mask must be consulted), plus a bump.
    m = np.zeros((64, 64), bool)
    m[10:40, 10] = True
    m[39, 10:40] = True
    m[20, 20] = True
    m[50:53, 50:53] = True
    _save_mask(cat / "ground_truth/scratch/000.png", m)
    # 001: two regions of the same type
    m1 = np.zeros((64, 64), bool)
    m1[5:8, 5:8] = True
    m1[30:33, 30:33] = True
    _save_mask(cat / "ground_truth/scratch/001.png", m1)
    _write_sidecar(cat, [
        ("test/scratch/000.png", 0, "scratch", 25, 10, 59),
        ("test/scratch/000.png", 1, "dirt", 20, 20, 1),
        ("test/scratch/000.png", 2, "bump", 51, 51, 9),
        ("test/scratch/001.png", 0, "scratch", 6, 6, 9),
        ("test/scratch/001.png", 1, "scratch", 31, 31, 9),
    ])
    s = st.compute_stats(scan_root(root), progress=False)
    assert s.te_source == {"AI": "sidecar"}
    assert sorted(s.images["te"].tolist()) == [1, 3]
    assert (s.summary.at["AI", "te_min"], s.summary.at["AI", "te_max"]) == (1, 3)
    assert s.summary.at["AI", "ne_max"] == 3
    first = s.images.index[s.images["image_path"].str.endswith("000.png")][0]
    r0 = s.regions[s.regions["image"] == first]
    assert dict(zip(r0["area"], r0["region_type"])) == {59: "scratch", 1: "dirt", 9: "bump"}
    by_type = s.defect_types.set_index("region_type")
    assert by_type.at["dirt", "n_regions"] == 1 and by_type.at["scratch", "n_regions"] == 3
    assert by_type.at["bump", "median_area_px"] == 9
    assert not s.problems


def test_sidecar_disagreeing_with_the_masks_is_reported(tmp_path):
    root = make_tiny_dataset(tmp_path / "r", categories=("Aluminum_Ipad",), n_defect=1,
                             defect_types=("scratch",), size=32)
    cat = root / "Aluminum_Ipad"
    m = np.zeros((32, 32), bool)
    m[4:6, 4:6] = True
    _save_mask(cat / "ground_truth/scratch/000.png", m)
    _write_sidecar(cat, [("test/scratch/000.png", 0, "scratch", 4, 4, 5),     # area is 4
                         ("test/scratch/000.png", 1, "dirt", 20, 20, 1),       # no region there
                         ("test/scratch/999.png", 0, "dirt", 1, 1, 1)])        # no such image
    s = st.compute_stats(scan_root(root), progress=False)
    text = "\n".join(s.problems)
    assert "1 region(s) whose listed area" in text
    assert "1 row(s) whose pixel (y, x) is not on a defect region" in text
    assert "test/scratch/999.png" in text
    assert s.images["te"].tolist() == [2]  # the sidecar lists two types for the image


def test_sidecar_without_columns_is_a_clear_error(tmp_path):
    root = make_tiny_dataset(tmp_path / "r", categories=("Aluminum_Ipad",), n_defect=1, defect_types=("scratch",))
    (root / "Aluminum_Ipad" / st.SIDECAR_NAME).write_text("image,y,x\n")
    with pytest.raises(DatasetError, match=r"defect_regions\.csv lacks column\(s\) region, defect_type, area"):
        st.compute_stats(scan_root(root), progress=False)


# ---------------------------------------------------------------- Table 1

def test_table1_comparison_flags_only_real_differences():
    paper = table1()
    summary = paper.loc[["ACC", "CS"], list(st.TABLE1_FIELDS)].copy()
    summary.loc["all"] = summary.sum()
    summary.loc["CS", "ne_max"] = 3
    c = st.table1_comparison(summary)
    bad = c[~c["match"]]
    assert list(zip(bad["category"], bad["field"])) == [("CS", "ne_max")]
    assert c.loc[(c["category"] == "all") & (c["field"] == "train_good"), "paper"].item() == 784 + 409


def test_table1_shown_on_3cad_roots_only(tiny_root, tiny_mvtec_root):
    s = st.compute_stats(scan_root(tiny_root), progress=False)
    row = s.comparison.set_index(["category", "field"]).loc[("ACC", "train_good")]
    assert (row["paper"], row["measured"], row["match"]) == (784, 6, False)
    assert "6 ! 784" in st.format_comparison(s)
    assert st.compute_stats(scan_root(tiny_mvtec_root), progress=False).comparison is None


# ---------------------------------------------------------------- CLI

def _independent_counts(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mask_path in sorted(root.glob("*/ground_truth/*/*.png")):
        cat = {"Aluminum_Camera_Cover": "ACC", "Copper_Stator": "CS"}[mask_path.parts[-4]]
        mask = np.asarray(Image.open(mask_path)) > 127
        counts[cat] = counts.get(cat, 0) + ndimage.label(mask, structure=EIGHT)[1]
    return counts


def test_cli_writes_figures_tables_and_json_with_region_counts(tmp_path):
    root = make_tiny_dataset(tmp_path / "r", n_train=2, n_good=2, n_defect=2, size=64)
    rng = np.random.default_rng(1)
    for mask_path in sorted(root.glob("*/ground_truth/*/*.png"))[::2]:
        m = ndimage.binary_dilation(rng.random((64, 64)) < 0.006, iterations=1)
        m[0:2, 0:2] = m[2:4, 2:4] = True  # a corner-touching pair
        _save_mask(mask_path, m)
    out, js = tmp_path / "D", tmp_path / "S.json"
    res = CliRunner().invoke(main, ["stats", "--root", str(root), "--plot", "--out", str(out),
                                    "--json", str(js), "--workers", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    expected = _independent_counts(root)
    assert {c: data["categories"][c]["n_regions"] for c in ("ACC", "CS")} == expected
    assert data["overall"]["n_regions"] == sum(expected.values())
    assert data["overall"]["ne_hist"] and data["te_source"] == {"ACC": "folder", "CS": "folder"}
    for name in ("area_ratio.png", "aspect_ratio.png", "ne_te.png", "samples_ACC.png", "samples_CS.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 400
    regions = pd.read_csv(out / "regions.csv")
    assert len(regions) == sum(expected.values())
    assert set(pd.read_csv(out / "summary.csv")["category"]) == {"ACC", "CS", "all"}
    assert "Table 1 of the paper" in res.output and "ACC" in res.output


def test_cli_prints_the_whole_commands_time(tiny_root, tmp_path, monkeypatch):
    """The time printed last covers everything the command did, figures included."""
    import time

    import threecad.plots

    monkeypatch.setattr(threecad.plots, "plot_all", lambda stats, out: time.sleep(1.5) or [])
    res = CliRunner().invoke(main, ["stats", "--root", str(tiny_root), "--plot", "--out", str(tmp_path / "o"),
                                    "--workers", "1", "--category", "CS"])
    assert res.exit_code == 0, res.output
    seconds = float(res.output.strip().splitlines()[-1].strip("() s"))
    assert seconds >= 1.5
    assert "wrote 5 files to" in res.output  # summary, defect_types, images, regions, table1_comparison


def test_cli_unknown_category_is_one_line(tiny_root):
    res = CliRunner().invoke(main, ["stats", "--root", str(tiny_root), "--category", "ACX"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: unknown category 'ACX'")


def test_synthetic_root_counts_and_types(tmp_path):
    synth = pytest.importorskip("threecad.synth")
    root = synth.generate(tmp_path / "synth", scale=0.01, seed=0, categories=["ACC", "CS"],
                          max_size=64, workers=1, progress=False)
    s = st.compute_stats(scan_root(root), progress=False)
    assert not s.problems
    assert s.te_source == {"ACC": "sidecar", "CS": "sidecar"}
    assert s.synthetic is not None and s.synthetic["scale"] == 0.01
    expected = _independent_counts(root)
    assert {c: int(s.summary.at[c, "n_regions"]) for c in ("ACC", "CS")} == expected
    for cat, folder in (("ACC", "Aluminum_Camera_Cover"), ("CS", "Copper_Stator")):
        side = pd.read_csv(root / folder / st.SIDECAR_NAME)
        assert len(side) == expected[cat]  # one sidecar row per measured region
        te = side.groupby("image")["defect_type"].nunique()
        imgs = s.images[s.images["category"] == cat]
        got = {Path(p).relative_to(root / folder).as_posix(): t for p, t in zip(imgs["image_path"], imgs["te"])}
        assert got == te.to_dict()
