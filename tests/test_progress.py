"""Progress a user sees on long work: log lines where tqdm would draw nothing, one line for many
short jobs, and where a multi-category run stands."""
from __future__ import annotations

import io
import logging
import os

from threecad import progress
from threecad.harness.runner import overall_line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2


def test_a_pty_with_no_columns_gets_log_lines(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", _Tty())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert not progress.on_terminal()
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    assert progress.on_terminal()


def test_quiet_jobs_that_finish_within_an_interval_log_at_debug(caplog):
    clock = iter([0.0, 0.0, 1.0, 2.0, 100.0, 200.0])
    with caplog.at_level(logging.DEBUG, logger="threecad.progress"):
        short = progress.LogProgress(total=3, desc="cache", unit="img", quiet=True, clock=lambda: next(clock))
        short.update(3)
        short.close()
        long = progress.LogProgress(total=3, desc="big cache", unit="img", quiet=True, clock=lambda: next(clock))
        long.close()
    levels = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records}
    assert levels == {"cache": logging.DEBUG, "big cache": logging.INFO}


def test_overall_line():
    assert overall_line(0, 8, "ACC", 0.0) == "[1/8] ACC"
    assert overall_line(2, 8, "AMF", 130.0) == "[3/8] AMF: 2 finished in 2 min 10 s, about 6 min 30 s left"
