"""Small wording helpers for messages that every command prints the same way."""
from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """"1 category", "3 categories", "1 error", "2 errors"."""
    if n == 1:
        return f"{n} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{n} {noun}s"
