"""Canonical values (nkdaemon.core.values): exact from each source, exact back again.

PostgreSQL inputs are written as PostgreSQL 15's ``row_to_json()`` renders them, and go
through ``parse_json_exact`` first, as the PostgreSQL source does with each queued row.
Every canonical value is also sent through orjson, as it is stored in the log.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.values import (
    LOGICAL_TYPES,
    decode_canonical,
    dump_json_exact,
    is_valid_logical_type,
    lossless_as,
    parse_json_exact,
    pg_decoder,
    sqlite_decoder,
)

ALL_TYPES = sorted(LOGICAL_TYPES) + [f"array:{t}" for t in sorted(LOGICAL_TYPES)]


def from_pg(logical_type: str, json_text: str) -> Any:
    """Canonical form of one value rendered by row_to_json, as the PostgreSQL source makes it."""
    row = parse_json_exact('{"v":' + json_text + "}")
    return pg_decoder(logical_type)(row["v"])


def pg_text(value: str) -> str:
    """The row_to_json rendering of a value PostgreSQL writes as a JSON string."""
    return json.dumps(value, ensure_ascii=False)


def through_log(value: Any) -> Any:
    """A canonical value as a reader gets it back from a log record."""
    return orjson.loads(orjson.dumps(value))


def same_float(a: float, b: float) -> bool:
    """Equal to the bit (so -0.0 differs from 0.0); NaN equals NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def pg_bytea_escape(raw: bytes) -> str:
    """PostgreSQL's text output of bytea with bytea_output = 'escape'."""
    out = []
    for byte in raw:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- logical types ----------------------------------------------------------------------------


def test_logical_type_names() -> None:
    for name in LOGICAL_TYPES:
        assert is_valid_logical_type(name)
        assert is_valid_logical_type(f"array:{name}")
    for name in ("money", "array:", "array:array:int", "Int", "", "array:money"):
        assert not is_valid_logical_type(name)


@pytest.mark.parametrize("logical_type", ALL_TYPES)
def test_null_is_null_for_every_type(logical_type: str) -> None:
    assert pg_decoder(logical_type)(None) is None
    assert sqlite_decoder(logical_type)(None) is None
    assert decode_canonical(logical_type, None) is None


# --- PostgreSQL: one test per logical type -------------------------------------------------


@pytest.mark.parametrize(
    "rendered",
    ["0", "-1", "2147483647", "-9223372036854775808", "9223372036854775807"],
)
def test_pg_int(rendered: str) -> None:
    canonical = from_pg("int", rendered)
    assert canonical == int(rendered) and type(canonical) is int
    assert decode_canonical("int", through_log(canonical)) == int(rendered)


@pytest.mark.parametrize(
    ("rendered", "canonical"),
    [
        ("1.10", "1.10"),
        ("1234567890.0100", "1234567890.0100"),
        ("0", "0"),
        ("0.000", "0.000"),
        ("-0.50", "-0.50"),
        ("100", "100"),
        ("100.00", "100.00"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        (
            "123456789012345678901234567890.123456789012345678900",
            "123456789012345678901234567890.123456789012345678900",
        ),
        ('"NaN"', "NaN"),
        ('"Infinity"', "Infinity"),
        ('"-Infinity"', "-Infinity"),
    ],
)
def test_pg_decimal_keeps_every_digit(rendered: str, canonical: str) -> None:
    assert from_pg("decimal", rendered) == canonical
    back = decode_canonical("decimal", through_log(canonical))
    assert isinstance(back, Decimal)
    assert str(back) == canonical
    assert back.as_tuple() == Decimal(canonical).as_tuple()


@pytest.mark.parametrize("rendered", ["0.00000001", "0.0000000100", "-0.000000000000001230"])
def test_pg_decimal_keeps_value_and_scale_of_small_numbers(rendered: str) -> None:
    back = decode_canonical("decimal", through_log(from_pg("decimal", rendered)))
    assert back.as_tuple() == Decimal(rendered).as_tuple(), "same digits, same scale"


@pytest.mark.parametrize(
    ("rendered", "expected"),
    [
        ("1.5", 1.5),
        ("0.30000000000000004", 0.30000000000000004),
        ("5e-324", 5e-324),
        ("1e+300", 1e300),
        ("-1.7976931348623157e+308", -1.7976931348623157e308),
        ("3", 3.0),
        ('"NaN"', math.nan),
        ('"Infinity"', math.inf),
        ('"-Infinity"', -math.inf),
    ],
)
def test_pg_float(rendered: str, expected: float) -> None:
    canonical = from_pg("float", rendered)
    assert same_float(decode_canonical("float", through_log(canonical)), expected)
    if math.isfinite(expected):
        assert isinstance(canonical, float) and same_float(canonical, expected)


def test_pg_float_negative_zero_keeps_its_sign() -> None:
    """row_to_json renders float8 '-0' as the JSON number -0."""
    canonical = from_pg("float", "-0")
    assert same_float(decode_canonical("float", through_log(canonical)), -0.0)


TEXTS = [
    "",
    "plain",
    "zero-width\u200b joiner, RTL \u05e9\u05dc\u05d5\u05dd, emoji 🧾, combining e\u0301",
    "‘quotes’ \\ \" ' \n\t\r",
    "\u2028\u2029 line separators, \U0010ffff last code point",
]


@pytest.mark.parametrize("text", TEXTS)
def test_pg_text(text: str) -> None:
    canonical = from_pg("text", pg_text(text))
    assert canonical == text
    assert decode_canonical("text", through_log(canonical)) == text


def test_pg_bool() -> None:
    assert from_pg("bool", "true") is True
    assert from_pg("bool", "false") is False
    assert decode_canonical("bool", through_log(True)) is True


@pytest.mark.parametrize(
    ("hex_form", "escape_form", "raw"),
    [
        ("\\x", "", b""),
        ("\\x00015c41ff7f", "\\000\\001\\\\A\\377\\177", b"\x00\x01\\A\xff\x7f"),
        ("\\x5c78", "\\\\x", b"\\x"),  # content that starts like the hex prefix
        ("\\x20207e", "  ~", b"  ~"),
    ],
)
def test_pg_bytea_hex_and_escape_formats(hex_form: str, escape_form: str, raw: bytes) -> None:
    assert pg_bytea_escape(raw) == escape_form
    for rendered in (hex_form, escape_form):
        canonical = from_pg("bytes", pg_text(rendered))
        assert canonical == b64(raw)
        assert decode_canonical("bytes", through_log(canonical)) == raw


def test_pg_bytea_every_byte_in_both_formats() -> None:
    raw = bytes(range(256))
    assert from_pg("bytes", pg_text("\\x" + raw.hex())) == b64(raw)
    assert from_pg("bytes", pg_text(pg_bytea_escape(raw))) == b64(raw)


@pytest.mark.parametrize(
    ("rendered", "canonical"),
    [
        ("2026-03-04T10:36:07.891011+05:30", "2026-03-04T05:06:07.891011+00:00"),
        ("2026-03-04T00:36:07.5+01:00", "2026-03-03T23:36:07.500000+00:00"),
        ("2026-01-01T00:00:00-03:30", "2026-01-01T03:30:00.000000+00:00"),
        ("2026-06-30T23:59:59.999999+00:00", "2026-06-30T23:59:59.999999+00:00"),
        ("1900-01-01T00:00:00+00:09:21", "1899-12-31T23:50:39.000000+00:00"),  # Paris LMT
        ("2000-02-29T12:00:00+14:00", "2000-02-28T22:00:00.000000+00:00"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
    ],
)
def test_pg_timestamptz_becomes_utc_with_microseconds(rendered: str, canonical: str) -> None:
    assert from_pg("timestamptz", pg_text(rendered)) == canonical
    back = decode_canonical("timestamptz", through_log(canonical))
    if canonical.endswith("infinity"):
        assert back == canonical
    else:
        assert back == datetime.fromisoformat(rendered), "the same instant"
        assert back.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("rendered", "canonical"),
    [
        ("2026-03-04T05:06:07", "2026-03-04T05:06:07.000000"),
        ("2026-03-04T05:06:07.25", "2026-03-04T05:06:07.250000"),
        ("0001-01-01T00:00:00.000001", "0001-01-01T00:00:00.000001"),
        ("infinity", "infinity"),
    ],
)
def test_pg_timestamp_stays_without_offset(rendered: str, canonical: str) -> None:
    assert from_pg("timestamp", pg_text(rendered)) == canonical
    back = decode_canonical("timestamp", through_log(canonical))
    if canonical != "infinity":
        assert back == datetime.fromisoformat(rendered) and back.tzinfo is None


def test_pg_date_and_time() -> None:
    assert from_pg("date", '"2026-03-04"') == "2026-03-04"
    assert decode_canonical("date", "2026-03-04") == date(2026, 3, 4)
    assert decode_canonical("date", from_pg("date", '"infinity"')) == "infinity"
    assert from_pg("time", '"05:06:07.25"') == "05:06:07.25"
    assert decode_canonical("time", "05:06:07.25") == time(5, 6, 7, 250000)
    with_zone = decode_canonical("time", from_pg("time", '"05:06:07+05:30"'))
    assert with_zone == time(5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30)))


def test_pg_uuid_is_lower_case_canonical() -> None:
    canonical = from_pg("uuid", '"6F9619FF-8B86-D011-B42D-00CF4FC964FF"')
    assert canonical == "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
    assert decode_canonical("uuid", through_log(canonical)) == uuid.UUID(canonical)


@pytest.mark.parametrize(
    ("rendered", "canonical"),
    [
        (
            '{"n": 1.10, "big": 123456789012345678901234567890.5, "s": "ü", "z": null}',
            '{"n":1.10,"big":123456789012345678901234567890.5,"s":"ü","z":null}',
        ),
        (
            '{"b": 1, "a": [1, 2.50, {"x": -0.000}], "e": {}}',
            '{"b":1,"a":[1,2.50,{"x":-0.000}],"e":{}}',
        ),
        ('[1.0, "two", true, false, null, []]', '[1.0,"two",true,false,null,[]]'),
        ('"a string"', '"a string"'),
        ("3", "3"),
        ("12345678901234567890123", "12345678901234567890123"),
        ('{"quote\\"d": "line\\nbreak \\\\ \\u0000"}', '{"quote\\"d":"line\\nbreak \\\\ \\u0000"}'),
    ],
)
def test_pg_json_keeps_exact_numbers_and_key_order(rendered: str, canonical: str) -> None:
    assert from_pg("json", rendered) == canonical
    back = decode_canonical("json", through_log(canonical))
    assert dump_json_exact(back) == canonical
    assert back == json.loads(rendered, parse_float=Decimal)


def test_dump_and_parse_json_exact() -> None:
    value = parse_json_exact('{"n": 1.10, "i": 7, "deep": [0.1, {"k": 2.000}]}')
    assert value == {
        "n": Decimal("1.10"),
        "i": 7,
        "deep": [Decimal("0.1"), {"k": Decimal("2.000")}],
    }
    assert str(value["n"]) == "1.10" and type(value["i"]) is int
    assert dump_json_exact(value) == '{"n":1.10,"i":7,"deep":[0.1,{"k":2.000}]}'
    assert dump_json_exact({"ü": "✓"}) == '{"ü":"✓"}'


@pytest.mark.parametrize(
    ("logical_type", "rendered", "canonical", "python"),
    [
        ("array:int", "[[1,2],[3,null]]", [[1, 2], [3, None]], [[1, 2], [3, None]]),
        (
            "array:text",
            '["plain",null,"with,comma","quo\\"te","{braces}",""]',
            ["plain", None, "with,comma", 'quo"te', "{braces}", ""],
            ["plain", None, "with,comma", 'quo"te', "{braces}", ""],
        ),
        (
            "array:decimal",
            '[[1.10,null],["-Infinity",0.000]]',
            [["1.10", None], ["-Infinity", "0.000"]],
            [[Decimal("1.10"), None], [Decimal("-Infinity"), Decimal("0.000")]],
        ),
        (
            "array:bytes",
            '[["\\\\x00ff",null],["\\\\x","\\\\x0102"]]',
            [["AP8=", None], ["", "AQI="]],
            [[b"\x00\xff", None], [b"", b"\x01\x02"]],
        ),
        (
            "array:timestamptz",
            '[["2026-03-04T10:36:07.5+05:30"],[null]]',
            [["2026-03-04T05:06:07.500000+00:00"], [None]],
            [[datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)], [None]],
        ),
        (
            "array:uuid",
            '["6F9619FF-8B86-D011-B42D-00CF4FC964FF",null]',
            ["6f9619ff-8b86-d011-b42d-00cf4fc964ff", None],
            [uuid.UUID("6f9619ff-8b86-d011-b42d-00cf4fc964ff"), None],
        ),
        (
            "array:float",
            '[[1.5,"NaN"],["-Infinity",null]]',
            [[1.5, "NaN"], ["-Infinity", None]],
            None,  # NaN != NaN: checked below
        ),
        ("array:date", '[["2026-03-04",null]]', [["2026-03-04", None]], [[date(2026, 3, 4), None]]),
        ("array:int", "[]", [], []),
        ("array:bytes", '["\\\\x00ff",null]', ["AP8=", None], [b"\x00\xff", None]),
        ("array:decimal", '[1.10,null,"NaN"]', ["1.10", None, "NaN"], None),
    ],
)
def test_pg_arrays_keep_nulls_and_nesting(
    logical_type: str, rendered: str, canonical: Any, python: Any
) -> None:
    assert from_pg(logical_type, rendered) == canonical
    back = decode_canonical(logical_type, through_log(canonical))
    if python is not None:
        assert back == python
    elif logical_type == "array:decimal":
        assert back[:2] == [Decimal("1.10"), None] and str(back[0]) == "1.10"
        assert back[2].is_nan()
    else:
        assert back[0][0] == 1.5 and math.isnan(back[0][1])
        assert back[1] == [-math.inf, None]


def test_pg_other_is_the_source_text() -> None:
    assert from_pg("other", '"1 day 02:00:00"') == "1 day 02:00:00"
    assert from_pg("other", '{"x": 1.50}') == '{"x":1.50}'
    assert decode_canonical("other", "1 day 02:00:00") == "1 day 02:00:00"


# --- SQLite: storage classes are kept, mismatches tagged ----------------------------------


@pytest.mark.parametrize(
    ("logical_type", "value", "canonical"),
    [
        ("int", 2**63 - 1, 2**63 - 1),
        ("int", -(2**63), -(2**63)),
        ("int", 1.5, {"$type": "float", "v": 1.5}),
        ("int", "12", {"$type": "text", "v": "12"}),
        ("int", b"\x01", {"$type": "bytes", "v": "AQ=="}),
        ("float", 1.5, 1.5),
        ("float", 5e-324, 5e-324),
        ("float", 0.1 + 0.2, 0.30000000000000004),
        ("float", math.inf, "Infinity"),
        ("float", -math.inf, "-Infinity"),
        ("float", 3, {"$type": "int", "v": 3}),
        ("float", "NaN", {"$type": "text", "v": "NaN"}),
        ("text", "nul\x00inside ✓", "nul\x00inside ✓"),
        ("text", "", ""),
        ("text", 42, {"$type": "int", "v": 42}),
        ("text", b"\x00nul", {"$type": "bytes", "v": "AG51bA=="}),
        ("bytes", b"\x00\x00nul\x00", "AABudWwA"),
        ("bytes", b"", ""),
        ("bytes", memoryview(b"\xff\xfe"), "//4="),
        ("bytes", "text in a blob column", {"$type": "text", "v": "text in a blob column"}),
        ("bool", 1, True),
        ("bool", 0, False),
        ("bool", 2, {"$type": "int", "v": 2}),
        ("bool", "yes", {"$type": "text", "v": "yes"}),
        ("decimal", 1.1, 1.1),
        ("decimal", 3, {"$type": "int", "v": 3}),
        ("decimal", "1.10", {"$type": "text", "v": "1.10"}),
        ("timestamptz", "2026-03-04 05:06:07", "2026-03-04 05:06:07"),
        ("timestamptz", 2**62 + 1, {"$type": "int", "v": 2**62 + 1}),
        ("date", 20260304, {"$type": "int", "v": 20260304}),
        ("json", '{"a": 1.10}', '{"a": 1.10}'),
        ("uuid", "6F9619FF-8B86-D011-B42D-00CF4FC964FF", "6F9619FF-8B86-D011-B42D-00CF4FC964FF"),
        ("other", 1.25, {"$type": "float", "v": 1.25}),
    ],
)
def test_sqlite_keeps_storage_classes(logical_type: str, value: Any, canonical: Any) -> None:
    encoded = sqlite_decoder(logical_type)(value)
    assert encoded == canonical
    assert type(encoded) is type(canonical)
    assert through_log(encoded) == canonical


@pytest.mark.parametrize("value", [-0.0, 0.0, 5e-324, -5e-324, 1.7976931348623157e308])
def test_sqlite_float_edge_values_survive_the_log_to_the_bit(value: float) -> None:
    encoded = sqlite_decoder("float")(value)
    stored = through_log(encoded)
    assert same_float(stored, value)
    assert same_float(decode_canonical("float", stored), value)


def test_sqlite_nan_is_stored_as_a_string_and_read_back_as_nan() -> None:
    encoded = sqlite_decoder("float")(math.nan)
    assert encoded == "NaN"
    assert math.isnan(decode_canonical("float", through_log(encoded)))
    tagged = sqlite_decoder("int")(math.nan)
    assert tagged == {"$type": "float", "v": "NaN"}
    assert math.isnan(decode_canonical("int", through_log(tagged)))


@pytest.mark.parametrize(
    ("logical_type", "canonical", "python"),
    [
        ("timestamptz", {"$type": "int", "v": 2**62 + 1}, 2**62 + 1),
        ("text", {"$type": "bytes", "v": "AG51bA=="}, b"\x00nul"),
        ("bytes", {"$type": "text", "v": "text"}, "text"),
        ("float", {"$type": "text", "v": "NaN"}, "NaN"),
        ("decimal", {"$type": "int", "v": 3}, 3),
        ("decimal", 1.1, Decimal("1.1")),
        ("bool", {"$type": "int", "v": 2}, 2),
        ("int", {"$type": "float", "v": -0.0}, -0.0),
    ],
)
def test_decode_canonical_reads_tagged_values_by_their_storage_class(
    logical_type: str, canonical: Any, python: Any
) -> None:
    back = decode_canonical(logical_type, through_log(canonical))
    assert back == python and type(back) is type(python)
    if isinstance(python, float):
        assert same_float(back, python)


# --- properties: the round trip is exact ----------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
OFFSETS = st.integers(min_value=-15 * 3600, max_value=15 * 3600)
INSTANTS = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31))


def pg_rendered_decimal(sign: str, whole: int, fraction: str) -> str:
    """numeric as row_to_json writes it: plain digits, trailing zeros kept, no negative zero."""
    if whole == 0 and not fraction.strip("0"):
        sign = ""
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


DECIMALS = st.builds(
    pg_rendered_decimal,
    st.sampled_from(["", "-"]),
    st.integers(min_value=0, max_value=10**40),
    st.text(alphabet="0123456789", max_size=40),
)


def pg_rendered_timestamptz(moment: datetime, offset_seconds: int) -> str:
    """row_to_json's rendering: ISO 8601, fraction without trailing zeros, +HH:MM[:SS]."""
    local = moment.replace(tzinfo=timezone(timedelta(seconds=offset_seconds)))
    text = local.isoformat()
    if local.microsecond:
        head, _, rest = text.partition(".")
        digits, zone = rest[:6], rest[6:]
        text = f"{head}.{digits.rstrip('0')}{zone}"
    return text


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_property_bytes_round_trip(raw: bytes) -> None:
    for rendered in ("\\x" + raw.hex(), pg_bytea_escape(raw)):
        assert decode_canonical("bytes", through_log(from_pg("bytes", pg_text(rendered)))) == raw
    assert decode_canonical("bytes", through_log(sqlite_decoder("bytes")(raw))) == raw
    assert decode_canonical("text", through_log(sqlite_decoder("text")(raw))) == raw


@settings(deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_property_floats_round_trip(value: float) -> None:
    stored = through_log(sqlite_decoder("float")(value))
    assert same_float(decode_canonical("float", stored), value)
    if math.isnan(value):
        rendered = '"NaN"'
    elif math.isinf(value):
        rendered = '"Infinity"' if value > 0 else '"-Infinity"'
    else:
        # shortest exact digits, as PostgreSQL 12+ writes float8: no ".0" on whole numbers
        rendered = repr(value).removesuffix(".0")
    stored = through_log(from_pg("float", rendered))
    assert same_float(decode_canonical("float", stored), value)


@settings(deadline=None)
@given(st.one_of(DECIMALS, st.sampled_from(['"NaN"', '"Infinity"', '"-Infinity"'])))
def test_property_decimals_round_trip(rendered: str) -> None:
    expected = Decimal(json.loads(rendered)) if rendered.startswith('"') else Decimal(rendered)
    back = decode_canonical("decimal", through_log(from_pg("decimal", rendered)))
    assert back.as_tuple() == expected.as_tuple() or (back.is_nan() and expected.is_nan())


@settings(deadline=None)
@given(INSTANTS, OFFSETS)
def test_property_timestamptz_round_trip(moment: datetime, offset_seconds: int) -> None:
    rendered = pg_rendered_timestamptz(moment, offset_seconds)
    canonical = from_pg("timestamptz", pg_text(rendered))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", canonical), canonical
    back = decode_canonical("timestamptz", through_log(canonical))
    assert back == datetime.fromisoformat(rendered)
    assert back.utcoffset() == timedelta(0)
    assert from_pg("timestamptz", pg_text(back.isoformat())) == canonical


@settings(deadline=None)
@given(INSTANTS)
def test_property_timestamp_round_trip(moment: datetime) -> None:
    canonical = from_pg("timestamp", pg_text(moment.isoformat()))
    assert decode_canonical("timestamp", through_log(canonical)) == moment


@settings(deadline=None)
@given(TEXT)
def test_property_text_round_trip(text: str) -> None:
    assert decode_canonical("text", through_log(from_pg("text", pg_text(text)))) == text
    assert decode_canonical("text", through_log(sqlite_decoder("text")(text))) == text
    assert decode_canonical("bytes", through_log(sqlite_decoder("bytes")(text))) == text


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    DECIMALS.filter(lambda s: "." in s).map(Decimal),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=20,
)


@settings(deadline=None)
@given(JSON_VALUES)
def test_property_json_round_trip(value: Any) -> None:
    text = dump_json_exact(value)
    json.loads(text)  # valid JSON
    assert dump_json_exact(parse_json_exact(text)) == text
    if value is None:
        # row_to_json renders a JSON null exactly like SQL NULL, so the decoder gets None and
        # must answer SQL NULL; that ambiguity belongs to the PostgreSQL source, not here.
        return
    canonical = from_pg("json", text)
    assert canonical == text
    assert dump_json_exact(decode_canonical("json", through_log(canonical))) == text


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_an_int_read_back_from_a_real_or_numeric_column_is_the_int(number: int) -> None:
    assert lossless_as("int", {"$type": "float", "v": float(number)}) == number
    assert lossless_as("int", f"{number}.00") == number
    assert lossless_as("float", number) == float(number)


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
def test_a_value_that_does_not_convert_exactly_stays_different(number: float) -> None:
    tagged = {"$type": "float", "v": number}
    assert lossless_as("int", tagged) == tagged
    assert lossless_as("text", "2") == "2"
    assert lossless_as("int", {"$type": "text", "v": "two"}) == {"$type": "text", "v": "two"}
