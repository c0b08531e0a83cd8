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
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from nkdaemon.core.errors import NotInstalledError, SourceError, SourceUnavailable
from nkdaemon.core.events import RawChange, RawOp
from nkdaemon.core.key_rules import refuse_retired_numbers
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, not_ours
from nkdaemon.core.ports import (
    CaptureSelector,
    QueuedChange,
    SchemaChange,
    SchemaDrift,
    SnapshotConsumer,
    SnapshotPoint,
)
from nkdaemon.core.values import sqlite_decoder
from nkdaemon.sources.sqlite_capture import (
    claim_capture,
    create_capture,
    drop_capture,
    drop_everything,
    has_table,
    migrate,
    quote,
    read_installation_id,
    read_owner,
    refuse_if_pending,
    retire,
    shadow_width,
)
from nkdaemon.sources.sqlite_follow import (
    Layouts,
    follow,
    forget_through,
    retired_numbers,
    schema_changes,
    table_indexes,
)

WINDOW = 5000


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
        # PRAGMA schema_version when capture last matched the tables, and the selector
        # it was checked with: a pass that finds both unchanged has nothing to follow.
        self._schema_seen: tuple[int, CaptureSelector] | None = None

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

    # --- installation ----------------------------------------------------------------

    def installation_id(self) -> str | None:
        conn = self._connection()
        with translate_errors("reading the capture installation"):
            return read_installation_id(conn)

    def owner(self) -> CaptureOwner | None:
        conn = self._connection()
        with translate_errors("reading the capture owner"):
            return read_owner(conn)

    def installed_tables(self) -> dict[str, int]:
        conn = self._connection()
        with translate_errors("reading captured tables"):
            if not has_table(conn, "_nkd_tables"):
                return {}
            return {
                str(name): int(number)
                for name, number in conn.execute("SELECT table_name, number FROM _nkd_tables")
            }

    def install(
        self, tables: Mapping[int, TableSpec], seed: SnapshotConsumer, claim: CaptureClaim
    ) -> tuple[str, int]:
        with self._transaction("installing capture", write=True) as conn:
            migrate(conn)
            installation = claim_capture(conn, claim)
            known = {
                str(name): (int(number), orjson.loads(columns))
                for name, number, columns in conn.execute(
                    "SELECT table_name, number, columns FROM _nkd_tables"
                )
            }
            wanted = {spec.name for spec in tables.values()}
            for name in set(known) - wanted:
                drop_capture(conn, known[name][0])
                conn.execute("DELETE FROM _nkd_tables WHERE table_name = ?", (name,))
                retire(conn, known[name][0], name)
            refuse_retired_numbers(
                tables, {name: n for name, (n, _) in known.items()}, retired_numbers(conn)
            )
            for spec in tables.values():
                columns = [c.name for c in spec.columns]
                previous = known.get(spec.name)
                if previous is None or previous[1] != columns or previous[0] != spec.number:
                    if previous is not None:
                        refuse_if_pending(conn, previous[0], spec.name)
                        drop_capture(conn, previous[0])
                        if previous[0] != spec.number:
                            retire(conn, previous[0], spec.name)
                    create_capture(conn, spec, columns)
                    conn.execute(
                        "INSERT INTO _nkd_tables (number, table_name, columns) VALUES (?, ?, ?) "
                        "ON CONFLICT (table_name) DO UPDATE SET number = excluded.number, "
                        "columns = excluded.columns",
                        (spec.number, spec.name, orjson.dumps(columns).decode()),
                    )
                conn.execute(
                    "UPDATE _nkd_tables SET indexes = ? WHERE number = ?",
                    (table_indexes(conn, spec.name), spec.number),
                )
            point = self._point(conn)
            seed(point, lambda spec: self._table_rows(conn, spec))
        return installation, point.position

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
            drop_everything(conn)

    # --- draining --------------------------------------------------------------------

    def _require_installed(self, conn: sqlite3.Connection) -> None:
        if not has_table(conn, "_nkd_changes"):
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
        owner = read_owner(conn)
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
            layout = Layouts(conn)
            low = after
            for high in bounds:
                yield from self._group(conn, tables, layout, low, high)
                low = high

    def _group(
        self,
        conn: sqlite3.Connection,
        tables: dict[int, TableSpec],
        layout: Layouts,
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
        layout: Layouts,
        low: int,
        high: int,
        position: int,
        commit_time: datetime,
    ) -> Iterator[QueuedChange]:
        changes = conn.execute(
            "SELECT seq, tbl, op FROM _nkd_changes WHERE seq > ? AND seq <= ? ORDER BY seq",
            (low, high),
        ).fetchall()
        schema = schema_changes(conn, low, high) if any(op == "S" for _, _, op in changes) else {}
        values = _shadow_rows(conn, {tbl for _, tbl, op in changes if op != "S"}, low, high)
        for seq, tbl, op in changes:
            change = schema[seq] if op == "S" else _raw_change(tables, layout, values, seq, tbl, op)
            yield QueuedChange(position=position, txid=None, commit_time=commit_time, change=change)

    def delete_through(self, upto: int) -> None:
        with self._transaction("removing drained changes", write=True) as conn:
            numbers = {int(r[0]) for r in conn.execute("SELECT number FROM _nkd_tables")}
            numbers |= retired_numbers(conn)
            conn.execute("DELETE FROM _nkd_changes WHERE seq <= ?", (upto,))
            for number in sorted(numbers):
                if has_table(conn, f"_nkd_rows_{number}"):
                    shadow = quote(f"_nkd_rows_{number}")
                    conn.execute(f"DELETE FROM {shadow} WHERE seq <= ?", (upto,))
            forget_through(conn, upto)

    def follow_schema(self, selects: CaptureSelector) -> list[SchemaChange]:
        """See sources/sqlite_follow.py. Nothing is read but the schema version while it
        stays as it was when capture last matched the tables."""
        conn = self._connection()
        with translate_errors("reading the schema version"):
            version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
        seen = self._schema_seen
        if seen is not None and seen[0] == version and seen[1] is selects:
            return []
        with self._transaction("following schema changes", write=True) as conn:
            if not has_table(conn, "_nkd_changes"):
                return []  # not installed: fence() says so
            self._check_bound(conn)
            migrate(conn)
            queued = follow(conn, selects)
            # Read while the write lock is held: no other DDL can come between.
            version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
        self._schema_seen = (version, selects)
        return queued

    def capture_mode(self) -> str:
        return "each pass"

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


def _shadow_rows(
    conn: sqlite3.Connection, numbers: set[int], low: int, high: int
) -> dict[int, tuple[int, dict[int, tuple[object, ...]]]]:
    """Per table: its shadow's width (slots per side) and its rows in (low, high] by seq."""
    out: dict[int, tuple[int, dict[int, tuple[object, ...]]]] = {}
    for number in numbers:
        width = shadow_width(conn, number) or 0
        slots = [f"o{i}" for i in range(width)] + [f"n{i}" for i in range(width)]
        rows = conn.execute(
            f"SELECT seq, {', '.join(slots)} FROM {quote(f'_nkd_rows_{number}')} "
            "WHERE seq > ? AND seq <= ?",
            (low, high),
        )
        out[number] = (width, {r[0]: r[1:] for r in rows})
    return out


def _raw_change(
    tables: dict[int, TableSpec],
    layout: Layouts,
    values: dict[int, tuple[int, dict[int, tuple[object, ...]]]],
    seq: int,
    tbl: int,
    op: RawOp,
) -> RawChange:
    """One queued row change, decoded with the columns its table had when it was queued."""
    spec = tables.get(tbl)
    if spec is None and layout.knows(tbl):
        # Capture stopped following the table (dropped, renamed) before this drain saw it.
        raise SourceError(
            f"the queue holds changes of table number {tbl}, which was dropped or renamed "
            "before this drain process learnt its columns",
            hint="the source no longer describes the table, so these changes cannot be "
            "named; to go on without them, run `nkdaemon uninstall --force` and then "
            "`nkdaemon install` (a new baseline)",
        )
    if spec is None or not layout.knows(tbl):
        raise SourceError(
            f"the queue holds a change of table number {tbl}, which the registry does not know",
            hint="run `nkdaemon install` to bring capture up to date",
        )
    columns = layout.at(tbl, seq)
    width, rows = values[tbl]
    slots = rows[seq]
    count = len(columns)
    old = _decode(spec, columns, slots[:count]) if op in ("U", "D") else None
    new = _decode(spec, columns, slots[width : width + count]) if op in ("I", "U", "B") else None
    return RawChange(table=tbl, op=op, old=old, new=new)


def _decode(spec: TableSpec, columns: list[str], values: tuple[object, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(columns, values, strict=True):
        column = spec.column_index.get(name)
        if column is None:
            raise SchemaDrift(table=spec.name, columns=(name,))
        out[name] = sqlite_decoder(column.logical_type)(value)
    return out
