"""Parquet copies of an anomaly dataset (the Hub's copy of 3CAD, other mirrors) turned back
into the MVTec layout that every command reads.

Why a converter and not a parquet reader in the Dataset: the sample table describes files
on disk, and `verify`, the manifest, `stats` and the benchmark all trust that description.
Writing the rows out once, with their bytes as they are stored, keeps one source of truth.

The Hub copy of 3CAD (`AI4Manufacturing/207`, gated) follows the "unified SFT schema" its
dataset card describes (read from the public card; the files themselves were not read):

    image     Image struct {bytes, path}, the bytes embedded
    mask      Image struct or null: the pixel ground truth
    annot     plain text {label, defect_type}: {good, null} or {anomalous, <defect>}
              (sibling repositories store the same as a JSON object)
    metadata  JSON string: split, provenance, image_path, image_sha256
    query, images, cate, task   (not needed here; never read)

Where a row lands: `metadata.image_path` is taken to be the file's path in the original
release (`.../<Category>/<split>/<defect_type>/<name>`; an assumption the card does not
spell out). When the path has no such tail, the category is the path's component that names
a known category (or the `category` column), the split comes from `metadata.split` and the
defect type from `annot`. Masks go to `<Category>/ground_truth/<defect_type>/<name>` (the
3CAD naming: the image's file name). `--columns key=column[.field],...` maps other copies:
keys `image`, `mask`, `path`, `split`, `label`, `defect`, `category`, `sha256`; `col.field`
reads a field of a struct column or of a JSON-text column.

Bytes are written as they are stored; only an image that is not PNG is decoded and written
as PNG (the name gets `.png`). `image_sha256` is checked against the stored bytes. Row groups
are streamed (`ParquetFile.iter_batches`, only the needed columns), so memory holds one batch
of rows at a time, whatever the shard size.

Refused, naming the file and row: no image or mask column, a path that is absolute or climbs
out with `..`, two rows for the same file, a defective row without a mask, a good row whose
mask marks defect pixels (the good layout has no masks, so it would be dropped, and the label
or the mask is wrong), a mask whose size is not its image's, a split other than train/test,
rows whose sha256 does not match. An empty mask on a good row is dropped.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from threecad.catalog import KNOWN
from threecad.errors import DatasetError, ThreecadError

log = logging.getLogger(__name__)

KEYS = ("image", "mask", "path", "split", "label", "defect", "category", "sha256")
# The unified schema of the Hub copy (see the module docstring).
DEFAULT_COLUMNS = {"image": "image", "mask": "mask", "path": "metadata.image_path", "split": "metadata.split",
                   "label": "annot.label", "defect": "annot.defect_type", "sha256": "metadata.image_sha256"}
BATCH_ROWS = 32  # rows decoded at a time; a row holds one image and one mask
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD_LABELS = {"good", "normal", "ok", "0", "false", "none", "null", ""}
SPLITS = ("train", "test")
_SAFE_PART = re.compile(r"^[\w][\w .+()-]*$")
_KNOWN_FOLDERS = {c.folder.lower(): c.folder for c in KNOWN}
_MISSING = object()


class ParquetError(DatasetError):
    """A parquet copy that cannot become a dataset root: a missing column, a bad row."""


def pyarrow_parquet():
    """pyarrow.parquet, or a one-line error saying how to get it (it is the `hf` extra)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ThreecadError("this source holds parquet files, which need pyarrow: pip install "
                            "'threecad[hf]' (or pip install pyarrow), then run the same command again") from None
    return pq


def parse_columns(text: str | None) -> dict[str, str]:
    """`image=img,mask=gt,path=meta.file` -> the default mapping updated; bad input is one line."""
    mapping = dict(DEFAULT_COLUMNS)
    if not text:
        return mapping
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in KEYS:
            raise ThreecadError(f"--columns: {item!r} is not KEY=COLUMN with KEY one of {', '.join(KEYS)}")
        if not value and key == "image":
            raise ThreecadError(f"--columns: {item!r} drops the image column, which every copy needs")
        if not value:
            mapping.pop(key, None)  # `sha256=` : this copy has no such column
            continue
        if not re.fullmatch(r"[^\s=,]+", value):
            raise ThreecadError(f"--columns: column name {value!r} for {key} is not valid")
        mapping[key] = value
    return mapping


def is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


@dataclass
class ParquetResult:
    """What the conversion read and wrote (recorded in the manifest's `source.parquet`)."""

    files: list[dict] = field(default_factory=list)  # name, rows
    rows: int = 0
    images: int = 0
    masks: int = 0
    reencoded: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # train_good, test_good, test_defect
    columns: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(files=self.files, rows=self.rows, images=self.images, masks=self.masks,
                    reencoded=self.reencoded, counts=self.counts, columns=self.columns)


@dataclass
class _Plan:
    """Where each mapped key is read from in one file: (column, field or None)."""

    where: dict[str, tuple[str, str | None]]
    columns: list[str]


def _plan(names: list[str], mapping: dict[str, str], file: Path) -> _Plan:
    where: dict[str, tuple[str, str | None]] = {}
    for key, spec in mapping.items():
        if spec in names:
            where[key] = (spec, None)
            continue
        col, _, sub = spec.partition(".")
        if sub and col in names:
            where[key] = (col, sub)
        elif key in ("image", "mask"):
            listed = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            raise ParquetError(f"{file.name} has no {key} column ({spec!r}; its columns: {listed}); "
                               f"name it with --columns {key}=COLUMN")
    if "path" not in where and "category" not in where:
        raise ParquetError(f"{file.name} has neither a path column ({mapping.get('path')!r}) nor a category "
                           "column, so rows cannot be placed; name one with --columns path=COLUMN or "
                           "category=COLUMN")
    return _Plan(where, sorted({c for c, _ in where.values()}))


def _annot_text(text: str) -> dict | None:
    """The unified schema's plain-text `{label, defect_type}`, e.g. `{anomalous, scratch}`."""
    m = re.fullmatch(r"\s*\{?\s*([^,{}]*?)\s*,\s*([^{}]*?)\s*\}?\s*", text)
    if not m:
        return None
    label, defect = m.group(1).strip("'\""), m.group(2).strip("'\"")
    return {"label": label, "defect_type": None if defect.lower() in ("null", "none", "") else defect}


def _parse(value: Any) -> Any:
    """A cell read for its fields: a struct stays a dict, JSON text becomes one."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return _annot_text(value) or value
    return value


def _field(value: Any, sub: str) -> Any:
    if isinstance(value, dict):
        for part in sub.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value
    if isinstance(value, str):
        return value if sub == "label" else None  # a bare label string
    return None


def _bytes(value: Any) -> bytes | None:
    """Image bytes from an Image struct {bytes, path}, a binary cell, or None."""
    if value is None:
        return None
    if isinstance(value, dict):
        data = value.get("bytes")
        return bytes(data) if data is not None else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def _size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header; None when the bytes are not an image."""
    if data[:8] == PNG_MAGIC and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any undecodable cell is reported by the caller
        return None


def _as_png(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def _label_is_good(label: Any) -> bool | None:
    if label is None:
        return None
    if isinstance(label, bool):
        return not label
    if isinstance(label, (int, float)):
        return label == 0
    return str(label).strip().lower() in GOOD_LABELS


def _safe(part: str) -> bool:
    return bool(_SAFE_PART.match(part)) and part not in (".", "..")


class _Converter:
    def __init__(self, dest: Path, mapping: dict[str, str], progress: bool | None):
        self.dest, self.mapping, self.progress = dest, mapping, progress
        self.seen: dict[str, str] = {}  # relative image path -> the row that wrote it
        self.bad_hash: list[str] = []
        self.result = ParquetResult(columns=dict(mapping))
        self.result.counts = {"train_good": 0, "test_good": 0, "test_defect": 0}

    def place(self, row: dict[str, Any], where: str) -> tuple[str, str, str, str]:
        """(category, split, defect_type, file name) of a row."""
        raw_path = row.get("path")
        parts: list[str] = []
        if raw_path not in (None, ""):
            text = str(raw_path)
            parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
            if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or ".." in parts:
                raise ParquetError(f"{where}: path {text!r} escapes the dataset root (absolute or '..'); "
                                   "refusing the copy")
        good = _label_is_good(row.get("label"))
        category = split = defect = None
        name = parts[-1] if parts else None
        for i in range(len(parts) - 3, 0, -1):  # .../<Category>/<split>/<defect>/<name>
            if parts[i].lower() in SPLITS:
                category, split, defect = parts[i - 1], parts[i].lower(), parts[i + 1]
                break
        if category is None:
            named = row.get("category")
            category = str(named) if named not in (None, "") else next(
                (_KNOWN_FOLDERS[p.lower()] for p in reversed(parts[:-1]) if p.lower() in _KNOWN_FOLDERS), None)
            split = str(row.get("split") or "").strip().lower() or None
            if good is True:
                defect = "good"
            else:
                defect = row.get("defect")
                defect = str(defect).strip().replace(" ", "_") if defect not in (None, "") else None
        missing = [k for k, v in (("category", category), ("split", split), ("defect type", defect),
                                  ("file name", name)) if not v]
        if missing:
            raise ParquetError(f"{where}: cannot tell its {', '.join(missing)} (path {raw_path!r}); map the "
                               "columns with --columns path=...,split=...,label=...,defect=...")
        if split not in SPLITS:
            raise ParquetError(f"{where}: split {split!r} is neither train nor test; the MVTec layout has only "
                               "these two")
        if category.lower() in _KNOWN_FOLDERS:
            category = _KNOWN_FOLDERS[category.lower()]
        for what, part in (("category", category), ("defect type", defect), ("file name", name)):
            if not _safe(part):
                raise ParquetError(f"{where}: {what} {part!r} is not a safe folder or file name")
        if split == "train" and defect != "good":
            raise ParquetError(f"{where}: a train row labelled {defect!r}; train images must be good")
        if good is True and defect != "good" or good is False and defect == "good":
            raise ParquetError(f"{where}: its label {row.get('label')!r} contradicts its path {raw_path!r}")
        return category, split, defect, name

    def row(self, row: dict[str, Any], where: str) -> None:
        image = _bytes(row.get("image"))
        if image is None:
            raise ParquetError(f"{where}: no image bytes (null, or a path without embedded bytes)")
        category, split, defect, name = self.place(row, where)
        expected = row.get("sha256")
        if expected:
            got = hashlib.sha256(image).hexdigest()
            if got != str(expected).strip().lower():
                self.bad_hash.append(f"{where} ({category}/{split}/{defect}/{name}): sha256 {got}, "
                                     f"image_sha256 says {expected}")
                return
        size = _size(image)
        if size is None:
            raise ParquetError(f"{where} ({name}): the image bytes are not an image")
        if image[:8] != PNG_MAGIC:
            image = _as_png(image)
            name = posixpath.splitext(name)[0] + ".png"
            self.result.reencoded += 1
        elif not name.lower().endswith(".png"):
            name = posixpath.splitext(name)[0] + ".png"
        rel = f"{category}/{split}/{defect}/{name}"
        if rel in self.seen:
            raise ParquetError(f"{where}: {rel} again (first written by {self.seen[rel]}); a copy must hold "
                               "each file once")
        self.seen[rel] = where
        mask = None
        if defect == "good":
            self.good_mask(row, where, rel)
        else:
            mask = _bytes(row.get("mask"))
            if mask is None:
                raise ParquetError(f"{where} ({rel}): a defective image without a mask")
            msize = _size(mask)
            if msize is None:
                raise ParquetError(f"{where} ({rel}): the mask bytes are not an image")
            if msize != size:
                raise ParquetError(f"{where} ({rel}): mask is {msize[0]}x{msize[1]} but the image is "
                                   f"{size[0]}x{size[1]} (WxH)")
            if mask[:8] != PNG_MAGIC:
                mask = _as_png(mask)
                self.result.reencoded += 1
        out = self.dest / category / split / defect / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(image)
        self.result.images += 1
        if mask is not None:
            mout = self.dest / category / "ground_truth" / defect / name
            mout.parent.mkdir(parents=True, exist_ok=True)
            mout.write_bytes(mask)
            self.result.masks += 1
        key = "train_good" if split == "train" else ("test_good" if defect == "good" else "test_defect")
        self.result.counts[key] += 1

    def good_mask(self, row: dict[str, Any], where: str, rel: str) -> None:
        """Refuse a good row whose mask marks defects; an empty mask is nothing lost."""
        mask = _bytes(row.get("mask"))
        if mask is None:
            return
        from threecad.masks import MaskError, inspect_mask

        try:
            n_defect = inspect_mask(mask, name="in the mask column").n_defect
        except MaskError as exc:
            raise ParquetError(f"{where} ({rel}): a good image whose mask cannot be read ({exc})") from None
        if n_defect:
            raise ParquetError(f"{where} ({rel}): a good image (label {row.get('label')!r}) whose mask marks "
                               f"{n_defect} defect pixel(s); the label or the mask is wrong; refusing the copy")

    def file(self, path: Path, label: str, bar: tqdm) -> None:
        pq = pyarrow_parquet()
        import pyarrow as pa

        try:
            # pre_buffer (the default) reads ahead across row groups: off, memory holds one batch
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except (pa.ArrowException, OSError) as exc:
            raise ParquetError(f"{label} is not a readable parquet file ({str(exc).splitlines()[0]}); "
                               "delete it and download it again") from None
        with pf:
            plan = _plan(pf.schema_arrow.names, self.mapping, Path(label))
            n = 0
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=plan.columns, use_threads=False):
                    cells = {c: batch.column(c).to_pylist() for c in plan.columns}
                    for i in range(batch.num_rows):
                        parsed: dict[str, Any] = {}
                        row: dict[str, Any] = {}
                        for key, (col, sub) in plan.where.items():
                            value = cells[col][i]
                            if sub is not None:
                                cache = parsed.get(col, _MISSING)
                                if cache is _MISSING:
                                    cache = parsed[col] = _parse(value)
                                value = _field(cache, sub)
                            row[key] = value
                        self.row(row, f"row {n} of {label}")
                        n += 1
                    del cells
                    bar.update(batch.num_rows)
            except (pa.ArrowException, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == 28:
                    raise ThreecadError(f"disk full while writing the images of {label}; free space or "
                                        "choose a --root on a larger disk") from exc
                raise ParquetError(f"{label} is damaged near row {n} ({str(exc).splitlines()[0]}); delete it "
                                   "and download it again") from None
        self.result.files.append({"name": label, "rows": n})
        self.result.rows += n


def convert(files: list[tuple[Path, str]], dest: Path, mapping: dict[str, str] | None = None,
            progress: bool | None = None) -> ParquetResult:
    """Write the rows of parquet `files` ((path, label) pairs) into `dest` in the MVTec layout.

    `dest` should be a temporary folder: on a refusal it holds a partial tree that the
    caller removes.
    """
    pq = pyarrow_parquet()
    mapping = dict(DEFAULT_COLUMNS if mapping is None else mapping)
    conv = _Converter(Path(dest), mapping, progress)
    total = 0
    for path, label in files:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - reported with its name when read below
            pass
    disable = None if progress is None else not progress
    with tqdm(total=total or None, unit="row", desc="parquet -> files", disable=disable) as bar:
        for path, label in files:
            conv.file(path, label, bar)
    if conv.bad_hash:
        raise ParquetError(f"{len(conv.bad_hash)} row(s) do not match their image_sha256 (first: "
                           f"{conv.bad_hash[0]}); the copy is damaged or altered; nothing installed")
    if conv.result.images == 0:
        raise ParquetError(f"the parquet files ({files[0][1] if files else 'none'}, ...) hold no rows")
    log.info("parquet: %d rows -> %d images, %d masks (%d re-encoded to PNG)", conv.result.rows,
             conv.result.images, conv.result.masks, conv.result.reencoded)
    return conv.result
