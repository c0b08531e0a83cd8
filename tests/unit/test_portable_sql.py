"""Defaults carried across dialects by `restore --create-schema` (core.portable_sql)."""

from __future__ import annotations

import pytest

from nkdaemon.core.portable_sql import portable_default


@pytest.mark.parametrize(
    ("text", "logical", "source", "target", "expected"),
    [
        ("'none'::text", "text", "postgresql", "sqlite", "'none'"),
        ("'it''s'::character varying", "text", "postgresql", "sqlite", "'it''s'"),
        ("0", "int", "postgresql", "sqlite", "0"),
        ("'1.50'::numeric", "decimal", "postgresql", "sqlite", "'1.50'"),
        ("false", "bool", "postgresql", "sqlite", "0"),
        ("1", "bool", "sqlite", "postgresql", "true"),
        ("now()", "timestamptz", "postgresql", "sqlite", "CURRENT_TIMESTAMP"),
        ("CURRENT_TIMESTAMP", "timestamp", "sqlite", "postgresql", "CURRENT_TIMESTAMP"),
        ("(42)", "int", "sqlite", "postgresql", "42"),
        ("gen_random_uuid()", "uuid", "postgresql", "sqlite", None),
        ("nextval('t_n_seq'::regclass)", "int", "postgresql", "postgresql", None),
        ("lower('X')", "text", "postgresql", "postgresql", "lower('X')"),
    ],
)
def test_defaults_are_carried_where_they_mean_the_same(
    text: str, logical: str, source: str, target: str, expected: str | None
) -> None:
    assert (
        portable_default(text, logical_type=logical, source_dialect=source, target_dialect=target)
        == expected
    )
