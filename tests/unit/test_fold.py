"""The restore's validator (core.fold, the one fold of the log): what the log says each
table must hold, compared with rows read back from a target. Pure domain code, no database.

A validator that misses a difference lets a wrong restore commit; these tests feed it
every kind of difference and check each is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nkdaemon.core.fold import LogFold, ReplayError
from nkdaemon.core.keys import ColumnSpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.log import decode_event


def _spec() -> TableSpec:
    return make_table_spec(
        number=1,
        name="users",
        schema=None,
        columns=(
            ColumnSpec(name="id", logical_type="int", nullable=False),
            ColumnSpec(name="username", logical_type="text", nullable=False),
            ColumnSpec(name="email", logical_type="text", nullable=True),
        ),
        primary_key=("id",),
        key_parts=(KeyPart(name="username", column="username"),),
        foreign_keys=(),
    )


ANN = {"username": "ann", "email": "ann@x"}
BO = {"username": "bo", "email": "bo@x"}
DI = {"username": "di", "email": None}


def _expectation() -> LogFold:
    expectation = LogFold([_spec()])
    for name in ("ann", "bob", "cy"):
        expectation.load("users", {"username": name}, {"username": name, "email": f"{name}@x"})
    expectation.finish_load()
    expectation.apply_transaction(
        decode_event(e)
        for e in [
            {"t": "users", "o": "D", "k": {"username": "cy"}},
            {"t": "users", "o": "I", "k": {"username": "di"}, "r": DI},
            {
                "t": "users",
                "o": "U",
                "k": {"username": "bo"},
                "ok": {"username": "bob"},
                "r": {"username": "bo", "email": "bo@x"},
            },
        ]
    )
    return expectation


def _rows(*rows: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    return (({"username": r["username"]}, r) for r in rows)


def test_the_state_the_log_describes_matches() -> None:
    diff = _expectation().compare("users", _rows(ANN, BO, DI))
    assert diff.ok, diff.summary()
    assert (diff.expected, diff.actual) == (3, 3)


def test_a_missing_row_an_extra_row_and_a_changed_value_are_each_named() -> None:
    diff = _expectation().compare(
        "users", _rows(ANN, {"username": "bo", "email": "changed"}, {"username": "zed"})
    )
    assert not diff.ok
    assert [m for m in diff.missing if "di" in m] and len(diff.missing) == 1
    assert diff.unexpected == ['{"username":"zed"}']
    assert diff.differing == ['{"username":"bo"}']
    assert "missing" in diff.summary() and "different" in diff.summary()


def test_the_same_key_twice_in_the_target_is_reported_as_an_extra_row() -> None:
    diff = _expectation().compare("users", _rows(ANN, BO, DI, ANN))
    assert not diff.ok
    assert diff.unexpected == ['{"username":"ann"}']
    assert (diff.expected, diff.actual) == (3, 4)


def test_a_renamed_row_under_its_old_key_is_wrong() -> None:
    diff = _expectation().compare("users", _rows(ANN, {"username": "bob", "email": "bo@x"}, DI))
    assert not diff.ok
    assert diff.unexpected == ['{"username":"bob"}']
    assert [m for m in diff.missing if "bo" in m]


def test_a_log_that_contradicts_itself_is_refused() -> None:
    expectation = _expectation()
    with pytest.raises(ReplayError, match="exists"):
        expectation.apply_transaction(
            [
                decode_event(
                    {"t": "users", "o": "I", "k": {"username": "ann"}, "r": {"username": "ann"}}
                )
            ]
        )
