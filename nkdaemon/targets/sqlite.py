"""The SQLite restore target (the standard library's sqlite3): one IMMEDIATE transaction,
foreign keys deferred and checked before commit.

Rows are addressed by their primary-key values, or by rowid in a table without one. The
only module that touches sqlite3 for restore; its errors leave as RestoreTargetError.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from nkdaemon.core.keys import TableSpec
from nkdaemon.targets.ddl import sqlite_create_table, sqlite_indexes
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
    quote,
)
from nkdaemon.targets.values import sqlite_param, sqlite_reader

# Keys per lookup query (SQLite limits the parameters of one statement).
_FIND_CHUNK = 500


@contextlib.contextmanager
def _sqlite_errors(action: str) -> Iterator[None]:
    """sqlite3's errors, as the target's."""
    try:
        yield
    except sqlite3.Error as exc:
        raise RestoreTargetError(f"the target refused {action}: {exc}") from None


class SqliteTarget:
    """An SQLite database file restored into, in one transaction."""

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

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to gather: SQLite runs each statement in this process as it comes."""
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
        """Refuse now what the deferred foreign keys would refuse at commit."""
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
        """The table as the target has it, or None if the target has no such table."""
        with _sqlite_errors(f"reading the definition of {spec.name}"):
            info = self.conn.execute(f"PRAGMA table_info({quote(spec.name)})").fetchall()
            if not info:
                return None
            pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            if (
                pk
                and spec.full_row_identity
                and not spec.referenced
                and _nulls_allowed(self.conn, spec.name, info, pk)
            ):
                # rows captured whole may carry a NULL key, which finds nothing: address
                # them by rowid (nothing refers to them by their key)
                pk = ()
            table = TargetTable(
                spec=spec,
                columns=[r[1] for r in info],
                primary_key=pk or ("rowid",),  # a table without a primary key: its rowid
                types={r[1]: r[2] for r in info},
            )
            table.generated = len(pk) == 1 and table.types[pk[0]].upper() == "INTEGER"
            draw_uuids(table)
            table.rows_before = int(
                self.conn.execute(f"SELECT count(*) FROM {quote(spec.name)}").fetchone()[0]
            )
            return table

    def create(self, specs: Sequence[TableSpec]) -> list[str]:
        """Create tables as the backup defines them; returns what could not be reproduced."""
        notes: list[str] = []
        with _sqlite_errors("creating tables"):
            for spec in specs:
                self.conn.execute(sqlite_create_table(spec, self.source_dialect, notes))
                for statement in sqlite_indexes(spec, notes):
                    self.conn.execute(statement)
        return notes

    def find(
        self, table: TargetTable, columns: Sequence[str], keys: Sequence[Address]
    ) -> dict[Address, Address]:
        """Addresses of the rows whose ``columns`` hold each of ``keys``."""
        found: dict[Address, Address] = {}
        width = len(table.primary_key)
        cols = ", ".join(map(quote, columns))
        per_row = "(" + ", ".join("?" * len(columns)) + ")"
        with _sqlite_errors(f"looking up rows of {table.spec.name}"):
            for start in range(0, len(keys), _FIND_CHUNK):
                chunk = keys[start : start + _FIND_CHUNK]
                values = ", ".join([per_row] * len(chunk))
                query = (
                    f"SELECT {', '.join(map(quote, table.primary_key))}, {cols} FROM "
                    f"{quote(table.spec.name)} WHERE ({cols}) IN (VALUES {values})"
                )
                params = [v for key in chunk for v in key]
                for row in self.conn.execute(query, params):
                    found[tuple(row[width:])] = tuple(row[:width])
        return found

    def find_one_equal(
        self, table: TargetTable, columns: Sequence[str], values: Params
    ) -> Address | None:
        """The address of one row whose ``columns`` equal ``values``, NULL equal to NULL."""
        equal = " AND ".join(f"{quote(c)} IS ?" for c in columns) or "1"
        query = (
            f"SELECT {', '.join(map(quote, table.primary_key))} FROM "
            f"{quote(table.spec.name)} WHERE {equal} LIMIT 1"
        )
        with _sqlite_errors(f"looking up a row of {table.spec.name}"):
            row = self.conn.execute(query, list(values)).fetchone()
        return tuple(row) if row else None

    def converter(self, table: TargetTable, column: str) -> Converter:
        """The function turning a canonical value of this column into what SQLite stores."""
        logical = logical_type(table, column)
        source = self.source_dialect
        return lambda value: sqlite_param(logical, value, source_dialect=source)

    def param(self, table: TargetTable, column: str, value: Any) -> Any:
        """What SQLite stores for a canonical value of ``column``."""
        return sqlite_param(logical_type(table, column), value, source_dialect=self.source_dialect)

    def allocate(self, table: TargetTable, count: int) -> list[NewId]:
        """``count`` new ids: past the largest id ever used (rows or sqlite_sequence), or
        random UUIDs; drawn here, so they hold for this transaction only."""
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
                f"SELECT coalesce(max({quote(table.primary_key[0])}), 0) "
                f"FROM {quote(table.spec.name)}"
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

    def insert(self, table: TargetTable, columns: Sequence[str], rows: Iterable[Params]) -> None:
        """Insert rows, a list or a stream."""
        if isinstance(rows, Sequence) and not rows:
            return
        statement = (
            f"INSERT INTO {quote(table.spec.name)} ({', '.join(map(quote, columns))}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        with _sqlite_errors(f"rows for {table.spec.name}"):
            self.conn.executemany(statement, rows)

    def update(self, table: TargetTable, columns: Sequence[str], rows: Sequence[Params]) -> None:
        """``rows`` hold the new values of ``columns`` followed by the row's address."""
        if not rows:
            return
        statement = (
            f"UPDATE {quote(table.spec.name)} "
            f"SET {', '.join(f'{quote(c)} = ?' for c in columns)} "
            f"WHERE {' AND '.join(f'{quote(c)} = ?' for c in table.primary_key)}"
        )
        with _sqlite_errors(f"updates of {table.spec.name}"):
            self.conn.executemany(statement, rows)

    def delete(self, table: TargetTable, addresses: Sequence[Address]) -> None:
        """Delete the rows at ``addresses``."""
        if not addresses:
            return
        where = " AND ".join(f"{quote(c)} = ?" for c in table.primary_key)
        statement = f"DELETE FROM {quote(table.spec.name)} WHERE {where}"
        with _sqlite_errors(f"deletes from {table.spec.name}"):
            self.conn.executemany(statement, [list(a) for a in addresses])

    def addresses(self, table: TargetTable) -> Iterator[Address]:
        """The address of every row of the table."""
        cols = ", ".join(map(quote, table.primary_key))
        with _sqlite_errors(f"reading {table.spec.name}"):
            rows = self.conn.execute(f"SELECT {cols} FROM {quote(table.spec.name)}").fetchall()
        return iter([tuple(r) for r in rows])

    def delete_all(self, table: TargetTable) -> None:
        with _sqlite_errors(f"emptying {table.spec.name}"):
            self.conn.execute(f"DELETE FROM {quote(table.spec.name)}")

    def advance(self, table: TargetTable) -> None:
        """Move an AUTOINCREMENT table's sqlite_sequence past every id in the table."""
        if not self._has_sequence():
            return
        with _sqlite_errors(f"advancing the sequence of {table.spec.name}"):
            row = (
                self.conn.execute(
                    f"SELECT max({quote(table.primary_key[0])}) FROM {quote(table.spec.name)}"
                ).fetchone()
                if table.generated
                else None
            )
            if row and row[0] is not None:
                self.conn.execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                    (row[0], table.spec.name),
                )

    def read(self, table: TargetTable) -> Iterator[CanonicalRow]:
        """Every row as canonical values (the columns of the definition and the address)."""
        names = [c.name for c in table.spec.columns if c.name in table.columns]
        readers = [
            sqlite_reader(table.spec.column(n).logical_type, source_dialect=self.source_dialect)
            for n in names
        ]
        place = pseudo_address(table)  # rowid: the address of a row without a primary key
        selected = [*map(quote, names), place or "NULL"]
        with _sqlite_errors(f"reading {table.spec.name} back"):
            cursor = self.conn.execute(
                f"SELECT {', '.join(selected)} FROM {quote(table.spec.name)}"
            )
            for *values, address in cursor:
                row = {n: r(v) for n, r, v in zip(names, readers, values, strict=True)}
                if place:
                    row[place] = address
                yield row


def _nulls_allowed(
    conn: sqlite3.Connection, name: str, info: list[Any], pk: tuple[str, ...]
) -> bool:
    """SQLite lets a PRIMARY KEY column hold NULL unless it is the rowid (a single INTEGER
    key), declared NOT NULL, or the table is WITHOUT ROWID (an old SQLite quirk it keeps)."""
    types = {r[1]: str(r[2]).upper() for r in info}
    if len(pk) == 1 and types[pk[0]] == "INTEGER":
        return False
    if all(r[3] for r in info if r[1] in pk):
        return False
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return not (row and "WITHOUT ROWID" in str(row[0]).upper())
