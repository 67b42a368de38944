"""`verify`: is a dataset root complete and sound? Reads everything, changes nothing.

The layout scan already lists what does not fit the folder layout (missing and orphan
masks, unknown or unreadable folders, non-image files, unreadable headers, masks whose
size is not their image's). Verify goes further: it decodes every image and mask (in
parallel threads; Pillow and hashlib release the GIL), reads each mask with
`threecad.masks` (the reader stats and the Dataset use), checks that it is binary
(0/255) with at least one defect pixel, compares the counts per category with the
paper's Table 1 when the root is 3CAD, and, when the root carries a file manifest,
reports files changed, missing or added since it was written. Each file is read once:
the bytes that are decoded are also hashed, so a manifest check costs no second pass
over the images.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from threecad import catalog
from threecad.catalog import Category
from threecad.wording import plural
from threecad.errors import DatasetError, ThreecadError
from threecad.fsutil import open_regular
from threecad.layout import (METADATA_SUFFIXES, SYNTHETIC_MARKER, Problem, Scan, catalog_order,
                             is_category_dir, scan_root)
from threecad.masks import MaskError, inspect_mask
from threecad.manifest import (FileEntry, ManifestDiff, build_manifest, compare, hash_files,
                               list_files, read_manifest, write_manifest)

log = logging.getLogger(__name__)

COUNT_COLUMNS = ["train_good", "test_good", "test_defect", "defect_types"]


@dataclass
class VerifyReport:
    """What verify found. `ok` is False when any problem has severity "error"."""

    root: Path
    dataset: str
    strict: bool
    problems: list[Problem]
    counts: pd.DataFrame
    compared_to_table1: bool
    synthetic: dict | None = None
    manifest_status: str = "absent"  # "absent" | "match" | "differs"
    manifest_diff: ManifestDiff | None = None
    files_checked: int = 0
    # mask path -> defect pixels (> 127 under threecad.masks' rule), for every mask that was read.
    mask_pixels: dict[str, int] = field(default_factory=dict, repr=False)
    # relative path -> FileEntry for every file read; lets a manifest be written without re-reading.
    file_hashes: dict[str, FileEntry] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        counts = self.counts.astype(object).where(self.counts.notna(), None)
        return {
            "root": str(self.root),
            "ok": self.ok,
            "dataset": self.dataset,
            "strict": self.strict,
            "synthetic": self.synthetic,
            "compared_to_table1": self.compared_to_table1,
            "files_checked": self.files_checked,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "manifest": {"status": self.manifest_status,
                         **(self.manifest_diff.to_dict() if self.manifest_diff else {})},
            "counts": counts.to_dict(orient="records"),
            "problems": [dict(severity=p.severity, kind=p.kind, path=p.path, message=p.message)
                         for p in self.problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


# ---------------------------------------------------------------------------- helpers


def _select_categories(scan: Scan, values: Iterable[str] | str | None) -> list[Category]:
    """Resolve --category against the folders on disk; a known category absent from disk
    gets its own message instead of a misleading "unknown"."""
    try:
        return catalog_order(catalog.resolve_categories(values, available=scan.categories))
    except ThreecadError as original:
        tokens = [values] if isinstance(values, str) else list(values or [])
        for token in (t.strip() for v in tokens for t in str(v).split(",") if t.strip()):
            if token.lower() == "all" or any(token.lower() in (c.abbreviation.lower(), c.folder.lower())
                                             for c in scan.categories):
                continue
            try:
                known = catalog.resolve_category(token)
            except ThreecadError:
                raise original from None  # a real typo: suggest among the categories on disk
            found = ", ".join(c.abbreviation for c in scan.categories)
            raise DatasetError(f"category {known.abbreviation} ({known.folder}) is not in {scan.root} "
                               f"(found: {found}); drop it from --category or download it") from None
        raise


def read_synthetic_marker(root: Path) -> dict | None:
    """The `synthetic.json` that `threecad synth` leaves at the root, or None."""
    path = root / SYNTHETIC_MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except ValueError:
        return {"unreadable": True}
    return data if isinstance(data, dict) else {"unreadable": True}


@dataclass(frozen=True)
class _Selection:
    """Which paths under the root belong to the selected categories (root-level files always do)."""

    root: Path
    selected: frozenset[str]  # folder names on disk of the selected categories
    all_categories: frozenset[str]  # folder names on disk of every category

    def __contains__(self, path: str | os.PathLike) -> bool:
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return True
        if len(rel.parts) < 2:
            return True
        top = rel.parts[0]
        return top in self.selected or top not in self.all_categories


def _selection(root: Path, cats: Sequence[Category]) -> _Selection:
    on_disk = {e.name for e in os.scandir(root) if e.is_dir() and is_category_dir(Path(e.path))}
    wanted = {n.lower() for c in cats for n in (c.abbreviation, c.folder)}
    return _Selection(root, frozenset(n for n in on_disk if n.lower() in wanted), frozenset(on_disk))


def _read(path: str, want_hash: bool) -> tuple[bytes, FileEntry | None]:
    with open_regular(path) as fh:
        data = fh.read()
    if not want_hash:
        return data, None
    return data, FileEntry(hashlib.sha256(data).hexdigest(), len(data))


def _mask_problems(mask_path: str, data: bytes, image_hw: tuple[int, int] | None) -> tuple[list[Problem], int | None]:
    """Problems of one mask, read with the one mask reader, and its defect-pixel count."""
    try:
        info = inspect_mask(data, image_hw, name=mask_path)
    except MaskError as exc:
        return [Problem("error", exc.kind, mask_path, str(exc))], None
    out: list[Problem] = []
    if info.n_colour:
        out.append(Problem("error", "mask_not_binary", mask_path,
                           f"{info.n_colour} pixels have differing colour channels (read by their largest "
                           "channel); save masks as one-channel 0/255"))
    elif info.n_between:
        out.append(Problem("error", "mask_not_binary", mask_path,
                           f"{info.n_between} pixels are neither 0 nor {info.full_scale}; masks must be binary "
                           f"0/{info.full_scale}"))
    if info.n_defect == 0:
        out.append(Problem("error", "empty_mask", mask_path,
                           "no defect pixel (> 127) in the mask of a defective image"))
    return out, info.n_defect


def _regular(path: Path) -> bool:
    """A regular file (what may be read and hashed), not a FIFO, socket or device."""
    try:
        return path.is_file()
    except OSError:
        return False


def _check_sample(root: Path, image_path: str, mask_path: str | None, header_ok: bool, mask_ok: bool,
                  want_hash: bool) -> tuple[list[Problem], dict[str, FileEntry], int | None]:
    """Decode one image (and its mask); hash the same bytes when a manifest needs them.

    header_ok / mask_ok: False when the layout scan already reported the file (unreadable
    header, mask of the wrong size); it is then hashed if it can be, not reported twice.
    """
    problems: list[Problem] = []
    hashes: dict[str, FileEntry] = {}
    image_hw = None
    try:
        data, entry = _read(image_path, want_hash)
        if entry:
            hashes[Path(image_path).relative_to(root).as_posix()] = entry
        if header_ok:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                image_hw = (im.height, im.width)
    except OSError as exc:
        if header_ok:
            problems.append(Problem("error", "corrupt_image", image_path, f"does not decode: {exc}"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        problems.append(Problem("error", "corrupt_image", image_path, f"does not decode: {exc!r}"))
    if mask_path is None:
        return problems, hashes, None
    try:
        data, entry = _read(mask_path, want_hash)
    except OSError as exc:
        if mask_ok:
            problems.append(Problem("error", "unreadable_mask", mask_path,
                                    f"cannot read it: {(exc.strerror or str(exc)).lower()}"))
        return problems, hashes, None
    if entry:
        hashes[Path(mask_path).relative_to(root).as_posix()] = entry
    if not mask_ok:
        return problems, hashes, None
    found, pixels = _mask_problems(mask_path, data, image_hw)
    problems.extend(found)
    return problems, hashes, pixels


def _counts(table: pd.DataFrame, cats: Sequence[Category]) -> pd.DataFrame:
    rows = []
    for cat in cats:
        t = table[table.category == cat.abbreviation]
        test = t[t.split == "test"]
        defect = test[test.label == 1]
        rows.append(dict(
            category=cat.abbreviation, folder=t.folder.iloc[0] if len(t) else cat.folder,
            train_good=int(((t.split == "train") & (t.label == 0)).sum()),
            test_good=int((test.label == 0).sum()),
            test_defect=int(len(defect)),
            defect_types=int(defect.defect_type.nunique()),
            height_min=t.height.min() if len(t) else pd.NA, height_max=t.height.max() if len(t) else pd.NA,
            width_min=t.width.min() if len(t) else pd.NA, width_max=t.width.max() if len(t) else pd.NA,
        ))
    return pd.DataFrame(rows)


def _compare_table1(counts: pd.DataFrame, cats: Sequence[Category], all_requested: bool,
                    scan: Scan, strict: bool) -> tuple[pd.DataFrame, list[Problem]]:
    """Add Table 1 columns and list the differences (warnings; errors under --strict)."""
    severity = "error" if strict else "warning"
    t1 = catalog.table1()
    problems: list[Problem] = []
    counts = counts.copy()
    for col in COUNT_COLUMNS:
        counts[f"table1_{col}"] = [int(t1.loc[c, col]) if c in t1.index else pd.NA for c in counts.category]
    matches = []
    for _, row in counts.iterrows():
        if row.category not in t1.index:
            matches.append(pd.NA)
            continue
        diffs = [(col, row[col], row[f"table1_{col}"]) for col in COUNT_COLUMNS if row[col] != row[f"table1_{col}"]]
        matches.append(not diffs)
        if diffs:
            subset = all(got <= want for _, got, want in diffs)
            text = "; ".join(f"{col} {got} vs {want}" for col, got, want in diffs)
            what = "a subset of Table 1" if subset else "differs from Table 1"
            problems.append(Problem(severity, "table1_subset" if subset else "table1_mismatch",
                                    str(scan.root / row.folder), f"{what}: {text}"))
    counts["matches_table1"] = matches
    if all_requested:
        present = {c.abbreviation for c in cats}
        for cat in catalog.THREECAD:
            if cat.abbreviation not in present:
                problems.append(Problem(severity, "missing_category", str(scan.root / cat.folder),
                                        f"3CAD category {cat.abbreviation} is not in the root"))
    return counts, problems


def _compare_marker(counts: pd.DataFrame, written: dict, cats: Sequence[Category], all_requested: bool,
                    root: Path) -> list[Problem]:
    """A synthetic root states what `threecad synth` wrote; any difference means lost or added files."""
    problems = []
    present = {row.category: row for _, row in counts.iterrows()}
    for abbr, want in written.items():
        if not isinstance(want, dict):
            continue
        row = present.get(abbr)
        if row is None:
            if all_requested:
                problems.append(Problem("error", "synthetic_counts", str(root / SYNTHETIC_MARKER),
                                        f"category {abbr} was generated but is not in the root"))
            continue
        diffs = [f"{col} {row[col]} vs {want[col]}" for col in COUNT_COLUMNS
                 if col in want and int(row[col]) != int(want[col])]
        if diffs:
            problems.append(Problem("error", "synthetic_counts", str(root / row.folder),
                                    "differs from what threecad synth wrote (synthetic.json): " + "; ".join(diffs)))
    return problems


# ---------------------------------------------------------------------------- entry points


def verify(root: str | os.PathLike, strict: bool = False, workers: int | None = None,
           categories: Iterable[str] | str | None = None, *, progress: bool | None = None,
           check_manifest: bool = True, hash_all: bool = False) -> VerifyReport:
    """Check a dataset root without changing it.

    strict: Table 1 differences (and missing 3CAD categories) become errors, and a synthetic
    root is compared with Table 1 at any scale. workers: decoding threads (default: CPUs).
    categories: limit the check, as `--category` does. progress: tqdm bar (None: on a TTY).
    hash_all: hash every file even without a manifest (to write one afterwards).
    Raises DatasetError for a missing or empty root and ThreecadError for a bad category.
    """
    root = Path(root).expanduser()
    scan = scan_root(root)
    cats = _select_categories(scan, categories)
    tokens = [categories] if isinstance(categories, str) else list(categories or [])
    all_requested = not tokens or any(str(t).strip().lower() == "all" for t in tokens)
    chosen = _selection(root, cats)
    selected = {c.abbreviation for c in cats}
    table = scan.table[scan.table.category.isin(selected)]
    # an empty category folder belongs to no selection but "all"
    problems = [p for p in scan.problems if p.path in chosen and (all_requested or p.kind != "empty_category")]

    manifest = read_manifest(root) if check_manifest else None
    want_hash = manifest is not None or hash_all
    workers = max(1, workers or os.cpu_count() or 1)
    hashes: dict[str, FileEntry] = {}
    mask_pixels: dict[str, int] = {}
    flagged = {p.path for p in scan.problems if p.kind in ("mask_size", "unreadable_mask")}
    rows = list(zip(table.image_path, table.mask_path, table.height.notna()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda r: _check_sample(root, r[0], r[1] if isinstance(r[1], str) else None,
                                                bool(r[2]), r[1] not in flagged, want_hash), rows)
        bar = tqdm(jobs, total=len(rows), disable=None if progress is None else not progress,
                   desc="verify", unit="img")
        for (found, h, pixels), (_, mask_path, _) in zip(bar, rows):
            problems.extend(found)
            hashes.update(h)
            if pixels is not None:
                mask_pixels[mask_path] = pixels

    manifest_status, diff = "absent", None
    if want_hash:
        selected_files = [p for p in list_files(root) if root / p in chosen and _regular(root / p)]
        hashes = hash_files(root, selected_files, workers=workers, known=hashes)
    if manifest is not None:
        reference = manifest
        if not all_requested:
            reference = type(manifest)(files={k: v for k, v in manifest.files.items()
                                              if root / k in chosen})
        diff = compare(reference, hashes)
        manifest_status = "match" if diff.clean else "differs"
        for rel in diff.changed:
            problems.append(Problem("error", "changed_file", str(root / rel), "differs from the manifest"))
        for rel in diff.missing:
            problems.append(Problem("error", "missing_file", str(root / rel), "listed in the manifest, not on disk"))
        for rel in diff.extra:
            metadata = "/" not in rel and Path(rel).suffix.lower() in METADATA_SUFFIXES
            problems.append(Problem("warning" if metadata else "error", "extra_file", str(root / rel),
                                    "not in the manifest (added since it was written)"))

    counts = _counts(table, cats)
    synthetic = read_synthetic_marker(root)
    compared = False
    if any(c.dataset == "3cad" for c in cats):
        scale = synthetic.get("scale") if synthetic else None
        if synthetic is None or strict or (isinstance(scale, (int, float)) and float(scale) == 1.0):
            counts, found = _compare_table1(counts, [c for c in cats if c.dataset == "3cad"],
                                            all_requested, scan, strict)
            problems.extend(found)
            compared = True
    if synthetic and synthetic.get("unreadable"):
        problems.append(Problem("warning", "synthetic_marker", str(root / SYNTHETIC_MARKER),
                                "not valid JSON; counts are not checked against it"))
    if synthetic and isinstance(synthetic.get("counts"), dict):
        problems.extend(_compare_marker(counts, synthetic["counts"], cats, all_requested, root))
    problems.sort(key=lambda p: (p.severity != "error", p.path, p.kind))
    return VerifyReport(root=root, dataset=scan.dataset, strict=strict, problems=problems, counts=counts,
                        compared_to_table1=compared, synthetic=synthetic, manifest_status=manifest_status,
                        manifest_diff=diff, files_checked=int(len(rows) + table.mask_path.notna().sum()),
                        file_hashes=hashes, mask_pixels=mask_pixels)


def write_manifest_for(report: VerifyReport, source: dict | None = None, workers: int | None = None) -> Path:
    """Record sha256 and size of every file under the verified root (atomic write).

    Refuses when the root has problems other than manifest differences: a manifest is the
    reference later checks trust, so it must not record a broken dataset. The `source`
    block of an existing manifest (where the data came from) is kept unless replaced.
    """
    blocking = [p for p in report.errors if p.kind not in {"changed_file", "missing_file", "extra_file"}]
    if blocking:
        raise DatasetError(f"not writing a manifest for {report.root}: {plural(len(blocking), 'problem')}, "
                           f"first: {blocking[0]}; fix them and run verify again")
    if source is None:
        previous = read_manifest(report.root) if report.manifest_status != "absent" else None
        source = previous.source if previous else {}
    manifest = build_manifest(report.root, workers=workers, known=report.file_hashes, source=source)
    return write_manifest(report.root, manifest)


def format_report(report: VerifyReport, max_problems: int = 40) -> str:
    """The human-readable summary: counts per category, then problems, then the verdict."""
    c = report.counts
    lines = [f"root: {report.root}  dataset: {report.dataset}"
             + ("  (synthetic" + (f", scale {report.synthetic.get('scale')}" if report.synthetic.get("scale")
                                   is not None else "") + ")" if report.synthetic else "")]
    header = f"{'category':<9}{'train/good':>14}{'test/good':>14}{'test/defect':>14}{'types':>9}  size (HxW)"
    lines += [header, "-" * len(header)]

    def cell(row, col, width):
        got = row[col]
        want = row.get(f"table1_{col}") if report.compared_to_table1 else None
        text = str(got) if want is None or pd.isna(want) else f"{got}/{int(want)}"
        return f"{text:>{width}}"

    for _, row in c.iterrows():
        size = ("?" if pd.isna(row.height_min) else
                f"{row.height_min}-{row.height_max} x {row.width_min}-{row.width_max}")
        mark = ""
        if report.compared_to_table1 and "matches_table1" in c and not pd.isna(row.matches_table1):
            mark = "  = Table 1" if row.matches_table1 else "  != Table 1"
        lines.append(f"{row.category:<9}{cell(row, 'train_good', 14)}{cell(row, 'test_good', 14)}"
                     f"{cell(row, 'test_defect', 14)}{cell(row, 'defect_types', 9)}  {size}{mark}")
    if report.compared_to_table1:
        lines.append("(observed/Table 1)")
    elif report.synthetic:
        lines.append("(synthetic root below scale 1.0: counts not compared with Table 1; --strict compares)")
    lines.append(f"manifest: {report.manifest_status}")
    for p in report.problems[:max_problems]:
        lines.append(str(p))
    if len(report.problems) > max_problems:
        lines.append(f"... and {len(report.problems) - max_problems} more (write them all with --json FILE)")
    verdict = "OK" if report.ok else "PROBLEMS"
    lines.append(f"{verdict}: {plural(report.files_checked, 'file')} decoded, "
                 f"{plural(len(report.errors), 'error')}, {plural(len(report.warnings), 'warning')}")
    return "\n".join(lines)
