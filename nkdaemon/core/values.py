"""Canonical encoding of column values in the log and snapshots.

Every value is stored as a JSON value chosen by the column's *logical type*, so that a
reader in any later release, and a restore into either dialect, gets the exact value back:

==============  ==========================================================
logical type    canonical JSON form
==============  ==========================================================
int             integer
decimal         string of the exact decimal ("1.10", "NaN", "Infinity")
float           number, or "NaN" / "Infinity" / "-Infinity"
text            string
bool            true / false
bytes           base64 string
timestamptz     ISO 8601 string in UTC with microseconds, or "infinity"
timestamp       ISO 8601 string without offset, or "infinity"
date / time     ISO 8601 string
uuid            lower-case canonical string
json            string holding the compact JSON text (exact numbers kept)
array:T         list of T's form, nested for more dimensions, null elements kept
other           the source's text form
==============  ==========================================================

A value whose storage class does not match its logical type (possible in SQLite, which
types values, not columns) is stored tagged, ``{"$type": <storage class>, "v": ...}``, so
that nothing is coerced on the way.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

LOGICAL_TYPES = frozenset(
    {
        "int",
        "decimal",
        "float",
        "text",
        "bool",
        "bytes",
        "timestamptz",
        "timestamp",
        "date",
        "time",
        "uuid",
        "json",
        "other",
    }
)

_SPECIAL_TIMES = {"infinity", "-infinity"}


def is_valid_logical_type(logical_type: str) -> bool:
    """True for a scalar logical type or ``array:<scalar>``."""
    if logical_type.startswith("array:"):
        return logical_type[6:] in LOGICAL_TYPES
    return logical_type in LOGICAL_TYPES


def dump_json_exact(value: Any) -> str:
    """Compact JSON text of a parsed JSON value, writing Decimals with all their digits."""
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dict):
        items = (
            f"{json.dumps(k, ensure_ascii=False)}:{dump_json_exact(v)}" for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump_json_exact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def parse_json_exact(text: str) -> Any:
    """Parse JSON keeping every number exact: non-integers as Decimals, and "-0" (a float8
    negative zero, which row_to_json writes as an integer) apart from 0."""
    return json.loads(text, parse_float=Decimal, parse_int=_int_or_negative_zero)


def _int_or_negative_zero(text: str) -> Any:
    return Decimal(text) if text == "-0" else int(text)


def _decimal_text(value: Decimal) -> str:
    """A decimal's digits without exponent notation, as PostgreSQL writes numerics."""
    if not value.is_finite():
        return str(value)
    return format(value, "f")


# --- PostgreSQL: values as row_to_json() renders them -------------------------------------


def _pg_bytes(text: str) -> str:
    # bytea_output = 'hex' renders \\x and hex digits; anything else is bytea_output = 'escape'
    raw = binascii.unhexlify(text[2:]) if text.startswith("\\x") else _unescape_bytea(text)
    return base64.b64encode(raw).decode("ascii")


def _unescape_bytea(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
        elif text[i + 1] == "\\":
            out.append(0x5C)
            i += 2
        else:
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
    return bytes(out)


def _pg_timestamptz(text: str) -> str:
    if text in _SPECIAL_TIMES:
        return text
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds")
    except ValueError:  # outside Python's range (BC, after 9999): keep PostgreSQL's text
        return text


def _pg_timestamp(text: str) -> str:
    if text in _SPECIAL_TIMES:
        return text
    try:
        return datetime.fromisoformat(text).isoformat(timespec="microseconds")
    except ValueError:
        return text


def _pg_decimal(value: Any) -> str:
    if isinstance(value, str):  # NaN, Infinity, -Infinity
        return value
    return _decimal_text(value) if isinstance(value, Decimal) else str(value)


def _pg_float(value: Any) -> Any:
    if isinstance(value, str):
        return value
    result = float(value)
    return result


def _pg_json(value: Any) -> str:
    return dump_json_exact(value)


def _identity(value: Any) -> Any:
    return value


def _pg_uuid(value: str) -> str:
    return str(uuid.UUID(value))


_PG_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "decimal": _pg_decimal,
    "float": _pg_float,
    "text": _identity,
    "bool": _identity,
    "bytes": _pg_bytes,
    "timestamptz": _pg_timestamptz,
    "timestamp": _pg_timestamp,
    "date": _identity,
    "time": _identity,
    "uuid": _pg_uuid,
    "json": _pg_json,
    "other": lambda v: v if isinstance(v, str) else dump_json_exact(v),
}


def pg_decoder(logical_type: str) -> Callable[[Any], Any]:
    """The function turning a ``row_to_json`` value of this type into canonical form."""
    if logical_type.startswith("array:"):
        element = _PG_DECODERS[logical_type[6:]]

        def decode_array(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, list):
                return [decode_array(v) for v in value]
            return element(value)

        return decode_array
    decode = _PG_DECODERS[logical_type]
    return lambda value: None if value is None else decode(value)


# --- SQLite: values as the sqlite3 module returns them -------------------------------------


def lossless_as(logical_type: str, value: Any) -> Any:
    """A canonical value read back from a column of another numeric type, in
    ``logical_type`` where the conversion loses nothing (2.0 or "2.00" as an int: 2);
    anything else as it was, so a real difference stays one."""
    if logical_type not in ("int", "float") or value is None:
        return value
    raw = value["v"] if isinstance(value, dict) and "$type" in value else value
    if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
        return value
    try:
        number = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
    except ArithmeticError:
        return value
    if not number.is_finite():
        return value
    if logical_type == "int":
        return int(number) if number == number.to_integral_value() else value
    as_float = float(number)
    return as_float if Decimal(repr(as_float)) == number else value


def _tagged(storage: str, value: Any) -> dict[str, Any]:
    return {"$type": storage, "v": value}


def _sqlite_storage(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool | int):
        return "int", int(value)
    if isinstance(value, float):
        return "float", _float_json(value)
    if isinstance(value, str):
        return "text", value
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes", base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"unexpected SQLite value {value!r}")


def _float_json(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


_SQLITE_NATURAL = {
    "int": "int",
    "bool": "int",
    "float": "float",
    "text": "text",
    "decimal": "float",
    "bytes": "bytes",
    "json": "text",
    "uuid": "text",
    "timestamptz": "text",
    "timestamp": "text",
    "date": "text",
    "time": "text",
    "other": "text",
}


def sqlite_decoder(logical_type: str) -> Callable[[Any], Any]:
    """The function turning a SQLite value into canonical form without coercing it.

    SQLite stores each value in a storage class regardless of the column's declared type;
    a value in the class the logical type expects is stored plainly, any other tagged.
    """
    expected = _SQLITE_NATURAL.get(logical_type, "text")

    def decode(value: Any) -> Any:
        if value is None:
            return None
        storage, encoded = _sqlite_storage(value)
        if storage == expected:
            if logical_type == "bool":
                return bool(encoded) if encoded in (0, 1) else _tagged("int", encoded)
            return encoded
        return _tagged(storage, encoded)

    return decode


# --- Reading canonical values back (restore, history display) -----------------------------


def decode_canonical(logical_type: str, value: Any) -> Any:
    """The Python value a canonical JSON value stands for."""
    if value is None:
        return None
    if isinstance(value, dict) and "$type" in value:
        return decode_canonical(value["$type"], value["v"])
    if logical_type.startswith("array:"):
        return [
            decode_canonical(logical_type if isinstance(v, list) else logical_type[6:], v)
            for v in value
        ]
    try:
        return _decode_scalar(logical_type, value)
    except ValueError:  # a value Python cannot hold (24:00:00, year 10000): its text
        return value


def _decode_scalar(logical_type: str, value: Any) -> Any:
    match logical_type:
        case "decimal":
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        case "float":
            return float(value)
        case "bytes":
            return base64.b64decode(value)
        case "timestamptz" | "timestamp":
            return value if value in _SPECIAL_TIMES else datetime.fromisoformat(value)
        case "date":
            return value if value in _SPECIAL_TIMES else date.fromisoformat(value)
        case "time":
            return time.fromisoformat(value)
        case "uuid":
            return uuid.UUID(value)
        case "json":
            return parse_json_exact(value)
        case _:
            return value
