"""Django fixture values <-> the canonical values of the log and snapshots.

Django's serializer writes datetimes as ISO 8601 (milliseconds, ``Z``), decimals, UUIDs
and array fields as strings, binary fields as base64 and JSON fields as the JSON value
itself. The canonical form depends on the source dialect (docs/FORMAT.md): PostgreSQL
values are normalised by logical type; SQLite values are what the database stores, so a
fixture value is turned into what Django (and SQLAlchemy) store there: naive UTC datetime
text, 32-digit hexadecimal UUIDs in CHAR(32) columns, numbers with NUMERIC affinity, JSON
text. Pure functions; no I/O.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from nkdaemon.core.keys import ColumnSpec, TableSpec
from nkdaemon.core.values import dump_json_exact, parse_json_exact, sqlite_decoder


class ValueShapeError(ValueError):
    """A fixture value cannot be read as its column's type."""


@dataclass(frozen=True, slots=True)
class RawJson:
    """JSON text to be written into a fixture as it is (a JSON field's exact value)."""

    text: str


_SQLITE_TIME = ("DATETIME", "TIMESTAMP")


def is_json_column(spec: TableSpec, column: ColumnSpec) -> bool:
    """A JSON column: typed so, or (SQLite, as Django makes it) a text column checked
    with JSON_VALID."""
    if column.logical_type == "json" or "JSON" in column.sql_type.upper():
        return True
    pattern = re.compile(rf'JSON_VALID\(\s*"?{re.escape(column.name)}"?\s*\)', re.IGNORECASE)
    return any(pattern.search(check.sql) for check in spec.checks)


def to_canonical(spec: TableSpec, column: ColumnSpec, dialect: str, value: Any) -> Any:
    """The canonical form of a fixture value of this column."""
    return canonical_converter(spec, column, dialect)(value)


def canonical_converter(spec: TableSpec, column: ColumnSpec, dialect: str) -> Callable[[Any], Any]:
    """The function turning fixture values of this column into canonical form (chosen once
    per column: an import converts millions of values)."""
    if dialect == "sqlite":
        convert = _sqlite_converter(spec, column)
    elif column.logical_type == "json" and "JSONB" in column.sql_type.upper():
        convert = lambda value: dump_json_exact(_jsonb_order(value))  # noqa: E731
    else:
        logical = column.logical_type
        convert = lambda value: _postgres(logical, value)  # noqa: E731

    def checked(value: Any) -> Any:
        if value is None:
            return None
        try:
            return convert(value)
        except (ValueError, TypeError, InvalidOperation, ArithmeticError) as exc:
            raise ValueShapeError(
                f"{value!r} is not a {column.logical_type} value ({exc.__class__.__name__})"
            ) from None

    return checked


def _postgres(logical: str, value: Any) -> Any:
    if logical.startswith("array:"):
        items = json.loads(value) if isinstance(value, str) else value
        return [_postgres(logical[6:] if not isinstance(v, list) else logical, v) for v in items]
    match logical:
        case "int":
            return int(value)
        case "float":
            return value if value in ("NaN", "Infinity", "-Infinity") else float(value)
        case "decimal":
            return _decimal_text(Decimal(str(value)))
        case "bool":
            return bool(value)
        case "bytes":
            return base64.b64encode(base64.b64decode(value, validate=True)).decode("ascii")
        case "timestamptz":
            return _aware(value).astimezone(UTC).isoformat(timespec="microseconds")
        case "timestamp":
            return _datetime(value).replace(tzinfo=None).isoformat(timespec="microseconds")
        case "date":
            return date.fromisoformat(str(value)).isoformat()
        case "time":
            return time.fromisoformat(str(value)).isoformat()
        case "uuid":
            return str(uuid.UUID(str(value)))
        case "json":
            return dump_json_exact(value)
        case _:
            return value if isinstance(value, str) else dump_json_exact(value)


def _sqlite_converter(spec: TableSpec, column: ColumnSpec) -> Callable[[Any], Any]:
    declared = column.sql_type.upper()
    logical = column.logical_type
    decode = sqlite_decoder(logical)
    if is_json_column(spec, column):
        return lambda value: decode(json.dumps(_plain_json(value)))  # as Django writes it
    times = any(word in declared for word in _SQLITE_TIME)
    uuids = declared.replace(" ", "") == "CHAR(32)"

    def convert(value: Any) -> Any:
        stored: Any
        if isinstance(value, str) and times:
            stored = str(_aware(value).astimezone(UTC).replace(tzinfo=None))
        elif isinstance(value, str) and uuids and _is_uuid(value):
            stored = uuid.UUID(value).hex
        elif logical == "decimal":
            stored = _numeric_affinity(Decimal(str(value)))
        elif logical == "bytes" and isinstance(value, str):
            stored = base64.b64decode(value, validate=True)
        elif logical == "float" and isinstance(value, int | float | Decimal):
            stored = float(value)
        elif logical == "text" and not isinstance(value, str):
            stored = str(value)
        else:
            stored = float(value) if isinstance(value, Decimal) else value
        return decode(stored)

    return convert


def _jsonb_order(value: Any) -> Any:
    """A JSON value with its objects' keys in jsonb's order (shorter first, then bytewise)
    and the last of duplicate keys kept, as PostgreSQL stores jsonb."""
    if isinstance(value, dict):
        ordered = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: _jsonb_order(value[k]) for k in ordered}
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    return value


def _numeric_affinity(value: Decimal) -> Any:
    """What SQLite's NUMERIC affinity stores for a decimal's text: an integer when it is
    whole and fits, else a real."""
    if value == value.to_integral_value() and abs(value) < 2**63:
        return int(value)
    return float(value)


def _plain_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _datetime(value: Any) -> datetime:
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _aware(value: Any) -> datetime:
    moment = _datetime(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _decimal_text(value: Decimal) -> str:
    return str(value) if not value.is_finite() else format(value, "f")


# --- canonical -> fixture -----------------------------------------------------------------


def to_fixture(spec: TableSpec, column: ColumnSpec, dialect: str, value: Any) -> Any:
    """A canonical value as Django's deserializer takes it for this column."""
    return fixture_converter(spec, column, dialect)(value)


def fixture_converter(spec: TableSpec, column: ColumnSpec, dialect: str) -> Callable[[Any], Any]:
    """The function turning canonical values of this column into fixture values."""
    json_column = is_json_column(spec, column)
    logical = column.logical_type
    sqlite_times = dialect == "sqlite" and any(w in column.sql_type.upper() for w in _SQLITE_TIME)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict) and "$type" in value:  # SQLite value of another class
            value = value["v"]
        if json_column:
            return RawJson(value) if isinstance(value, str) and _is_json(value) else value
        if logical == "decimal" and isinstance(value, float):
            return repr(value)
        if logical == "decimal" and isinstance(value, int):
            return str(value)
        if sqlite_times and isinstance(value, str):
            return _utc_text(value)
        return value

    return convert


def _is_json(text: str) -> bool:
    try:
        parse_json_exact(text)
    except ValueError:
        return False
    return True


def _utc_text(text: str) -> str:
    """SQLite datetime text (naive, UTC by Django's convention) as ISO 8601 with offset."""
    try:
        moment = _datetime(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()
