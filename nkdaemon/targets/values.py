"""Canonical log values <-> what a target database stores, per dialect."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from nkdaemon.core.values import decode_canonical, dump_json_exact, parse_json_exact, sqlite_decoder


def _untag(value: Any) -> Any:
    if isinstance(value, dict) and "$type" in value:
        return decode_canonical(value["$type"], value["v"])
    return value


def pg_param(logical_type: str, value: Any) -> Any:
    """A Python value psycopg writes into a column of this logical type."""
    if value is None:
        return None
    if isinstance(value, dict) and "$type" in value:
        return _untag(value)
    if logical_type in ("json", "other", "timestamptz", "timestamp", "date", "time"):
        return value  # text PostgreSQL parses itself (keeps infinity, 24:00, BC dates)
    if logical_type.startswith("array:"):
        inner = logical_type[6:]
        return [pg_param(logical_type if isinstance(v, list) else inner, v) for v in value]
    if logical_type == "decimal":
        return Decimal(value) if isinstance(value, str) else Decimal(repr(value))
    return decode_canonical(logical_type, value)


def sqlite_param(logical_type: str, value: Any, *, source_dialect: str) -> Any:
    """What to store in SQLite for a canonical value, so that reading it back gives it again."""
    if value is None:
        return None
    if isinstance(value, dict) and "$type" in value:
        return _untag(value)
    if source_dialect == "sqlite":
        if logical_type == "bytes":
            return base64.b64decode(value)
        if logical_type == "bool":
            return int(value)
        if logical_type in ("float", "decimal") and isinstance(value, str):
            return float(value)
        return value
    if logical_type.startswith("array:"):
        return dump_json_exact(value)
    if logical_type == "bytes":
        return base64.b64decode(value)
    if logical_type == "bool":
        return int(bool(value))
    if logical_type == "float":
        return float(value)
    if logical_type == "int":
        return int(value)
    return value if isinstance(value, str) else dump_json_exact(value)


def sqlite_reader(logical_type: str, *, source_dialect: str) -> Callable[[Any], Any]:
    """Reads a value stored by sqlite_param back into canonical form."""
    if source_dialect == "sqlite":
        return sqlite_decoder(logical_type)

    def read(value: Any) -> Any:
        if value is None:
            return None
        if logical_type.startswith("array:"):
            return parse_json_exact(value) if isinstance(value, str) else value
        if logical_type == "bytes":
            return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        if logical_type == "bool":
            return bool(value)
        if logical_type == "float" and isinstance(value, float):
            if math.isnan(value):
                return "NaN"
            if math.isinf(value):
                return "Infinity" if value > 0 else "-Infinity"
        if logical_type == "json" and not isinstance(value, str):
            return json.dumps(value)
        return value

    return read


SQLITE_TYPES = {
    "int": "INTEGER",
    "float": "REAL",
    "bool": "BOOLEAN",
    "bytes": "BLOB",
    "text": "TEXT",
}


def sqlite_type(logical_type: str, *, source_dialect: str) -> str:
    """Declared SQLite type for a column created from a definition (exact storage first)."""
    if source_dialect == "sqlite" and logical_type == "decimal":
        return "NUMERIC"
    return SQLITE_TYPES.get(logical_type, "TEXT")
