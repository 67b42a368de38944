"""Safe extraction: nothing may land outside the destination; the dataset folder is found."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from threecad.archive import (ArchiveError, UnsafeArchiveError, find_dataset_dir, list_members,
                              safe_extract, uncompressed_size)
from threecad.errors import DatasetError


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/evil.txt", "a\\..\\..\\evil.txt",
                                  "C:/evil.txt"])
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, name):
    archive = _zip(tmp_path / "slip.zip", {"ok/first.txt": b"fine", name: b"pwned"})
    dest = tmp_path / "work" / "dest"
    before = _all_files(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="refusing the archive"):
        safe_extract(archive, dest)
    assert _all_files(tmp_path) == before  # not even the harmless first entry was written
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()


@pytest.mark.parametrize("entry", [
    _link("data/link", "../../outside"),  # relative symlink climbing out
    _link("data/abs", "/etc/passwd"),  # absolute symlink
    _link("data/hard", "../outside", tarfile.LNKTYPE),  # hard link outside
    _link("top", "."),  # a link to the destination itself
])
def test_tar_links_escaping_the_root_are_refused(tmp_path, entry):
    archive = _tar(tmp_path / "links.tar", [("data/a.txt", b"a"), entry])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        safe_extract(archive, dest)
    assert not dest.exists()


def test_tar_device_is_refused(tmp_path):
    dev = tarfile.TarInfo("data/dev")
    dev.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar", [dev])
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract(archive, tmp_path / "dest")


def test_tar_link_inside_is_extracted(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [("data/a.txt", b"payload"), _link("data/sub/b.txt", "../a.txt")],
                   mode="w:gz")
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest) == 1
    assert (dest / "data" / "sub" / "b.txt").read_bytes() == b"payload"


def test_zip_symlink_chain_cannot_escape(tmp_path):
    # each link looks harmless on its own; together they would point two levels up
    archive = _zip(tmp_path / "chain.zip", {}, symlinks={"a/b/up": "..", "a/b/up/up2": "../../x"})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not (tmp_path / "x").exists()


def test_zip_and_targz_extract_the_same_bytes(tmp_path):
    entries = {"root/A/train/good/0.png": b"\x89PNG fake", "root/A/readme.txt": b"hello" * 1000}
    z = _zip(tmp_path / "d.zip", entries)
    t = _tar(tmp_path / "d.tgz", list(entries.items()), mode="w:gz")
    assert uncompressed_size(list_members(z)) == uncompressed_size(list_members(t)) == sum(map(len, entries.values()))
    for archive in (z, t):
        dest = tmp_path / f"out-{archive.suffix}"
        assert safe_extract(archive, dest) == 2
        for name, data in entries.items():
            assert (dest / name).read_bytes() == data


@pytest.mark.parametrize("payload", [b"this is not an archive at all" * 10, None])
def test_damaged_archive_is_a_clear_error(tmp_path, payload):
    path = tmp_path / "bad.zip"
    if payload is None:  # a real zip cut in half
        good = _zip(tmp_path / "good.zip", {f"f{i}.bin": bytes(range(256)) * 40 for i in range(5)})
        payload = good.read_bytes()[: good.stat().st_size // 2]
    path.write_bytes(payload)
    with pytest.raises(ArchiveError, match="bad.zip"):
        safe_extract(path, tmp_path / "dest")


def test_truncated_targz_is_a_clear_error(tmp_path):
    good = _tar(tmp_path / "good.tar.gz", [(f"f{i}.bin", bytes(range(256)) * 400) for i in range(4)], mode="w:gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        list_members(bad)


def _category(base: Path, name: str = "Copper_Stator") -> None:
    (base / name / "train" / "good").mkdir(parents=True)


def test_find_dataset_dir_at_top_and_nested(tmp_path):
    _category(tmp_path / "top")
    assert find_dataset_dir(tmp_path / "top") == tmp_path / "top"
    _category(tmp_path / "one" / "3CAD")
    (tmp_path / "one" / "__MACOSX" / "junk").mkdir(parents=True)
    assert find_dataset_dir(tmp_path / "one") == tmp_path / "one" / "3CAD"
    _category(tmp_path / "two" / "3CAD" / "3CAD")
    assert find_dataset_dir(tmp_path / "two") == tmp_path / "two" / "3CAD" / "3CAD"


def test_find_dataset_dir_none_or_several(tmp_path):
    (tmp_path / "none" / "docs" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no 3CAD/MVTec layout"):
        find_dataset_dir(tmp_path / "none")
    _category(tmp_path / "many" / "a")
    _category(tmp_path / "many" / "b")
    with pytest.raises(DatasetError, match="several datasets"):
        find_dataset_dir(tmp_path / "many")
