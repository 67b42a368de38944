"""`threecad download` against loopback servers only: URL with resume, Hub API, gdrive, local path."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from loopback import FakeHub, HubRepo, Loopback
from threecad import download as dl
from threecad.archive import UnsafeArchiveError
from threecad.cli import main
from threecad.download import DownloadError, DownloadRequest, download, gdrive_url, unpack
from threecad.errors import DatasetError, ThreecadError
from threecad.manifest import MANIFEST_NAME, read_manifest
from threecad.verify import verify


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip_dir(folder: Path, out: Path, prefix: str = "3CAD") -> Path:
    """Zip `folder` with every entry under `prefix/` (the dataset nested one level down)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{prefix}/{f.relative_to(folder).as_posix()}")
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("src") / "3CAD", n_train=4, n_good=2, n_defect=2)


@pytest.fixture(scope="module")
def archive(dataset, tmp_path_factory) -> Path:
    return _zip_dir(dataset, tmp_path_factory.mktemp("arc") / "3cad.zip")


def _siblings(root: Path) -> list[str]:
    """Everything beside the root: temporary folders must be gone after any outcome."""
    return sorted(p.name for p in root.parent.iterdir() if p.name != root.name)


def _installed_ok(root: Path, archive_bytes: bytes | None = None) -> None:
    report = verify(root)
    assert report.ok and report.manifest_status == "match", report.problems
    if archive_bytes is not None:
        assert read_manifest(root).source["archives"][0]["sha256"] == _sha(archive_bytes)


# ------------------------------------------------------------------ url


def test_url_plain_download(tmp_path, archive):
    data = archive.read_bytes()
    root = tmp_path / "data" / "3CAD"
    with Loopback(files={"/3cad.zip": data}) as srv:
        res = download(DownloadRequest(root=root, source="url", url=srv.url("/3cad.zip"), progress=False))
    assert res.status == "installed" and _sha(data) in res.message
    _installed_ok(root, data)
    assert _siblings(root) == []  # staging, temp folder and lock all cleaned up
    assert read_manifest(root).source["url"].endswith("/3cad.zip")


def test_url_killed_halfway_then_rerun_resumes(tmp_path, archive):
    data = archive.read_bytes()
    root = tmp_path / "3CAD"
    with Loopback(files={"/3cad.zip": data}, drops={"/3cad.zip": 1}) as srv:
        req = DownloadRequest(root=root, source="url", url=srv.url("/3cad.zip"), retries=0, progress=False)
        with pytest.raises(DownloadError, match="interrupted at .* run the same command again"):
            download(req)
        assert not root.exists()  # nothing half-made at the root
        parts = list((tmp_path / ".3CAD.download").glob("*.part"))
        kept = parts[0].stat().st_size if len(parts) == 1 else -1
        assert 0 < kept <= len(data) // 2  # what arrived before the drop is kept
        download(req)
        ranges = [r.headers.get("range") for r in srv.requests]
    assert ranges == [None, f"bytes={kept}-"]  # the second run asked only for the rest
    _installed_ok(root, data)


def test_url_drop_is_resumed_within_one_run(tmp_path, archive):
    data = archive.read_bytes()
    with Loopback(files={"/a.zip": data}, drops={"/a.zip": 2}) as srv:
        download(DownloadRequest(root=tmp_path / "r", source="url", url=srv.url("/a.zip"), retries=2,
                                 progress=False))
    _installed_ok(tmp_path / "r", data)


def test_url_server_without_range_restarts(tmp_path, archive):
    data = archive.read_bytes()
    with Loopback(files={"/a.zip": data}, drops={"/a.zip": 1}, ranges=False) as srv:
        download(DownloadRequest(root=tmp_path / "r", source="url", url=srv.url("/a.zip"), retries=1,
                                 progress=False))
    _installed_ok(tmp_path / "r", data)


@pytest.mark.parametrize("code", [403, 404])
def test_url_http_errors(tmp_path, code):
    with Loopback(status={"/x.zip": code}) as srv:
        with pytest.raises(DownloadError, match=f"HTTP {code}"):
            download(DownloadRequest(root=tmp_path / "r", source="url", url=srv.url("/x.zip"), progress=False))
    assert not (tmp_path / "r").exists() and _siblings(tmp_path / "r") == []


def test_no_network_suggests_source_path(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="--source path"):
        download(DownloadRequest(root=tmp_path / "r", source="url", url=f"http://127.0.0.1:{port}/a.zip",
                                 retries=0, progress=False))


def test_corrupted_archive_installs_nothing_and_is_set_aside(tmp_path, archive):
    bad = archive.read_bytes()[: archive.stat().st_size // 3]
    root = tmp_path / "r"
    with Loopback(files={"/a.zip": bad}) as srv:
        with pytest.raises(ThreecadError, match="damaged or truncated"):
            download(DownloadRequest(root=root, source="url", url=srv.url("/a.zip"), progress=False))
    assert not root.exists()
    assert [p.name.endswith(".damaged") for p in (tmp_path / ".r.download").iterdir()] == [True]
    assert _siblings(root) == [".r.download"]


def test_sha256_mismatch_keeps_archive_aside(tmp_path, archive):
    data = archive.read_bytes()
    wrong = "0" * 64
    root = tmp_path / "r"
    with Loopback(files={"/a.zip": data}) as srv:
        req = DownloadRequest(root=root, source="url", url=srv.url("/a.zip"), sha256=wrong, progress=False)
        with pytest.raises(DownloadError) as err:
            download(req)
        msg = str(err.value)
        assert wrong in msg and _sha(data) in msg and "\n" not in msg
        assert not root.exists()
        kept = list((tmp_path / ".r.download").glob("*.sha256-mismatch"))
        assert len(kept) == 1 and kept[0].read_bytes() == data
        req.sha256 = _sha(data).upper()  # the right value (any case) installs
        assert download(req).status == "installed"
    _installed_ok(root, data)


# ------------------------------------------------------------------ path


def test_zip_slip_via_path_writes_nothing_outside(tmp_path, dataset):
    evil = _zip_dir(dataset, tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr("3CAD/../../../pwned.txt", b"owned")
    root = tmp_path / "work" / "3CAD"
    with pytest.raises(UnsafeArchiveError, match="pwned.txt"):
        download(DownloadRequest(root=root, source="path", path=evil, progress=False))
    assert not list(tmp_path.rglob("pwned.txt"))
    assert not root.exists() and not root.parent.exists()  # the folder made for the root is gone again


def test_tar_with_escaping_link_is_refused(tmp_path, dataset):
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(dataset, arcname="3CAD")
        link = tarfile.TarInfo("3CAD/Copper_Stator/train/good/escape.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../../etc/passwd"
        tf.addfile(link)
    root = tmp_path / "r"
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        download(DownloadRequest(root=root, source="path", path=out, progress=False))
    assert not root.exists() and _siblings(root) == ["evil.tar.gz"]


def test_dataset_failing_verify_is_not_installed(tmp_path):
    src = make_tiny_dataset(tmp_path / "src", categories=("Copper_Stator",), n_train=2, n_good=1, n_defect=1)
    (src / "Copper_Stator" / "ground_truth" / "bump" / "000.png").unlink()
    out = Path(shutil.make_archive(str(tmp_path / "broken"), "gztar", src))
    root = tmp_path / "r"
    with pytest.raises(DatasetError, match="fails verification .*missing_mask.*nothing installed") as err:
        download(DownloadRequest(root=root, source="path", path=out, progress=False))
    assert not root.exists() and _siblings(root) == ["broken.tar.gz", "src"]
    assert f"the dataset in {out} fails" in str(err.value) and ".tmp-" not in str(err.value)  # not the temp copy


def test_interrupted_extraction_leaves_no_partial_root(tmp_path, archive, monkeypatch):
    real = unpack.safe_extract

    def extract_then_die(*args, **kwargs):
        real(*args, **kwargs)  # every file is out, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(unpack, "safe_extract", extract_then_die)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        download(DownloadRequest(root=root, source="path", path=archive, progress=False))
    assert not root.exists() and _siblings(root) == []
    # a run killed outright leaves its temporary folder; the next run clears it
    (tmp_path / ".r.tmp-killed" / "3CAD").mkdir(parents=True)
    monkeypatch.setattr(unpack, "safe_extract", real)
    download(DownloadRequest(root=root, source="path", path=archive, progress=False))
    assert _siblings(root) == []
    _installed_ok(root, archive.read_bytes())


def test_manifest_shipped_in_the_archive_is_checked(tmp_path, archive):
    root = tmp_path / "r"
    download(DownloadRequest(root=root, source="path", path=archive, progress=False))
    victim = root / "Copper_Stator" / "train" / "good" / "001.png"
    victim.write_bytes((root / "Copper_Stator" / "train" / "good" / "000.png").read_bytes())  # still a PNG
    repacked = _zip_dir(root, tmp_path / "repacked.zip")
    with pytest.raises(DatasetError, match="changed_file Copper_Stator/train/good/001.png"):
        download(DownloadRequest(root=tmp_path / "r2", source="path", path=repacked, progress=False))
    assert not (tmp_path / "r2").exists()


def test_archive_without_layout(tmp_path):
    out = tmp_path / "notes.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("docs/readme.txt", "hello")
    with pytest.raises(DatasetError, match="no 3CAD/MVTec layout"):
        download(DownloadRequest(root=tmp_path / "r", source="path", path=out, progress=False))


def test_present_force_and_occupied_root(tmp_path, archive):
    root = tmp_path / "r"
    req = DownloadRequest(root=root, source="path", path=archive, progress=False)
    assert download(req).status == "installed"
    again = download(req)
    assert again.status == "present" and "nothing to do" in again.message
    (root / "notes.txt").write_text("mine")
    req.force = True
    assert download(req).status == "installed"
    assert not (root / "notes.txt").exists() and _siblings(root) == []
    _installed_ok(root, archive.read_bytes())

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.docx").write_text("keep me")
    with pytest.raises(ThreecadError, match="--force"):
        download(DownloadRequest(root=occupied, source="path", path=archive, progress=False))
    assert (occupied / "thesis.docx").read_text() == "keep me"


def test_folder_source_and_empty_root(tmp_path, dataset):
    root = tmp_path / "r"
    root.mkdir()  # an empty folder is fine to fill
    download(DownloadRequest(root=root, source="path", path=dataset, progress=False))
    _installed_ok(root)
    assert read_manifest(root).source["archives"] == []


def test_free_space_check(tmp_path, archive, monkeypatch):
    monkeypatch.setattr(unpack, "free_bytes", lambda path: 1000)
    root = tmp_path / "r"
    with pytest.raises(ThreecadError, match="not enough free space"):
        download(DownloadRequest(root=root, source="path", path=archive, progress=False))
    assert not root.exists() and _siblings(root) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(source="url"), "needs --url"),
    (dict(source="url", url="ftp://x/y.zip"), "http"),
    (dict(source="hf"), "needs --repo-id"),
    (dict(source="path", path=Path("/nonexistent/a.zip")), "does not exist"),
    (dict(source="path", path=Path("."), sha256="abc"), "64 hex"),
])
def test_request_validation(tmp_path, kwargs, match):
    with pytest.raises(ThreecadError, match=match):
        download(DownloadRequest(root=tmp_path / "r", progress=False, **kwargs))


# ------------------------------------------------------------------ Hugging Face


def _hub_files(dataset: Path, archive: Path, layout: bool) -> dict[str, bytes]:
    if not layout:
        return {"README.md": b"# mirror", "data/3cad.zip": archive.read_bytes()}
    files = {f"3CAD/{f.relative_to(dataset).as_posix()}": f.read_bytes()
             for f in dataset.rglob("*") if f.is_file()}
    return {"README.md": b"# mirror", **files}


@pytest.mark.parametrize("layout", [False, True], ids=["archive", "layout"])
def test_hf_snapshot_download(tmp_path, dataset, archive, layout, monkeypatch):
    hub = FakeHub({"org/3cad": HubRepo(_hub_files(dataset, archive, layout))})
    root = tmp_path / "r"
    with Loopback(hub=hub) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        revision = HubRepo({}).commit if layout else None  # a pinned commit needs no revision lookup
        res = download(DownloadRequest(root=root, source="hf", repo_id="org/3cad", revision=revision,
                                       progress=False, hf_cache_dir=tmp_path / "hub-cache"))
        looked_up = any("/api/datasets/org/3cad/revision/main" in r.path for r in srv.requests)
        assert looked_up == (revision is None)
    assert res.status == "installed"
    _installed_ok(root, None if layout else archive.read_bytes())
    src = read_manifest(root).source
    assert src["repo_id"] == "org/3cad" and src["commit"] == HubRepo({}).commit
    assert src["revision"] == (revision or "main")
    assert any((tmp_path / "hub-cache").rglob("*"))  # the Hub cache was used


def test_hf_gated_needs_token(tmp_path, dataset, archive, monkeypatch):
    repo = HubRepo(_hub_files(dataset, archive, False), gated_token="hf_secret")
    root = tmp_path / "r"
    with Loopback(hub=FakeHub({"org/gated": repo})) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        req = DownloadRequest(root=root, source="hf", repo_id="org/gated", progress=False,
                              hf_cache_dir=tmp_path / "cache")
        with pytest.raises(DownloadError, match="gated.*HF_TOKEN"):
            download(req)
        assert not root.exists()
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert download(req).status == "installed"


def test_hf_missing_repo_and_revision(tmp_path, monkeypatch):
    with Loopback(hub=FakeHub({"org/there": HubRepo({"a.zip": b"x"})})) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        base = dict(root=tmp_path / "r", source="hf", progress=False, hf_cache_dir=tmp_path / "c")
        with pytest.raises(DownloadError, match="no Hugging Face dataset org/nothere .*check --repo-id"):
            download(DownloadRequest(repo_id="org/nothere", **base))
        with pytest.raises(DownloadError, match="revision v9 not found"):
            download(DownloadRequest(repo_id="org/there", revision="v9", **base))


# ------------------------------------------------------------------ Google Drive


def test_gdrive_url_resolution(monkeypatch):
    monkeypatch.delenv(dl.GDRIVE_ENDPOINT_ENV, raising=False)
    english = dl.GDRIVE_FILE_IDS["english"]
    assert gdrive_url(english) == "https://drive.google.com/uc?id=1BIX0H8TZp0wmrAnXPw8_aCAIX1j1Fzwz"
    import gdown.parse_url

    assert gdown.parse_url.parse_url(gdrive_url(english)) == (english, True)  # gdown sees a Drive id
    monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, "http://127.0.0.1:9/")
    assert gdrive_url("abc") == "http://127.0.0.1:9/uc?id=abc"


def test_gdrive_download_through_gdown(tmp_path, archive, monkeypatch):
    data = archive.read_bytes()
    file_id = dl.GDRIVE_FILE_IDS["pinyin"]
    root = tmp_path / "r"
    monkeypatch.setenv("HOME", str(tmp_path))  # gdown's cookie jar stays in the test folder
    with Loopback(files={f"/uc?id={file_id}": data}) as srv:
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        res = download(DownloadRequest(root=root, variant="pinyin", progress=False))
        assert [r.path for r in srv.requests] == [f"/uc?id={file_id}"]
    assert res.status == "installed"
    _installed_ok(root, data)
    assert read_manifest(root).source["file_id"] == file_id


def test_gdrive_dropped_then_rerun_resumes_through_gdown(tmp_path, dataset, monkeypatch):
    # gdown writes in 512 KiB chunks: make the archive big enough that one lands before the drop
    big = _zip_dir(dataset, tmp_path / "big.zip")
    with zipfile.ZipFile(big, "a") as zf:
        zf.writestr("3CAD/notes.txt", bytes(range(256)) * 6000)  # 1.5 MB, stored uncompressed
    data = big.read_bytes()
    file_id = dl.GDRIVE_FILE_IDS["english"]
    root = tmp_path / "r"
    with Loopback(files={f"/uc?id={file_id}": data}, drops={f"/uc?id={file_id}": 1}) as srv:
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        req = DownloadRequest(root=root, retries=0, progress=False)
        with pytest.raises(DownloadError, match="run the same command again"):
            download(req)
        assert not root.exists()
        download(req)
        ranges = [r.headers.get("range") for r in srv.requests]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")
    _installed_ok(root, data)


def test_gdrive_http_error_is_one_line(tmp_path, monkeypatch):
    with Loopback(status={"/uc": 403}) as srv:
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        r = CliRunner().invoke(main, ["download", "--root", str(tmp_path / "r"), "--no-progress"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "HTTP 403" in lines[0] and "Traceback" not in r.output


# ------------------------------------------------------------------ CLI


def test_cli_path_archive_then_verify(tmp_path, archive):
    root = tmp_path / "R"
    r = CliRunner().invoke(main, ["download", "--source", "path", "--path", str(archive), "--root", str(root),
                                  "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "installed 20 images" in r.output  # 2 categories x (4 train + 2 good + 2x2 defective)
    assert (root / MANIFEST_NAME).is_file()
    v = CliRunner().invoke(main, ["verify", "--root", str(root), "--no-progress"], catch_exceptions=False)
    assert v.exit_code == 0 and "manifest: match" in v.output
    r = CliRunner().invoke(main, ["download", "--source", "path", "--path", str(archive), "--root", str(root)])
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_cli_bad_input_one_line(tmp_path):
    r = CliRunner().invoke(main, ["download", "--source", "url", "--root", str(tmp_path / "r")])
    assert r.exit_code == 2 and r.output.strip() == "error: --source url needs --url URL"
    assert not (tmp_path / "r").exists()


def test_synthetic_set_round_trip(tmp_path):
    from threecad.synth import generate

    src = tmp_path / "synth"
    generate(src, scale=0.002, seed=3, categories=["CS", "ACC"], max_size=64, workers=1, progress=False)
    out = Path(shutil.make_archive(str(tmp_path / "synth"), "zip", tmp_path, "synth"))
    root = tmp_path / "R"
    r = CliRunner().invoke(main, ["download", "--source", "path", "--path", str(out), "--root", str(root),
                                  "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    v = CliRunner().invoke(main, ["verify", "--root", str(root), "--no-progress"], catch_exceptions=False)
    assert v.exit_code == 0, v.output
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 3  # the marker travels with the data
    files = read_manifest(root).files
    originals = {f.relative_to(src).as_posix(): _sha(f.read_bytes()) for f in src.rglob("*") if f.is_file()}
    assert {k: v.sha256 for k, v in files.items()} == originals  # byte for byte what was archived


# ------------------------------------------------------------------ DTD


def make_dtd_tree(folder: Path, classes=("banded", "dotted"), per_class: int = 3, extra: bool = False) -> Path:
    """DTD's archive layout in miniature: dtd/images/<class>/*.jpg, dtd/labels/{train,val,test}1.txt."""
    from PIL import Image

    data = folder / "dtd"
    rels = []
    for c, cls in enumerate(classes):
        (data / "images" / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (40 * c, 10 * i, 200)).save(data / "images" / cls / f"{cls}_{i:04d}.jpg")
            rels.append(f"{cls}/{cls}_{i:04d}.jpg")
    (data / "labels").mkdir()
    for k, split in enumerate(("train", "val", "test")):
        (data / "labels" / f"{split}1.txt").write_text("".join(f"{r}\n" for r in rels[k::3]))
    (data / "imdb").mkdir()
    (data / "imdb" / "imdb.mat").write_bytes(b"MATLAB 5.0 fake")
    if extra:
        (data / "README.txt").write_text("notes")
        (data / "images" / "banded" / "Thumbs.db").write_bytes(b"junk")
    return data


def dtd_archive(tmp_path: Path, name: str = "dtd-r1.0.1.tar.gz", **kwargs) -> Path:
    src = tmp_path / f"dtd-src-{name}"
    make_dtd_tree(src, **kwargs)
    out = tmp_path / name
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src / "dtd", arcname="dtd")
    return out


def _dtd_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_dtd_from_local_archive_is_what_the_texture_loader_reads(tmp_path, monkeypatch):
    archive = dtd_archive(tmp_path)
    monkeypatch.setenv("THREECAD_DATA_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["download", "--dataset", "dtd", "--source", "path", "--path", str(archive),
                                  "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    root = tmp_path / "home" / "dtd"  # datahome.default_dtd_root()
    assert f"installed 6 DTD images into {root}, archive sha256 {_sha(archive.read_bytes())}" in r.output
    assert "(not the official release's MD5)" in r.output
    src = _dtd_files(tmp_path / f"dtd-src-{archive.name}" / "dtd")
    assert _dtd_files(root / "dtd" / "dtd") == src  # byte for byte, in torchvision's layout
    manifest = read_manifest(root)
    assert set(manifest.files) == {f"dtd/dtd/{k}" for k in src}
    assert manifest.source["archives"][0]["sha256"] == _sha(archive.read_bytes())
    assert manifest.source["archives"][0]["official_release"] is False and manifest.source["dataset"] == "dtd"
    from torchvision.datasets import DTD

    assert [len(DTD(root, split=s)) for s in ("train", "val", "test")] == [2, 2, 2]
    from threecad.anomaly_synthesis import AnomalySynthesizer

    synth = AnomalySynthesizer(image_size=32, dtd_root=str(root))
    textures = getattr(synth, "_dtd", None) or getattr(synth, "_dtd_index", None)  # renamed in #15's work
    assert synth.texture_source == "dtd" and len(textures) == 6
    again = CliRunner().invoke(main, ["download", "--dataset", "dtd", "--source", "path", "--path", str(archive)])
    assert again.exit_code == 0 and "(6 images, manifest sizes match); nothing to do" in again.output
    assert _siblings(root) == []


def test_dtd_from_url_checks_the_official_md5(tmp_path, monkeypatch):
    from threecad.download import dtd as dtd_mod

    archive = dtd_archive(tmp_path)
    data = archive.read_bytes()
    with Loopback(files={"/vgg/dtd-r1.0.1.tar.gz": data}) as srv:
        monkeypatch.setattr(dtd_mod, "OFFICIAL_URL", srv.url("/vgg/dtd-r1.0.1.tar.gz"))
        monkeypatch.setattr(dtd_mod, "OFFICIAL_MD5", "0" * 32)
        root = tmp_path / "textures"
        req = DownloadRequest(root=root, dataset="dtd", progress=False)  # auto: the official URL
        with pytest.raises(DownloadError, match=f"not the official DTD release: MD5 {hashlib.md5(data).hexdigest()}"):
            download(req)
        assert not root.exists()
        assert [p.name.endswith(".md5-mismatch") for p in (tmp_path / ".textures.download").iterdir()] == [True]
        monkeypatch.setattr(dtd_mod, "OFFICIAL_MD5", hashlib.md5(data).hexdigest())
        res = download(DownloadRequest(root=root, dataset="dtd", progress=False))
    assert res.status == "installed" and res.message.endswith("(the official release)")
    assert read_manifest(root).source["url"] == srv.url("/vgg/dtd-r1.0.1.tar.gz")
    assert len(list((root / "dtd" / "dtd" / "images").rglob("*.jpg"))) == 6


def test_dtd_url_download_after_a_drop(tmp_path):
    data = dtd_archive(tmp_path).read_bytes()
    with Loopback(files={"/m/dtd.tar.gz": data}, drops={"/m/dtd.tar.gz": 1}) as srv:
        req = DownloadRequest(root=tmp_path / "d", dataset="dtd", source="url", url=srv.url("/m/dtd.tar.gz"),
                              retries=0, progress=False)
        with pytest.raises(DownloadError, match="run the same command again"):
            download(req)
        assert download(req).status == "installed"
        assert len(srv.requests) == 2  # the same machinery as 3CAD's (byte-level resume tested above)
    assert read_manifest(tmp_path / "d").source["archives"][0]["sha256"] == _sha(data)


def test_dtd_extra_files_left_out_unless_allowed(tmp_path):
    archive = dtd_archive(tmp_path, extra=True)
    res = download(DownloadRequest(root=tmp_path / "a", dataset="dtd", source="path", path=archive, progress=False))
    assert res.skipped == ["README.txt", "images/banded/Thumbs.db"]
    assert "left out 2 file(s)/folder(s)" in res.message and "--allow-extra" in res.message
    assert not (tmp_path / "a" / "dtd" / "dtd" / "README.txt").exists()
    assert read_manifest(tmp_path / "a").source["skipped_extra"] == res.skipped
    res = download(DownloadRequest(root=tmp_path / "b", dataset="dtd", source="path", path=archive,
                                   allow_extra=True, progress=False))
    assert res.skipped == [] and (tmp_path / "b" / "dtd" / "dtd" / "README.txt").read_text() == "notes"


def test_dtd_from_a_hub_folder_mirror(tmp_path, monkeypatch):
    tree = make_dtd_tree(tmp_path / "mirror")
    files = {f.relative_to(tree).as_posix(): f.read_bytes() for f in tree.rglob("*") if f.is_file()}
    hub = FakeHub({"org/dtd": HubRepo({"README.md": b"# DTD", **files}),
                   "org/dtd-parquet": HubRepo({"data/train-00000-of-00001.parquet": b"PAR1"})})
    with Loopback(hub=hub) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        base = dict(dataset="dtd", source="hf", progress=False, hf_cache_dir=tmp_path / "cache")
        res = download(DownloadRequest(root=tmp_path / "d", repo_id="org/dtd", **base))
        with pytest.raises(DatasetError, match="parquet rows .* not supported yet"):
            download(DownloadRequest(root=tmp_path / "p", repo_id="org/dtd-parquet", **base))
    assert res.skipped == ["README.md"]  # the snapshot's top is the DTD folder; its card is not DTD
    assert _dtd_files(tmp_path / "d" / "dtd" / "dtd") == {k: _sha(v) for k, v in files.items()}
    assert not (tmp_path / "p").exists()


def test_3cad_extra_files_left_out_unless_allowed(tmp_path, dataset):
    src = tmp_path / "withjunk"
    shutil.copytree(dataset, src)
    (src / "LICENSE").write_text("terms")
    (src / "backup").mkdir()
    (src / "backup" / "id_rsa").write_text("key")
    (src / "Copper_Stator" / "train" / "good" / "notes.docx").write_bytes(b"doc")
    res = download(DownloadRequest(root=tmp_path / "a", source="path", path=src, progress=False))
    assert res.skipped == ["Copper_Stator/train/good/notes.docx", "LICENSE", "backup/"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["Aluminum_Camera_Cover", "Copper_Stator",
                                                                  MANIFEST_NAME]
    _installed_ok(tmp_path / "a")
    res = download(DownloadRequest(root=tmp_path / "b", source="path", path=src, allow_extra=True, progress=False))
    assert res.skipped == [] and (tmp_path / "b" / "backup" / "id_rsa").is_file()


def test_path_folder_links_inside_are_copied_as_files(tmp_path, dataset):
    src = tmp_path / "linked"
    shutil.copytree(dataset, src)
    good = src / "Copper_Stator" / "train" / "good"
    (good / "000.png").rename(src / "kept.png")
    (good / "000.png").symlink_to(src / "kept.png")  # a link inside the source folder: followed
    download(DownloadRequest(root=tmp_path / "r", source="path", path=src, progress=False, allow_extra=True))
    installed = tmp_path / "r" / "Copper_Stator" / "train" / "good" / "000.png"
    assert not installed.is_symlink() and installed.read_bytes() == (src / "kept.png").read_bytes()


def test_unsafe_tar_from_url_is_kept_not_set_aside(tmp_path, dataset):
    out = tmp_path / "evil.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(dataset, arcname="3CAD")
        for name, target in (("3CAD/d/e/up", ".."), ("3CAD/d/e/up/up2", "../../../outside")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tf.addfile(link)
    root = tmp_path / "r"
    with Loopback(files={"/evil.tar": out.read_bytes()}) as srv:
        with pytest.raises(UnsafeArchiveError) as err:
            download(DownloadRequest(root=root, source="url", url=srv.url("/evil.tar"), progress=False))
    msg = str(err.value)
    assert "'3CAD/d/e/up/up2'" in msg and "damaged" not in msg and "kept at" in msg
    kept = list((tmp_path / ".r.download").iterdir())
    assert len(kept) == 1 and not kept[0].name.endswith(".damaged") and kept[0].read_bytes() == out.read_bytes()
    assert not root.exists()


@pytest.mark.parametrize("status, match", [
    (404, "no Hugging Face dataset org/x at .* \\(HTTP 404\\): check --repo-id"),
    (403, "refused access to org/x \\(HTTP 403\\).*accept its terms on .*/datasets/org/x and set HF_TOKEN"),
    (500, "answered HTTP 500"),
])
def test_hf_http_answers_are_told_apart(tmp_path, monkeypatch, status, match):
    with Loopback(status={"/api/datasets/org/x/revision/main": status}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        with pytest.raises(DownloadError, match=match):
            download(DownloadRequest(root=tmp_path / "r", source="hf", repo_id="org/x", progress=False,
                                     hf_cache_dir=tmp_path / "c"))


def test_hf_unreachable_says_so(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face Hub at .* --source path"):
        download(DownloadRequest(root=tmp_path / "r", source="hf", repo_id="org/x", progress=False,
                                 hf_cache_dir=tmp_path / "c"))
