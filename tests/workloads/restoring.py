"""Restore targets for generated cases: running a restore under a timeout, fresh databases,
pre-seeded and drifted targets, and reading any of them back by natural key.

A restore runs the real command (``nkdaemon restore ...`` through click) in a forked child
process: a restore that hangs is killed when its time is up and fails its example, instead
of stalling the suite with a thread that cannot be stopped.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback as tb
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from nkdaemon.core.replay import natural_state
from nkdaemon.sources.factory import make_engine, open_source
from nkdaemon.sources.registry import Registry, reflect_registry
from tests import pg
from tests.helpers import engine_for, run_cli, settings_for
from tests.workloads.schema import ForeignKey, Schema, Table, quote
from tests.workloads.workload import LOCATOR, Application, Row, read_all

Content = dict[str, dict[str, Any]]
Raw = dict[str, list[Row]]


@dataclass(frozen=True, kw_only=True)
class RestoreRun:
    args: tuple[str, ...]
    exit_code: int | None  # None: killed at the timeout
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and "committed" in self.output
            and "exist only in the target" not in self.output
        )


def _child(pipe: Connection, config: str, args: tuple[str, ...]) -> None:
    try:
        result = run_cli(Path(config), *args)
        pipe.send((result.exit_code, result.output))
    except BaseException:  # reported to the parent, which fails the example
        pipe.send((-1, tb.format_exc()))


def restore(
    config: Path, args: tuple[str, ...], *, timeout: float, traceback: bool = False
) -> RestoreRun:
    """``nkdaemon --config CONFIG restore ARGS`` in a forked child, killed after ``timeout``;
    ``traceback``: with -vv, so that an unexpected error shows where it came from."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    command = ("-vv", "restore", *args) if traceback else ("restore", *args)
    child = context.Process(target=_child, args=(sender, str(config), command))
    started = time.monotonic()
    child.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            code, output = receiver.recv()
            child.join(10)
            return RestoreRun(
                args=args, exit_code=code, output=output, seconds=time.monotonic() - started
            )
        return RestoreRun(args=args, exit_code=None, output="", seconds=time.monotonic() - started)
    except EOFError:  # the child died without a word
        return RestoreRun(
            args=args,
            exit_code=-1,
            output=f"restore process died (exit {child.exitcode})",
            seconds=time.monotonic() - started,
        )
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()


# --- databases ----------------------------------------------------------------------------


class Pool:
    """PostgreSQL databases kept for reuse across examples: emptied (capture schema and all)
    when taken again, which costs far less than CREATE and DROP DATABASE. ``close`` drops
    them all."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.idle: list[str] = []
        self.every: list[str] = []

    def take(self) -> str:
        if not self.idle:
            url = pg.create_database(self.server)
            self.every.append(url)
            return url
        url = self.idle.pop()
        _empty(url)
        return url

    def give_back(self, urls: list[str]) -> None:
        self.idle.extend(urls)

    def close(self) -> None:
        for url in self.every:
            pg.drop_database(self.server, url)
        self.every.clear()
        self.idle.clear()


def _empty(url: str) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS nkdaemon CASCADE")
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


@dataclass
class Databases:
    """Fresh databases of one dialect for one case; ``release`` hands them back."""

    dialect: str
    directory: Path
    pool: Pool | None
    taken: list[str] = field(default_factory=list)

    def new(self, label: str) -> str:
        if self.dialect == "postgresql":
            assert self.pool is not None, "PostgreSQL cases need a Pool"
            url = self.pool.take()
        else:
            url = f"sqlite:///{self.directory / f'{label}-{len(self.taken)}.db'}"
        self.taken.append(url)
        return url

    def release(self) -> None:
        if self.pool is not None:
            self.pool.give_back(self.taken)
        self.taken = []


def execute(url: str, statements: list[str]) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def raw_rows(url: str, schema: Schema) -> Raw:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return read_all(conn, schema)
    finally:
        engine.dispose()


def natural(url: str, registry: Registry, directory: Path) -> Content:
    """A database's content by natural key, read with the source's table specifications."""
    directory.mkdir(parents=True, exist_ok=True)
    source = open_source(settings_for(directory, url).source)
    try:
        rows = {number: source.read_rows(spec) for number, spec in registry.tables.items()}
    finally:
        source.close()
    return natural_state(registry.tables, rows).comparable()


def reflected(url: str, schema: Schema, directory: Path) -> Registry:
    """The table specifications of a database whose schema nkdaemon made (--create-schema):
    reflected from it, with the case's [tables] settings, as the source's were."""
    directory.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings_for(directory, url, schema.config()).source)
    try:
        return reflect_registry(engine, settings_for(directory, url, schema.config()))
    finally:
        engine.dispose()


# --- (b) a pre-seeded target ----------------------------------------------------------------


def seed(
    url: str,
    schema: Schema,
    rows: Raw,
    rng: random.Random,
    *,
    deferred: bool = True,
    renamed: Collection[tuple[str, tuple[Any, ...]]] = (),
) -> int:
    """Some of the rows of ``rows`` (the source at the instant) into ``url``, which holds
    the application's schema: in reverse order, with other generated ids, and now and then
    with an older payload or a reference not set yet, which the restore must put right.
    ``deferred``: seed rows of tables that refer to themselves or sit in a reference cycle
    too (the restore loads their references after the rows). ``renamed``: rows (by table
    and primary key) not to seed, nor any whose key refers to them. Returns how many rows
    were seeded."""
    skip = set() if deferred else deferring_tables(schema)
    chosen = {
        t.name: [
            r for r in rows[t.name] if t.name not in skip and (t.name, _pk(t, r)) not in renamed
        ]
        for t in schema.tables
    }
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            return _Seeder(schema, conn, rng).run(chosen)
    finally:
        engine.dispose()


def _pk(table: Table, row: Row) -> tuple[Any, ...]:
    return tuple(row[c] for c in table.primary_key)


def deferring_tables(schema: Schema) -> set[str]:
    """Tables whose references a restore loads after the rows: ones that refer to
    themselves or sit in a cycle."""
    in_cycle = {n for c in schema.cycles() if len(c) > 1 for n in c}
    referring = {t.name for t in schema.tables for fk in t.foreign_keys if fk.ref_table == t.name}
    return in_cycle | referring


class _Seeder:
    def __init__(self, schema: Schema, conn: sa.Connection, rng: random.Random) -> None:
        self.schema, self.conn, self.rng = schema, conn, rng
        self.ids: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        self.later: list[tuple[Table, tuple[Any, ...], ForeignKey, Row]] = []
        self.count = 0

    def run(self, rows: Raw) -> int:
        self._move_sequences()
        for table in self.schema.tables:
            self.ids[table.name] = {}
            chosen = [r for r in rows[table.name] if self.rng.random() < 0.6]
            for n, row in enumerate(reversed(chosen)):
                self._insert(table, row, n)
        for table, new_pk, fk_name, row in self.later:
            self._connect_later(table, new_pk, fk_name, row)
        return self.count

    def _move_sequences(self) -> None:
        if self.schema.dialect != "postgresql":
            return
        for table in self.schema.tables:
            if table.id_kind in ("serial", "bigserial", "identity", "identity_always"):
                self.conn.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence(:t, :c), :n)"),
                    {"t": quote(table.name), "c": table.primary_key[0], "n": 90 + self.count},
                )

    def _insert(self, table: Table, row: Row, n: int) -> None:
        values = {c.name: row[c.name] for c in table.columns if c.name not in table.surrogate}
        if self.schema.dialect == "sqlite" and table.id_kind in ("serial", "autoincrement"):
            values[table.primary_key[0]] = 500 + n  # SQLite takes the id it is given
        pending = []
        for fk in table.foreign_keys:
            old = tuple(row[c] for c in fk.columns)
            new = self.ids.get(fk.ref_table, {}).get(old)
            # a row captured whole (keyless) is only the same row with every value the
            # same: one with a reference not set yet would be another row of the target's
            exact = table.keyless
            if new is not None and (not fk.nullable or exact or self.rng.random() < 0.8):
                values.update(zip(fk.columns, new, strict=True))
                continue
            if not fk.nullable or (exact and None not in old):
                return  # the row it needs is not seeded
            values.update(dict.fromkeys(fk.columns))
            if new is None and None not in old:
                pending.append(fk)  # perhaps seeded later (a cycle, or itself)
        if not table.keyless and table.payload and self.rng.random() < 0.3:
            values[table.payload[0]] = None if row[table.payload[0]] is not None else 0
        new_pk = self._write(table, values)
        self.count += 1
        if table.primary_key:
            self.ids[table.name][tuple(row[c] for c in table.primary_key)] = new_pk
            self.later += [(table, new_pk, fk, row) for fk in pending]

    def _write(self, table: Table, values: Row) -> tuple[Any, ...]:
        names = list(values)
        columns = ", ".join(quote(c) for c in names)
        marks = ", ".join(f":v{i}" for i in range(len(names)))
        sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({marks})"
        if not names:
            sql = f"INSERT INTO {quote(table.name)} DEFAULT VALUES"
        if table.primary_key:
            sql += f" RETURNING {', '.join(quote(c) for c in table.primary_key)}"
        result = self.conn.execute(sa.text(sql), {f"v{i}": values[c] for i, c in enumerate(names)})
        return tuple(result.one()) if table.primary_key else ()

    def _connect_later(
        self, table: Table, new_pk: tuple[Any, ...], fk: ForeignKey, row: Row
    ) -> None:
        target = self.ids.get(fk.ref_table, {}).get(tuple(row[c] for c in fk.columns))
        if target is None or self.rng.random() < 0.2:
            return
        sets = ", ".join(f"{quote(c)} = :s{i}" for i, c in enumerate(fk.columns))
        where = " AND ".join(f"{quote(c)} = :w{i}" for i, c in enumerate(table.primary_key))
        params = {f"s{i}": v for i, v in enumerate(target)}
        params.update({f"w{i}": v for i, v in enumerate(new_pk)})
        self.conn.execute(sa.text(f"UPDATE {quote(table.name)} SET {sets} WHERE {where}"), params)


# --- (d) a target where one table has drifted -------------------------------------------------


def drift(url: str, schema: Schema, table: Table, rng: random.Random, *, empty: bool) -> int:
    """Change ``table`` in a target that holds the instant's state: other payloads,
    references unset, rows that nothing refers to deleted; or (``empty``) delete all its
    rows. Returns how many rows changed."""
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            if empty:
                return conn.exec_driver_sql(f"DELETE FROM {quote(table.name)}").rowcount
            app = Application(schema=schema, conn=conn)
            referenced = _referenced(app, table)
            changed = 0
            for row in app.rows(table):
                changed += _drift_row(app, table, row, referenced, rng)
            return changed
    finally:
        engine.dispose()


def unreferenced_tables(url: str, schema: Schema) -> set[str]:
    """Tables none of whose rows another table's rows refer to (they can be emptied)."""
    rows = raw_rows(url, schema)
    used = {
        fk.ref_table
        for t in schema.tables
        for fk in t.foreign_keys
        if fk.ref_table != t.name and any(r[fk.columns[0]] is not None for r in rows[t.name])
    }
    return {t.name for t in schema.tables} - used


def _referenced(app: Application, table: Table) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for other in app.schema.tables:
        for fk in other.foreign_keys:
            if fk.ref_table == table.name:
                for row in app.rows(other):
                    out.add(tuple(row[c] for c in fk.columns))
    return out


def _drift_row(
    app: Application, table: Table, row: Row, referenced: set[tuple[Any, ...]], rng: random.Random
) -> int:
    choice = rng.random()
    pk = tuple(row[c] for c in table.primary_key) if table.primary_key else None
    if choice < 0.25 and (pk is None or pk not in referenced):
        app.delete_row(table, row)
        return 1
    if table.keyless:
        return 0
    if choice < 0.5 and table.payload:
        column = table.payload[0]
        app.update_row(
            table, row, {column: "drifted" if table.column(column).kind == "text" else -999}
        )
        return 1
    nullable = [fk for fk in table.foreign_keys if fk.nullable and row[fk.columns[0]] is not None]
    if choice < 0.75 and nullable:
        app.update_row(table, row, dict.fromkeys(rng.choice(nullable).columns))
        return 1
    return 0


def without_locator(rows: Mapping[str, list[Row]]) -> dict[str, list[Row]]:
    return {t: [{k: v for k, v in r.items() if k != LOCATOR} for r in rs] for t, rs in rows.items()}
