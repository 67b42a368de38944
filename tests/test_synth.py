"""The synthetic 3CAD: Table 1 at full scale, masks that agree with the region sidecar,
same seed same bytes, atomic output and the command line."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

import threecad.synth.writer as writer
from threecad.catalog import THREECAD, table1
from threecad.cli import main
from threecad.errors import ThreecadError
from threecad.layout import scan_root
from threecad.synth import DEFECT_TYPES, KIND_SIZES, generate, plan_category, render_job

PAPER_KINDS = {"bump", "scratch", "bruise", "upper_line", "scrape", "outer_warping", "inner_warping",
               "discoloration", "uneven", "deformation", "iron_core_airflow", "whitening",
               "black_spots", "watermarks", "overwashing", "dirt"}
EIGHT = np.ones((3, 3), bool)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _ne_te(job):
    return sum(n for _, n in job.regions), len(job.regions)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """All 8 categories, tiny images; rendered in-process (below the worker threshold)."""
    return generate(tmp_path_factory.mktemp("synth") / "d", scale=0.004, seed=3, max_size=64,
                    workers=1, progress=False)


def test_defect_types_are_the_papers_kinds_with_table1_counts():
    t1 = table1()
    assert sum(len(v) for v in DEFECT_TYPES.values()) == 47
    for cat in THREECAD:
        types = DEFECT_TYPES[cat.abbreviation]
        assert len(types) == len(set(types)) == t1.loc[cat.abbreviation, "defect_types"]
        assert set(types) <= PAPER_KINDS
        assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", t) for t in types)
    assert "iron_core_airflow" in DEFECT_TYPES["IS"]
    assert not any("iron_core_airflow" in DEFECT_TYPES[c] for c in DEFECT_TYPES if c != "IS")
    assert set(KIND_SIZES) == PAPER_KINDS


def test_full_scale_plan_reproduces_table1():
    t1 = table1()
    for cat in THREECAD:
        row = t1.loc[cat.abbreviation]
        jobs = plan_category(cat, 1.0, 0, None)
        train = [j for j in jobs if j.split == "train"]
        good = [j for j in jobs if j.split == "test" and not j.regions]
        bad = [j for j in jobs if j.regions]
        assert (len(train), len(good), len(bad)) == (row.train_good, row.test_good, row.test_defect)
        assert {j.label for j in bad} == set(DEFECT_TYPES[cat.abbreviation])
        hs, ws = [j.height for j in jobs], [j.width for j in jobs]
        assert (min(hs), max(hs), min(ws), max(ws)) == (row.height_min, row.height_max,
                                                        row.width_min, row.width_max)
        ne, te = zip(*map(_ne_te, bad))
        assert (min(ne), max(ne), min(te), max(te)) == (row.ne_min, row.ne_max, row.te_min, row.te_max)
        for j in bad:  # the folder type has strictly the most regions
            counts = [n for _, n in j.regions]
            assert j.label == j.regions[0][0]
            assert all(counts[0] > c for c in counts[1:])
        assert len({j.relpath for j in jobs}) == len(jobs)


def test_small_scales_keep_every_category_and_type():
    for scale in (1e-4, 0.01):
        for cat in THREECAD:
            jobs = plan_category(cat, scale, 1, 128)
            assert sum(j.split == "train" for j in jobs) >= 2
            assert sum(j.split == "test" and not j.regions for j in jobs) >= 1
            assert {j.label for j in jobs if j.regions} == set(DEFECT_TYPES[cat.abbreviation])
            assert max(max(j.height, j.width) for j in jobs) <= 128


def test_tree_has_3cad_layout_and_scans_clean(small_tree):
    scan = scan_root(small_tree)
    assert not [p for p in scan.problems if p.severity == "error"], scan.problems[:3]
    assert not scan.problems
    assert [c.folder for c in scan.categories] == sorted(c.folder for c in THREECAD)
    assert set(scan.mask_naming.values()) == {"same"}
    t = scan.table
    for cat in THREECAD:
        mine = t[t.category == cat.abbreviation]
        assert set(mine[mine.label == 1].defect_type) == set(DEFECT_TYPES[cat.abbreviation])
        assert (mine[mine.split == "train"].defect_type == "good").all()
    marker = json.loads((small_tree / "synthetic.json").read_text())
    assert marker["dataset"] == "3cad-synthetic" and marker["seed"] == 3
    assert marker["scale"] == 0.004 and marker["max_size"] == 64
    assert marker["categories"] == [c.abbreviation for c in THREECAD]
    assert sum(v["test_defect"] for v in marker["counts"].values()) == int(t.label.sum())


def test_masks_agree_with_region_sidecar(small_tree):
    """Each sidecar region is exactly one 8-connected component of the mask, in label order."""
    t1 = table1()
    for cat in THREECAD:
        folder = small_tree / cat.folder
        side = pd.read_csv(folder / "defect_regions.csv")
        assert list(side.columns) == ["image", "region", "defect_type", "y", "x", "area"]
        images = sorted(p.relative_to(folder).as_posix() for p in (folder / "test").rglob("*.png")
                        if p.parent.name != "good")
        assert sorted(side.image.unique()) == images
        for image, regs in side.groupby("image"):
            img = np.asarray(Image.open(folder / image))
            mask = np.asarray(Image.open(folder / "ground_truth" / Path(image).relative_to("test")))
            assert mask.shape == img.shape[:2] and set(np.unique(mask)) == {0, 255}
            labels, n = ndimage.label(mask > 127, structure=EIGHT)
            assert n == len(regs) and list(regs.region) == list(range(1, n + 1))
            areas = np.bincount(labels.ravel())[1:]
            for r in regs.itertuples():
                assert labels[r.y, r.x] == r.region and areas[r.region - 1] == r.area
            by_type = regs.groupby("defect_type").size()
            folder_type = Path(image).parent.name
            assert by_type[folder_type] == by_type.max()
            if t1.loc[cat.abbreviation, "te_max"] == 1:
                assert set(regs.defect_type) == {folder_type}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, monkeypatch):
    kw = dict(scale=0.003, seed=5, max_size=48, categories=["ACC", "cs"], progress=False)
    a = generate(tmp_path / "a", workers=1, **kw)
    monkeypatch.setattr(writer, "INLINE_MAX_PIXELS", 0)  # force the process pool
    b = generate(tmp_path / "b", workers=2, **kw)
    assert tree_hash(a) == tree_hash(b)
    kw["seed"] = 6
    c = generate(tmp_path / "c", workers=1, **kw)
    assert tree_hash(a) != tree_hash(c)
    # a category alone comes out as it does among others
    d = generate(tmp_path / "d", workers=1, **{**kw, "seed": 5, "categories": ["CS"]})
    assert tree_hash(d / "Copper_Stator") == tree_hash(a / "Copper_Stator")


def test_regions_small_but_visible_at_native_size():
    """Real sizes: every region survives a nearest resize to 256, most stay under 1%."""
    jobs = [j for cat in THREECAD for j in plan_category(cat, 0.02, 11, None) if j.regions]
    jobs.sort(key=lambda j: j.pixels)
    picked, seen = [], set()
    for kind in sorted(PAPER_KINDS):  # the smallest image that has each kind
        if kind not in seen:
            job = next(j for j in jobs if kind in {t for t, _ in j.regions})
            picked.append(job)
            seen |= {t for t, _ in job.regions}
    fractions = []
    for j in picked:
        out = render_job(j)
        labels, n = ndimage.label(out.mask > 0, structure=EIGHT)
        assert n == sum(c for _, c in j.regions)
        small = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((256, 256), Image.NEAREST))
        assert set(np.unique(small)) - {0} == set(range(1, n + 1)), j
        fractions += [r.area / j.pixels for r in out.regions]
    assert seen == PAPER_KINDS
    f = np.array(fractions)
    assert (f >= 1e-4).all()
    assert (f < 0.01).mean() > 0.75 and (f < 0.001).mean() > 0.25


def test_every_region_is_placed_by_its_kind(monkeypatch):
    """Warping follows a real outline or rim (the scene shows one when asked); the generic
    last-resort disk is never needed for these images."""
    import threecad.synth.render as render

    def no_fallback(self):
        raise AssertionError("fell back to a plain disk")

    monkeypatch.setattr(render._Placer, "fallback", no_fallback)
    warping = {"outer_warping", "inner_warping"}
    checked = 0
    for abbr in ("ACC", "AP"):
        cat = next(c for c in THREECAD if c.abbreviation == abbr)
        jobs = [j for j in plan_category(cat, 0.05, 4, 256) if warping & {t for t, _ in j.regions}]
        for j in jobs[:12]:
            out = render_job(j)
            checked += sum(r.defect_type in warping for r in out.regions)
    assert checked >= 20


def test_size_distribution_over_many_regions(tmp_path):
    """At 256 px the region sizes keep the paper's shape: dominated by small defects."""
    fractions = []
    for cat in THREECAD:
        for j in [j for j in plan_category(cat, 0.01, 2, 256) if j.regions][:12]:
            fractions += [r.area / j.pixels for r in render_job(j).regions]
    f = np.array(fractions)
    assert len(f) > 150
    assert (f < 0.01).mean() > 0.8
    assert (f < 0.001).mean() > 0.3


def test_refuses_non_empty_out_and_force_replaces(tmp_path, monkeypatch):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw = dict(scale=0.001, max_size=32, categories="CS", workers=1, progress=False)
    with pytest.raises(ThreecadError, match="not empty.*--force"):
        generate(out, **kw)
    assert (out / "keep.txt").exists()
    generate(out, force=True, **kw)
    assert not (out / "keep.txt").exists() and (out / "synthetic.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folders left behind
    monkeypatch.chdir(out)
    with pytest.raises(ThreecadError, match="current folder"):
        generate(".", force=True, **kw)
    assert (out / "synthetic.json").exists()


def test_interrupted_run_leaves_no_tree(tmp_path, monkeypatch):
    calls = []

    def failing(job, root):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, root)

    real = writer.write_job
    monkeypatch.setattr(writer, "write_job", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "d", scale=0.002, max_size=32, categories="ACC", workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=0), "--scale"), (dict(scale=float("nan")), "--scale"), (dict(seed=-1), "--seed"),
    (dict(max_size=8), "--max-size"), (dict(workers=0), "--workers"),
    (dict(categories="bottle"), "unknown category"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(ThreecadError, match=message):
        generate(tmp_path / "d", **{"scale": 0.001, **kwargs})
    assert not (tmp_path / "d").exists()


def test_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["synth", "--out", str(out), "--scale", "0.002", "--max-size", "32", "--category", "ACC,is",
            "--workers", "1"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "test defective" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["Aluminum_Camera_Cover", "Iron_Stator", "synthetic.json"]
    res = runner.invoke(main, args)
    assert res.exit_code != 0 and "error: --out" in res.output and "Traceback" not in res.output
    assert runner.invoke(main, args + ["--force"]).exit_code == 0
    res = runner.invoke(main, ["synth", "--out", str(tmp_path / "e"), "--category", "ACX"])
    assert res.exit_code != 0 and "Did you mean 'ACC'" in res.output
