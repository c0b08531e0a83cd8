"""The SQLite capture adapter (stdlib sqlite3): install, fence, read, delete.

SQLite gives a trigger no way to tell one transaction from the next, so each drain pass
takes everything committed since the last one as one log transaction: a union of whole
source transactions (never a part of one), stamped with the time of its last change. The
daemon wakes on every change to the database files, so under normal running a pass holds
one source transaction. See docs/FORMAT.md, "SQLite transaction grouping".
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from nkdaemon.core.errors import NotInstalledError, SourceError, SourceUnavailable
from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, changed_during_install, not_ours
from nkdaemon.core.ports import QueuedChange, SchemaDrift, SnapshotConsumer, SnapshotPoint
from nkdaemon.core.values import sqlite_decoder
from nkdaemon.sources.migrations import pending_migrations

WINDOW = 5000


def quote(identifier: str) -> str:
    """An SQLite identifier in double quotes, embedded quotes doubled."""
    return '"' + identifier.replace('"', '""') + '"'


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text or "unable to open" in text:
            raise SourceUnavailable(f"SQLite unavailable while {action}: {text}") from None
        raise SourceError(f"SQLite error while {action}: {text}") from None
    except sqlite3.Error as exc:
        raise SourceError(f"SQLite error while {action}: {exc}") from None


class SqliteSource:
    """CaptureSource for SQLite."""

    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        database = make_url(url).database
        assert database
        self.path = Path(database)
        self._conn: sqlite3.Connection | None = None
        self._bound = False
        self._installation: str | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise SourceError(
                    f"the SQLite database {self.path} does not exist",
                    hint="check [source] url; nkdaemon never creates the source database",
                )
            with translate_errors("opening the database"):
                self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _transaction(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        with translate_errors(action):
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _has_table(self, conn: sqlite3.Connection, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    # --- installation ----------------------------------------------------------------

    def installation_id(self) -> str | None:
        conn = self._connection()
        with translate_errors("reading the capture installation"):
            return self._installation_id(conn)

    def _installation_id(self, conn: sqlite3.Connection) -> str | None:
        if not self._has_table(conn, "_nkd_meta"):
            return None
        row = conn.execute("SELECT value FROM _nkd_meta WHERE name = 'installation_id'").fetchone()
        return None if row is None else str(row[0])

    def owner(self) -> CaptureOwner | None:
        conn = self._connection()
        with translate_errors("reading the capture owner"):
            return self._owner(conn)

    def _owner(self, conn: sqlite3.Connection) -> CaptureOwner | None:
        installation = self._installation_id(conn)
        if installation is None:
            return None
        row = None
        if self._has_table(conn, "_nkd_owner"):  # schema version 2 on
            row = conn.execute(
                "SELECT repository, host, since FROM _nkd_owner WHERE installation_id = ?",
                (installation,),
            ).fetchone()
        if row is None:
            return CaptureOwner(installation=installation, repository=None, host=None, since=None)
        return CaptureOwner(
            installation=installation,
            repository=row[0],
            host=row[1],
            since=datetime.fromisoformat(row[2]),
        )

    def installed_tables(self) -> dict[str, int]:
        conn = self._connection()
        with translate_errors("reading captured tables"):
            if not self._has_table(conn, "_nkd_tables"):
                return {}
            return {
                str(name): int(number)
                for name, number in conn.execute("SELECT table_name, number FROM _nkd_tables")
            }

    def install(
        self, tables: Mapping[int, TableSpec], seed: SnapshotConsumer, claim: CaptureClaim
    ) -> tuple[str, int]:
        with self._transaction("installing capture", write=True) as conn:
            self._migrate(conn)
            installation = self._claim(conn, claim)
            known = {
                str(name): (int(number), orjson.loads(columns))
                for name, number, columns in conn.execute(
                    "SELECT table_name, number, columns FROM _nkd_tables"
                )
            }
            wanted = {spec.name for spec in tables.values()}
            for name in set(known) - wanted:
                self._drop_capture(conn, known[name][0])
                conn.execute("DELETE FROM _nkd_tables WHERE table_name = ?", (name,))
            for spec in tables.values():
                columns = [c.name for c in spec.columns]
                previous = known.get(spec.name)
                if previous is None or previous[1] != columns or previous[0] != spec.number:
                    if previous is not None:
                        self._refuse_if_pending(conn, previous[0], spec.name)
                        self._drop_capture(conn, previous[0])
                    self._create_capture(conn, spec, columns)
                    conn.execute(
                        "INSERT INTO _nkd_tables (number, table_name, columns) VALUES (?, ?, ?) "
                        "ON CONFLICT (table_name) DO UPDATE SET number = excluded.number, "
                        "columns = excluded.columns",
                        (spec.number, spec.name, orjson.dumps(columns).decode()),
                    )
            point = self._point(conn)
            seed(point, lambda spec: self._table_rows(conn, spec))
        return installation, point.position

    def _migrate(self, conn: sqlite3.Connection) -> None:
        installed = 0
        if self._has_table(conn, "_nkd_schema_version"):
            installed = int(
                conn.execute("SELECT max(version) FROM _nkd_schema_version").fetchone()[0] or 0
            )
        for _version, text in pending_migrations("sqlite", installed):
            for statement in _statements(text):
                conn.execute(statement)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _nkd_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )

    def _claim(self, conn: sqlite3.Connection, claim: CaptureClaim) -> str:
        """Record the claiming repository as the owner; inside the install's write lock."""
        current = self._installation_id(conn)
        if current != claim.seen:
            raise changed_during_install(self._owner(conn))
        installation = uuid.uuid4().hex if claim.new or current is None else current
        conn.execute(
            "INSERT INTO _nkd_meta (name, value) VALUES ('installation_id', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (installation,),
        )
        conn.execute(
            "INSERT INTO _nkd_owner (one, installation_id, repository, host, since) "
            "VALUES (1, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
            "ON CONFLICT (one) DO UPDATE SET "
            "since = CASE WHEN installation_id = excluded.installation_id THEN since "
            "ELSE excluded.since END, installation_id = excluded.installation_id, "
            "repository = excluded.repository, host = excluded.host",
            (installation, claim.repository, claim.host),
        )
        return installation

    def _refuse_if_pending(self, conn: sqlite3.Connection, number: int, name: str) -> None:
        row = conn.execute("SELECT count(*) FROM _nkd_changes WHERE tbl = ?", (number,)).fetchone()
        if row[0]:
            raise SourceError(
                f"table {name!r} changed shape while {row[0]} of its captured changes wait in "
                "the queue",
                hint="run `nkdaemon drain` first, then `nkdaemon install` again",
            )

    def _create_capture(
        self, conn: sqlite3.Connection, spec: TableSpec, columns: list[str]
    ) -> None:
        n = spec.number
        shadow = quote(f"_nkd_rows_{n}")
        slots = [f"o{i}" for i in range(len(columns))] + [f"n{i}" for i in range(len(columns))]
        conn.execute(f"CREATE TABLE {shadow} (seq INTEGER PRIMARY KEY, {', '.join(slots)})")
        table = quote(spec.name)
        old_slots = ", ".join(f"o{i}" for i in range(len(columns)))
        new_slots = ", ".join(f"n{i}" for i in range(len(columns)))
        old_values = ", ".join(f"OLD.{quote(c)}" for c in columns)
        new_values = ", ".join(f"NEW.{quote(c)}" for c in columns)
        bodies = {
            "I": (new_slots, new_values),
            "U": (f"{old_slots}, {new_slots}", f"{old_values}, {new_values}"),
            "D": (old_slots, old_values),
        }
        events = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
        for op, (slot_list, values) in bodies.items():
            conn.execute(
                f"CREATE TRIGGER {quote(f'_nkd_{n}_{op}')} AFTER {events[op]} ON {table} BEGIN "
                f"INSERT INTO _nkd_changes (tbl, op) VALUES ({n}, '{op}'); "
                f"INSERT INTO {shadow} (seq, {slot_list}) VALUES (last_insert_rowid(), {values}); "
                "END"
            )

    def _drop_capture(self, conn: sqlite3.Connection, number: int) -> None:
        for op in ("I", "U", "D"):
            conn.execute(f"DROP TRIGGER IF EXISTS {quote(f'_nkd_{number}_{op}')}")
        conn.execute(f"DROP TABLE IF EXISTS {quote(f'_nkd_rows_{number}')}")

    def _table_rows(self, conn: sqlite3.Connection, spec: TableSpec) -> Iterator[dict[str, Any]]:
        decoders = [(c.name, sqlite_decoder(c.logical_type)) for c in spec.columns]
        columns = ", ".join(quote(c.name) for c in spec.columns)
        cursor = conn.execute(f"SELECT {columns} FROM {quote(spec.name)}")
        for row in cursor:
            yield {name: decode(value) for (name, decode), value in zip(decoders, row, strict=True)}

    def _point(self, conn: sqlite3.Connection) -> SnapshotPoint:
        """Within a read (or write) transaction: its position and the time now."""
        row = conn.execute(
            "SELECT (SELECT seq FROM sqlite_sequence WHERE name = '_nkd_changes'), "
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        ).fetchone()
        return SnapshotPoint(
            position=int(row[0] or 0), time=datetime.fromisoformat(row[1]).replace(tzinfo=UTC)
        )

    def snapshot(self, tables: Mapping[int, TableSpec], consumer: SnapshotConsumer) -> None:
        conn = self._connection()
        with translate_errors("taking a snapshot"):
            self._require_installed(conn)
        with self._transaction("taking a snapshot", write=False) as conn:
            point = self._point(conn)  # the first read fixes what the transaction sees
            consumer(point, lambda spec: self._table_rows(conn, spec))

    def read_rows(self, spec: TableSpec) -> list[dict[str, Any]]:
        with self._transaction(f"reading {spec.name}", write=False) as conn:
            return list(self._table_rows(conn, spec))

    def uninstall(self) -> None:
        with self._transaction("uninstalling capture", write=True) as conn:
            triggers = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'trigger' AND name LIKE '\\_nkd\\_%' ESCAPE '\\'"
                )
            ]
            for name in triggers:
                conn.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'table' AND name LIKE '\\_nkd\\_%' ESCAPE '\\'"
                )
            ]
            for name in tables:
                conn.execute(f"DROP TABLE IF EXISTS {quote(name)}")

    # --- draining --------------------------------------------------------------------

    def _require_installed(self, conn: sqlite3.Connection) -> None:
        if not self._has_table(conn, "_nkd_changes"):
            raise NotInstalledError(
                "capture is not installed in the source database",
                hint="run `nkdaemon install` first",
            )

    def bind(self, installation: str | None) -> None:
        self._bound = True
        self._installation = installation

    def _check_bound(self, conn: sqlite3.Connection) -> None:
        if not self._bound:
            return
        owner = self._owner(conn)
        if owner is not None and owner.installation != self._installation:
            raise not_ours(owner, self._installation)

    def fence(self) -> int:
        conn = self._connection()
        with translate_errors("fencing the queue"):
            self._require_installed(conn)
            self._check_bound(conn)
            row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = '_nkd_changes'"
            ).fetchone()
            return int(row[0]) if row else 0

    def read(
        self,
        tables: dict[int, TableSpec],
        after: int,
        upto: int,
        cuts: Sequence[int] = (),
    ) -> Iterator[QueuedChange]:
        # One group per stretch between snapshot positions: a snapshot must never fall
        # inside a logged transaction, or replaying after it would repeat part of it.
        bounds = sorted({c for c in cuts if after < c < upto} | {upto})
        with self._transaction("reading the queue", write=False) as conn:
            # The first read fixes what the transaction sees: a take-over (and the new
            # owner's deletes) is either seen here or comes after every change read.
            self._check_bound(conn)
            layout = {
                int(number): orjson.loads(columns)
                for number, columns in conn.execute("SELECT number, columns FROM _nkd_tables")
            }
            low = after
            for high in bounds:
                yield from self._group(conn, tables, layout, low, high)
                low = high

    def _group(
        self,
        conn: sqlite3.Connection,
        tables: dict[int, TableSpec],
        layout: dict[int, list[str]],
        after: int,
        upto: int,
    ) -> Iterator[QueuedChange]:
        row = conn.execute(
            "SELECT max(at) FROM _nkd_changes WHERE seq > ? AND seq <= ?", (after, upto)
        ).fetchone()
        if row[0] is None:
            return
        commit_time = datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
        low = after
        while low < upto:
            high = min(upto, low + WINDOW)
            yield from self._window(conn, tables, layout, low, high, upto, commit_time)
            low = high

    def _window(
        self,
        conn: sqlite3.Connection,
        tables: dict[int, TableSpec],
        layout: dict[int, list[str]],
        low: int,
        high: int,
        position: int,
        commit_time: datetime,
    ) -> Iterator[QueuedChange]:
        changes = conn.execute(
            "SELECT seq, tbl, op FROM _nkd_changes WHERE seq > ? AND seq <= ? ORDER BY seq",
            (low, high),
        ).fetchall()
        values: dict[int, dict[int, tuple[Any, ...]]] = {}
        for number in {tbl for _, tbl, _ in changes}:
            shadow = quote(f"_nkd_rows_{number}")
            values[number] = {
                r[0]: r[1:]
                for r in conn.execute(
                    f"SELECT * FROM {shadow} WHERE seq > ? AND seq <= ?", (low, high)
                )
            }
        for seq, tbl, op in changes:
            spec = tables.get(tbl)
            if spec is None or tbl not in layout:
                raise SourceError(
                    f"the queue holds a change of table number {tbl}, which the registry does "
                    "not know",
                    hint="run `nkdaemon install` to bring capture up to date",
                )
            columns = layout[tbl]
            slots = values[tbl][seq]
            width = len(columns)
            old = _decode(spec, columns, slots[:width]) if op in ("U", "D") else None
            new = _decode(spec, columns, slots[width:]) if op in ("I", "U") else None
            yield QueuedChange(
                position=position,
                txid=None,
                commit_time=commit_time,
                change=RawChange(table=tbl, op=op, old=old, new=new),
            )

    def delete_through(self, upto: int) -> None:
        with self._transaction("removing drained changes", write=True) as conn:
            numbers = [int(r[0]) for r in conn.execute("SELECT number FROM _nkd_tables")]
            conn.execute("DELETE FROM _nkd_changes WHERE seq <= ?", (upto,))
            for number in numbers:
                conn.execute(f"DELETE FROM {quote(f'_nkd_rows_{number}')} WHERE seq <= ?", (upto,))

    def queue_depth(self) -> int:
        conn = self._connection()
        with translate_errors("measuring the queue"):
            self._require_installed(conn)
            return int(conn.execute("SELECT count(*) FROM _nkd_changes").fetchone()[0])

    def oldest_pending(self) -> datetime | None:
        conn = self._connection()
        with translate_errors("measuring the queue"):
            row = conn.execute("SELECT min(at) FROM _nkd_changes").fetchone()
            return None if row[0] is None else datetime.fromisoformat(row[0])


def _decode(spec: TableSpec, columns: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(columns, values, strict=True):
        column = spec.column_index.get(name)
        if column is None:
            raise SchemaDrift(table=spec.name, columns=(name,))
        out[name] = sqlite_decoder(column.logical_type)(value)
    return out


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside these scripts' strings)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
