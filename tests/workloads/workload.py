"""Generated workloads as plain data, and the application that plays one on a live source.

A workload is rows seeded before capture is installed, then steps: transactions of a few
operations (committed or rolled back) and markers (record an instant, take a snapshot,
drain). An operation names its table and which rows it works on by small numbers
(``pick``, ``other``) that the application maps onto the rows it reads *at that moment*,
ordered by columns no database generates; so the same workload does the same thing in
every run, whatever ids the database hands out, and hypothesis can shrink it.

Each operation runs under a savepoint: one the schema refuses (a foreign key still
referenced, a NOT NULL reference with nothing to point at) is rolled back to it and the
transaction goes on, as an application that catches the error would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tests.workloads.schema import ForeignKey, Schema, Table, quote

TEXTS = ("plain", "ünïcødé ✓", "it's", "", "two words", "名前", "tab\there")
KEY_PREFIXES = ("k", "é", "K ", "名", "o'")
LOCATOR = "_loc"


@dataclass(frozen=True, kw_only=True)
class Op:
    kind: str  # insert | update | rename | repoint | delete | delete_reinsert
    table: int
    pick: int = 0
    other: int = 0


@dataclass(frozen=True, kw_only=True)
class Tx:
    ops: tuple[Op, ...]
    commit: bool = True


@dataclass(frozen=True, kw_only=True)
class Marker:
    kind: str  # instant | snapshot | drain


Step = Tx | Marker


@dataclass(frozen=True, kw_only=True)
class Workload:
    seed_rows: int
    steps: tuple[Step, ...]


Row = dict[str, Any]


@dataclass
class Application:
    """Plays a workload's transactions on one connection of the source."""

    schema: Schema
    conn: sa.Connection
    counter: int = 0
    trace: list[str] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)
    # rows whose natural key changed (by primary key, before and after): a target seeded
    # with them holds keys the log reaches only later (see restoring.seed)
    renamed: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)

    @property
    def dialect(self) -> str:
        return self.schema.dialect

    def seed(self, rounds: int) -> None:
        """``rounds`` rows into every table, parents first, each round one transaction."""
        for n in range(rounds):
            self.transaction(
                Tx(ops=tuple(Op(kind="insert", table=i, pick=n, other=n) for i in self._indexes()))
            )

    def _indexes(self) -> range:
        return range(len(self.schema.tables))

    def transaction(self, tx: Tx) -> None:
        self.trace.append("BEGIN")
        handle = self.conn.begin()
        try:
            for op in tx.ops:
                self._guarded(op)
        except BaseException:
            handle.rollback()
            raise
        if tx.commit:
            handle.commit()
        else:
            handle.rollback()
        self.trace.append("COMMIT" if tx.commit else "ROLLBACK")
        self._count("committed" if tx.commit else "rolled back")

    def _count(self, what: str) -> None:
        self.done[what] = self.done.get(what, 0) + 1

    def _guarded(self, op: Op) -> None:
        table = self.schema.tables[op.table % len(self.schema.tables)]
        mark = len(self.trace)
        try:
            with self.conn.begin_nested():
                did = getattr(self, f"_{op.kind}")(table, op)
        except sa.exc.IntegrityError as exc:
            self.trace[mark:] = [f"-- {op.kind} {table.name}: refused ({_first_line(exc)})"]
            self._count(f"refused {op.kind}")
            return
        self._count(f"{op.kind}" if did else f"no-op {op.kind}")

    # --- reading ---------------------------------------------------------------------------

    def rows(self, table: Table) -> list[Row]:
        """The table's rows now, in an order no generated value decides."""
        columns = [quote(c.name) for c in table.columns]
        if not table.primary_key:
            locator = "ctid::text" if self.dialect == "postgresql" else "rowid"
            columns.append(f"{locator} AS {LOCATOR}")
        order = [quote(c) for c in table.order_by] + [quote(c.name) for c in table.columns]
        query = f"SELECT {', '.join(columns)} FROM {quote(table.name)} ORDER BY {', '.join(order)}"
        return [dict(r._mapping) for r in self.conn.exec_driver_sql(query)]

    def _row(self, table: Table, op: Op) -> Row | None:
        rows = self.rows(table)
        return rows[op.pick % len(rows)] if rows else None

    # --- writing ---------------------------------------------------------------------------

    def _execute(self, sql: str, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
        self.trace.append(f"{sql}  -- {dict(params)}" if params else sql)
        return self.conn.execute(sa.text(sql), dict(params))

    def _where(self, table: Table, row: Row) -> tuple[str, dict[str, Any]]:
        if not table.primary_key:
            locator = "ctid = CAST(:w0 AS tid)" if self.dialect == "postgresql" else "rowid = :w0"
            return locator, {"w0": row[LOCATOR]}
        params = {f"w{i}": row[c] for i, c in enumerate(table.primary_key)}
        text = " AND ".join(f"{quote(c)} = :w{i}" for i, c in enumerate(table.primary_key))
        return text, params

    def insert_row(self, table: Table, values: Row) -> None:
        names = [c for c in values if c not in table.surrogate]
        params = {f"v{i}": values[c] for i, c in enumerate(names)}
        if names:
            columns = ", ".join(quote(c) for c in names)
            marks = ", ".join(f":v{i}" for i in range(len(names)))
            sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({marks})"
        else:
            sql = f"INSERT INTO {quote(table.name)} DEFAULT VALUES"
        self._execute(sql, params)

    def update_row(self, table: Table, row: Row, values: Row) -> None:
        where, params = self._where(table, row)
        sets = []
        for i, (column, value) in enumerate(values.items()):
            sets.append(f"{quote(column)} = :s{i}")
            params[f"s{i}"] = value
        self._execute(f"UPDATE {quote(table.name)} SET {', '.join(sets)} WHERE {where}", params)

    def delete_row(self, table: Table, row: Row) -> None:
        where, params = self._where(table, row)
        self._execute(f"DELETE FROM {quote(table.name)} WHERE {where}", params)

    # --- values ----------------------------------------------------------------------------

    def fresh(self, kind: str, other: int) -> Any:
        self.counter += 1
        if kind == "int":
            return self.counter
        return f"{KEY_PREFIXES[other % len(KEY_PREFIXES)]}{self.counter}"

    def payload(self, kind: str, n: int) -> Any:
        if n % 5 == 4:
            return None
        return (n * 37) % 101 - 50 if kind == "int" else TEXTS[n % len(TEXTS)]

    def _reference(self, table: Table, fk: ForeignKey, choice: int) -> tuple[bool, Row]:
        """(possible, values of the foreign key's columns) for a row to point at."""
        nulls = dict.fromkeys(fk.columns)
        if fk.nullable and choice % 3 == 0:
            return True, nulls
        targets = self.rows(self.schema.table(fk.ref_table))
        if not targets:
            return fk.nullable, nulls
        target = targets[choice % len(targets)]
        return True, {c: target[r] for c, r in zip(fk.columns, fk.ref_columns, strict=True)}

    def insert_new(self, table: Table) -> bool:
        """One row with fresh key values, referring to existing rows (False: there were
        none to refer to)."""
        return self._insert(table, Op(kind="insert", table=0, pick=1, other=1))

    # --- operations (each says whether it did something) ----------------------------------

    def _insert(self, table: Table, op: Op) -> bool:
        if table.keyless and op.pick % 3 == 1:
            row = self._row(table, op)  # the same row again: a multiset
            if row is not None:
                self.insert_row(table, {c.name: row[c.name] for c in table.columns})
                return True
        values: Row = {}
        for n, fk in enumerate(table.foreign_keys):
            possible, refs = self._reference(table, fk, op.other + 7 * n)
            if not possible:
                return False
            values.update(refs)
        for column in table.plain_key:
            values[column] = self.fresh(table.column(column).kind, op.other)
        for n, column in enumerate(table.payload):
            values[column] = self.payload(table.column(column).kind, op.other + op.pick + n)
        self.insert_row(table, values)
        return True

    def _update(self, table: Table, op: Op) -> bool:
        row = self._row(table, op)
        if row is None:
            return False
        columns = table.payload or table.plain_key
        values = {
            c: self.payload(table.column(c).kind, op.other + n + self.counter)
            if c in table.payload
            else row[c]
            for n, c in enumerate(columns)
        }
        self.update_row(table, row, values)
        return True

    def _rename(self, table: Table, op: Op) -> bool:
        row = self._row(table, op)
        if row is None or not table.plain_key:
            return False
        values = {c: self.fresh(table.column(c).kind, op.other) for c in table.plain_key}
        self.update_row(table, row, values)
        self._mark_renamed(table, row, values)
        return True

    def _mark_renamed(self, table: Table, row: Row, values: Row) -> None:
        after = {**row, **values}
        for version in (row, after):
            self.renamed.add((table.name, tuple(version[c] for c in table.primary_key)))

    def _repoint(self, table: Table, op: Op) -> bool:
        row = self._row(table, op)
        if row is None or not table.foreign_keys:
            return False
        fk = table.foreign_keys[op.other % len(table.foreign_keys)]
        possible, values = self._reference(table, fk, op.other // len(table.foreign_keys) + 1)
        if not possible:
            return False
        self.update_row(table, row, values)
        if set(fk.columns) & set(table.key):
            self._mark_renamed(table, row, values)
        return True

    def _delete(self, table: Table, op: Op) -> bool:
        row = self._row(table, op)
        if row is None:
            return False
        self.delete_row(table, row)
        return True

    def _delete_reinsert(self, table: Table, op: Op) -> bool:
        row = self._row(table, op)
        if row is None:
            return False
        self.delete_row(table, row)
        values = {c.name: row[c.name] for c in table.columns}
        for fk in table.foreign_keys:  # a row that pointed at itself now points nowhere
            if fk.ref_table == table.name and fk.nullable and _points_at(row, fk, row):
                values.update(dict.fromkeys(fk.columns))
        self.insert_row(table, values)
        return True


def _points_at(row: Row, fk: ForeignKey, target: Row) -> bool:
    return all(row[c] == target[r] for c, r in zip(fk.columns, fk.ref_columns, strict=True))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_all(conn: sa.Connection, schema: Schema) -> dict[str, list[Row]]:
    """Every table's rows, as the application reads them (for seeding other targets)."""
    app = Application(schema=schema, conn=conn)
    return {t.name: app.rows(t) for t in schema.tables}


def describe(steps: Sequence[Step]) -> Iterator[str]:
    for step in steps:
        if isinstance(step, Marker):
            yield f"[{step.kind}]"
        else:
            ops = ", ".join(f"{o.kind} t{o.table} {o.pick}/{o.other}" for o in step.ops)
            yield f"tx({ops}){'' if step.commit else ' ROLLBACK'}"
