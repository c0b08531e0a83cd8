"""Carrying a table's defaults across dialects for `restore --create-schema`.

The source's own text is kept when the target speaks the same dialect. Across dialects
only what means the same on both sides is translated: numbers, string literals, booleans,
NULL and the current date or time. Anything else is reported as not reproduced rather
than guessed at.
"""

from __future__ import annotations

import re

_CAST = re.compile(r"^(?P<value>.*?)(?:::[A-Za-z_][\w ]*(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])?)+$")
_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_STRING = re.compile(r"^'(?:[^']|'')*'$")
_NOW = {
    "now()",
    "current_timestamp",
    "transaction_timestamp()",
    "localtimestamp",
    "statement_timestamp()",
}
_CURRENT = {"current_date": "CURRENT_DATE", "current_time": "CURRENT_TIME"}


def portable_default(
    text: str, *, logical_type: str, source_dialect: str, target_dialect: str
) -> str | None:
    """The default as SQL for the target, or None when it cannot be carried over."""
    if "nextval(" in text.lower():
        return None  # a sequence of the source's: the target's ids come from its own
    if source_dialect == target_dialect:
        return text
    value = _unwrap(text.strip())
    lowered = value.lower()
    if logical_type == "bool" and lowered in {"0", "1", "true", "false", "'t'", "'f'"}:
        truth = lowered in {"1", "true", "'t'"}
        if target_dialect == "sqlite":
            return "1" if truth else "0"
        return "true" if truth else "false"
    if lowered == "null":
        return "NULL"
    if lowered in _NOW:
        return "CURRENT_TIMESTAMP"
    if lowered in _CURRENT:
        return _CURRENT[lowered]
    if _NUMBER.match(value) or _STRING.match(value):
        return value
    return None


def _unwrap(value: str) -> str:
    """A literal without its PostgreSQL casts ('x'::text) and SQLite parentheses ((0))."""
    while value.startswith("(") and value.endswith(")"):
        value = value[1:-1].strip()
    match = _CAST.match(value)
    if match and (_STRING.match(match["value"]) or _NUMBER.match(match["value"])):
        return match["value"]
    return value
