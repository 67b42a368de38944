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
from threecad.download import DownloadError, DownloadRequest, download, gdrive_url
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
    assert not root.exists() and _siblings(root) == []


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
    with pytest.raises(DatasetError, match="fails verification .*missing_mask.*nothing installed"):
        download(DownloadRequest(root=root, source="path", path=out, progress=False))
    assert not root.exists() and _siblings(root) == ["broken.tar.gz", "src"]


def test_interrupted_extraction_leaves_no_partial_root(tmp_path, archive, monkeypatch):
    real = dl.safe_extract

    def extract_then_die(*args, **kwargs):
        real(*args, **kwargs)  # every file is out, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "safe_extract", extract_then_die)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        download(DownloadRequest(root=root, source="path", path=archive, progress=False))
    assert not root.exists() and _siblings(root) == []
    # a run killed outright leaves its temporary folder; the next run clears it
    (tmp_path / ".r.tmp-killed" / "3CAD").mkdir(parents=True)
    monkeypatch.setattr(dl, "safe_extract", real)
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
    monkeypatch.setattr(dl, "_free_bytes", lambda path: 1000)
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
        with pytest.raises(DownloadError, match="not found"):
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
