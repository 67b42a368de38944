"""The bad-input contract, checked the same way for every command.

A refused command exits non-zero, says why in one `error:` line on stderr that names the
option, file or value at fault, prints no traceback, and leaves every watched tree (dataset
root, run directory, leaderboard table) byte-identical: a corrected command must not trip
over what a refused one left behind.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from click.testing import CliRunner

from threecad.cli import main


def snapshot(*paths: Path) -> dict[str, str]:
    """Path -> sha256 (files) or "<dir>" (folders) for everything under `paths`."""
    out: dict[str, str] = {}
    for top in paths:
        top = Path(top)
        if not os.path.lexists(top):
            out[str(top)] = "<absent>"
            continue
        if top.is_file():
            out[str(top)] = hashlib.sha256(top.read_bytes()).hexdigest()
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            out[dirpath] = "<dir>"
            for name in filenames:
                p = Path(dirpath) / name
                try:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:  # unreadable on purpose in some cases
                    out[str(p)] = "<unreadable>"
    return out


def assert_refused(args: Sequence[str], *, names: str | Iterable[str] = (), watch: Iterable[Path] = (),
                   env: dict[str, str] | None = None, input: str | None = None):
    """Run `threecad ARGS`; assert the refusal contract; return the click Result."""
    watched = [Path(p) for p in watch]
    before = snapshot(*watched)
    result = CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=True)
    stderr = result.stderr
    everything = result.output + stderr
    assert result.exit_code != 0, f"exit 0 for {args}:\n{everything}"
    assert "Traceback" not in everything, f"traceback for {args}:\n{everything}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception} for {args}")
    errors = [line for line in stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, f"expected one error line for {args}, got:\n{stderr}"
    for name in ([names] if isinstance(names, str) else list(names)):
        assert name.lower() in errors[0].lower(), f"error line does not name {name!r}: {errors[0]}"
    assert snapshot(*watched) == before, f"{args} changed files it refused to touch"
    return result
