"""The restore target: one transaction in a PostgreSQL or SQLite database.

Rows are addressed by their primary-key values in the target (generated ids, or the key
itself where the primary key means something). Every method works inside the one restore
transaction; nothing is committed before ``commit``. The only module that touches the
target's driver; its errors leave as RestoreTargetError.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy.engine import make_url

from nkdaemon.core.errors import NkdError
from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, IndexSpec, TableSpec
from nkdaemon.core.portable_sql import portable_default
from nkdaemon.targets.values import pg_param, sqlite_param, sqlite_reader, sqlite_type

Address = tuple[Any, ...]


class RestoreTargetError(NkdError):
    """The target database refused something, or cannot be used."""

    kind = "target"


@dataclass
class TargetTable:
    """A table in the target and what the restore needs to know about it."""

    spec: TableSpec
    columns: list[str]
    primary_key: tuple[str, ...]
    types: dict[str, str] = field(default_factory=dict)
    copy_types: dict[str, int | str] = field(default_factory=dict)
    sequence: str | None = None
    generated: bool = False
    uuid_ids: bool = False  # ids are drawn here as random UUIDs (the key is a uuid or text)
    hex_ids: bool = False  # ... written as 32 hex digits (a text key)
    identity_always: bool = False  # inserting ids needs OVERRIDING SYSTEM VALUE
    rows_before: int = 0
    next_id: int | None = None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Target:
    """Common shape; see PostgresTarget and SqliteTarget."""

    dialect = ""

    def close(self) -> None: ...


@contextlib.contextmanager
def _pg_errors(action: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreTargetError(f"the target refused {action}: {text}") from None


class PostgresTarget(Target):
    dialect = "postgresql"

    def __init__(self, url: str, *, source_dialect: str, schema: str = "public") -> None:
        self.source_dialect = source_dialect
        self.schema = schema
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with _pg_errors("the connection"):
            self.conn = psycopg.connect(conninfo, application_name="nkdaemon restore")
        with _pg_errors("deferring constraints"):
            self.conn.execute("SET CONSTRAINTS ALL DEFERRED")
        self._pipelined = False
        self._cursor = self.conn.cursor()
        self._statements: dict[tuple[str, str, tuple[str, ...]], str] = {}

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Statements sent inside are pipelined: not waited for one by one; an error they
        meet surfaces (translated) when the pipeline is synchronised on the way out."""
        with _pg_errors("a batch of changes"), self.conn.pipeline():
            self._pipelined = True
            try:
                yield
            finally:
                self._pipelined = False

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Work inside is undone if it fails, the rest of the transaction kept (a savepoint).

        Pipelined statements are synchronised on the way out, so their errors surface here.
        """
        with _pg_errors("a batch of changes"), self.conn.transaction():
            yield

    def check_constraints(self) -> None:
        """Check now what would be checked at commit (deferred constraints)."""
        with _pg_errors("the deferred constraint checks"):
            self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def commit(self) -> None:
        with _pg_errors("the commit"):
            self.conn.commit()

    def rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()

    def _qualified(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(table))

    def inspect(self, spec: TableSpec) -> TargetTable | None:
        with _pg_errors(f"reading the definition of {spec.name}"):
            rows = self.conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid "
                "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 "
                "AND NOT a.attisdropped ORDER BY a.attnum",
                (self._qualified(spec.name).as_string(self.conn),),
            ).fetchall()
            if not rows:
                return None
            pk = self.conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY a.attnum",
                (self._qualified(spec.name).as_string(self.conn),),
            ).fetchall()
            table = TargetTable(
                spec=spec,
                columns=[r[0] for r in rows],
                # a table without a primary key: rows are addressed by their place (ctid),
                # valid for the statement that reads it and the one that deletes by it
                primary_key=tuple(r[0] for r in pk) or ("ctid",),
                types={r[0]: r[1] for r in rows},
            )
            table.copy_types = {r[0]: self._copy_type(spec, r[0], int(r[2])) for r in rows}
            if len(table.primary_key) == 1:
                seq = self.conn.execute(
                    "SELECT pg_get_serial_sequence(%s, %s)",
                    (self._qualified(spec.name).as_string(self.conn), table.primary_key[0]),
                ).fetchone()
                table.sequence = seq[0] if seq else None
                table.generated = table.sequence is not None
                _draw_uuids(table)
                always = self.conn.execute(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attidentity = 'a'",
                    (self._qualified(spec.name).as_string(self.conn),),
                ).fetchone()
                table.identity_always = always is not None
            count = self.conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(self._qualified(spec.name))
            ).fetchone()
            table.rows_before = int(count[0]) if count else 0
            return table

    def _copy_type(self, spec: TableSpec, column: str, oid: int) -> int | str:
        """How COPY should format a column: values PostgreSQL parses from text go as text."""
        found = spec.column_index.get(column)
        logical = found.logical_type if found else "other"
        element = logical.removeprefix("array:")
        if element not in _BINARY_SAFE or not self.conn.adapters.types.get(oid):
            return "text[]" if logical.startswith("array:") else "text"
        return oid

    def create(self, specs: Sequence[TableSpec]) -> list[str]:
        """Create tables as the backup defines them; returns what could not be reproduced."""
        notes: list[str] = []
        with _pg_errors("creating tables"):
            for spec in specs:
                self.conn.execute(
                    _pg_create_table(self._qualified(spec.name), spec, self.source_dialect, notes)
                )
            for spec in specs:
                for number, fk in enumerate(spec.foreign_keys):
                    self.conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})"
                            "{} DEFERRABLE INITIALLY DEFERRED"
                        ).format(
                            self._qualified(spec.name),
                            sql.Identifier(f"nkd_fk_{spec.number}_{number}"),
                            sql.SQL(", ").join(map(sql.Identifier, fk.columns)),
                            self._qualified(fk.ref_table),
                            sql.SQL(", ").join(map(sql.Identifier, fk.ref_columns)),
                            sql.SQL(_fk_actions(fk)),
                        )
                    )
                for index in _indexes_to_build(spec, notes):
                    self.conn.execute(
                        sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
                            sql.SQL("UNIQUE " if index.unique else ""),
                            sql.Identifier(index.name or f"nkd_ix_{spec.number}"),
                            self._qualified(spec.name),
                            sql.SQL(", ").join(map(sql.Identifier, index.columns)),
                        )
                    )
        return notes

    def param(self, table: TargetTable, column: str, value: Any) -> Any:
        spec_column = table.spec.column_index.get(column)
        return pg_param(spec_column.logical_type if spec_column else "other", value)

    def converter(self, table: TargetTable, column: str) -> Callable[[Any], Any]:
        """The function turning a canonical value of this column into a parameter."""
        spec_column = table.spec.column_index.get(column)
        logical = spec_column.logical_type if spec_column else "other"
        if self.source_dialect == "postgresql" and logical in _AS_PARAM:
            return same_value
        return lambda value: pg_param(logical, value)

    def find(
        self, table: TargetTable, columns: Sequence[str], keys: Sequence[Address]
    ) -> dict[Address, Address]:
        """Addresses of the rows whose ``columns`` hold each of ``keys``."""
        found: dict[Address, Address] = {}
        if not keys:
            return found
        unnest = sql.SQL(", ").join(
            sql.SQL("{}::{}[]").format(sql.Placeholder(), sql.SQL(table.types[c])) for c in columns
        )
        query = sql.SQL(
            "SELECT {pk}, {cols} FROM {table} WHERE ({cols}) IN (SELECT * FROM unnest({unnest}))"
        ).format(
            pk=sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            table=self._qualified(table.spec.name),
            unnest=unnest,
        )
        width = len(table.primary_key)
        with _pg_errors(f"looking up rows of {table.spec.name}"):
            for start in range(0, len(keys), 5000):
                chunk = keys[start : start + 5000]
                params = [[k[i] for k in chunk] for i in range(len(columns))]
                for row in self.conn.execute(query, params).fetchall():
                    found[tuple(row[width:])] = tuple(row[:width])
        return found

    def find_one_equal(
        self, table: TargetTable, columns: Sequence[str], values: Sequence[Any]
    ) -> Address | None:
        """The address of one row whose ``columns`` equal ``values``, NULL equal to NULL
        (a row captured whole, which may hold NULLs and have duplicates)."""
        query = sql.SQL("SELECT {pk} FROM {table} WHERE {equal} LIMIT 1").format(
            pk=sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
            table=self._qualified(table.spec.name),
            equal=sql.SQL(" AND ").join(
                sql.SQL("{} IS NOT DISTINCT FROM {}::{}").format(
                    _comparable(c, table.types[c]), sql.Placeholder(), sql.SQL(table.types[c])
                )
                for c in columns
            )
            if columns
            else sql.SQL("true"),
        )
        with _pg_errors(f"looking up a row of {table.spec.name}"):
            row = self.conn.execute(query, list(values)).fetchone()
        return tuple(row) if row else None

    def allocate(self, table: TargetTable, count: int) -> list[Any]:
        if table.uuid_ids:
            return [uuid.uuid4().hex if table.hex_ids else uuid.uuid4() for _ in range(count)]
        if table.sequence is None:
            raise RestoreTargetError(
                f"table {table.spec.name} in the target generates no ids for new rows",
                hint="give its primary key a default (serial or identity)",
            )
        with _pg_errors(f"allocating ids for {table.spec.name}"):
            rows = self.conn.execute(
                "SELECT nextval(%s) FROM generate_series(1, %s)", (table.sequence, count)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def insert(
        self, table: TargetTable, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert rows, a list or a stream (a stream is sent as one COPY as it comes)."""
        if isinstance(rows, Sequence) and not rows:
            return
        if self._pipelined:  # COPY cannot run in a pipeline; small batches do not need it
            self._insert_statements(table, columns, list(rows))
            return
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self._qualified(table.spec.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        cursor = self.conn.cursor()
        with (
            _pg_errors(f"rows for {table.spec.name}"),
            # a writer thread sends to the server while this one prepares the next rows
            cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy,
        ):
            copy.set_types([table.copy_types[c] for c in columns])
            for row in rows:
                copy.write_row(row)

    def _run_many(self, statement: Any, rows: Sequence[Sequence[Any]]) -> None:
        """executemany, except that in a pipeline single rows are queued, not waited for."""
        if self._pipelined and len(rows) < 8:
            for row in rows:
                self._cursor.execute(statement, row)
        else:
            self._cursor.executemany(statement, rows)

    def _insert_statements(
        self, table: TargetTable, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        key = (table.spec.name, "insert", tuple(columns))
        statement = self._statements.get(key)
        if statement is None:
            statement = (
                sql.SQL("INSERT INTO {} ({}) {}VALUES ({})")
                .format(
                    self._qualified(table.spec.name),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL("OVERRIDING SYSTEM VALUE " if table.identity_always else ""),
                    sql.SQL(", ").join(
                        sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(table.types[c]))
                        for c in columns
                    ),
                )
                .as_string(self.conn)
            )
            self._statements[key] = statement
        with _pg_errors(f"rows for {table.spec.name}"):
            self._run_many(statement, rows)

    def update(
        self, table: TargetTable, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """``rows`` hold the new values of ``columns`` followed by the row's address."""
        if not rows:
            return
        key = (table.spec.name, "update", tuple(columns))
        statement = self._statements.get(key)
        if statement is None:
            statement = (
                sql.SQL("UPDATE {} SET {} WHERE {}")
                .format(
                    self._qualified(table.spec.name),
                    sql.SQL(", ").join(
                        sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns
                    ),
                    sql.SQL(" AND ").join(
                        sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.primary_key
                    ),
                )
                .as_string(self.conn)
            )
            self._statements[key] = statement
        with _pg_errors(f"updates of {table.spec.name}"):
            self._run_many(statement, rows)

    def delete(self, table: TargetTable, addresses: Sequence[Address]) -> None:
        if not addresses:
            return
        statement = sql.SQL("DELETE FROM {} WHERE {}").format(
            self._qualified(table.spec.name),
            sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.primary_key
            ),
        )
        with _pg_errors(f"deletes from {table.spec.name}"), self.conn.cursor() as cursor:
            cursor.executemany(statement, [list(a) for a in addresses])

    def addresses(self, table: TargetTable) -> Iterator[Address]:
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
            self._qualified(table.spec.name),
        )
        with _pg_errors(f"reading {table.spec.name}"):
            rows = self.conn.execute(query).fetchall()
        return iter([tuple(r) for r in rows])

    def delete_all(self, table: TargetTable) -> None:
        with _pg_errors(f"emptying {table.spec.name}"):
            self.conn.execute(sql.SQL("DELETE FROM {}").format(self._qualified(table.spec.name)))

    def advance(self, table: TargetTable) -> None:
        if table.sequence is None or len(table.primary_key) != 1:
            return
        with _pg_errors(f"advancing the sequence of {table.spec.name}"):
            self.conn.execute(
                sql.SQL(
                    "SELECT setval({seq}, m) FROM (SELECT max({pk}) AS m FROM {t}) s "
                    "WHERE m IS NOT NULL AND m > (SELECT last_value FROM {seqrel})"
                ).format(
                    seq=sql.Literal(table.sequence),
                    pk=sql.Identifier(table.primary_key[0]),
                    t=self._qualified(table.spec.name),
                    seqrel=sql.SQL(table.sequence),
                )
            )

    def read(self, table: TargetTable) -> Iterator[dict[str, Any]]:
        """Every row as canonical values (the columns of the definition and the address)."""
        from nkdaemon.sources.postgres import (
            RowDecoder,  # the source's reading of rows
            sql_nulls,  # the source's reading
        )

        decoder = RowDecoder(table.spec)
        names = [c.name for c in table.spec.columns if c.name in table.columns]
        place = _pseudo_address(table)  # ctid: the address of a row without a primary key
        query = sql.SQL(
            "SELECT row_to_json(x)::text, {}, {} FROM {} t CROSS JOIN LATERAL (SELECT {}) x"
        ).format(
            sql_nulls(table.spec, "x"),
            sql.SQL("t.ctid::text") if place else sql.SQL("NULL"),
            self._qualified(table.spec.name),
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(n)) for n in names),
        )
        with _pg_errors(f"reading {table.spec.name} back"), self.conn.cursor() as cursor:
            cursor.execute(query)
            while rows := cursor.fetchmany(5000):
                for text, nulls, address in rows:
                    row = decoder.decode(text, nulls)
                    if place:
                        row[place] = address
                    yield row


def _draw_uuids(table: TargetTable) -> None:
    """A single uuid surrogate key: the restore draws new random ids itself (the source's
    are not in the log, and any fresh UUID serves as well as the database's default)."""
    if table.generated or len(table.primary_key) != 1:
        return
    column = table.spec.column_index.get(table.primary_key[0])
    if column is not None and column.logical_type in ("uuid", "text"):
        # a text surrogate (SQLite's lower(hex(randomblob(16))), say): 32 random hex digits
        table.generated = table.uuid_ids = True
        table.hex_ids = column.logical_type == "text"


def _comparable(column: str, type_sql: str) -> sql.Composable:
    """A column as an operand of equality: json has no equality operator, jsonb has."""
    if type_sql == "json":
        return sql.SQL("{}::jsonb").format(sql.Identifier(column))
    return sql.Identifier(column)


# Canonical values of these types are already what psycopg should send (PostgreSQL source).
_AS_PARAM = frozenset(
    {"int", "text", "bool", "json", "other", "timestamptz", "timestamp", "date", "time"}
)


def same_value(value: Any) -> Any:
    return value


_BINARY_SAFE = frozenset({"int", "decimal", "float", "bool", "bytes", "uuid"})


def _pg_create_table(
    name: sql.Composable, spec: TableSpec, source_dialect: str, notes: list[str]
) -> sql.Composed:
    columns = []
    surrogate = spec.surrogate_columns
    for column in spec.columns:
        type_sql = (
            column.sql_type
            if source_dialect == "postgresql" and column.sql_type
            else _pg_type(column.logical_type)
        )
        parts = [sql.Identifier(column.name), sql.SQL(type_sql)]
        if column.name in surrogate and column.logical_type == "int":
            always = column.identity == "always" and source_dialect == "postgresql"
            parts.append(sql.SQL(f"GENERATED {'ALWAYS' if always else 'BY DEFAULT'} AS IDENTITY"))
        else:
            default = _default_for(spec, column, source_dialect, "postgresql", notes)
            if default is not None:
                parts.append(sql.SQL("DEFAULT " + default))
        if not column.nullable:
            parts.append(sql.SQL("NOT NULL"))
        columns.append(sql.SQL(" ").join(parts))
    for check in _checks_to_build(spec, source_dialect, "postgresql", notes):
        columns.append(sql.SQL("CHECK ({})").format(sql.SQL(check)))
    if spec.primary_key:
        columns.append(
            sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, spec.primary_key))
            )
        )
    key = spec.key_column_names
    if key and set(key) != set(spec.primary_key) and not spec.full_row_identity:
        columns.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
    return sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(", ").join(columns))


_PG_TYPES = {
    "int": "bigint",
    "decimal": "numeric",
    "float": "double precision",
    "text": "text",
    "bool": "boolean",
    "bytes": "bytea",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "time": "time",
    "uuid": "uuid",
    "json": "jsonb",
    "other": "text",
}


def _pg_type(logical_type: str) -> str:
    if logical_type.startswith("array:"):
        return _PG_TYPES.get(logical_type[6:], "text") + "[]"
    return _PG_TYPES.get(logical_type, "text")


@contextlib.contextmanager
def _sqlite_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise RestoreTargetError(f"the target refused {action}: {exc}") from None


class SqliteTarget(Target):
    dialect = "sqlite"

    def __init__(self, url: str, *, source_dialect: str) -> None:
        self.source_dialect = source_dialect
        database = make_url(url).database
        if not database or database == ":memory:":
            raise RestoreTargetError("an in-memory SQLite target would vanish with the restore")
        self.path = Path(database)
        with _sqlite_errors("the connection"):
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("PRAGMA defer_foreign_keys = ON")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Work inside is undone if it fails, the rest of the transaction kept (a savepoint)."""
        self.conn.execute("SAVEPOINT nkd_attempt")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK TO nkd_attempt")
                self.conn.execute("RELEASE nkd_attempt")
            raise
        self.conn.execute("RELEASE nkd_attempt")

    def check_constraints(self) -> None:
        with _sqlite_errors("the foreign key check"):
            broken = self.conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            tables = sorted({f"{row[0]} -> {row[2]}" for row in broken})
            raise RestoreTargetError(
                f"the target refused the restore: {len(broken)} rows would break foreign keys "
                f"({', '.join(tables)})"
            )

    def commit(self) -> None:
        with _sqlite_errors("the commit"):
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def inspect(self, spec: TableSpec) -> TargetTable | None:
        with _sqlite_errors(f"reading the definition of {spec.name}"):
            info = self.conn.execute(f"PRAGMA table_info({_quote(spec.name)})").fetchall()
            if not info:
                return None
            pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            table = TargetTable(
                spec=spec,
                columns=[r[1] for r in info],
                primary_key=pk or ("rowid",),  # a table without a primary key: its rowid
                types={r[1]: r[2] for r in info},
            )
            table.generated = len(pk) == 1 and table.types[pk[0]].upper() == "INTEGER"
            _draw_uuids(table)
            table.rows_before = int(
                self.conn.execute(f"SELECT count(*) FROM {_quote(spec.name)}").fetchone()[0]
            )
            return table

    def create(self, specs: Sequence[TableSpec]) -> list[str]:
        """Create tables as the backup defines them; returns what could not be reproduced."""
        notes: list[str] = []
        with _sqlite_errors("creating tables"):
            for spec in specs:
                self.conn.execute(_sqlite_create_table(spec, self.source_dialect, notes))
                for index in _indexes_to_build(spec, notes):
                    unique = "UNIQUE " if index.unique else ""
                    self.conn.execute(
                        f"CREATE {unique}INDEX {_quote(index.name or f'nkd_ix_{spec.number}')} "
                        f"ON {_quote(spec.name)} ({', '.join(map(_quote, index.columns))})"
                    )
        return notes

    def find(
        self, table: TargetTable, columns: Sequence[str], keys: Sequence[Address]
    ) -> dict[Address, Address]:
        found: dict[Address, Address] = {}
        width = len(table.primary_key)
        cols = ", ".join(map(_quote, columns))
        per_row = "(" + ", ".join("?" * len(columns)) + ")"
        with _sqlite_errors(f"looking up rows of {table.spec.name}"):
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                values = ", ".join([per_row] * len(chunk))
                query = (
                    f"SELECT {', '.join(map(_quote, table.primary_key))}, {cols} FROM "
                    f"{_quote(table.spec.name)} WHERE ({cols}) IN (VALUES {values})"
                )
                params = [v for key in chunk for v in key]
                for row in self.conn.execute(query, params):
                    found[tuple(row[width:])] = tuple(row[:width])
        return found

    def find_one_equal(
        self, table: TargetTable, columns: Sequence[str], values: Sequence[Any]
    ) -> Address | None:
        """The address of one row whose ``columns`` equal ``values``, NULL equal to NULL."""
        equal = " AND ".join(f"{_quote(c)} IS ?" for c in columns) or "1"
        query = (
            f"SELECT {', '.join(map(_quote, table.primary_key))} FROM "
            f"{_quote(table.spec.name)} WHERE {equal} LIMIT 1"
        )
        with _sqlite_errors(f"looking up a row of {table.spec.name}"):
            row = self.conn.execute(query, list(values)).fetchone()
        return tuple(row) if row else None

    def converter(self, table: TargetTable, column: str) -> Callable[[Any], Any]:
        spec_column = table.spec.column_index.get(column)
        logical = spec_column.logical_type if spec_column else "other"
        source = self.source_dialect
        return lambda value: sqlite_param(logical, value, source_dialect=source)

    def param(self, table: TargetTable, column: str, value: Any) -> Any:
        spec_column = table.spec.column_index.get(column)
        return sqlite_param(
            spec_column.logical_type if spec_column else "other",
            value,
            source_dialect=self.source_dialect,
        )

    def allocate(self, table: TargetTable, count: int) -> list[Any]:
        if table.uuid_ids:
            column = table.primary_key[0]
            drawn = (uuid.uuid4() for _ in range(count))
            return [self.param(table, column, u.hex if table.hex_ids else str(u)) for u in drawn]
        if not table.generated:
            raise RestoreTargetError(
                f"table {table.spec.name} in the target generates no ids for new rows"
            )
        if table.next_id is None:
            row = self.conn.execute(
                f"SELECT coalesce(max({_quote(table.primary_key[0])}), 0) "
                f"FROM {_quote(table.spec.name)}"
            ).fetchone()
            seq = (
                self.conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.spec.name,)
                ).fetchone()
                if self._has_sequence()
                else None
            )
            table.next_id = max(int(row[0]), int(seq[0]) if seq else 0) + 1
        start = table.next_id
        table.next_id += count
        return list(range(start, start + count))

    def _has_sequence(self) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
            ).fetchone()
            is not None
        )

    def insert(
        self, table: TargetTable, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        if isinstance(rows, Sequence) and not rows:
            return
        statement = (
            f"INSERT INTO {_quote(table.spec.name)} ({', '.join(map(_quote, columns))}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        with _sqlite_errors(f"rows for {table.spec.name}"):
            self.conn.executemany(statement, rows)

    def update(
        self, table: TargetTable, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        statement = (
            f"UPDATE {_quote(table.spec.name)} "
            f"SET {', '.join(f'{_quote(c)} = ?' for c in columns)} "
            f"WHERE {' AND '.join(f'{_quote(c)} = ?' for c in table.primary_key)}"
        )
        with _sqlite_errors(f"updates of {table.spec.name}"):
            self.conn.executemany(statement, rows)

    def delete(self, table: TargetTable, addresses: Sequence[Address]) -> None:
        if not addresses:
            return
        where = " AND ".join(f"{_quote(c)} = ?" for c in table.primary_key)
        statement = f"DELETE FROM {_quote(table.spec.name)} WHERE {where}"
        with _sqlite_errors(f"deletes from {table.spec.name}"):
            self.conn.executemany(statement, [list(a) for a in addresses])

    def addresses(self, table: TargetTable) -> Iterator[Address]:
        cols = ", ".join(map(_quote, table.primary_key))
        with _sqlite_errors(f"reading {table.spec.name}"):
            rows = self.conn.execute(f"SELECT {cols} FROM {_quote(table.spec.name)}").fetchall()
        return iter([tuple(r) for r in rows])

    def delete_all(self, table: TargetTable) -> None:
        with _sqlite_errors(f"emptying {table.spec.name}"):
            self.conn.execute(f"DELETE FROM {_quote(table.spec.name)}")

    def advance(self, table: TargetTable) -> None:
        if not self._has_sequence():
            return
        with _sqlite_errors(f"advancing the sequence of {table.spec.name}"):
            row = (
                self.conn.execute(
                    f"SELECT max({_quote(table.primary_key[0])}) FROM {_quote(table.spec.name)}"
                ).fetchone()
                if table.generated
                else None
            )
            if row and row[0] is not None:
                self.conn.execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                    (row[0], table.spec.name),
                )

    def read(self, table: TargetTable) -> Iterator[dict[str, Any]]:
        names = [c.name for c in table.spec.columns if c.name in table.columns]
        readers = [
            sqlite_reader(table.spec.column(n).logical_type, source_dialect=self.source_dialect)
            for n in names
        ]
        place = _pseudo_address(table)  # rowid: the address of a row without a primary key
        selected = [*map(_quote, names), place or "NULL"]
        with _sqlite_errors(f"reading {table.spec.name} back"):
            cursor = self.conn.execute(
                f"SELECT {', '.join(selected)} FROM {_quote(table.spec.name)}"
            )
            for *values, address in cursor:
                row = {n: r(v) for n, r, v in zip(names, readers, values, strict=True)}
                if place:
                    row[place] = address
                yield row


def _pseudo_address(table: TargetTable) -> str | None:
    """The system column addressing rows of a table without a primary key, if it is one."""
    if table.primary_key in (("ctid",), ("rowid",)) and table.primary_key[0] not in table.columns:
        return table.primary_key[0]
    return None


def _sqlite_create_table(spec: TableSpec, source_dialect: str, notes: list[str]) -> str:
    columns = []
    surrogate = spec.surrogate_columns
    single_int_pk = (
        len(spec.primary_key) == 1
        and spec.primary_key[0] in surrogate
        and spec.column(spec.primary_key[0]).logical_type == "int"
    )
    for column in spec.columns:
        if single_int_pk and column.name == spec.primary_key[0]:
            columns.append(f"{_quote(column.name)} INTEGER PRIMARY KEY AUTOINCREMENT")
            continue
        declared = sqlite_type(column.logical_type, source_dialect=source_dialect)
        default = _default_for(spec, column, source_dialect, "sqlite", notes)
        columns.append(
            f"{_quote(column.name)} {declared}{'' if column.nullable else ' NOT NULL'}"
            + ("" if default is None else f" DEFAULT ({default})")
        )
    if spec.primary_key and not single_int_pk:
        columns.append(f"PRIMARY KEY ({', '.join(map(_quote, spec.primary_key))})")
    key = spec.key_column_names
    if key and set(key) != set(spec.primary_key) and not spec.full_row_identity:
        columns.append(f"UNIQUE ({', '.join(map(_quote, key))})")
    for fk in spec.foreign_keys:
        columns.append(
            f"FOREIGN KEY ({', '.join(map(_quote, fk.columns))}) REFERENCES {_quote(fk.ref_table)} "
            f"({', '.join(map(_quote, fk.ref_columns))}){_fk_actions(fk)} "
            "DEFERRABLE INITIALLY DEFERRED"
        )
    columns += [f"CHECK ({c})" for c in _checks_to_build(spec, source_dialect, "sqlite", notes)]
    return f"CREATE TABLE {_quote(spec.name)} ({', '.join(columns)})"


def _fk_actions(fk: ForeignKeySpec) -> str:
    actions = ""
    for event, action in (("DELETE", fk.on_delete), ("UPDATE", fk.on_update)):
        if action and action in _FK_ACTIONS and action != "NO ACTION":
            actions += f" ON {event} {action}"
    return actions


_FK_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"})


def _default_for(
    spec: TableSpec, column: ColumnSpec, source: str, target: str, notes: list[str]
) -> str | None:
    if column.default is None or column.name in spec.surrogate_columns:
        return None
    carried = portable_default(
        column.default,
        logical_type=column.logical_type,
        source_dialect=source,
        target_dialect=target,
    )
    if carried is None:
        notes.append(f"{spec.name}.{column.name}: default {column.default} not reproduced")
    return carried


def _checks_to_build(spec: TableSpec, source: str, target: str, notes: list[str]) -> list[str]:
    if source == target:
        return [check.sql for check in spec.checks]
    notes += [f"{spec.name}: check {c.name or c.sql} ({c.sql}) not reproduced" for c in spec.checks]
    return []


def _indexes_to_build(spec: TableSpec, notes: list[str]) -> list[IndexSpec]:
    """Secondary indexes, without the key's and primary key's (made with the table)."""
    built = {frozenset(spec.primary_key), frozenset(spec.key_column_names)}
    out = []
    for index in spec.indexes:
        if not index.columns:
            notes.append(f"{spec.name}: index {index.name} (expressions or partial) not reproduced")
        elif frozenset(index.columns) not in built or not index.unique:
            out.append(index)
    return out


def open_target(url: str, *, source_dialect: str) -> PostgresTarget | SqliteTarget:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return PostgresTarget(url, source_dialect=source_dialect)
    if backend == "sqlite":
        return SqliteTarget(url, source_dialect=source_dialect)
    raise RestoreTargetError(
        f"--target: database {backend!r} is not supported",
        hint="restore into PostgreSQL (postgresql+psycopg://...) or SQLite (sqlite:///path)",
    )
