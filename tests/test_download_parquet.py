"""Parquet copies (the Hub's AI4Manufacturing/207 shape), `--source auto`'s fallback when Drive
refuses, and `--dataset mvtec`: all against loopback servers and local files."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import make_tiny_dataset  # noqa: E402
from loopback import FakeHub, HubRepo, Loopback  # noqa: E402
from threecad import download as dl  # noqa: E402
from threecad.cli import main  # noqa: E402
from threecad.download import DownloadError, DownloadRequest, download  # noqa: E402
from threecad.download import mvtec as mvtec_mod  # noqa: E402
from threecad.download.parquet import ParquetError, convert  # noqa: E402
from threecad.manifest import read_manifest  # noqa: E402
from threecad.verify import verify  # noqa: E402

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("query", pa.string()), ("image", IMAGE), ("images", pa.list_(IMAGE)), ("mask", IMAGE),
                    ("annot", pa.string()), ("cate", pa.string()), ("task", pa.string()),
                    ("metadata", pa.string())])
DRIVE_REFUSAL = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
                 b'<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. '
                 b"Please try accessing the file again later.</p></body></html>")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hub_rows(dataset: Path, prefix: str = "3CAD") -> list[dict]:
    """One row per image of an MVTec-layout tree, in the unified schema of the Hub copy."""
    rows = []
    for img in sorted(dataset.glob("*/t*/*/*.png")):
        rel = img.relative_to(dataset).as_posix()
        category, split, defect, name = rel.split("/")
        data = img.read_bytes()
        mask = dataset / category / "ground_truth" / defect / name
        annot = "{good, null}" if defect == "good" else f"{{anomalous, {defect}}}"
        meta = {"split": split, "provenance": "3CAD (ShuCvlab)", "image_path": f"{prefix}/{rel}",
                "image_sha256": _sha(data)}
        rows.append({"query": f"Inspect this {category} part.", "image": {"bytes": data, "path": name},
                     "images": [{"bytes": data, "path": name}],
                     "mask": {"bytes": mask.read_bytes(), "path": name} if mask.is_file() else None,
                     "annot": annot, "cate": "B", "task": "T-B1", "metadata": json.dumps(meta)})
    return rows


def write_parquet(rows: list[dict], out: Path, row_group_size: int = 4, schema=SCHEMA) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out, row_group_size=row_group_size,
                   use_dictionary=False, compression="none")
    return out


def hub_files(rows: list[dict]) -> dict[str, bytes]:
    """README plus one shard per split, as the Hub's parquet layout has them."""
    files = {"README.md": b"---\nlicense: other\n---\n# 207\n"}
    for split in ("train", "test"):
        part = [r for r in rows if json.loads(r["metadata"])["split"] == split]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), buf, row_group_size=3)
        files[f"data/{split}-00000-of-00001.parquet"] = buf.getvalue()
    return files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # two categories, 3 train + 2 good + 2x2 defective each: 18 rows
    return make_tiny_dataset(tmp_path_factory.mktemp("src") / "3CAD", n_train=3, n_good=2, n_defect=2, size=32)


@pytest.fixture(scope="module")
def rows(dataset) -> list[dict]:
    return hub_rows(dataset)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha(p.read_bytes()) for p in root.rglob("*.png")}


def _hub_env(monkeypatch, srv, token: str | None) -> None:
    monkeypatch.setenv("HF_ENDPOINT", srv.base)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)


# ------------------------------------------------------------------ the Hub copy


def test_hub_parquet_copy_becomes_a_verified_root(tmp_path, dataset, rows, monkeypatch):
    hub = FakeHub({"AI4Manufacturing/207": HubRepo(hub_files(rows), gated_token="hf_ok")})
    root = tmp_path / "3CAD"
    with Loopback(hub=hub) as srv:
        _hub_env(monkeypatch, srv, "hf_ok")
        res = download(DownloadRequest(root=root, source="hf", repo_id="AI4Manufacturing/207", progress=False,
                                       hf_cache_dir=tmp_path / "cache"))
    assert res.status == "installed" and "installed 18 images" in res.message and "from 18 parquet rows" in res.message
    report = verify(root)
    assert report.ok and report.manifest_status == "match", report.problems
    assert _tree(root) == _tree(dataset)  # every image and mask, byte for byte, where the release has it
    src = read_manifest(root).source
    assert src["format"] == "parquet" and src["served_by"] == "hf" and src["repo_id"] == "AI4Manufacturing/207"
    assert src["parquet"]["rows"] == 18 and src["parquet"]["images"] == 18 and src["parquet"]["masks"] == 8
    assert src["parquet"]["counts"] == {"train_good": 6, "test_good": 4, "test_defect": 8}
    assert [f["rows"] for f in src["parquet"]["files"]] == [12, 6]  # data/test-..., data/train-...
    assert src["parquet"]["reencoded"] == 0


def test_bad_hash_row_is_reported_and_nothing_installed(tmp_path, rows, monkeypatch):
    bad = [dict(r) for r in rows]
    victim = next(i for i, r in enumerate(bad) if "/test/bump/" in r["metadata"])
    meta = json.loads(bad[victim]["metadata"])
    meta["image_sha256"] = "0" * 64
    bad[victim]["metadata"] = json.dumps(meta)
    root = tmp_path / "R"
    with Loopback(hub=FakeHub({"org/207": HubRepo(hub_files(bad))})) as srv:
        _hub_env(monkeypatch, srv, None)
        with pytest.raises(ParquetError) as err:
            download(DownloadRequest(root=root, source="hf", repo_id="org/207", progress=False,
                                     hf_cache_dir=tmp_path / "cache"))
    msg = str(err.value)
    test_rows = [r for r in bad if json.loads(r["metadata"])["split"] == "test"]
    index = test_rows.index(bad[victim])
    rel = meta["image_path"].split("/", 1)[1]
    assert f"row {index} of data/test-00000-of-00001.parquet ({rel})" in msg and "1 row(s)" in msg
    assert "0" * 64 in msg and "\n" not in msg
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_path_source_reads_a_folder_of_shards_and_a_single_file(tmp_path, dataset, rows):
    snap = tmp_path / "snapshot"
    for name, data in hub_files(rows).items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    download(DownloadRequest(root=tmp_path / "a", source="path", path=snap, progress=False))
    assert _tree(tmp_path / "a") == _tree(dataset)
    one = write_parquet(rows, tmp_path / "all.parquet")
    download(DownloadRequest(root=tmp_path / "b", source="path", path=one, progress=False))
    assert _tree(tmp_path / "b") == _tree(dataset)
    assert read_manifest(tmp_path / "b").source["parquet"]["files"] == [{"name": "all.parquet", "rows": 18}]


def test_column_mapping_for_other_copies(tmp_path, dataset, rows):
    """A mirror with its own column names, plain binary cells and JPEG images."""
    from PIL import Image

    schema = pa.schema([("img", pa.binary()), ("gt", pa.binary()), ("file", pa.string()), ("digest", pa.string())])
    other = []
    for r in rows:
        meta = json.loads(r["metadata"])
        data = r["image"]["bytes"]
        if "/train/" in meta["image_path"]:  # a JPEG: written as PNG, re-encoded losslessly from its pixels
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
        other.append({"img": data, "gt": r["mask"]["bytes"] if r["mask"] else None,
                      "file": meta["image_path"].replace(".png", ".jpg" if data[:2] == b"\xff\xd8" else ".png"),
                      "digest": _sha(data)})
    src = write_parquet(other, tmp_path / "mirror.parquet", schema=schema)
    root = tmp_path / "R"
    r = CliRunner().invoke(main, ["download", "--source", "path", "--path", str(src), "--root", str(root),
                                  "--columns", "image=img,mask=gt,path=file,sha256=digest", "--no-progress"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    installed = _tree(root)
    assert set(installed) == set(_tree(dataset))
    assert read_manifest(root).source["parquet"]["reencoded"] == 6
    jpeg = next(o["img"] for o in other if o["file"].endswith(".jpg"))
    rel = next(o["file"] for o in other if o["img"] is jpeg).split("/", 1)[1].replace(".jpg", ".png")
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(root / rel)), np.asarray(Image.open(io.BytesIO(jpeg))))
    assert verify(root).ok


def test_memory_stays_flat_on_a_shard_of_many_rows(tmp_path):
    """2,000 rows of 24 KB in 100 row groups: converting them grows the peak RSS by less than half
    the 48 MB of rows and a quarter of what a whole-table read takes (RSS sampled every 2 ms in fresh processes,
    after a warm-up conversion of a small shard)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    rows = []
    for i in range(2000):
        data = pngs[i % len(pngs)]
        rows.append({"image": {"bytes": data, "path": None}, "mask": None, "annot": "{good, null}",
                     "metadata": json.dumps({"split": "train", "image_path": f"Copper_Stator/train/good/{i:05d}.png",
                                             "image_sha256": _sha(data)})})
    schema = pa.schema([("image", IMAGE), ("mask", IMAGE), ("annot", pa.string()), ("metadata", pa.string())])
    shard = write_parquet(rows, tmp_path / "big.parquet", row_group_size=20, schema=schema)
    table_bytes = sum(len(pngs[i % len(pngs)]) for i in range(2000))
    write_parquet(rows[:40], Path(f"{shard}.small"), row_group_size=20, schema=schema)
    script = textwrap.dedent("""
        import sys, threading, time
        from pathlib import Path
        import psutil
        import pyarrow.parquet as pq
        from threecad.download.parquet import convert
        import PIL.Image, PIL.PngImagePlugin
        proc = psutil.Process()
        # warm up on a small shard: first-use costs (lazy imports, allocator arenas) are not growth
        convert([(Path(sys.argv[2] + ".small"), "small.parquet")], Path(sys.argv[3] + ".small"), progress=False)
        before = peak = proc.memory_info().rss
        done = False
        def sample():
            global peak
            while not done:
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.002)
        watcher = threading.Thread(target=sample)
        watcher.start()
        if sys.argv[1] == "convert":
            res = convert([(Path(sys.argv[2]), "big.parquet")], Path(sys.argv[3]), progress=False)
            assert res.images == 2000, res.images
        else:
            table = pq.read_table(sys.argv[2])
        time.sleep(0.05)
        done = True
        watcher.join()
        print(peak - before)
    """)

    def growth(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", script, mode, str(shard), str(tmp_path / mode)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    streamed, whole = growth("convert"), growth("whole")
    assert len(list((tmp_path / "convert").rglob("*.png"))) == 2000
    assert whole > 0.8 * table_bytes  # the reference: a whole-table read holds every row at once
    assert streamed < min(0.5 * table_bytes, whole / 4), (streamed, whole, table_bytes)


# ------------------------------------------------------------------ --source auto


def _auto_server(rows, token: str | None = "hf_ok"):
    file_id = dl.GDRIVE_FILE_IDS["english"]
    hub = FakeHub({dl.HF_REPO_3CAD: HubRepo(hub_files(rows), gated_token=token)})
    return Loopback(files={f"/uc?id={file_id}": DRIVE_REFUSAL}, hub=hub)


def test_auto_falls_through_to_the_hub_copy_when_drive_refuses(tmp_path, dataset, rows, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))  # gdown's cookie jar stays in the test folder
    root = tmp_path / "3CAD"
    with _auto_server(rows) as srv:
        _hub_env(monkeypatch, srv, "hf_ok")
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        r = CliRunner().invoke(main, ["download", "--root", str(root), "--no-progress"], catch_exceptions=False)
        first = srv.requests[0].path
    assert r.exit_code == 0, r.output
    assert first == f"/uc?id={dl.GDRIVE_FILE_IDS['english']}"  # the official Drive file came first
    failures = [rec.getMessage() for rec in caplog.records if "--source auto: Google Drive failed" in rec.getMessage()]
    assert len(failures) == 1 and "\n" not in failures[0]
    assert "Too many users have viewed or downloaded this file recently" in failures[0]
    assert f"served by Hugging Face {dl.HF_REPO_3CAD}" in r.stdout
    src = read_manifest(root).source
    assert src["served_by"] == "hf" and src["repo_id"] == dl.HF_REPO_3CAD
    assert [a["source"] for a in src["attempts"]] == ["gdrive"] and "Too many users" in src["attempts"][0]["error"]
    assert _tree(root) == _tree(dataset) and verify(root).ok
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".3CAD")) == []  # no refusal page kept


def test_auto_without_token_says_how_to_reach_the_hub_copy(tmp_path, rows, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "3CAD"
    with _auto_server(rows) as srv:
        _hub_env(monkeypatch, srv, None)
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        r = CliRunner().invoke(main, ["download", "--root", str(root), "--no-progress"])
        assert not any("/api/datasets/" in q.path for q in srv.requests)  # no token: the Hub is not asked
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.exit_code != 0 and len(errors) == 1 and "Traceback" not in r.output
    assert "Google Drive: Google Drive refused file" in errors[0] and "Too many users" in errors[0]
    assert f"huggingface.co/datasets/{dl.HF_REPO_3CAD} and set HF_TOKEN" in errors[0]
    assert not root.exists()


def test_auto_with_drive_serving_needs_no_token(tmp_path, dataset, monkeypatch):
    from test_download import _zip_dir

    data = _zip_dir(dataset, tmp_path / "3cad.zip").read_bytes()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with Loopback(files={f"/uc?id={dl.GDRIVE_FILE_IDS['english']}": data}) as srv:
        monkeypatch.setenv(dl.GDRIVE_ENDPOINT_ENV, srv.base)
        res = download(DownloadRequest(root=tmp_path / "R", progress=False))
    src = read_manifest(tmp_path / "R").source
    assert src["served_by"] == "gdrive" and src["attempts"] == [] and "served by" not in res.message


# ------------------------------------------------------------------ MVTec AD


def mvtec_archive(tmp_path: Path, name: str = "mvtec_anomaly_detection.tar.xz") -> Path:
    """MVTec AD's archive in miniature: category folders at the top, `_mask` names, a licence file."""
    src = make_tiny_dataset(tmp_path / "mvtec-src", categories=("bottle", "screw"), n_train=2, n_good=1, n_defect=1,
                            size=32, mask_naming="_mask", defect_types=("broken_large",))
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    out = tmp_path / name
    with tarfile.open(out, "w:xz") as tf:
        for child in sorted(src.iterdir()):
            tf.add(child, arcname=child.name)
    return out


def test_mvtec_from_a_local_archive(tmp_path, monkeypatch):
    archive = mvtec_archive(tmp_path)
    monkeypatch.setenv("THREECAD_DATA_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["download", "--dataset", "mvtec", "--source", "path", "--path", str(archive),
                                  "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    root = tmp_path / "home" / "mvtec"
    assert f"installed 8 MVTec AD images into {root}, archive sha256 {_sha(archive.read_bytes())}" in r.stdout
    assert "(not the official release's sha256)" in r.stdout
    assert "CC BY-NC-SA 4.0" in r.stderr and "non-commercial" in r.stderr
    assert (root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png").is_file()
    report = verify(root)
    assert report.ok and report.manifest_status == "match", report.problems
    src = read_manifest(root).source
    assert src["dataset"] == "mvtec" and src["license"] == "CC BY-NC-SA 4.0"
    assert src["archives"][0]["official_release"] is False


def test_mvtec_official_url_shows_the_licence_first_and_checks_the_pinned_sha256(tmp_path, monkeypatch):
    archive = mvtec_archive(tmp_path)
    data = archive.read_bytes()
    with Loopback(files={"/mvtec/mvtec_anomaly_detection.tar.xz": data}) as srv:
        monkeypatch.setattr(mvtec_mod, "OFFICIAL_URL", srv.url("/mvtec/mvtec_anomaly_detection.tar.xz"))
        seen: list[int] = []
        req = dict(root=tmp_path / "mv", dataset="mvtec", progress=False,
                   notify=lambda text: seen.append(len(srv.requests)) if "CC BY-NC-SA 4.0" in text else None)
        with pytest.raises(DownloadError, match=f"not the official MVTec AD release: sha256 {_sha(data)}"):
            download(DownloadRequest(**req))  # auto: the official URL, checked against anomalib's pin
        assert seen == [0] and not (tmp_path / "mv").exists()
        monkeypatch.setattr(mvtec_mod, "OFFICIAL_SHA256", _sha(data))
        res = download(DownloadRequest(**req))
    assert "(the official release); left out 1 file(s)" in res.message and seen == [0, 1]
    assert res.skipped == ["license.txt"]  # not part of the dataset; the manifest records the licence
    assert read_manifest(tmp_path / "mv").source["url"].endswith("/mvtec/mvtec_anomaly_detection.tar.xz")


def test_convert_refuses_a_train_row_that_is_not_good(tmp_path, rows):
    bad = [dict(next(r for r in rows if "/train/good/" in r["metadata"]))]
    meta = json.loads(bad[0]["metadata"])
    meta["image_path"] = meta["image_path"].replace("/good/", "/bump/")
    bad[0]["metadata"] = json.dumps(meta)
    bad[0]["annot"] = "{anomalous, bump}"
    with pytest.raises(ParquetError, match="row 0 of x.parquet: a train row labelled 'bump'"):
        convert([(write_parquet(bad, tmp_path / "x.parquet"), "x.parquet")], tmp_path / "out", progress=False)
