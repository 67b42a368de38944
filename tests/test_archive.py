"""Safe extraction: nothing may land outside the destination; the dataset folder is found."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from threecad.archive import (ArchiveError, UnsafeArchiveError, UnsafeSourceError, copy_tree, find_dataset_dir,
                              list_members, safe_extract, source_files, uncompressed_size)
from threecad.errors import DatasetError, ThreecadError


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


# ------------------------------------------------------------------ bombs and limits


def test_zip_bomb_is_refused_by_its_ratio_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("data/zeros.bin", bytes(8 * 2**20))  # 8 MiB of zeros deflate about 1000:1
    ratio = 8 * 2**20 / archive.stat().st_size
    assert ratio > 500
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"ratio \d+:1, limit 200:1"):
        safe_extract(archive, dest)
    assert not dest.exists()


def test_ratio_limit_is_a_module_constant(tmp_path, monkeypatch):
    import threecad.archive as arc

    data = np.random.default_rng(0).integers(0, 4, 65536, dtype=np.uint8).tobytes()  # 2 bits of entropy a byte
    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bin", data)
    assert 2 < len(data) / archive.stat().st_size < 200
    monkeypatch.setattr(arc, "RATIO_CHECK_FROM", 0)
    assert safe_extract(archive, tmp_path / "ok") == 1  # under the default 200:1
    monkeypatch.setattr(arc, "MAX_COMPRESSION_RATIO", 2.0)
    with pytest.raises(UnsafeArchiveError, match="limit 2:1"):
        safe_extract(archive, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_declared_size_beyond_free_space_is_refused(tmp_path, monkeypatch):
    import threecad.archive as arc

    archive = _tar(tmp_path / "a.tar", [("a.bin", b"x" * 5000)])
    monkeypatch.setattr(arc, "EXTRACT_SPACE_MARGIN", 0)
    monkeypatch.setattr(arc, "free_bytes", lambda path: 1000)
    with pytest.raises(ThreecadError, match="needs 4.9 KiB to extract, 1000 B free"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_entry_inflating_past_its_declaration_stops(tmp_path):
    import threecad.archive as arc

    with pytest.raises(UnsafeArchiveError, match="'big.bin' of a.zip inflates beyond"):
        budget = arc._Budget(Path("a.zip"), total=10, bar=type("Bar", (), {"update": lambda self, n: None})())
        budget.take("small.bin", 6, 6)
        budget.take("big.bin", 6, 6)  # the entry fits its own size, the archive total does not


def test_tar_link_chain_refused_by_the_data_filter_names_the_entry(tmp_path):
    # each link is harmless on its own; the second climbs out through the first
    archive = _tar(tmp_path / "chain.tar", [("d/e/f.txt", b"x"), _link("d/e/up", ".."),
                                            _link("d/e/up/up2", "../../outside")])
    with pytest.raises(UnsafeArchiveError, match="archive entry 'd/e/up/up2' of chain.tar is unsafe"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "outside").exists()


# ------------------------------------------------------------------ local folders


def test_source_files_follow_links_inside_only(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "img.png").write_bytes(b"png")
    (src / "b").symlink_to("a")  # a link to a folder inside: followed
    (src / "c.png").symlink_to(src / "a" / "img.png")
    assert sorted(rel for _, rel in source_files(src)) == ["a/img.png", "b/img.png", "c.png"]
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (src / "a" / "leak.txt").symlink_to(secret)
    with pytest.raises(UnsafeSourceError, match="leak.txt -> .*secret.txt leads outside the source folder"):
        source_files(src)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeSourceError):
        copy_tree(src, dest)
    assert not dest.exists()


@pytest.mark.parametrize("kind", ["ancestor", "self-loop"])
def test_source_symlink_loop_is_one_error(tmp_path, kind):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.png").write_bytes(b"x")
    if kind == "ancestor":
        (src / "a" / "up").symlink_to("..")
    else:
        (src / "a" / "x").symlink_to("y")
        (src / "a" / "y").symlink_to("x")
    with pytest.raises(UnsafeSourceError, match="symlink loop at .*src/a/(up|x|y)"):
        source_files(src)
