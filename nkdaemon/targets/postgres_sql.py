"""The statements the PostgreSQL restore target runs, built apart from running them.

``name`` is always the table's schema-qualified name; identifiers are quoted by psycopg,
and values travel as parameters, cast to the target column's own type where PostgreSQL
would otherwise guess it.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from nkdaemon.dialects.postgres_rows import sql_nulls
from nkdaemon.targets.table import TargetTable

# The catalog, for inspect; each takes the table's qualified name as text.
COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid "
    "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 "
    "AND NOT a.attisdropped ORDER BY a.attnum"
)
PRIMARY_KEY = (
    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY a.attnum"
)
IDENTITY_ALWAYS = (
    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attidentity = 'a'"
)
SERIAL_SEQUENCE = "SELECT pg_get_serial_sequence(%s, %s)"
NEXT_IDS = "SELECT nextval(%s) FROM generate_series(1, %s)"


def identifiers(names: Sequence[str]) -> sql.Composed:
    """``"a", "b"``: a list of quoted column names."""
    return sql.SQL(", ").join(map(sql.Identifier, names))


def count_rows(name: sql.Composable) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(name)


def find(name: sql.Composable, table: TargetTable, columns: Sequence[str]) -> sql.Composed:
    """Address and key of the rows whose ``columns`` hold one of the keys given as one
    array parameter per column."""
    unnest = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Placeholder(), sql.SQL(table.types[c])) for c in columns
    )
    return sql.SQL(
        "SELECT {pk}, {cols} FROM {table} WHERE ({cols}) IN (SELECT * FROM unnest({unnest}))"
    ).format(
        pk=identifiers(table.primary_key),
        cols=identifiers(columns),
        table=name,
        unnest=unnest,
    )


def find_one_equal(
    name: sql.Composable, table: TargetTable, columns: Sequence[str]
) -> sql.Composed:
    """The address of one row whose ``columns`` equal the parameters, NULL equal to NULL."""
    equal = (
        sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT DISTINCT FROM {}::{}").format(
                _comparable(c, table.types[c]), sql.Placeholder(), sql.SQL(table.types[c])
            )
            for c in columns
        )
        if columns
        else sql.SQL("true")
    )
    return sql.SQL("SELECT {pk} FROM {table} WHERE {equal} LIMIT 1").format(
        pk=identifiers(table.primary_key), table=name, equal=equal
    )


def _comparable(column: str, type_sql: str) -> sql.Composable:
    """A column as an operand of equality: json has no equality operator, jsonb has."""
    if type_sql == "json":
        return sql.SQL("{}::jsonb").format(sql.Identifier(column))
    return sql.Identifier(column)


def copy(name: sql.Composable, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(name, identifiers(columns))


def insert(name: sql.Composable, table: TargetTable, columns: Sequence[str]) -> sql.Composed:
    """INSERT of one row, each value cast to its column's type (ids included, past an
    identity column's ALWAYS)."""
    return sql.SQL("INSERT INTO {} ({}) {}VALUES ({})").format(
        name,
        identifiers(columns),
        sql.SQL("OVERRIDING SYSTEM VALUE " if table.identity_always else ""),
        sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(table.types[c])) for c in columns
        ),
    )


def update(name: sql.Composable, table: TargetTable, columns: Sequence[str]) -> sql.Composed:
    """UPDATE of one row: the new values of ``columns``, then the row's address."""
    return sql.SQL("UPDATE {} SET {} WHERE {}").format(
        name,
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns),
        _at_address(table),
    )


def delete(name: sql.Composable, table: TargetTable) -> sql.Composed:
    """DELETE of one row by its address."""
    return sql.SQL("DELETE FROM {} WHERE {}").format(name, _at_address(table))


def _at_address(table: TargetTable) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.primary_key
    )


def addresses(name: sql.Composable, table: TargetTable) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {}").format(identifiers(table.primary_key), name)


def delete_all(name: sql.Composable) -> sql.Composed:
    return sql.SQL("DELETE FROM {}").format(name)


def advance(name: sql.Composable, table: TargetTable, sequence: str) -> sql.Composed:
    """Move the key's sequence past the largest id in the table (never back)."""
    return sql.SQL(
        "SELECT setval({seq}, m) FROM (SELECT max({pk}) AS m FROM {t}) s "
        # >=: a fresh sequence (last_value 1, not yet called) would hand out 1 again
        "WHERE m IS NOT NULL AND m >= (SELECT last_value FROM {seqrel})"
    ).format(
        seq=sql.Literal(sequence),
        pk=sql.Identifier(table.primary_key[0]),
        t=name,
        seqrel=sql.SQL(sequence),
    )


def read(
    name: sql.Composable, table: TargetTable, names: Sequence[str], with_ctid: bool
) -> sql.Composed:
    """Each row of ``names`` as row_to_json text, its json columns that are SQL NULL, and
    its ctid as text (or NULL)."""
    return sql.SQL(
        "SELECT row_to_json(x)::text, {}, {} FROM {} t CROSS JOIN LATERAL (SELECT {}) x"
    ).format(
        sql_nulls(table.spec, "x"),
        sql.SQL("t.ctid::text") if with_ctid else sql.SQL("NULL"),
        name,
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(n)) for n in names),
    )
