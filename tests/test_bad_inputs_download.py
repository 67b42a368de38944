"""`threecad download` refusals: one `error:` line naming the culprit, no traceback, and neither
the target root nor the source touched (issue #12 items 7-9, issue #11's DTD bad input)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from loopback import Loopback
from refusal import assert_refused
from test_download import _zip_dir, dtd_archive, make_dtd_tree
from threecad.cli import main
from threecad.manifest import MANIFEST_NAME, read_manifest

NOT_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                              reason="root reads chmod 000 files; permission cases need a normal user")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("src") / "3CAD", categories=("Copper_Stator",),
                             n_train=2, n_good=1, n_defect=1)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "target" / "R"


def _dl(root: Path, *args: str) -> list[str]:
    return ["download", "--root", str(root), "--no-progress", *args]


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("args, names", [
    (["--dataset", "imagenet"], ["imagenet", "3cad", "dtd", "mvtec"]),
    (["--dataset", "mvtec", "--source", "gdrive"], ["--source gdrive", "mvtec"]),
    (["--source", "path", "--path", ".", "--columns", "picture=img"], ["--columns", "picture=img"]),
    (["--source", "path", "--path", ".", "--columns", "image="], ["--columns", "image="]),
    (["--source", "ftp"], ["ftp", "--source"]),
    (["--dataset", "dtd", "--source", "gdrive"], ["--source gdrive", "dtd"]),
    (["--source", "path"], ["--path"]),
    (["--source", "path", "--path", "/nonexistent/3cad.zip"], ["/nonexistent/3cad.zip", "does not exist"]),
    (["--source", "url", "--url", "http://[::1"], ["http://[::1", "not a valid URL"]),
    (["--source", "url", "--url", "http://host:port/a.zip"], ["http://host:port/a.zip"]),
    (["--source", "url", "--url", "file:///etc/passwd"], ["file:///etc/passwd"]),
    (["--source", "path", "--path", ".", "--sha256", "abc"], ["--sha256", "64 hex"]),
    (["--source", "path", "--path", ".", "--sha256", "g" * 64], ["--sha256"]),
])
def test_bad_options(tmp_path, root, args, names):
    assert_refused(_dl(root, *args), names=names, watch=[root.parent])


def test_root_whose_parent_is_a_file(tmp_path, dataset):
    """`--root FILE/R`: one line, not a FileExistsError."""
    parent = tmp_path / "a-file"
    parent.write_text("not a folder\n")
    assert_refused(_dl(parent / "R", "--source", "path", "--path", str(dataset)), names=[str(parent)],
                   watch=[parent])


def test_sha256_mismatch(tmp_path, root, dataset):
    archive = _zip_dir(dataset, tmp_path / "3cad.zip")
    assert_refused(_dl(root, "--source", "path", "--path", str(archive), "--sha256", "0" * 64),
                   names=["checksum mismatch", "3cad.zip", hashlib.sha256(archive.read_bytes()).hexdigest()],
                   watch=[root.parent, archive])


# ------------------------------------------------------------------ unsafe sources


def test_path_folder_link_leaving_the_folder(tmp_path, root, dataset):
    src = tmp_path / "data"
    shutil.copytree(dataset, src / "3CAD")
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    (src / "3CAD" / "Copper_Stator" / "train" / "good" / "002.png").symlink_to(secret)
    assert_refused(_dl(root, "--source", "path", "--path", str(src)),
                   names=["002.png", "id_rsa", "leads outside the source folder"], watch=[root.parent, src])


@pytest.mark.parametrize("kind", ["ancestor", "pair"])
def test_path_folder_symlink_loop(tmp_path, root, dataset, kind):
    src = tmp_path / "data"
    shutil.copytree(dataset, src)
    good = src / "Copper_Stator" / "train" / "good"
    if kind == "ancestor":
        (good / "again").symlink_to("../../..")
    else:
        (good / "a.png").symlink_to("b.png")
        (good / "b.png").symlink_to("a.png")
    assert_refused(_dl(root, "--source", "path", "--path", str(src)), names=["symlink loop", str(good)],
                   watch=[root.parent, src])


@NOT_ROOT
def test_unreadable_source_folder(tmp_path, root, dataset):
    src = tmp_path / "data"
    shutil.copytree(dataset, src)
    locked = src / "Copper_Stator" / "test"
    locked.chmod(0)
    try:
        r = assert_refused(_dl(root, "--source", "path", "--path", str(src)),
                           names=["cannot read", str(locked), "readable"], watch=[root.parent])
        assert "--root you can write to" not in r.stderr
    finally:
        locked.chmod(0o755)


@NOT_ROOT
def test_unreadable_archive(tmp_path, root, dataset):
    archive = _zip_dir(dataset, tmp_path / "3cad.zip")
    archive.chmod(0)
    try:
        assert_refused(_dl(root, "--source", "path", "--path", str(archive)),
                       names=["cannot read", "3cad.zip"], watch=[root.parent])
    finally:
        archive.chmod(0o644)


def test_zip_bomb(tmp_path, root):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("3CAD/Copper_Stator/train/good/000.png", bytes(16 * 2**20))
    assert_refused(_dl(root, "--source", "path", "--path", str(bomb)),
                   names=["bomb.zip", "limit 200:1", "refusing the archive"], watch=[root.parent, bomb])


def test_extraction_beyond_free_space(tmp_path, root, dataset, monkeypatch):
    import threecad.archive as arc

    archive = _zip_dir(dataset, tmp_path / "3cad.zip")
    monkeypatch.setattr(arc, "free_bytes", lambda path: 1000)
    monkeypatch.setattr(arc, "EXTRACT_SPACE_MARGIN", 0)
    monkeypatch.setattr("threecad.download.unpack.FREE_SPACE_MARGIN", 0)
    assert_refused(_dl(root, "--source", "path", "--path", str(archive)), names=["3cad.zip", "1000 B free"],
                   watch=[root.parent, archive])


def test_tar_with_unsafe_member_names_it(tmp_path, root, dataset):
    out = tmp_path / "evil.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(dataset, arcname="3CAD")
        for name, target in (("3CAD/d/e/up", ".."), ("3CAD/d/e/up/up2", "../../../outside")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tf.addfile(link)
    r = assert_refused(_dl(root, "--source", "path", "--path", str(out)),
                       names=["'3CAD/d/e/up/up2'", "unsafe"], watch=[root.parent, out])
    assert "damaged" not in r.stderr and "download it again" not in r.stderr


# ------------------------------------------------------------------ DTD


def test_dtd_folder_without_images(tmp_path, root):
    data = make_dtd_tree(tmp_path / "src")
    for jpg in data.glob("images/*/*.jpg"):
        jpg.unlink()
    assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(tmp_path / "src")),
                   names=["0 image files", str(data)], watch=[root.parent, tmp_path / "src"])


def test_dtd_archive_without_images(tmp_path, root):
    src = tmp_path / "src"
    (src / "dtd" / "labels").mkdir(parents=True)
    (src / "dtd" / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\n")
    out = tmp_path / "dtd.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src / "dtd", arcname="dtd")
    assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(out)),
                   names=["no DTD images", "0 image files", "no images/ folder"], watch=[root.parent, out])


def test_dtd_labels_naming_missing_images(tmp_path, root):
    data = make_dtd_tree(tmp_path / "src")
    (data / "images" / "dotted" / "dotted_0001.jpg").unlink()
    assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(data)),
                   names=["dotted/dotted_0001.jpg", "not in images/"], watch=[root.parent, data])


def test_dtd_not_a_dtd_archive(tmp_path, root, dataset):
    archive = _zip_dir(dataset, tmp_path / "3cad.zip")
    assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(archive)),
                   names=["no DTD layout"], watch=[root.parent, archive])


def test_dtd_sha256_mismatch(tmp_path, root):
    archive = dtd_archive(tmp_path)
    assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(archive), "--sha256",
                       "f" * 64), names=["checksum mismatch", archive.name], watch=[root.parent, archive])


# ------------------------------------------------------------------ Hugging Face answers


def _no_listener() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("status, names", [
    (404, ["no Hugging Face dataset org/x", "HTTP 404", "--repo-id"]),
    (401, ["org/x", "HF_TOKEN"]),
    (403, ["refused access to org/x", "HTTP 403", "HF_TOKEN"]),
    (None, ["cannot reach the Hugging Face Hub", "--source path"]),
])
def test_hf_answers(tmp_path, root, status, names):
    cache = tmp_path / "hub-cache"
    if status is None:
        env = {"HF_ENDPOINT": _no_listener(), "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
        assert_refused(_dl(root, "--source", "hf", "--repo-id", "org/x"), names=names, watch=[root.parent], env=env)
        return
    with Loopback(status={"/api/datasets/org/x/revision/main": status}) as srv:
        env = {"HF_ENDPOINT": srv.base, "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
        assert_refused(_dl(root, "--source", "hf", "--repo-id", "org/x"), names=names, watch=[root.parent], env=env)


def test_unreadable_source_folder_simulated(tmp_path, root, dataset, monkeypatch):
    """The same case as root (who reads chmod 000 folders): the folder listing is refused."""
    src = tmp_path / "data"
    shutil.copytree(dataset, src)
    locked = src / "Copper_Stator" / "test"
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = assert_refused(_dl(root, "--source", "path", "--path", str(src)),
                       names=["cannot read", str(locked), "permission denied"], watch=[root.parent, src])
    assert "--root you can write to" not in r.stderr


# ------------------------------------------------------------------ parquet copies (issue #16)


def _rows(dataset: Path) -> list[dict]:
    pytest.importorskip("pyarrow")
    from test_download_parquet import hub_rows

    return hub_rows(dataset)


def _shard(tmp_path: Path, rows: list[dict], name: str = "train-00000.parquet", schema=None) -> Path:
    from test_download_parquet import SCHEMA, write_parquet

    return write_parquet(rows, tmp_path / "copy" / name, schema=schema or SCHEMA)


def _with_meta(row: dict, **changes) -> dict:
    import json

    meta = json.loads(row["metadata"])
    meta.update(changes)
    return dict(row, metadata=json.dumps(meta))


@pytest.mark.parametrize("drop", ["image", "mask"])
def test_parquet_without_image_or_mask_column(tmp_path, root, dataset, drop):
    pa = pytest.importorskip("pyarrow")
    from test_download_parquet import SCHEMA

    schema = pa.schema([f for f in SCHEMA if f.name != drop])
    rows = [{k: v for k, v in r.items() if k != drop} for r in _rows(dataset)]
    shard = _shard(tmp_path, rows, schema=schema)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard.parent)),
                   names=["train-00000.parquet", f"no {drop} column", f"--columns {drop}=COLUMN"],
                   watch=[root.parent, shard.parent])


def test_parquet_row_whose_path_escapes_the_root(tmp_path, root, dataset):
    rows = _rows(dataset)
    rows[2] = _with_meta(rows[2], image_path="3CAD/../../../etc/cron.d/evil.png")
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=["row 2 of train-00000.parquet", "../../../etc/cron.d/evil.png", "escapes"],
                   watch=[root.parent, shard.parent])
    assert not list(tmp_path.rglob("evil.png"))


def test_parquet_rows_that_repeat_a_file(tmp_path, root, dataset):
    rows = _rows(dataset)
    rows.append(dict(rows[1]))
    shard = _shard(tmp_path, rows)
    rel = rows[1]["metadata"].split('"image_path": "3CAD/')[1].split('"')[0]
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=[f"row {len(rows) - 1} of train-00000.parquet", rel, "first written by row 1"],
                   watch=[root.parent, shard.parent])


def test_parquet_mask_of_the_wrong_size(tmp_path, root, dataset):
    import io

    from PIL import Image

    rows = _rows(dataset)
    i = next(k for k, r in enumerate(rows) if r["mask"] is not None)
    buf = io.BytesIO()
    Image.new("L", (16, 8)).save(buf, format="PNG")
    rows[i] = dict(rows[i], mask={"bytes": buf.getvalue(), "path": "m.png"})
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=[f"row {i} of train-00000.parquet", "mask is 16x8", "image is 64x64"],
                   watch=[root.parent, shard.parent])


def test_parquet_defective_row_without_mask(tmp_path, root, dataset):
    rows = _rows(dataset)
    i = next(k for k, r in enumerate(rows) if r["mask"] is not None)
    rows[i] = dict(rows[i], mask=None)
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=[f"row {i} of train-00000.parquet", "without a mask"], watch=[root.parent, shard.parent])


def test_parquet_split_outside_the_layout(tmp_path, root, dataset):
    rows = _rows(dataset)
    rows[0] = _with_meta(rows[0], image_path="3CAD/extra/0001.png", split="validation")
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=["row 0 of train-00000.parquet"], watch=[root.parent, shard.parent])


def test_file_that_is_not_parquet(tmp_path, root):
    fake = tmp_path / "copy" / "train-00000.parquet"
    fake.parent.mkdir()
    fake.write_bytes(b"PAR1 but not really")
    assert_refused(_dl(root, "--source", "path", "--path", str(fake.parent)),
                   names=["train-00000.parquet", "not a readable parquet file"], watch=[root.parent, fake.parent])


def test_hub_repository_that_is_neither_layout_nor_parquet(tmp_path, root):
    from loopback import FakeHub, HubRepo

    hub = FakeHub({"org/notes": HubRepo({"README.md": b"# notes", "docs/guide.txt": b"hello"})})
    with Loopback(hub=hub) as srv:
        env = {"HF_ENDPOINT": srv.base, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": ""}
        assert_refused(_dl(root, "--source", "hf", "--repo-id", "org/notes"),
                       names=["no 3CAD/MVTec layout", "no parquet files"], watch=[root.parent], env=env)


def test_parquet_sha256_mismatch_names_the_row(tmp_path, root, dataset):
    rows = _rows(dataset)
    rows[3] = _with_meta(rows[3], image_sha256="f" * 64)
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=["row 3 of train-00000.parquet", "image_sha256", "f" * 64, "nothing installed"],
                   watch=[root.parent, shard.parent])


def test_mvtec_archive_without_layout(tmp_path, root):
    out = tmp_path / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(out, "w:xz") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        import io

        tf.addfile(info, io.BytesIO(b"hi"))
    assert_refused(_dl(root, "--dataset", "mvtec", "--source", "path", "--path", str(out)),
                   names=["no 3CAD/MVTec layout"], watch=[root.parent, out])


# ------------------------------------------------------------------ issue #27: the other cases that failed


def _link_bomb(tmp_path: Path, dataset: Path, fmt: str, target_size: int) -> Path:
    """The dataset plus one link entry whose target is `target_size` bytes that deflate to almost nothing."""
    name = "3CAD/Copper_Stator/train/good/link.png"
    if fmt == "zip":
        out = _zip_dir(dataset, tmp_path / "links.zip")
        with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, b"a" * target_size)
        return out
    out = tmp_path / "links.tar.gz"
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        tf.add(dataset, arcname="3CAD")
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, "a" * target_size  # stored in a pax header
        tf.addfile(link)
    return out


@pytest.mark.parametrize("fmt, names", [
    ("zip", ["'3CAD/Copper_Stator/train/good/link.png'", "a link target is a path"]),
    ("tar.gz", ["extended header", "refusing the archive"]),
])
def test_link_entry_with_a_huge_target_is_refused_unread(tmp_path, root, dataset, fmt, names):
    """The 150 MB link target in a 566 KiB zip, scaled down: refused before its target is read whole."""
    import tracemalloc

    target_size = 32 * 2**20
    archive = _link_bomb(tmp_path, dataset, fmt, target_size)
    assert archive.stat().st_size < target_size // 100
    tracemalloc.start()
    try:
        assert_refused(_dl(root, "--source", "path", "--path", str(archive)), names=names,
                       watch=[root.parent, archive])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < target_size // 4, f"{peak} bytes allocated while refusing a {target_size}-byte link target"


@pytest.mark.parametrize("dataset_option, categories, mask_naming, names", [
    ("mvtec", ("Copper_Stator",), "same", ["--dataset mvtec", "Copper_Stator (3CAD's)", "bottle", "--dataset 3cad"]),
    ("3cad", ("bottle", "screw"), "_mask", ["--dataset 3cad", "bottle, screw (MVTec AD's)", "--dataset mvtec"]),
    ("mvtec", ("bottle", "my_parts"), "_mask", ["--dataset mvtec", "my_parts (in neither catalog)"]),
])
def test_mvtec_given_a_3cad_archive(tmp_path, root, dataset_option, categories, mask_naming, names):
    """`--dataset mvtec --path <a 3CAD archive>` installed 3CAD as MVTec AD; the reverse too."""
    src = make_tiny_dataset(tmp_path / "src", categories=categories, n_train=1, n_good=1, n_defect=1,
                            mask_naming=mask_naming)
    archive = _zip_dir(src, tmp_path / "data.zip")
    assert_refused(_dl(root, "--dataset", dataset_option, "--source", "path", "--path", str(archive)),
                   names=names, watch=[root.parent, archive])


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_extra_files_left_out_and_listed(tmp_path, dataset, form):
    """A top-level README.txt, .DS_Store files and a notes.txt in a category are not installed, but listed."""
    src = tmp_path / "src"
    shutil.copytree(dataset, src)
    (src / "README.txt").write_text("extras")
    (src / ".DS_Store").write_bytes(b"\0Bud1")
    (src / "Copper_Stator" / "notes.txt").write_text("to do")
    (src / "Copper_Stator" / "train" / "good" / ".DS_Store").write_bytes(b"\0Bud1")
    path = src if form == "folder" else _zip_dir(src, tmp_path / "3cad.zip")
    root = tmp_path / "R"
    r = CliRunner().invoke(main, _dl(root, "--source", "path", "--path", str(path)), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    left_out = [".DS_Store", "Copper_Stator/notes.txt", "Copper_Stator/train/good/.DS_Store", "README.txt"]
    assert f"left out 4 file(s)/folder(s) that are not part of the dataset: {', '.join(left_out)} (" in r.stdout
    assert read_manifest(root).source["skipped_extra"] == left_out
    installed = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert installed == {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()} | {
        MANIFEST_NAME}


def test_parquet_good_row_with_a_defect_mask(tmp_path, root, dataset):
    """Refused, naming the row (its mask would have been dropped); an empty mask on a good row is fine."""
    import io

    from PIL import Image

    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (64, 64), value).save(buf, format="PNG")
        return buf.getvalue()

    rows = _rows(dataset)
    i = next(k for k, r in enumerate(rows) if r["mask"] is None and "/test/good/" in r["metadata"])
    rows[i] = dict(rows[i], mask={"bytes": png(255), "path": "m.png"})
    shard = _shard(tmp_path, rows)
    assert_refused(_dl(root, "--source", "path", "--path", str(shard)),
                   names=[f"row {i} of train-00000.parquet", "a good image", "4096 defect pixel(s)"],
                   watch=[root.parent, shard.parent])
    rows[i] = dict(rows[i], mask={"bytes": png(0), "path": "m.png"})
    shard = _shard(tmp_path, rows)
    r = CliRunner().invoke(main, _dl(root, "--source", "path", "--path", str(shard)), catch_exceptions=False)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_dtd_errors_name_the_users_path(tmp_path, root, form):
    """Not the temporary copy, which is gone by the time the message is read."""
    data = make_dtd_tree(tmp_path / "src")
    (data / "labels" / "val1.txt").unlink()
    if form == "folder":
        path, shown = tmp_path / "src", str(data)
    else:
        path = tmp_path / "dtd.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(data, arcname="dtd")
        shown = f"dtd/ in {path}"
    r = assert_refused(_dl(root, "--dataset", "dtd", "--source", "path", "--path", str(path)),
                       names=["labels/val1.txt is missing", shown], watch=[root.parent, path])
    assert ".tmp-" not in r.stderr


HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in - Storage</title></head><body><form>login</form>"
             b"</body></html>")


@pytest.mark.parametrize("source", ["url", "path"])
def test_html_page_instead_of_an_archive(tmp_path, root, source):
    """A login or quota page saved in the archive's place is called what it is."""
    if source == "path":
        page = tmp_path / "3CAD.zip"
        page.write_bytes(HTML_PAGE)
        r = assert_refused(_dl(root, "--source", "path", "--path", str(page)),
                           names=[str(page), "is an HTML page", "login", "quota", "wrong URL"],
                           watch=[root.parent, page])
    else:
        with Loopback(files={"/3CAD.zip": HTML_PAGE}) as srv:
            r = assert_refused(_dl(root, "--source", "url", "--url", srv.url("/3CAD.zip")),
                               names=[srv.url("/3CAD.zip"), "HTML page titled 'Sign in - Storage'", "login",
                                      "quota", "wrong URL"], watch=[root.parent])
    assert "neither a zip nor a tar" not in r.stderr


def test_gdrive_unreachable_is_one_short_line(tmp_path, monkeypatch):
    """A DNS failure inside gdown (urllib3's long text) is said as an unreachable host, without advice to
    resume a download that never started."""
    import gdown
    from gdown.exceptions import DownloadError as GdownDownloadError

    from threecad.download.sources import DownloadError, fetch_gdrive

    long = ("HTTPSConnectionPool(host='drive.google.com', port=443): Max retries exceeded with url: /uc?id=x "
            "(Caused by NameResolutionError(\"<urllib3.connection.HTTPSConnection object at 0x7f>: Failed to "
            "resolve 'drive.google.com' ([Errno -3] Temporary failure in name resolution)\"))" * 3)

    def fail(**_):
        raise GdownDownloadError(long)

    monkeypatch.setattr(gdown, "download", fail)
    with pytest.raises(DownloadError) as caught:
        fetch_gdrive("abc", tmp_path / "staging", retries=0)
    message = str(caught.value)
    assert message.startswith("cannot reach Google Drive") and "--source path" in message
    assert "resume" not in message and "urllib3" not in message and len(message) < 200
