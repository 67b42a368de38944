"""Methods are found through the entry-point group `threecad.methods`.

This package registers its own methods there too (setup.cfg), so a third-party package
that declares `[options.entry_points] threecad.methods = mine = pkg.mod:MyMethod` shows
up in `threecad methods` and `threecad bench --method mine` without touching this code.

A family of methods (another library's models, threecad.anomalib_adapter) registers once under
`threecad.method_families`: an object with `members()` (name -> description) and
`method(member)` (its Method class). Its members are spelled FAMILY:MEMBER on the command line;
a member's class is named FAMILY-MEMBER, the spelling its run folders and leaderboard rows
carry (a colon is neither safe in a file name everywhere nor in a board cell), and read back.
"""
from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points

from threecad.errors import ThreecadError
from threecad.method import Method

GROUP = "threecad.methods"
FAMILY_GROUP = "threecad.method_families"
log = logging.getLogger(__name__)


def method_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def family_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=FAMILY_GROUP)}


def member_name(family: str, member: str) -> str:
    """The name a family member's class carries (its runs' folders and records)."""
    return f"{family}-{member}"


def load_method(name: str) -> type[Method]:
    """The method class registered as `name`, or the family member FAMILY:MEMBER (case-insensitive)."""
    eps = method_entry_points()
    key = name.lower()
    matches = {n.lower(): ep for n, ep in eps.items()}
    if key not in matches and (member := _family_member(name)) is not None:
        return member
    if key not in matches:
        close = difflib.get_close_matches(key, list(matches), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        # a typo gets the closest name; only when nothing is registered is the install in question
        install = "" if eps else " (is threecad installed? `pip install -e .` in the checkout)"
        families = "".join(f", {f}:NAME" for f in sorted(family_entry_points()))
        raise ThreecadError(f"unknown method '{name}'.{hint} Known: {', '.join(sorted(eps)) or 'none'}{families}"
                            f"{install}")
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


def _family_member(name: str) -> type[Method] | None:
    """FAMILY:MEMBER (or FAMILY-MEMBER, as runs record it) of a registered family; None when the name
    has no registered family before its separator."""
    families = {n.lower(): ep for n, ep in family_entry_points().items()}
    for sep in (":", "-"):
        family, found, member = name.partition(sep)
        if found and member and family.lower() in families:
            ep = families[family.lower()]
            cls = load_family(ep).method(member)
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise ThreecadError(f"family '{ep.name}' ({ep.value}) gave a {type(cls).__name__} for '{member}', "
                                    "not a threecad Method")
            return cls
    return None


def load_family(ep):
    """The family object an entry point names; a broken one is one line."""
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is the user's to fix, in one line
        raise ThreecadError(f"method family '{ep.name}' ({ep.value}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc


def method_families() -> dict[str, dict[str, str] | Exception]:
    """Every registered family's members (FAMILY:MEMBER -> description); a family that cannot list
    them (its library missing) maps to the error that says why."""
    out: dict[str, dict[str, str] | Exception] = {}
    for name, ep in sorted(family_entry_points().items()):
        try:
            out[name] = {f"{name}:{m}": d for m, d in load_family(ep).members().items()}
        except Exception as exc:  # noqa: BLE001 - one broken family must not hide the methods
            log.warning("method family '%s' cannot list its members: %s", name, exc)
            out[name] = exc
    return out
