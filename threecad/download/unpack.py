"""From what a source delivered to a dataset folder in the temporary folder: archives
extracted, a folder copied, parquet rows written out; each bounded by the free space."""
from __future__ import annotations

from pathlib import Path

from threecad.archive import (ArchiveError, UnsafeArchiveError, copy_tree, find_dataset_dir, free_bytes,
                              list_members, safe_extract, source_files, uncompressed_size)
from threecad.download import dtd, parquet
from threecad.download.checksums import set_aside
from threecad.download.fetch import Fetched
from threecad.download.request import DownloadRequest
from threecad.download.sources import FREE_SPACE_MARGIN, human_size
from threecad.errors import DatasetError, ThreecadError


def check_free_space(where: Path, need: int) -> None:
    """Refuse, before writing, what would not fit in `where` with the margin kept free."""
    free = free_bytes(where)
    if free < need + FREE_SPACE_MARGIN:
        raise ThreecadError(f"not enough free space in {where}: the dataset needs {human_size(need)}, "
                            f"{human_size(free)} free; free space or choose a --root on a larger disk")


def convert_parquet(req: DownloadRequest, files: list[tuple[Path, str]], target: Path, root: Path,
                    source: dict) -> None:
    """Parquet rows -> the MVTec layout in `target`; what was read is recorded in `source`."""
    check_free_space(root.parent, sum(real.stat().st_size for real, _ in files))
    result = parquet.convert(files, target, parquet.parse_columns(req.columns), progress=req.progress)
    source.update(format="parquet", parquet=result.to_dict())


def parquet_files(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """The .parquet files among (real path, relative name) pairs, by name."""
    return sorted(((real, rel) for real, rel in files if rel.lower().endswith(".parquet")), key=lambda f: f[1])


def unpack(req: DownloadRequest, fetched: Fetched, target: Path, root: Path) -> str:
    """Extract the archives, copy the chosen folder or convert the parquet rows into `target`;
    returns what `target` is a copy of, for messages (`target` is temporary): the archive,
    the folder copied, or the parquet file."""
    if fetched.parquet:
        convert_parquet(req, [(p, p.name) for p in fetched.parquet], target, root, fetched.source)
        return str(fetched.parquet[0])
    if fetched.archives:
        listed = {}
        try:
            for archive in fetched.archives:
                listed[archive] = list_members(archive)
            check_free_space(root.parent, sum(uncompressed_size(m) for m in listed.values()))
            for archive, members in listed.items():
                safe_extract(archive, target, members=members, progress=req.progress)
        except UnsafeArchiveError as exc:
            where = f"; the archive is kept at {fetched.archives[0]}" if fetched.owned else ""
            raise UnsafeArchiveError(f"{exc}{where}") from exc
        except ArchiveError as exc:
            if fetched.owned:  # damaged, not unsafe: fetch afresh next time
                kept = [set_aside(a, "damaged") for a in fetched.archives if a.exists()]
                raise ArchiveError(f"{exc} (kept at {kept[0] if kept else '?'}; the next run downloads "
                                   "it again)") from exc
            raise
        return str(fetched.archives[0]) if len(fetched.archives) == 1 else str(fetched.archives[0].parent)
    folder = fetched.folder
    files = source_files(folder, fetched.within)  # refuses links leaving the folder, loops, unreadable parts
    if req.dataset == "dtd":
        src = dtd.find_dtd_dir(folder)
    else:
        try:
            src = find_dataset_dir(folder)
        except DatasetError:
            shards = parquet_files(files)
            if not shards:
                raise
            convert_parquet(req, shards, target, root, fetched.source)
            return str(folder)
    prefix = src.relative_to(folder).as_posix()
    if prefix != ".":
        files = [(real, rel[len(prefix) + 1:]) for real, rel in files if rel.startswith(prefix + "/")]
    check_free_space(root.parent, sum(real.stat().st_size for real, _ in files))
    copy_tree(src, target, progress=req.progress, files=files)
    return str(src)


def holds_layout(folder: Path) -> bool:
    """Does `folder` hold category folders in the 3CAD/MVTec layout somewhere?"""
    try:
        find_dataset_dir(folder)
    except DatasetError:
        return False
    return True
