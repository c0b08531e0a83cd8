"""The PostgreSQL restore target (psycopg 3): one transaction, constraints deferred.

Rows are addressed by their primary-key values in the target (generated ids, or the key
itself where the primary key means something), or by ctid in a table without one. Every
method works inside the one restore transaction; nothing is committed before ``commit``.
The only module that touches psycopg for restore; its errors leave as RestoreTargetError.
The statements themselves are built in ``postgres_sql``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy.engine import make_url

from nkdaemon.core.keys import TableSpec
from nkdaemon.dialects.postgres_rows import RowDecoder
from nkdaemon.targets import postgres_sql as q
from nkdaemon.targets.ddl import pg_constraints, pg_create_table
from nkdaemon.targets.table import (
    Address,
    CanonicalRow,
    Converter,
    NewId,
    Params,
    RestoreTargetError,
    TargetTable,
    draw_uuids,
    logical_type,
    pseudo_address,
    same_value,
)
from nkdaemon.targets.values import pg_param

# Canonical values of these types are already what psycopg should send (PostgreSQL source).
_AS_PARAM = frozenset(
    {"int", "text", "bool", "json", "other", "timestamptz", "timestamp", "date", "time"}
)
# Logical types COPY may send in binary when psycopg knows the column's type.
_BINARY_SAFE = frozenset({"int", "decimal", "float", "bool", "bytes", "uuid"})
# Keys per lookup query (sent as one array parameter per key column).
_FIND_CHUNK = 5000
# Rows per fetch when reading a table back.
_READ_CHUNK = 5000


@contextlib.contextmanager
def _pg_errors(action: str) -> Iterator[None]:
    """psycopg's errors, as the target's, with the first line of the server's message."""
    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreTargetError(f"the target refused {action}: {text}") from None


class PostgresTarget:
    """A PostgreSQL database restored into, in one transaction."""

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
        self._reads = 0  # server-side cursors opened by read(), for their names
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

    # --- definitions ---------------------------------------------------------------------

    def inspect(self, spec: TableSpec) -> TargetTable | None:
        """The table as the target has it, or None if the target has no such table."""
        name = self._qualified(spec.name)
        with _pg_errors(f"reading the definition of {spec.name}"):
            regclass = name.as_string(self.conn)
            rows = self.conn.execute(q.COLUMNS, (regclass,)).fetchall()
            if not rows:
                return None
            pk = self.conn.execute(q.PRIMARY_KEY, (regclass,)).fetchall()
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
                self._inspect_ids(table, regclass)
            count = self.conn.execute(q.count_rows(name)).fetchone()
            table.rows_before = int(count[0]) if count else 0
            return table

    def _inspect_ids(self, table: TargetTable, regclass: str) -> None:
        """Where new ids of a single-column key come from: a sequence, or drawn UUIDs."""
        seq = self.conn.execute(q.SERIAL_SEQUENCE, (regclass, table.primary_key[0])).fetchone()
        table.sequence = seq[0] if seq else None
        table.generated = table.sequence is not None
        draw_uuids(table)
        always = self.conn.execute(q.IDENTITY_ALWAYS, (regclass,)).fetchone()
        table.identity_always = always is not None

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
                name = self._qualified(spec.name)
                self.conn.execute(pg_create_table(name, spec, self.source_dialect, notes))
            for spec in specs:  # foreign keys once every table they refer to exists
                for statement in pg_constraints(spec, self._qualified, notes):
                    self.conn.execute(statement)
        return notes

    # --- values --------------------------------------------------------------------------

    def param(self, table: TargetTable, column: str, value: Any) -> Any:
        """The parameter psycopg sends for a canonical value of ``column``."""
        return pg_param(logical_type(table, column), value)

    def converter(self, table: TargetTable, column: str) -> Converter:
        """The function turning a canonical value of this column into a parameter
        (``same_value`` itself where the value needs no change)."""
        logical = logical_type(table, column)
        if self.source_dialect == "postgresql" and logical in _AS_PARAM:
            return same_value
        return lambda value: pg_param(logical, value)

    # --- finding rows --------------------------------------------------------------------

    def find(
        self, table: TargetTable, columns: Sequence[str], keys: Sequence[Address]
    ) -> dict[Address, Address]:
        """Addresses of the rows whose ``columns`` hold each of ``keys``."""
        found: dict[Address, Address] = {}
        if not keys:
            return found
        query = q.find(self._qualified(table.spec.name), table, columns)
        width = len(table.primary_key)
        with _pg_errors(f"looking up rows of {table.spec.name}"):
            for start in range(0, len(keys), _FIND_CHUNK):
                chunk = keys[start : start + _FIND_CHUNK]
                params = [[k[i] for k in chunk] for i in range(len(columns))]
                for row in self.conn.execute(query, params).fetchall():
                    found[tuple(row[width:])] = tuple(row[:width])
        return found

    def find_one_equal(
        self, table: TargetTable, columns: Sequence[str], values: Params
    ) -> Address | None:
        """The address of one row whose ``columns`` equal ``values``, NULL equal to NULL
        (a row captured whole, which may hold NULLs and have duplicates)."""
        query = q.find_one_equal(self._qualified(table.spec.name), table, columns)
        with _pg_errors(f"looking up a row of {table.spec.name}"):
            row = self.conn.execute(query, list(values)).fetchone()
        return tuple(row) if row else None

    def addresses(self, table: TargetTable) -> Iterator[Address]:
        """The address of every row of the table."""
        query = q.addresses(self._qualified(table.spec.name), table)
        with _pg_errors(f"reading {table.spec.name}"):
            rows = self.conn.execute(query).fetchall()
        return iter([tuple(r) for r in rows])

    # --- writing rows --------------------------------------------------------------------

    def allocate(self, table: TargetTable, count: int) -> list[NewId]:
        """``count`` new ids for the table's key, from its sequence or as random UUIDs."""
        if table.uuid_ids:
            return [uuid.uuid4().hex if table.hex_ids else uuid.uuid4() for _ in range(count)]
        if table.sequence is None:
            raise RestoreTargetError(
                f"table {table.spec.name} in the target generates no ids for new rows",
                hint="give its primary key a default (serial or identity)",
            )
        if not table.sequence_checked:  # ids the application set itself leave it behind
            self.advance(table)
            table.sequence_checked = True
        with _pg_errors(f"allocating ids for {table.spec.name}"):
            rows = self.conn.execute(q.NEXT_IDS, (table.sequence, count)).fetchall()
        return [int(r[0]) for r in rows]

    def insert(self, table: TargetTable, columns: Sequence[str], rows: Iterable[Params]) -> None:
        """Insert rows, a list or a stream (a stream is sent as one COPY as it comes)."""
        if isinstance(rows, Sequence) and not rows:
            return
        if self._pipelined:  # COPY cannot run in a pipeline; small batches do not need it
            statement = self._prepared(table, "insert", columns, q.insert)
            with _pg_errors(f"rows for {table.spec.name}"):
                self._run_many(statement, list(rows))
            return
        cursor = self.conn.cursor()
        with (
            _pg_errors(f"rows for {table.spec.name}"),
            # a writer thread sends to the server while this one prepares the next rows
            cursor.copy(
                q.copy(self._qualified(table.spec.name), columns),
                writer=QueuedLibpqWriter(cursor),
            ) as copy,
        ):
            copy.set_types([table.copy_types[c] for c in columns])
            for row in rows:
                copy.write_row(row)

    def update(self, table: TargetTable, columns: Sequence[str], rows: Sequence[Params]) -> None:
        """``rows`` hold the new values of ``columns`` followed by the row's address."""
        if not rows:
            return
        statement = self._prepared(table, "update", columns, q.update)
        with _pg_errors(f"updates of {table.spec.name}"):
            self._run_many(statement, rows)

    def _prepared(
        self,
        table: TargetTable,
        kind: str,
        columns: Sequence[str],
        build: Callable[[sql.Composable, TargetTable, Sequence[str]], sql.Composed],
    ) -> str:
        """A statement built once per table and columns (replay sends the same ones often)."""
        key = (table.spec.name, kind, tuple(columns))
        statement = self._statements.get(key)
        if statement is None:
            built = build(self._qualified(table.spec.name), table, columns)
            statement = self._statements[key] = built.as_string(self.conn)
        return statement

    def _run_many(self, statement: str, rows: Sequence[Params]) -> None:
        """executemany, except that in a pipeline single rows are queued, not waited for."""
        if self._pipelined and len(rows) < 8:
            for row in rows:
                self._cursor.execute(statement, row)
        else:
            self._cursor.executemany(statement, rows)

    def delete(self, table: TargetTable, addresses: Sequence[Address]) -> None:
        """Delete the rows at ``addresses``."""
        if not addresses:
            return
        statement = q.delete(self._qualified(table.spec.name), table)
        with _pg_errors(f"deletes from {table.spec.name}"), self.conn.cursor() as cursor:
            cursor.executemany(statement, [list(a) for a in addresses])

    def delete_all(self, table: TargetTable) -> None:
        with _pg_errors(f"emptying {table.spec.name}"):
            self.conn.execute(q.delete_all(self._qualified(table.spec.name)))

    def advance(self, table: TargetTable) -> None:
        """Move the key's sequence past every id in the table, for the application's next
        insert (ids written from the backup did not draw from it)."""
        if table.sequence is None or len(table.primary_key) != 1:
            return
        with _pg_errors(f"advancing the sequence of {table.spec.name}"):
            self.conn.execute(q.advance(self._qualified(table.spec.name), table, table.sequence))

    # --- reading back --------------------------------------------------------------------

    def read(self, table: TargetTable) -> Iterator[CanonicalRow]:
        """Every row as canonical values (the columns of the definition and the address)."""
        decoder = RowDecoder(table.spec)
        names = [c.name for c in table.spec.columns if c.name in table.columns]
        place = pseudo_address(table)  # ctid: the address of a row without a primary key
        query = q.read(self._qualified(table.spec.name), table, names, with_ctid=bool(place))
        # a server-side cursor: a client-side one would receive the whole table before the
        # first row (gigabytes at ten million rows); named per read, as reads nest (the
        # keys of a referenced table are read while the referring rows stream)
        self._reads += 1
        cursor_name = f"nkd_read_{self._reads}"
        with (
            _pg_errors(f"reading {table.spec.name} back"),
            self.conn.cursor(name=cursor_name) as cursor,
        ):
            cursor.execute(query)
            while rows := cursor.fetchmany(_READ_CHUNK):
                for text, nulls, address in rows:
                    row = decoder.decode(text, nulls)
                    if place:
                        row[place] = address
                    yield row
