"""The leaderboard CSV on disk: where it is, reading it validated, and changing it safely.

Every change happens under a file lock and as one atomic rewrite, so that two submits at
the same time both land and a failed submit leaves the file byte-identical. Cells are
read and written as text, so rows that a change does not touch keep their exact spelling.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from filelock import FileLock, Timeout

import threecad
from threecad.fsutil import atomic_path
from threecad.leaderboard.names import is_known_method
from threecad.leaderboard.paper import paper_rows
from threecad.leaderboard.evidence import verify_run
from threecad.leaderboard.runcheck import check_run
from threecad.leaderboard.runs import load_results, rows_from_run
from threecad.leaderboard.schema import COLUMNS, KEY, SUBMISSION, LeaderboardError, validate_table, with_evidence

LOCK_TIMEOUT_S = 60.0


def repository_root() -> Path:
    """The folder above the `threecad` package: the source checkout for an editable install."""
    return Path(threecad.__file__).resolve().parent.parent


def checkout_csv_path() -> Path | None:
    """`leaderboard/results.csv` of the source checkout threecad runs from; None for a plain install.

    A checkout is recognised by its project file beside the package; site-packages has none.
    Commands change it only when it is named (`--csv leaderboard/results.csv`).
    """
    root = repository_root()
    if (root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file():
        return root / "leaderboard" / "results.csv"
    return None


def default_csv_path() -> Path:
    """The user's own table, `<data home>/leaderboard/results.csv`: where submits go unless --csv
    names another, so that a submission never edits a file a git checkout tracks."""
    from threecad.datahome import data_home

    return data_home() / "leaderboard" / "results.csv"


def resolve_csv(path: str | Path | None, must_exist: bool = True) -> Path:
    """The CSV a command works on: `--csv FILE` when given, else the user's table (default_csv_path)."""
    csv_path = Path(path).expanduser() if path is not None else default_csv_path()
    if csv_path.is_dir():
        raise LeaderboardError(f"leaderboard table {csv_path} is a folder; --csv names a CSV file.")
    if must_exist and not csv_path.is_file():
        if path is None:
            raise LeaderboardError(f"you have no leaderboard table yet ({csv_path}); `threecad leaderboard submit "
                                   "RUN` starts it, or pass --csv FILE.")
        raise LeaderboardError(f"leaderboard table {csv_path} does not exist; check the path, or start a "
                               "new table with `threecad leaderboard init --csv FILE` (or `submit --create`).")
    return csv_path


PUBLISHED_ORIGIN = "the paper's published numbers packaged with threecad"


def table_to_show(path: str | Path | None) -> tuple[pd.DataFrame, str, bool]:
    """(table, where it comes from, whether it is the packaged fallback) for `show`.

    `--csv FILE` when given; else the user's table once a submit has started it; else the
    paper's numbers that ship inside the package (no runs).
    """
    if path is None and not default_csv_path().is_file():
        return paper_rows(), PUBLISHED_ORIGIN, True
    csv_path = resolve_csv(path)
    return read_table(csv_path), csv_path.name, False


def check_writable(path: str | Path) -> None:
    """Refuse, before anything is written, a file that an atomic rewrite would wrongly replace.

    The rename of an atomic write ignores the file's own mode, so a read-only file (no write
    permission for us, or no write bit at all, which root would otherwise override) is
    checked here, and so is the folder that the rename and the lock file need.
    """
    path = through_links(path)
    if path.is_dir():
        raise LeaderboardError(f"{path} is a folder, not a file.")
    if path.exists():
        mode = path.stat().st_mode
        if not os.access(path, os.W_OK) or not mode & 0o222:
            raise LeaderboardError(f"{path} is read-only (mode {stat.filemode(mode)}); it was left as it is. "
                                   "Make it writable, or pass another file.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise LeaderboardError(f"cannot create {path}: {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LeaderboardError(f"cannot write in {folder} (permission denied); {path} is rewritten atomically "
                               "through a new file in that folder.")


@contextlib.contextmanager
def locked(csv_path: Path) -> Iterator[None]:
    """Hold the lock that serialises writers of one CSV (a hidden file beside the real file, links followed).

    The lock file is removed on release, so neither a refused nor a finished change leaves it
    behind. Removing it is safe because a waiter that wins the lock checks that the file it
    holds is still the one at the path, and tries again otherwise.
    """
    csv_path = through_links(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = csv_path.parent / f".{csv_path.name}.lock"
    try:
        import fcntl
    except ImportError:  # no flock (Windows): filelock's lock, whose file stays
        with _filelock(lock_path, csv_path):
            yield
        return
    fd = _acquire(lock_path, csv_path, fcntl)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)  # closing drops the flock


def _acquire(lock_path: Path, csv_path: Path, fcntl) -> int:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaderboardError(f"another process has held the lock on {csv_path} for over "
                                               f"{LOCK_TIMEOUT_S:.0f} s; try again.") from None
                    time.sleep(0.05)
            try:
                current = os.stat(lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before us removed the file we waited on: lock the new one


@contextlib.contextmanager
def _filelock(lock_path: Path, csv_path: Path) -> Iterator[None]:
    lock = FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise LeaderboardError(f"another process has held the lock on {csv_path} for over "
                               f"{LOCK_TIMEOUT_S:.0f} s; try again.") from None
    try:
        yield
    finally:
        lock.release()


def through_links(path: str | Path) -> Path:
    """The file a write must replace: a symbolic link's target (the table a shared link points
    to gets the row; an atomic rename onto the link would replace the link with a copy)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def read_table(csv_path: str | Path) -> pd.DataFrame:
    """The table as text cells, validated; a problem names the file, line and column."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LeaderboardError(f"leaderboard table {csv_path} does not exist.") from None
    except UnicodeDecodeError as exc:
        raise LeaderboardError(f"{csv_path} is not UTF-8 text ({exc}).") from None
    if not text.strip():
        raise LeaderboardError(f"{csv_path} is empty; its first line must be the header: {','.join(COLUMNS)}")
    try:
        # blank lines inside the table stay rows, so that reported line numbers match the file
        table = pd.read_csv(io.StringIO(text.rstrip("\r\n") + "\n"), dtype=str, keep_default_na=False,
                            na_filter=False, skip_blank_lines=False)
    except (pd.errors.ParserError, csv.Error) as exc:
        raise LeaderboardError(f"{csv_path} is not a well-formed CSV ({exc}).") from None
    table = with_evidence(table)
    validate_table(table, str(csv_path))
    return table[list(COLUMNS)].reset_index(drop=True)


def table_text(table: pd.DataFrame) -> str:
    """The CSV text of a table: fixed column order, minimal quoting, '\\n' line ends."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    writer.writerows(table[list(COLUMNS)].astype(str).itertuples(index=False, name=None))
    return out.getvalue()


def write_text_keeping_mode(path: str | Path, text: str) -> None:
    """Atomic write that keeps the file's permissions (a new file gets the umask's default).

    The temporary file of an atomic write is private (0600); renamed as is, it would make a
    shared table unreadable to the other users of a machine.
    """
    path = through_links(path)
    check_writable(path)
    if path.exists():
        mode = path.stat().st_mode & 0o7777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)


def write_table(csv_path: str | Path, table: pd.DataFrame) -> None:
    """Validate and write atomically (the caller holds the lock when others may write)."""
    validate_table(table.reset_index(drop=True), f"{csv_path} (after the change)")
    write_text_keeping_mode(csv_path, table_text(table))


def init_table(csv_path: str | Path, with_paper: bool = True, overwrite: bool = False) -> int:
    """Create a table holding the paper's numbers (or only the header); returns the row count."""
    csv_path = Path(csv_path)
    if csv_path.exists() and not overwrite:
        raise LeaderboardError(f"{csv_path} already exists; pass --force to overwrite it.")
    check_writable(csv_path)
    with locked(csv_path):
        if csv_path.exists() and not overwrite:
            raise LeaderboardError(f"{csv_path} already exists; pass --force to overwrite it.")
        table = paper_rows() if with_paper else empty_table()
        write_table(csv_path, table)
    return len(table)


@dataclass
class SubmitResult:
    csv_path: Path
    added: pd.DataFrame
    replaced: int
    run_id: str
    created: bool = False
    notes: list[str] = field(default_factory=list)


def _canonical_methods(rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """A method that has no display name of its own takes the spelling already in the table
    when it matches apart from case (`mymethod` vs `MyMethod`)."""
    known = {m.lower(): m for m in table["method"].unique()}
    rows = rows.copy()
    rows["method"] = [m if is_known_method(m) or m.lower() not in known else known[m.lower()]
                      for m in rows["method"]]
    return rows


def submit_run(run_dir: str | Path, csv_path: str | Path, replace: bool = False,
               create: bool = False, root: str | Path | None = None) -> SubmitResult:
    """Append the rows of one run directory to the table, under the lock, atomically.

    The table must exist unless `create` (a misspelt path must not start a new table), and
    be writable. The run is checked against its records (`runcheck`) before the table is
    touched. A run that is already in the table (same key) is refused unless `replace`,
    which first removes every row of that same submission (method, variant, source,
    reference, protocol, dataset), so a re-run does not leave stale categories behind.
    With `root`, every metric is first computed again from the run's stored predictions and
    ROOT's masks (threecad.leaderboard.evidence); any difference refuses the run.
    """
    csv_path = Path(csv_path)
    started = None
    if not csv_path.is_file() and csv_path == default_csv_path():
        create, started = True, "your table"  # the user's own table starts with the first submit
    if not create and not csv_path.is_file():
        raise LeaderboardError(f"leaderboard table {csv_path} does not exist; check the --csv path, "
                               "or pass --create to start a new table there.")
    check_writable(csv_path)
    run = rows_from_run(run_dir)  # a malformed or unfinished run fails here, before the table is touched
    if root is not None:  # every metric computed again from the run's predictions and ROOT's masks
        _, results_path, data = load_results(run_dir)
        verified = verify_run(run_dir, data, check_run(Path(run_dir), results_path, data).records, root)
        run.rows["evidence"] = verified.evidence
        if verified.why:
            run.notes.append(f"rows stored as data-unverified: every number was computed again, but {verified.why}.")
    else:
        run.notes.append("rows stored as claimed: the run's own numbers, not computed again; pass --root ROOT "
                         "(the dataset it was scored on) to compute them from its stored predictions.")
    with locked(csv_path):
        created = not csv_path.exists()
        table = (paper_rows() if started else empty_table()) if created else read_table(csv_path)
        rows = _canonical_methods(run.rows, table)
        new_keys = set(rows[list(KEY)].itertuples(index=False, name=None))
        clash = [k in new_keys for k in table[list(KEY)].itertuples(index=False, name=None)]
        replaced = 0
        if any(clash):
            if not replace:
                raise LeaderboardError(
                    f"run {run.run_id} is already in {csv_path} ({sum(clash)} of its rows); "
                    "pass --replace to overwrite it.")
            submissions = set(rows[list(SUBMISSION)].itertuples(index=False, name=None))
            drop = [k in submissions or c for k, c in zip(
                table[list(SUBMISSION)].itertuples(index=False, name=None), clash)]
            replaced = sum(drop)
            table = table[[not d for d in drop]]
        write_table(csv_path, pd.concat([table, rows], ignore_index=True) if len(table) else rows)
    notes = run.notes + ([f"started your table {csv_path} with the paper's published numbers (as `threecad "
                          "leaderboard init` does); the repository's table changes only with --csv "
                          "leaderboard/results.csv"] if created and started else [])
    return SubmitResult(csv_path=csv_path, added=rows, replaced=replaced, run_id=run.run_id,
                        created=created, notes=notes)
