"""Reading PostgreSQL rows as canonical values: the capture source's triggers and snapshot
reads, and the restore target's reading back, decode rows the same way.

A row travels as ``row_to_json`` text plus the list of its json columns that are SQL NULL
(``row_to_json`` writes both SQL NULL and JSON null as ``null``).
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import sql

from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import SchemaDrift
from nkdaemon.core.values import parse_json_exact, pg_decoder

# Types whose row_to_json form is already canonical, and types whose numbers need the
# exact (slower) JSON parser: everything else parses with orjson.
_AS_IS = frozenset({"int", "text", "bool", "date", "time"})
_NEEDS_EXACT = frozenset({"decimal", "float", "json", "other"})


def json_columns(spec: TableSpec) -> list[str]:
    """The columns of ``spec`` holding json, whose SQL NULL and JSON null look alike."""
    return [c.name for c in spec.columns if c.logical_type == "json"]


def sql_nulls(spec: TableSpec, row: str) -> sql.Composable:
    """An expression listing the json columns of ``row`` that are SQL NULL."""
    columns = json_columns(spec)
    if not columns:
        return sql.SQL("NULL")
    cases = sql.SQL(", ").join(
        sql.SQL("CASE WHEN {}.{} IS NULL THEN {} END").format(
            sql.SQL(row), sql.Identifier(c), sql.Literal(c)
        )
        for c in columns
    )
    return sql.SQL("array_remove(ARRAY[{}]::text[], NULL)").format(cases)


class RowDecoder:
    """Turns one table's row_to_json text into a canonical row, as fast as the types allow."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.known = frozenset(c.name for c in spec.columns)
        self.convert = [
            (c.name, pg_decoder(c.logical_type))
            for c in spec.columns
            if c.logical_type not in _AS_IS
        ]
        self.exact = any(
            c.logical_type.removeprefix("array:") in _NEEDS_EXACT for c in spec.columns
        )
        self.json_columns = json_columns(spec)

    def decode(self, text: str, nulls: list[str] | None = None) -> dict[str, Any]:
        """The canonical row; raises SchemaDrift for a column the spec does not know."""
        row: dict[str, Any] = parse_json_exact(text) if self.exact else orjson.loads(text)
        if not row.keys() <= self.known:
            raise SchemaDrift(table=self.spec.name, columns=tuple(sorted(row.keys() - self.known)))
        for name, convert in self.convert:
            if name in row:
                row[name] = convert(row[name])
        for name in self.json_columns:
            if name in row and row[name] is None and name not in (nulls or ()):
                row[name] = "null"  # a JSON null, not SQL NULL
        return row
