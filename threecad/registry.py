"""Methods are found through the entry-point group `threecad.methods`.

This package registers its own methods there too (setup.cfg), so a third-party package
that declares `[options.entry_points] threecad.methods = mine = pkg.mod:MyMethod` shows
up in `threecad methods` and `threecad bench --method mine` without touching this code.
"""
from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points

from threecad.errors import ThreecadError
from threecad.method import Method

GROUP = "threecad.methods"
log = logging.getLogger(__name__)


def method_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_method(name: str) -> type[Method]:
    """The method class registered as `name` (case-insensitive)."""
    eps = method_entry_points()
    key = name.lower()
    matches = {n.lower(): ep for n, ep in eps.items()}
    if key not in matches:
        close = difflib.get_close_matches(key, list(matches), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        # a typo gets the closest name; only when nothing is registered is the install in question
        install = "" if eps else " (is threecad installed? `pip install -e .` in the checkout)"
        raise ThreecadError(f"unknown method '{name}'.{hint} Known: {', '.join(sorted(eps)) or 'none'}{install}")
    try:
        cls = matches[key].load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is the user's to fix, in one line
        raise ThreecadError(f"method '{name}' ({matches[key].value}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ThreecadError(f"entry point '{name}' ({matches[key].value}) is not a threecad Method")
    return cls


def available_methods() -> dict[str, type[Method] | Exception]:
    """Every registered method; a broken entry point maps to its import error."""
    out: dict[str, type[Method] | Exception] = {}
    for name, ep in sorted(method_entry_points().items()):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise ThreecadError(f"{ep.value} is not a threecad Method")
            out[name] = cls
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            log.warning("method '%s' failed to load: %s", name, exc)
            out[name] = exc
    return out
