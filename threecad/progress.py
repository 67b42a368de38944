"""Progress on long work, visible with or without a terminal.

Why: tqdm bars are the right thing on a terminal, but with stderr going to a file (a batch
job, `make demo > log`) tqdm disables itself and a 20-minute run prints nothing at all.
So every long loop goes through here: on a terminal it is a tqdm bar; otherwise it logs
one INFO line at a steady pace (every `interval` seconds, 30 by default) and one at the
end, each with done/total and the rate.

    for batch in progress(loader, desc="ACC test", unit="batch"):
        ...

    with progress_bar(total=steps, desc="train", unit="step") as bar:   # manual updates
        bar.update(1)
        bar.set_postfix(epoch="3/40", loss="0.1234")
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger("threecad.progress")
T = TypeVar("T")
INTERVAL_S = 30.0


def on_terminal() -> bool:
    """True when stderr is an interactive terminal with a width (where tqdm draws its bars): a pty
    that reports 0 columns gets the log lines, as tqdm would draw nothing there."""
    stream = sys.stderr
    try:
        if stream is None or not stream.isatty():
            return False
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a closed or replaced stream, or no size
        return False


class LogProgress:
    """tqdm's `update` / `set_postfix` / `close`, reported as log lines at a steady pace."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 interval: float = INTERVAL_S, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, quiet: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.quiet = quiet  # a job done within one interval says so at DEBUG only (many short ones, one line above)
        self.interval, self.log, self.clock = interval, logger or log, clock
        self.n = 0
        self.postfix = ""
        self.start = self.last = clock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now, final=False)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            now = self.clock()
            if self.quiet and now - self.start < self.interval:
                self.log.debug("%s: %s %s done in %.1f s", self.desc, self.n, self.unit, now - self.start)
            else:
                self._emit(now, final=True)

    def _emit(self, now: float, final: bool) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        if final:
            text = f"{self.desc}: {done} {self.unit} done in {elapsed:.1f} s ({rate:.3g} {self.unit}/s)"
        else:
            text = f"{self.desc}: {done} {self.unit} after {elapsed:.0f} s ({rate:.3g} {self.unit}/s)"
            if self.total is not None and rate > 0:
                text += f", about {max(self.total - self.n, 0) / rate:.0f} s left"
        if self.postfix:
            text += f" [{self.postfix}]"
        self.log.info("%s", text)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", *, leave: bool = False,
                 interval: float = INTERVAL_S, terminal: bool | None = None, quiet: bool = False):
    """A tqdm bar on a terminal, else a LogProgress; both are context managers with
    `update(n)` and `set_postfix(**kw)`. `terminal` overrides the detection (tests); `quiet`: a
    LogProgress that finishes within one interval logs its final line at DEBUG."""
    if on_terminal() if terminal is None else terminal:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return LogProgress(total=total, desc=desc, unit=unit, interval=interval, quiet=quiet)


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it", *,
             leave: bool = False, interval: float = INTERVAL_S, terminal: bool | None = None) -> Iterator[T]:
    """Iterate `iterable`, showing progress (see the module docstring); `total` defaults to len()."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress_bar(total=total, desc=desc, unit=unit, leave=leave, interval=interval,
                      terminal=terminal) as bar:
        for item in iterable:
            yield item
            bar.update(1)
