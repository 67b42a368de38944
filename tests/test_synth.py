"""The synthetic 3CAD: Table 1 at full scale, masks that agree with the region sidecar,
same seed same bytes, atomic output and the command line."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
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
from threecad.synth import (DEFECT_TYPES, GENERATOR_VERSION, KIND_SIZES, category_layout, generate, plan_category,
                            render_job, render_scene)
from threecad.synth.render import image_rng

from refusal import assert_refused

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
    assert [c.folder for c in scan.categories] == [c.folder for c in THREECAD]  # catalog order
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


# ------------------------------------------------------------------ limits, floor, leftovers


@pytest.mark.parametrize("scale", ["1000", "1e9", "1.0001", "0", "-0.5", "inf", "nan"])
def test_scale_outside_0_to_1_is_refused_before_anything(tmp_path, scale):
    """`--scale 1e9` used to allocate 16 TiB with a traceback; 1000 grew without bound."""
    assert_refused(["synth", "--out", str(tmp_path / "d"), "--scale", scale], names="--scale",
                   watch=[tmp_path])


@pytest.mark.parametrize("value", ["-1", "410", "1e3"])
def test_bad_min_train_is_refused(tmp_path, value):
    assert_refused(["synth", "--out", str(tmp_path / "d"), "--scale", "0.01", "--min-train", value],
                   names="--min-train", watch=[tmp_path])


@pytest.mark.parametrize("value", ["-1", "197"])
def test_bad_min_test_good_is_refused(tmp_path, value):
    assert_refused(["synth", "--out", str(tmp_path / "d"), "--scale", "0.01", "--min-test-good", value],
                   names="--min-test-good", watch=[tmp_path])


def test_min_train_floor_only_appends_training_images():
    for cat in THREECAD:
        base = plan_category(cat, 0.01, 9, 128)
        floored = plan_category(cat, 0.01, 9, 128, min_train=16)
        n_base = sum(j.split == "train" for j in base)
        n_train = sum(j.split == "train" for j in floored)
        assert n_train == max(16, n_base)
        # every image the scale gives is planned exactly as before; the extras follow its train images
        assert floored[:n_base] == base[:n_base] and floored[n_train:] == base[n_base:]
        extra = floored[n_base:n_train]
        assert all(j.split == "train" and j.label == "good" and not j.regions for j in extra)
        assert [j.name for j in extra] == [f"{i:06d}.png" for i in range(n_base, n_train)]
    cs = next(c for c in THREECAD if c.abbreviation == "CS")
    assert sum(j.split == "train" for j in plan_category(cs, 0.01, 9, 128)) == 4  # the reported case
    for cat in THREECAD:  # never at full scale, whatever the floors
        assert plan_category(cat, 1.0, 0, None, min_train=409, min_test_good=196) == \
            plan_category(cat, 1.0, 0, None)


def test_min_test_good_floor_only_appends_good_test_images():
    """At scale 0.01 some categories had 2 good test images: an image AUROC of nothing."""
    for cat in THREECAD:
        base = plan_category(cat, 0.01, 9, 128, 16)
        floored = plan_category(cat, 0.01, 9, 128, 16, min_test_good=8)
        good = lambda jobs: [j for j in jobs if j.split == "test" and not j.regions]  # noqa: E731
        n_base, n_good = len(good(base)), len(good(floored))
        assert n_good == max(8, n_base) and n_good >= 8
        assert good(floored)[:n_base] == good(base)  # the scaled ones unchanged, the extras after
        assert [j.name for j in good(floored)[n_base:]] == [f"{i:06d}.png" for i in range(n_base, n_good)]
        assert [j for j in floored if j.split == "train" or j.regions] == \
            [j for j in base if j.split == "train" or j.regions]
    counts = {c.abbreviation: sum(j.split == "test" and not j.regions for j in plan_category(c, 0.01, 9, 128))
              for c in THREECAD}
    assert min(counts.values()) == 2  # the reported case, without the floor (CS)


def test_floor_adds_files_and_changes_nothing_else(tmp_path, caplog):
    kw = dict(seed=4, max_size=32, categories=["ACC", "CS"], workers=1, progress=False)
    bare = generate(tmp_path / "bare", scale=0.004, min_train=0, **kw)
    floored = generate(tmp_path / "floored", scale=0.004, **kw)  # the default floor, 16
    files = lambda root: {p.relative_to(root).as_posix(): p.read_bytes()  # noqa: E731
                          for p in root.rglob("*") if p.is_file()}
    a, b = files(bare), files(floored)
    changed = {k for k in a if a[k] != b.get(k)}
    assert changed == {"synthetic.json"}
    added = sorted(set(b) - set(a))
    assert all(re.fullmatch(r"(Aluminum_Camera_Cover|Copper_Stator)/train/good/\d{6}\.png", k) for k in added)
    assert len(added) == (16 - 3) + (16 - 2)  # ACC 784 and CS 409 at 0.004: 3 and 2 images
    info = json.loads(b["synthetic.json"])
    assert info["min_train"] == 16 and {v["train_good"] for v in info["counts"].values()} == {16}
    assert "min_train" not in json.loads(a["synthetic.json"])
    assert not scan_root(floored).problems
    # a scale where every category is above the floor: the same bytes as without it
    above = generate(tmp_path / "above", scale=0.05, **{**kw, "categories": ["CS"]})
    plain = generate(tmp_path / "plain", scale=0.05, min_train=0, **{**kw, "categories": ["CS"]})
    assert tree_hash(above) == tree_hash(plain)


def test_full_scale_marker_has_no_floor():
    cats = [c for c in THREECAD if c.abbreviation == "CS"]
    jobs = plan_category(cats[0], 1.0, 0, None)
    info = writer.marker(cats, jobs, 1.0, 0, None, 16, 8)
    assert "min_train" not in info and "min_test_good" not in info and info["version"] == GENERATOR_VERSION == "4"


def test_test_good_floor_adds_good_test_files_only(tmp_path):
    kw = dict(scale=0.004, seed=4, max_size=32, categories=["CS"], workers=1, progress=False)
    bare = generate(tmp_path / "bare", min_test_good=0, **kw)
    floored = generate(tmp_path / "floored", **kw)  # the default floor, 8
    a = {p.relative_to(bare).as_posix() for p in bare.rglob("*") if p.is_file()}
    b = {p.relative_to(floored).as_posix() for p in floored.rglob("*") if p.is_file()}
    assert a < b and sorted(b - a) == [f"Copper_Stator/test/good/{i:06d}.png" for i in range(1, 8)]
    info = json.loads((floored / "synthetic.json").read_text())
    assert info["min_test_good"] == 8 and info["counts"]["CS"]["test_good"] == 8
    assert "min_test_good" not in json.loads((bare / "synthetic.json").read_text())
    assert not scan_root(floored).problems


# --- one product per category (generator version 2) ----------------------------------------
# Mean pairwise correlation of the first 8 train images per category (scale 0.01, 64 px,
# seed 0, training floor 16), resized to 64x64 grey. Version 1 drew a new layout per image;
# version 2 draws one per category. Measured: (version 1, version 2).
ALIGNMENT = {"ACC": (0.615, 0.933), "AI": (0.142, 0.887), "AMF": (0.671, 0.878),
             "ANMF": (0.492, 0.708), "ANI": (0.096, 0.917), "AP": (0.083, 0.814),
             "CS": (0.622, 0.809), "IS": (0.625, 0.795)}
# Mean pairwise IoU of Scene.part over the same images, at 64x64: version 1 0.48 (CS) to
# 0.95 (AMF); version 2 0.65 (IS, 36 fine teeth) to 0.97.
PART_IOU = {"CS": 0.7, "IS": 0.6}  # the rest: 0.9


def _grey64(image: np.ndarray) -> np.ndarray:
    g = np.asarray(Image.fromarray(image).convert("L").resize((64, 64), Image.BILINEAR), np.float64).ravel()
    return (g - g.mean()) / (g.std() + 1e-9)


def _mean_pairwise(values: list, fn) -> float:
    return float(np.mean([fn(a, b) for i, a in enumerate(values) for b in values[i + 1:]]))


def test_images_of_a_category_show_one_product():
    """Good images of a category line up (correlation) and their parts overlap (IoU), as in
    3CAD, where each category is one product in a fixed pose."""
    for cat in THREECAD:
        jobs = [j for j in plan_category(cat, 0.01, 0, 64, 16) if j.split == "train"][:8]
        grey = [_grey64(render_job(j).image) for j in jobs]
        corr = _mean_pairwise(grey, lambda a, b: float(np.mean(a * b)))
        v1, v2 = ALIGNMENT[cat.abbreviation]
        assert corr > (v1 + v2) / 2, (cat.abbreviation, corr)
        parts = []
        for j in jobs:
            scene = render_scene(j.category, image_rng(j), j.height, j.width,
                                 layout=category_layout(j.category, j.layout_stream))
            small = Image.fromarray(scene.part.astype(np.uint8) * 255).resize((64, 64), Image.NEAREST)
            parts.append(np.asarray(small) > 127)
        iou = _mean_pairwise(parts, lambda a, b: (a & b).sum() / max(1, (a | b).sum()))
        assert iou > PART_IOU.get(cat.abbreviation, 0.9), (cat.abbreviation, iou)


def test_layout_depends_on_seed_and_category_only():
    cats = {c.abbreviation: c for c in THREECAD}
    jobs = plan_category(cats["AP"], 0.01, 3, 64, 16)
    assert len({j.layout_stream for j in jobs}) == 1
    assert jobs[0].layout_stream != plan_category(cats["AP"], 0.01, 4, 64)[0].layout_stream
    assert jobs[0].layout_stream != plan_category(cats["AI"], 0.01, 3, 64)[0].layout_stream
    assert category_layout("AP", (3, 5, 97)) == category_layout("AP", (3, 5, 97))  # frozen, cached


@pytest.mark.parametrize("abbr", sorted(DEFECT_TYPES))
def test_every_layout_shows_the_edges_its_defects_need(abbr):
    """Good and defective images show one product, so every layout of a category with
    warping holds an outline and a rim in view, at every size, for many seeds."""
    edges = frozenset(e for e in ("outer", "inner") if f"{e}_warping" in DEFECT_TYPES[abbr])
    ci = [c.abbreviation for c in THREECAD].index(abbr)
    for seed in range(24 if edges else 3):
        layout = category_layout(abbr, (seed, ci, 97))
        for h, w in ((32, 32), (40, 64), (64, 36)):
            scene = render_scene(abbr, np.random.default_rng(seed), h, w, edges, layout)  # raises if not
            assert scene.part.shape == (h, w) and scene.part.mean() > 0.05


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path, caplog):
    dead = _dead_pid()
    host = writer._host_tag()
    names = {"legacy": f".d.synth-{dead}-0a1b2c3d", "dead": f".d.synth-{dead}-deadbeef-{host}",
             "old": f".d.old-{dead}-00000000-{host}", "alive": f".d.synth-{os.getppid()}-cafef00d-{host}",
             "elsewhere": f".d.synth-{dead}-12345678-otherhost", "other_out": f".e.synth-{dead}-0a1b2c3d"}
    for name in names.values():
        (tmp_path / name / "Copper_Stator").mkdir(parents=True)
        (tmp_path / name / "Copper_Stator" / "x.png").write_bytes(b"x" * 100)
    with caplog.at_level(logging.WARNING, logger="threecad.synth.writer"):
        generate(tmp_path / "d", scale=0.001, max_size=32, categories="CS", workers=1, progress=False)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"d", names["alive"], names["elsewhere"], names["other_out"]}
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(msgs) == 1 and msgs[0].startswith("removed 3 temporary folders left by killed synth runs")


def test_not_enough_disk_is_a_one_line_refusal(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(writer.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=50_000))
    res = assert_refused(["synth", "--out", str(tmp_path / "d"), "--scale", "0.002", "--max-size", "64",
                          "--category", "ACC"], names=["--out", "free"], watch=[tmp_path])
    assert "MB" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_size_estimate_covers_the_tree(small_tree):
    jobs = writer.plan(THREECAD, 0.004, 3, 64, writer.DEFAULT_MIN_TRAIN)
    written = sum(p.stat().st_size for p in small_tree.rglob("*") if p.is_file())
    assert written < writer.estimate_bytes(jobs) < 4 * written
    full = writer.estimate_bytes(writer.plan(THREECAD, 1.0, 0, None))
    assert 25e9 < full < 40e9  # README: about 25 GB on disk at scale 1.0


# --- output identity across speed work (issue #15) -----------------------------------------
# Digests of a fixed plan, recorded from generator version 4 (16-px region floor; 3: visible dents; version 2 brought
# one layout per category; the version-1 digests came from the code before the speed-ups, commit 6b554f9): per
# category, the files (sha256 of each, with its path) and the decoded pixels. Output
# bytes depend on the library versions (numpy's float32 maths, Pillow's resize and its
# bundled zlib-ng), so the digests are checked where those match the recording's.
GOLDEN_VERSIONS = {"numpy": "2.4.6", "PIL": "13.0.0", "scipy": "1.17.1"}
GOLDEN_TREE = {  # generate(scale=0.003, seed=21, max_size=128, min_train=0, min_test_good=0): (files, pixels)
    "ACC": ("2d02afdf3ed31c9a624c974a", "792f74be2542ca0941bfa5fd"),
    "AI": ("6ea9e224be3498fa8d923a9d", "d1b2a3125aa1f822ad933b53"),
    "AMF": ("f0fa2ad7b91366085a8f9674", "70ab0f533fd322d52e3740d8"),
    "ANMF": ("8ddd76f4c8fa26410bce48c2", "cb364ef871278082136b088b"),
    "ANI": ("a4e01b1545343661ca7c8687", "7fa085117adfa336fac04f92"),
    "AP": ("defc99684a8c81165562fad4", "5faf4d02226b2cf7a2680879"),
    "CS": ("5d2625c412458596139fda6a", "493fda497d54ac38bc91713f"),
    "IS": ("2ee83b65835277972f74f522", "1fbe00a90cb29a28b47d5e29"),
}
GOLDEN_MARKER = "6160bfee950fe2a69ee7f873"
GOLDEN_NATIVE = {  # the first train image and two defective ones of distinct types, up to 520 px
    "ACC": ("e112d4b6597c80bb02f854bd", "d6571d672bc62246b2fe3aac"),
    "AI": ("8efd1448fcf83e2f5650139c", "3b473a34e984c23fd1139a74"),
    "AMF": ("20dc802b096394de382f6830", "e86aad5898fe7c4c3429a646"),
    "ANMF": ("f0ead9c4486cf6285ccbb6aa", "a5ae4c0de419e73ec852b8e4"),
    "ANI": ("0c2f16403e42b6dc0fbee451", "d7af29016f78e787eeba0037"),
    "AP": ("aa218c695313f99b967a3029", "0366c256e27ec6993c67ed00"),
    "CS": ("583b3600e36ff7d973d834cb", "5647df71041c8fa8a5460b82"),
    "IS": ("56224a9a2920d00a06923850", "7279a42e4df67d1822f5a4f2"),
}


def _file_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).digest()
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + digest)
    return h.hexdigest()[:24]


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        with Image.open(p) as im:
            h.update(p.relative_to(root).as_posix().encode() + im.mode.encode() + np.asarray(im).tobytes())
    return h.hexdigest()[:24]


def _golden_versions_differ() -> str | None:
    import PIL
    import scipy
    have = {"numpy": np.__version__, "PIL": PIL.__version__, "scipy": scipy.__version__}
    if have != GOLDEN_VERSIONS:
        return f"digests recorded with {GOLDEN_VERSIONS}, this environment has {have}"
    return None


def test_output_identical_to_the_recorded_digests(tmp_path):
    """Same seed, same files as recorded (generator version 4): the whole writer at small sizes
    (images, masks, sidecars, marker), and a few images at up to 520 px per category
    (regions that must survive the resize to 256, every kind's effect)."""
    why = _golden_versions_differ()
    if why:
        pytest.skip(why)
    root = generate(tmp_path / "t", scale=0.003, seed=21, max_size=128, workers=1, progress=False,
                    min_train=0, min_test_good=0)
    got = {c.abbreviation: (_file_digest(root / c.folder), _pixel_digest(root / c.folder)) for c in THREECAD}
    assert got == GOLDEN_TREE
    assert hashlib.sha256((root / "synthetic.json").read_bytes()).hexdigest()[:24] == GOLDEN_MARKER
    native = {}
    for cat in THREECAD:
        jobs = plan_category(cat, 0.02, 11, 520, 0)
        picked, labels = [jobs[0]], set()
        for j in jobs:
            if j.regions and j.label not in labels and len(labels) < 2:
                picked.append(j)
                labels.add(j.label)
        base = tmp_path / "native" / cat.folder
        for j in picked:
            (base / j.relpath).parent.mkdir(parents=True, exist_ok=True)
            (base / j.mask_relpath).parent.mkdir(parents=True, exist_ok=True)
            writer.write_job(j, str(base.parent))
        native[cat.abbreviation] = (_file_digest(base), _pixel_digest(base))
    assert native == GOLDEN_NATIVE


def test_worker_allocator_settings_apply_only_where_glibc_has_them():
    """The pool's initializer tunes glibc malloc in a fresh process (never the caller's)."""
    code = "import threecad.synth.writer as w; print(w.tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import platform
    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert out.strip() == expected


def test_reuse_leaves_the_same_set_as_it_is(tmp_path):
    """`--reuse` (make demo's) writes nothing over a folder that already holds the set its arguments
    make, so a second `make demo` never rewrites the data a running bench reads; other arguments are
    written (with --force) or refused (without)."""
    from click.testing import CliRunner

    from threecad.cli import main

    args = ["synth", "--out", str(tmp_path / "d"), "--scale", "0.01", "--max-size", "64", "--category", "ACC"]
    first = CliRunner().invoke(main, [*args, "--reuse"])
    assert first.exit_code == 0, first.output
    image = next((tmp_path / "d").rglob("*.png"))
    stamp = image.stat().st_mtime_ns, (tmp_path / "d" / "synthetic.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, [*args, "--reuse", "--force"])
    assert again.exit_code == 0 and "nothing written" in again.output, again.output
    assert (image.stat().st_mtime_ns, (tmp_path / "d" / "synthetic.json").stat().st_mtime_ns) == stamp
    other = CliRunner().invoke(main, [*args[:-2], "--category", "CS", "--reuse"])
    assert other.exit_code != 0 and "--force" in other.stderr
