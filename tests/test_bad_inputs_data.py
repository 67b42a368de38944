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

import pytest
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
