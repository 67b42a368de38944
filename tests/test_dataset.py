"""ThreeCAD dataset and its preprocessing cache, checked against torch's own resizing."""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import threecad.cache as cache_module
import threecad.dataset as dataset_module
from threecad.cache import CachedArray, ensure_cache
from threecad.dataset import ThreeCAD, load_sample
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import scan_root

ACC = "Aluminum_Camera_Cover"


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_items_match_torch_resizing(tiny_root, tmp_path):
    ds = ThreeCAD(tiny_root, "acc", split="test", image_size=32, cache=False)
    assert len(ds) == 3 + 2 * 3
    for item in ds:
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
        assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, 32, 32)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        src = torch.from_numpy(_png(Path(item["path"])).copy()).permute(2, 0, 1)[None].float()
        want = F.interpolate(src, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(item["image"] * 255, want[0], atol=1.5)
        rel = Path(item["path"]).relative_to(tiny_root / ACC)
        if item["defect_type"] == "good":
            assert item["label"] == 0 and item["mask"].sum() == 0
        else:
            assert item["label"] == 1
            mask = _png(tiny_root / ACC / "ground_truth" / rel.parts[1] / rel.name)
            m = torch.from_numpy((mask > 127).astype(np.float32))[None, None]
            assert torch.equal(item["mask"], F.interpolate(m, size=(32, 32), mode="nearest-exact")[0])
            assert item["mask"].sum() > 0
            assert set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_grey_and_nonsquare_images(tiny_root, tmp_path):
    grey = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (24, 1))  # 24 x 40, not square
    Image.fromarray(grey, mode="L").save(tiny_root / ACC / "train" / "good" / "zz_grey.png")
    ds = ThreeCAD(tiny_root, "ACC", image_size=20, cache=tmp_path / "c")
    item = ds[len(ds) - 1]
    assert item["path"].endswith("zz_grey.png")
    assert item["image"].shape == (3, 20, 20)
    assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][1], item["image"][2])
    src = torch.from_numpy(grey).float()[None, None]
    want = F.interpolate(src, size=(20, 20), mode="bilinear", antialias=True)[0, 0]
    assert torch.allclose(item["image"][0] * 255, want, atol=1.5)  # both axes squeezed independently


def test_cache_equals_decoding_and_reads_no_png(tiny_root, tmp_path, monkeypatch):
    plain = list(ThreeCAD(tiny_root, "CS", split="test", image_size=24, cache=False))
    cached = ThreeCAD(tiny_root, "Copper_Stator", split="test", image_size=24, cache=tmp_path / "c")
    assert cached.cache_path is not None and cached.cache_path.parent == tmp_path / "c"
    assert cached.cache_path.stat().st_size >= len(cached) * 4 * 24 * 24

    def no_decoding(*args, **kwargs):
        raise AssertionError("a PNG was decoded after the cache was built")

    monkeypatch.setattr(dataset_module.Image, "open", no_decoding)
    for a, b in zip(plain, cached):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert (a["label"], a["defect_type"], a["path"]) == (b["label"], b["defect_type"], b["path"])
    again = ThreeCAD(tiny_root, "CS", split="test", image_size=24, cache=tmp_path / "c")
    assert again.cache_path == cached.cache_path and torch.equal(again[0]["image"], cached[0]["image"])


def test_cache_key_separates_size_split_and_category(tiny_root, tmp_path):
    paths = {ThreeCAD(tiny_root, c, split=s, image_size=n, cache=tmp_path).cache_path
             for c, s, n in [("ACC", "train", 16), ("ACC", "train", 24), ("ACC", "test", 16), ("CS", "train", 16)]}
    assert len(paths) == 4
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_edited_image_invalidates_cache(tiny_root, tmp_path):
    first = ThreeCAD(tiny_root, "ACC", image_size=16, cache=tmp_path)
    target = Path(first[0]["path"])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(target)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = ThreeCAD(tiny_root, "ACC", image_size=16, cache=tmp_path)
    assert second.cache_path != first.cache_path
    assert second[0]["image"].max() == 0.0 and first[0]["image"].max() > 0.5


def test_default_cache_dir_from_env(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "envcache"))
    ds = ThreeCAD(tiny_root, "ACC", image_size=8)
    assert ds.cache_path.parent == tmp_path / "envcache" and ds.cache_path.is_file()


def test_dataloader_workers_and_collate(tiny_root, tmp_path):
    ds = ThreeCAD(tiny_root, "ACC", split="test", image_size=16, cache=tmp_path)
    serial = list(DataLoader(ds, batch_size=4, num_workers=0))
    forked = list(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork"))
    assert len(serial) == len(forked) == 3
    for a, b in zip(serial, forked):
        assert a["image"].shape[1:] == (3, 16, 16) and a["mask"].shape[1:] == (1, 16, 16)
        assert a["label"].dtype == torch.int64
        assert isinstance(a["defect_type"], list) and isinstance(a["path"], list)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["path"] == b["path"]


def _build_in_child(root: str, cache: str, queue) -> None:
    ds = ThreeCAD(root, "ACC", split="test", image_size=16, cache=cache)
    queue.put(torch.stack([ds[i]["image"] for i in range(len(ds))]).sum().item())


def test_two_processes_build_one_cache(tiny_root, tmp_path, monkeypatch):
    builds = tmp_path / "builds.log"
    real_build = cache_module._build

    def counted_build(*args, **kwargs):
        with open(builds, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_build", counted_build)  # inherited by the forked children
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tiny_root), str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    sums = [queue.get(timeout=5) for _ in procs]
    plain = ThreeCAD(tiny_root, "ACC", split="test", image_size=16, cache=False)
    want = torch.stack([plain[i]["image"] for i in range(len(plain))]).sum().item()
    assert sums == pytest.approx([want, want])
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(builds.read_text().split()) == 1  # the lock let one build; the other waited


def test_parallel_build_equals_serial(tiny_root, tmp_path):
    rows = scan_root(tiny_root).table
    rows = rows[rows["split"] == "test"].reset_index(drop=True)
    assert len(rows) >= 8  # enough to take the thread-pool path

    def load(i: int) -> np.ndarray:
        return load_sample(rows["image_path"][i], rows["mask_path"][i], 16)

    serial = ensure_cache(tmp_path / "serial.npy", len(rows), (4 * 16 * 16,), load, workers=1)
    parallel = ensure_cache(tmp_path / "parallel.npy", len(rows), (4 * 16 * 16,), load, workers=4)
    a, b = CachedArray(serial), CachedArray(parallel)
    assert all(np.array_equal(a[i], b[i]) for i in range(len(rows)))
    assert np.array_equal(a[2], load(2))


def test_killed_build_leaves_nothing_and_is_redone(tiny_root, tmp_path):
    calls = []

    def flaky(i: int) -> np.ndarray:
        calls.append(i)
        if i == 3:
            raise RuntimeError("disk on fire")
        return np.full((2,), i, np.uint8)

    with pytest.raises(RuntimeError):
        ensure_cache(tmp_path / "x.npy", 5, (2,), flaky, workers=1)
    assert not (tmp_path / "x.npy").exists() and not list(tmp_path.glob(".*.tmp"))
    path = ensure_cache(tmp_path / "x.npy", 5, (2,), lambda i: np.full((2,), i, np.uint8), workers=1)
    assert CachedArray(path)[4].tolist() == [4, 4]


def test_table_argument_avoids_rescan_and_transform_applies(tiny_root, tmp_path, monkeypatch):
    table = scan_root(tiny_root).table

    def no_scan(root):
        raise AssertionError("rescanned although a table was given")

    monkeypatch.setattr(dataset_module, "scan_root", no_scan)
    ds = ThreeCAD(tiny_root, "cs", image_size=8, cache=False, table=table, transform=lambda x: 1 - x)
    plain = ThreeCAD(tiny_root, "cs", image_size=8, cache=False, table=table)
    assert len(ds) == 6
    assert torch.allclose(ds[0]["image"], 1 - plain[0]["image"])
    assert torch.equal(ds[0]["mask"], plain[0]["mask"])


def test_bad_input_gets_clear_errors(tiny_root, tmp_path):
    with pytest.raises(ThreecadError, match="Did you mean"):
        ThreeCAD(tiny_root, "Copper_Statr", cache=False)
    with pytest.raises(ThreecadError, match="needs a split manifest"):
        ThreeCAD(tiny_root, "ACC", split="val", cache=False)
    with pytest.raises(ThreecadError, match="split must be one of"):
        ThreeCAD(tiny_root, "ACC", split="validation", cache=False)
    with pytest.raises(DatasetError, match="does not exist"):
        ThreeCAD(tmp_path / "nowhere", "ACC", cache=False)
    (tiny_root / ACC / "ground_truth" / "bump" / "001.png").unlink()
    with pytest.raises(DatasetError, match="no mask"):
        ThreeCAD(tiny_root, "ACC", split="test", cache=False)
    (tiny_root / ACC / "train" / "good" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = ThreeCAD(tiny_root, "ACC", split="train", cache=False)
    with pytest.raises(DatasetError, match="000.png"):
        ds[0]
    with pytest.raises(DatasetError, match="000.png"):
        ThreeCAD(tiny_root, "ACC", split="train", cache=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npy"))


def test_mask_size_gives_model_size_images_and_eval_size_masks(tiny_root, tmp_path):
    """A test split as the evaluation uses it: each resized once from the original."""
    both = ThreeCAD(tiny_root, "ACC", "test", image_size=32, mask_size=64, cache=tmp_path / "c")
    model = ThreeCAD(tiny_root, "ACC", "test", image_size=32, cache=tmp_path / "c")
    evaluation = ThreeCAD(tiny_root, "ACC", "test", image_size=64, cache=tmp_path / "c")
    uncached = ThreeCAD(tiny_root, "ACC", "test", image_size=32, mask_size=64, cache=False)
    assert len(both) == len(evaluation)
    for i in range(len(both)):
        item = both[i]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 64, 64)
        assert torch.equal(item["image"], model[i]["image"]) and torch.equal(item["mask"], evaluation[i]["mask"])
        assert torch.equal(item["image"], uncached[i]["image"]) and torch.equal(item["mask"], uncached[i]["mask"])
        assert (item["label"], item["path"]) == (evaluation[i]["label"], evaluation[i]["path"])
