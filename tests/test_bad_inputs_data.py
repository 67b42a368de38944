"""Bad input to the dataset commands (verify, stats, split, synth): one `error:` line that
names the culprit, no traceback, nothing written. Every case goes through the CLI.

Permission cases run twice: with a real chmod (skipped as root, where chmod stops nothing)
and simulated (the same system calls made to fail with EACCES), so that CI, which runs as
root, still checks the message and the exit.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_tiny_dataset
from refusal import assert_refused
from threecad.cli import main

DATA_COMMANDS = ("verify", "stats", "split")
EXTRA = {"verify": ["--no-progress"], "stats": ["--no-cache", "--workers", "1"], "split": []}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "root", n_train=3, n_good=1, n_defect=1, defect_types=("bump",))


def _args(command: str, root: Path, *more: str) -> list[str]:
    return [command, "--root", str(root), *EXTRA[command], *more]


# ------------------------------------------------------------------ denial helpers


def _under(path, top: Path) -> bool:
    try:
        Path(os.fspath(path)).resolve().relative_to(top.resolve())
        return True
    except (ValueError, TypeError):
        return False


@pytest.fixture(params=["chmod", "simulated"])
def deny(request, monkeypatch):
    """deny(path, "read") makes a folder unreadable, deny(path, "write") read-only."""

    def apply(path: Path, what: str) -> None:
        if request.param == "chmod":
            if os.geteuid() == 0:
                pytest.skip("chmod does not stop root; the 'simulated' variant covers this case")
            os.chmod(path, 0o000 if what == "read" else 0o555)
            request.addfinalizer(lambda: os.chmod(path, 0o755))
            return
        denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
        if what == "read":
            real_scandir = os.scandir

            def scandir(p="."):
                if Path(os.fspath(p)).resolve() == path.resolve():
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
                return real_scandir(p)

            monkeypatch.setattr(os, "scandir", scandir)
            return
        real_access, real_mkdir, real_mkstemp = os.access, os.mkdir, tempfile.mkstemp

        def access(p, mode, *a, **k):
            if mode & os.W_OK and _under(p, path):
                return False
            return real_access(p, mode, *a, **k)

        def mkdir(p, *a, **k):
            if _under(Path(os.fspath(p)).parent, path):
                raise PermissionError(denied.errno, denied.strerror, os.fspath(p))
            return real_mkdir(p, *a, **k)

        def mkstemp(*a, dir=None, **k):
            if dir is not None and _under(dir, path):
                raise PermissionError(denied.errno, denied.strerror, os.fspath(dir))
            return real_mkstemp(*a, dir=dir, **k)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    return apply


# ------------------------------------------------------------------ the root


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_nonexistent_root(command, tmp_path):
    missing = tmp_path / "nowhere"
    assert_refused(_args(command, missing), names=[str(missing), "does not exist"], watch=[tmp_path])


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_file_as_root(command, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    assert_refused(_args(command, file), names=[str(file)], watch=[tmp_path])


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_unreadable_root(command, root, deny):
    deny(root, "read")
    # click's own check ("Directory ... is not readable") or the scan's ("cannot read dataset root")
    assert_refused(_args(command, root), names=[str(root), "read"], watch=[root])


@pytest.mark.parametrize("where", ["Copper_Stator", "Copper_Stator/train/good", "Copper_Stator/ground_truth"])
@pytest.mark.parametrize("command", ("stats", "split"))
def test_unreadable_category_folder(command, root, deny, where):
    folder = root / where
    deny(folder, "read")
    assert_refused(_args(command, root), names=[f"cannot read {folder}", "permission denied"], watch=[root])
    # the other category is still usable on its own
    result = CliRunner().invoke(main, _args(command, root, "--category", "ACC", *(
        ["--out", str(root.parent / "s.csv")] if command == "split" else [])))
    assert result.exit_code == 0, result.output


def test_verify_reports_an_unreadable_folder_as_an_error(root, deny):
    folder = root / "Copper_Stator" / "train" / "good"
    deny(folder, "read")
    result = CliRunner().invoke(main, _args("verify", root))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: unreadable_folder: {folder}: cannot read this folder: permission denied" in result.output


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_unknown_category(command, root):
    assert_refused(_args(command, root, "--category", "XX"), names=["unknown category 'XX'"], watch=[root])


# ------------------------------------------------------------------ split options


@pytest.mark.parametrize("more, name", [
    (["--val-fraction", "2"], "--val-fraction"),
    (["--val-fraction", "-0.1"], "--val-fraction"),
    (["--shots", "-1"], "--shots"),
    (["--shots", "0"], "--shots"),
    (["--seed", "-5"], "--seed"),
    (["--shots", "1000"], "--shots 1000"),
])
def test_split_bad_numbers(root, more, name):
    assert_refused(_args("split", root, *more), names=[name], watch=[root])


def test_split_out_is_a_folder(root, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_refused(_args("split", root, "--out", str(folder)), names=[str(folder)], watch=[root, folder])


# ------------------------------------------------------------------ read-only outputs


def test_split_read_only_out(root, tmp_path, deny):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(ro, "write")
    out = ro / "split.csv"
    assert_refused(_args("split", root, "--out", str(out)), names=[f"cannot write {out}", "permission denied"],
                   watch=[root, ro])


def test_split_read_only_root_default_out(root, deny):
    deny(root, "write")
    assert_refused(_args("split", root), names=[f"cannot write {root / 'split.csv'}"], watch=[root])


def test_verify_read_only_json(root, tmp_path, deny):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(ro, "write")
    out = ro / "report.json"
    assert_refused(_args("verify", root, "--json", str(out)), names=[f"cannot write {out}", "permission denied"],
                   watch=[root, ro])


def test_verify_write_manifest_on_a_read_only_root(root, deny):
    deny(root, "write")
    assert_refused(_args("verify", root, "--write-manifest"),
                   names=[f"cannot write {root / 'MANIFEST.sha256.json'}", "permission denied"], watch=[root])


@pytest.mark.parametrize("option", ["--out", "--json", "--plot"])
def test_stats_read_only_outputs(root, tmp_path, deny, option, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(ro, "write")
    if option == "--json":
        target, more = ro / "s.json", ["--json", str(ro / "s.json")]
    elif option == "--out":
        target, more = ro / "tables", ["--out", str(ro / "tables")]
    else:  # --plot without --out writes to ./threecad-stats
        monkeypatch.chdir(ro)
        target, more = Path("threecad-stats"), ["--plot"]
    assert_refused(_args("stats", root, *more), names=[f"cannot write {target}", "permission denied"],
                   watch=[root, ro])


def test_synth_read_only_out(tmp_path, deny):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(ro, "write")
    out = ro / "synth"
    assert_refused(["synth", "--out", str(out), "--scale", "0.001", "--category", "CS", "--max-size", "32",
                    "--workers", "1"], names=[f"cannot write {out}", "permission denied"], watch=[ro])


# ------------------------------------------------------------------ synth scale


@pytest.mark.parametrize("scale", ["1e9", "1000", "0", "-1", "nan"])
def test_synth_scale_out_of_range(tmp_path, scale):
    out = tmp_path / "synth"
    assert_refused(["synth", "--out", str(out), "--scale", scale, "--workers", "1"], names=["--scale"],
                   watch=[tmp_path])


# ------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("where, code, words", [
    ("mkstemp", errno.EROFS, "read-only file system"),
    ("fsync", errno.ENOSPC, "no space left on device"),
    ("replace", errno.EACCES, "permission denied"),
])
def test_refused_atomic_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, where, code, words):
    from threecad.errors import ThreecadError
    from threecad.fsutil import WriteError, atomic_write_text

    target = tmp_path / "out" / "f.json"
    target.parent.mkdir()
    target.write_text("old")

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr({"mkstemp": tempfile, "fsync": os, "replace": os}[where], where, fail)
    with pytest.raises(WriteError, match=f"^cannot write {target}: {words}$") as err:
        atomic_write_text(target, "new")
    assert isinstance(err.value, ThreecadError) and isinstance(err.value, OSError)
    assert err.value.errno == code
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


# ------------------------------------------------------------------ issue 27: the data cases


@pytest.fixture
def meandist(tmp_path, monkeypatch):
    """The test double `meandist` registered by entry point, and a private cache."""
    from fake_methods import write_distribution

    monkeypatch.syspath_prepend(str(write_distribution(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))
    return ["--method", "meandist", "--device", "cpu", "--eval-size", "32", "--pictures", "0"]


def _flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


def test_stats_masks_sqlite_with_one_flipped_bit(root, tmp_path, monkeypatch, caplog):
    import json
    import sqlite3

    cache = tmp_path / "cache"
    monkeypatch.setenv("THREECAD_CACHE", str(cache))
    args = ["stats", "--root", str(root), "--workers", "1", "--json"]
    first = CliRunner().invoke(main, [*args, str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    db_file = cache / "stats_masks.sqlite"
    with sqlite3.connect(db_file) as db:
        table = db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'masks_v%'").fetchone()[0]
        regions = db.execute(f"SELECT regions FROM {table}").fetchone()[0]
    db.close()
    data = db_file.read_bytes()
    assert data.count(regions) == 1
    _flip_bit(db_file, data.index(regions) + 6)  # the exponent of the first region's area
    second = CliRunner().invoke(main, [*args, str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output
    assert "1 cached mask result(s) fail their checksum; recomputing them" in caplog.text
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    # a file sqlite cannot read any more is started afresh, with a warning too
    caplog.clear()
    db_file.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 16)
    third = CliRunner().invoke(main, [*args, str(tmp_path / "c.json")])
    assert third.exit_code == 0 and "Traceback" not in third.output, third.output
    assert "is damaged" in caplog.text and "starting it afresh" in caplog.text


def test_training_images_replaced_with_same_size_noise_and_mtime_restored(root, tmp_path):
    from PIL import Image

    from threecad.dataset import ThreeCAD

    good = sorted((root / "Copper_Stator" / "train" / "good").glob("*.png"))
    for path in good:  # stored PNGs: the byte size depends on the pixel count only
        Image.open(path).convert("RGB").save(path, compress_level=0)
    first = ThreeCAD(root, "CS", image_size=16, cache=tmp_path / "cache")
    before = first[0]["image"].clone()
    target = good[0]
    stat = target.stat()
    noise = np.random.default_rng(1).integers(0, 256, (*Image.open(target).size[::-1], 3), dtype=np.uint8)
    Image.fromarray(noise).save(target, compress_level=0)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    second = ThreeCAD(root, "CS", image_size=16, cache=tmp_path / "cache")
    fresh = ThreeCAD(root, "CS", image_size=16, cache=False)
    assert second.cache_path != first.cache_path
    assert torch.equal(second[0]["image"], fresh[0]["image"]) and not torch.equal(second[0]["image"], before)


def _run_with_timeout(args: list[str], env: dict[str, str], timeout: float = 120):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "threecad", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_fifo_named_x_png(command, root, tmp_path):
    """Only regular files are read: a FIFO named like an image is an error, not a hang."""
    from fake_methods import pythonpath_with, write_distribution

    fifo = root / "Copper_Stator" / "train" / "good" / "x.png"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=pythonpath_with(write_distribution(tmp_path / "site")),
               THREECAD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = (["verify", "--root", str(root), "--no-progress"] if command == "verify" else
            ["bench", "--root", str(root), "--out", str(tmp_path / "run"), "--method", "meandist",
             "--device", "cpu", "--eval-size", "32", "--pictures", "0"])
    proc = _run_with_timeout(args, env)  # a hang raises TimeoutExpired
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert f"unreadable_image: {fifo}: it is a FIFO, not a regular file; not read" in out
    assert proc.returncode == (1 if command == "verify" else 2), out
    if command == "bench":
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")][0].count(str(fifo)) == 1
        assert not (tmp_path / "run").exists()


def test_verify_empty_category_folder(root):
    (root / "Iron_Stator").mkdir()  # a 3CAD category's folder, emptied
    (root / "My_Part" / "train" / "good").mkdir(parents=True)  # a custom category: folders, no images
    (root / "My_Part" / "test" / "good").mkdir(parents=True)
    result = CliRunner().invoke(main, _args("verify", root))
    assert result.exit_code == 1, result.output
    assert f"error: empty_category: {root / 'Iron_Stator'}: the IS folder has no train/ or test/ inside" \
        in result.output
    assert f"error: no_train_images: {root / 'My_Part' / 'train' / 'good'}" in result.output
    assert f"error: no_test_images: {root / 'My_Part' / 'test'}" in result.output
    assert "PROBLEMS" in result.output
    # the other categories on their own are fine
    assert CliRunner().invoke(main, _args("verify", root, "--category", "ACC,CS")).exit_code == 0


@pytest.mark.parametrize("marker", [False, True], ids=["without synthetic.json", "with synthetic.json"])
def test_verify_category_with_no_training_images(root, marker, tmp_path):
    if marker:
        import shutil

        from threecad.synth import generate

        root = generate(tmp_path / "synth", scale=0.002, categories="ACC,CS", max_size=32, workers=1,
                        progress=False)
        shutil.rmtree(root / "Copper_Stator" / "train")
    else:
        for path in (root / "Copper_Stator" / "train" / "good").iterdir():
            path.unlink()
    result = CliRunner().invoke(main, _args("verify", root))
    assert result.exit_code == 1, result.output
    assert (f"error: no_train_images: {root / 'Copper_Stator' / 'train' / 'good'}: no training image "
            "in this category") in result.output


def test_stats_with_an_unreadable_mask(root, tmp_path):
    mask = root / "Copper_Stator" / "ground_truth" / "bump" / "000.png"
    data = mask.read_bytes()
    mask.write_bytes(data[:40] + b"\0" * (len(data) - 40))  # the header reads, the pixels do not
    out = tmp_path / "tables"
    result = assert_refused(_args("stats", root, "--out", str(out)), names=[f"cannot be read, first {mask}",
                                                                            "--skip-unreadable"], watch=[root])
    assert result.exit_code == 2 and not out.exists()
    skipped = CliRunner().invoke(main, _args("stats", root, "--skip-unreadable"))
    assert skipped.exit_code == 0, skipped.output
    lines = skipped.stdout.splitlines()
    assert lines[0] == "1 unreadable mask left out (--skip-unreadable):" and lines[1].startswith(f"  {mask}: ")
    assert "--skip-unreadable" in CliRunner().invoke(main, ["stats", "--help"]).output


@pytest.mark.parametrize("command", [*DATA_COMMANDS, "bench"])
def test_root_a_symlink_to_an_empty_folder(command, tmp_path, meandist):
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    args = (["bench", "--root", str(link), "--out", str(tmp_path / "run"), *meandist] if command == "bench"
            else _args(command, link))
    assert_refused(args, names=[str(link), "no category folders"], watch=[tmp_path / "empty"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["bench", "stats"])
def test_threecad_cache_not_writable(command, root, tmp_path, deny, monkeypatch, meandist):
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    monkeypatch.setenv("THREECAD_CACHE", str(cache))
    deny(cache, "write")
    args = (["bench", "--root", str(root), "--out", str(tmp_path / "run"), *meandist] if command == "bench"
            else ["stats", "--root", str(root), "--workers", "1"])
    assert_refused(args, names=[str(cache), "permission denied", "$THREECAD_CACHE"], watch=[root, cache])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["verify", "stats", "split", "bench", "download"])
def test_threecad_data_home_is_a_file(command, tmp_path, monkeypatch, meandist):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("THREECAD_DATA_HOME", str(home))
    monkeypatch.delenv("THREECAD_ROOT", raising=False)
    args = {"verify": ["verify"], "stats": ["stats"], "split": ["split"],
            "bench": ["bench", "--out", str(tmp_path / "run"), *meandist],
            "download": ["download", "--dataset", "dtd"]}[command]
    assert_refused(args, names=[f"$THREECAD_DATA_HOME {home} is not a folder"], watch=[tmp_path])


@pytest.mark.parametrize("value", ["", ",,", "ACC,", " , "])
@pytest.mark.parametrize("command", [*DATA_COMMANDS, "bench", "synth"])
def test_empty_category_name(command, value, root, tmp_path, meandist):
    args = {"bench": ["bench", "--root", str(root), "--out", str(tmp_path / "run"), *meandist],
            "synth": ["synth", "--out", str(tmp_path / "synth"), "--scale", "0.001", "--max-size", "32"]
            }.get(command) or _args(command, root)
    assert_refused([*args, "--category", value], names=["--category", "empty category name"],
                   watch=[root, tmp_path / "run", tmp_path / "synth"])


def test_xdg_cache_home_is_honoured(root, tmp_path, monkeypatch):
    from threecad.cache import default_cache_dir
    from threecad.dataset import ThreeCAD
    from threecad.stats.cache import MaskCache

    monkeypatch.delenv("THREECAD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "threecad"
    assert ThreeCAD(root, "CS", image_size=8).cache_path.parent == tmp_path / "xdg" / "threecad"
    store = MaskCache()
    store.close()
    assert store.path == tmp_path / "xdg" / "threecad" / "stats_masks.sqlite" and store.path.is_file()
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "mine"))  # the threecad variable comes first
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("THREECAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "threecad"
