"""Checked caches and checkpoints: a flipped byte, a truncated file or a missing checksum is
noticed when the file is opened; a cache is rebuilt (to the same bytes), a checkpoint is
refused, and an epoch checkpoint on resume is skipped for the last good one."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from threecad import integrity
from threecad.cache import CachedArray, ensure_cache
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.training import EpochCheckpoint, multistep_scheduler, train_epochs


def flip(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, n: int = 10) -> None:
    path.write_bytes(path.read_bytes()[:-n])


def _item(i: int) -> np.ndarray:
    return (np.arange(4 * 8 * 8, dtype=np.int64).reshape(4, 8, 8) * (i + 3) % 251).astype(np.uint8)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ plain files


def test_sum_detects_flip_truncation_and_missing_sum(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(bytes(range(256)) * 40)
    side = integrity.write_sum(f)
    assert side == tmp_path / "data.bin.sum"
    algo, digest, size, name = side.read_text().split()
    assert (algo, int(size), name) == (integrity.DEFAULT_ALGORITHM, 10240, "data.bin")
    assert algo == "xxh3_128" and len(digest) == 32
    assert integrity.verify_sum(f) and integrity.problem(f) is None
    flip(f, 5000)
    assert not integrity.verify_sum(f)
    assert "does not match" in integrity.problem(f)
    flip(f, 5000)  # flipped back: the same bytes verify again
    assert integrity.verify_sum(f)
    truncate(f)
    assert "truncated" in integrity.problem(f)
    f.write_bytes(bytes(range(256)) * 40)
    side.unlink()
    assert "no checksum" in integrity.problem(f) and not integrity.verify_sum(f)
    assert integrity.problem(tmp_path / "absent") == integrity.MISSING


def test_sums_of_other_algorithms_verify(tmp_path):
    f = tmp_path / "d.bin"
    f.write_bytes(b"threecad" * 1000)
    for algo in ("blake2b", "sha256"):
        integrity.write_sum(f, algorithm=algo)
        assert integrity.verify_sum(f)
    integrity.sum_path(f).write_text("md7 00 8000 d.bin\n")
    assert "unknown checksum algorithm" in integrity.problem(f)


# ------------------------------------------------------------------ caches


def test_flipped_cache_byte_is_rebuilt_to_the_same_bytes(tmp_path, caplog):
    path = tmp_path / "c.npy"
    calls = []

    def load(i):
        calls.append(i)
        return _item(i)

    ensure_cache(path, 5, (4, 8, 8), load, workers=1)
    original = path.read_bytes()
    assert integrity.verify_sum(path) and len(calls) == 5
    ensure_cache(path, 5, (4, 8, 8), load, workers=1)  # intact: opened, not rebuilt
    assert len(calls) == 5
    flip(path)  # inside the pixel data: np.load would happily read it
    assert np.load(path, mmap_mode="r").shape == (5, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="threecad.cache"):
        ensure_cache(path, 5, (4, 8, 8), load, workers=1)
    assert len(calls) == 10  # rebuilt
    assert path.read_bytes() == original
    msgs = warnings_of(caplog)
    assert len(msgs) == 1 and "rebuilding the cache" in msgs[0] and str(path) in msgs[0]
    assert "does not match" in msgs[0]
    assert np.array_equal(CachedArray(path)[3], _item(3))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:10] + b"(" + p.read_bytes()[11:]), "cannot be opened"),
    (truncate, "cannot be opened"),
    (lambda p: integrity.sum_path(p).unlink(), "no checksum"),
    (lambda p: integrity.sum_path(p).write_text("garbage\n"), "malformed"),
])
def test_unopenable_or_unchecked_cache_is_rebuilt(tmp_path, caplog, damage, reason):
    """A damaged `.npy` header (np.load raises tokenize's TokenError) must not escape."""
    path = tmp_path / "c.npy"
    ensure_cache(path, 3, (4, 8, 8), _item, workers=1)
    original = path.read_bytes()
    damage(path)
    with caplog.at_level(logging.WARNING, logger="threecad.cache"):
        ensure_cache(path, 3, (4, 8, 8), _item, workers=1)
    msgs = warnings_of(caplog)
    assert len(msgs) == 1 and reason in msgs[0], msgs
    assert path.read_bytes() == original and integrity.verify_sum(path)


def test_dataset_rebuilds_a_flipped_cache(tiny_root, tmp_path, caplog):
    """The reported case: a flipped cache byte changed the benchmark's numbers with exit 0."""
    first = ThreeCAD(tiny_root, "ACC", split="test", image_size=16, cache=tmp_path / "c")
    want = torch.stack([first[i]["image"] for i in range(len(first))])
    flip(first.cache_path, -7)
    with caplog.at_level(logging.WARNING, logger="threecad.cache"):
        again = ThreeCAD(tiny_root, "ACC", split="test", image_size=16, cache=tmp_path / "c")
    got = torch.stack([again[i]["image"] for i in range(len(again))])
    assert torch.equal(got, want)
    assert len(warnings_of(caplog)) == 1


# ------------------------------------------------------------------ checkpoints


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"epoch": 3, "model": {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64)}}


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = tmp_path / "model.pt"
    integrity.save_checked(_state(), path)
    assert integrity.sum_path(path).is_file()
    back = integrity.load_checked(path)
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], _state()["model"]["w"])
    flip(path, 2000)
    with pytest.raises(ThreecadError, match=r"refusing the checkpoint .*model\.pt.*does not match"):
        integrity.load_checked(path)
    integrity.save_checked(_state(), path)  # a new save replaces file and sum together
    assert integrity.load_checked(path)["epoch"] == 3
    truncate(path)
    with pytest.raises(ThreecadError, match="truncated"):
        integrity.load_checked(path)
    integrity.save_checked(_state(), path)
    integrity.sum_path(path).unlink()
    with pytest.raises(ThreecadError, match=r"model\.pt: it has no checksum"):
        integrity.load_checked(path)
    with pytest.raises(ThreecadError, match="no checkpoint at"):
        integrity.load_checked(tmp_path / "absent.pt")


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    integrity.save_checked(_state(), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        integrity.save_checked({"bad": lambda: 0}, path)  # torch.save cannot pickle a lambda
    assert path.read_bytes() == before and integrity.verify_sum(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sum"]


def test_epoch_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ck = EpochCheckpoint(tmp_path)
    for epoch in range(3):
        ck.save({"epoch": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch.prev.pt", "epoch.prev.pt.sum",
                                                         "epoch.pt", "epoch.pt.sum"]
    assert ck.load()["epoch"] == 2
    flip(tmp_path / "epoch.pt", 40)
    with caplog.at_level(logging.WARNING, logger="threecad.training"):
        assert ck.load()["epoch"] == 1
    assert any("ignoring the epoch checkpoint" in m and "epoch.pt" in m for m in warnings_of(caplog))
    caplog.clear()
    (tmp_path / "epoch.prev.pt.sum").unlink()  # no sum: not trusted either
    with caplog.at_level(logging.WARNING, logger="threecad.training"):
        assert ck.load() is None
    msgs = warnings_of(caplog)
    assert len(msgs) == 3 and "no checksum" in msgs[1] and "training from the start" in msgs[2]
    ck.remove()
    assert list(tmp_path.iterdir()) == []


class _Stop(Exception):
    pass


def _fit(work_dir: Path, stop_at_step: int | None = None) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = multistep_scheduler(opt, 4, (0.5,), 0.2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(1)
    loader = [{"image": torch.randn(4, 8, generator=g)} for _ in range(3)]
    steps = [0]

    def step(batch):
        steps[0] += 1
        if stop_at_step is not None and steps[0] == stop_at_step:
            raise _Stop
        noise = torch.randn(batch["image"].shape)  # global RNG: must be restored on resume
        return {"loss": (model(batch["image"] + 0.1 * noise) ** 2).mean()}

    train_epochs(model, opt, sched, scaler, step, loader, epochs=4, device=torch.device("cpu"),
                 channels_last=False, work_dir=work_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_skips_a_flipped_epoch_checkpoint_and_matches_an_uninterrupted_fit(tmp_path, caplog):
    want = _fit(tmp_path / "clean")
    work = tmp_path / "work"
    with pytest.raises(_Stop):
        _fit(work, stop_at_step=8)  # killed during epoch 3: epochs 1 and 2 are saved
    assert torch.load(work / "epoch.pt", weights_only=True)["epoch"] == 1
    flip(work / "epoch.pt", -60)
    with caplog.at_level(logging.WARNING, logger="threecad.training"):
        got = _fit(work)  # resumes after epoch 1 from epoch.prev.pt
    assert any("ignoring the epoch checkpoint" in m for m in warnings_of(caplog))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert list(work.iterdir()) == []  # a finished fit leaves no checkpoint
