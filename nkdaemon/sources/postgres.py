"""The PostgreSQL capture adapter (psycopg 3): install, fence, read, delete.

The only module that touches psycopg errors for capture; they leave it as
SourceUnavailable (worth retrying) or SourceError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql
from sqlalchemy.engine import make_url

from nkdaemon.core.errors import UNAVAILABLE_HINT, NotInstalledError, SourceError, SourceUnavailable
from nkdaemon.core.events import RawChange
from nkdaemon.core.key_rules import refuse_retired_numbers
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, not_ours
from nkdaemon.core.ports import (
    CaptureSelector,
    QueuedChange,
    SchemaChange,
    SnapshotConsumer,
    SnapshotPoint,
)
from nkdaemon.dialects.postgres_rows import RowDecoder, sql_nulls
from nkdaemon.sources import postgres_schema as shapes
from nkdaemon.sources.postgres_capture import (
    Connection,
    claim_capture,
    create_triggers,
    drop_capture_schema,
    drop_triggers,
    migrate,
    read_installation_id,
    read_owner,
)

log = structlog.get_logger("nkdaemon.source")

SCHEMA = "nkdaemon"
FENCE_LOCK = (1852533605, 1)
# Drained queue rows after which the drain vacuums the queue (a few ms at this size).
VACUUM_AFTER_ROWS = 5000


def conninfo_from_url(url: str) -> str:
    """A libpq URI from an SQLAlchemy URL (drops the +driver part)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def translate_errors(action: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn psycopg errors into nkdaemon's, with any secret removed from the text."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(
            f"PostgreSQL unavailable while {action}: {_clean(exc, secrets)}",
            hint=UNAVAILABLE_HINT,
        ) from None
    except psycopg.Error as exc:
        raise SourceError(f"PostgreSQL error while {action}: {_clean(exc, secrets)}") from None


def _decoder(
    decoders: dict[int, RowDecoder], tables: Mapping[int, TableSpec], number: int
) -> RowDecoder | None:
    """The decoder of the table's spec as it is now (rebuilt when the spec moved on)."""
    spec = tables.get(number)
    if spec is None:
        return None
    decoder = decoders.get(number)
    if decoder is None or decoder.spec is not spec:
        decoder = decoders[number] = RowDecoder(spec)
    return decoder


def _identity(spec: TableSpec) -> list[str] | None:
    """The columns whose change makes an UPDATE queue the old row (None: always)."""
    identity = list(dict.fromkeys([*spec.primary_key, *spec.key_column_names]))
    return None if spec.full_row_identity or not identity else identity


def _clean(exc: BaseException, secrets: tuple[str, ...]) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class PostgresSource:
    """CaptureSource for PostgreSQL."""

    dialect = "postgresql"

    def __init__(
        self, url: str, *, schema: str | None = None, secrets: tuple[str, ...] = ()
    ) -> None:
        self._conninfo = conninfo_from_url(url)
        self._schema = schema or "public"
        self._secrets = secrets
        self._conn: Connection | None = None
        self._deleted_since_vacuum = 0
        self._bound = False
        self._installation: str | None = None

    # --- connection ------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            with translate_errors("connecting", self._secrets):
                self._conn = psycopg.connect(
                    self._conninfo, autocommit=True, application_name="nkdaemon"
                )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return translate_errors(action, self._secrets)

    # --- installation ----------------------------------------------------------------

    def installation_id(self) -> str | None:
        with self._errors("reading the capture installation"):
            return read_installation_id(self._connection())

    def owner(self) -> CaptureOwner | None:
        with self._errors("reading the capture owner"):
            return read_owner(self._connection())

    def installed_tables(self) -> dict[str, int]:
        with self._errors("reading captured tables"):
            conn = self._connection()
            exists = conn.execute("SELECT to_regclass('nkdaemon.tables') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return {}
            rows = conn.execute(
                "SELECT table_name, number FROM nkdaemon.tables WHERE schema_name = %s",
                (self._schema,),
            ).fetchall()
            return {str(name): int(number) for name, number in rows}

    def install(
        self, tables: Mapping[int, TableSpec], seed: SnapshotConsumer, claim: CaptureClaim
    ) -> tuple[str, int]:
        with self._errors("installing capture"):
            conn = self._connection()
            with conn.transaction():
                migrate(conn)
                installation = claim_capture(conn, claim)
                known = {
                    str(name): int(number)
                    for name, number in conn.execute(
                        "SELECT table_name, number FROM nkdaemon.tables WHERE schema_name = %s",
                        (self._schema,),
                    ).fetchall()
                }
                refuse_retired_numbers(tables, known, shapes.retired_numbers(conn))
                wanted = {spec.name for spec in tables.values()}
                for name in sorted(set(known) - wanted):
                    drop_triggers(conn, self._qualified(name))
                    conn.execute(
                        "DELETE FROM nkdaemon.tables WHERE schema_name = %s AND table_name = %s",
                        (self._schema, name),
                    )
                for spec in tables.values():
                    shapes.register_table(
                        conn, spec.number, self._schema, spec.name, _identity(spec)
                    )
                    create_triggers(conn, self._qualified(spec.name), spec.number)
                    shapes.record_shape(conn, spec.number)
                conn.execute(
                    "DELETE FROM nkdaemon.shapes WHERE number NOT IN "
                    "(SELECT number FROM nkdaemon.tables)"
                )
                shapes.arm_event_triggers(conn)
                # Every captured table is locked now, so no transaction is between its seal
                # and its end: the sequence value is a clean baseline.
                row = conn.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM nkdaemon.commit_seq"
                ).fetchone()
                baseline = int(row[0]) if row else 0
                now = conn.execute("SELECT clock_timestamp()").fetchone()
                assert now is not None
                point = SnapshotPoint(position=baseline, time=now[0])
                seed(point, lambda spec: self._table_rows(conn, spec))
            return installation, baseline

    def _qualified(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._schema), sql.Identifier(name))

    def _table_rows(self, conn: Connection, spec: TableSpec) -> Iterator[dict[str, Any]]:
        decoder = RowDecoder(spec)
        query = sql.SQL("SELECT row_to_json(t)::text, {} FROM {} AS t").format(
            sql_nulls(spec, "t"), self._qualified(spec.name)
        )
        with conn.cursor(name=f"nkd_seed_{spec.number}") as cursor:
            cursor.itersize = 5000
            cursor.execute(query)
            for text, nulls in cursor:
                yield decoder.decode(text, nulls)

    def snapshot(self, tables: Mapping[int, TableSpec], consumer: SnapshotConsumer) -> None:
        with self._errors("taking a snapshot"):
            reader = psycopg.connect(self._conninfo, application_name="nkdaemon snapshot")
            try:
                fence = self._connection()
                self._require_installed(fence)
                with reader.transaction():
                    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    with fence.transaction():
                        fence.execute("SET LOCAL lock_timeout = '10s'")
                        fence.execute("SELECT pg_advisory_xact_lock(%s, %s)", FENCE_LOCK)
                        # No transaction can seal while the lock is held: the snapshot taken
                        # now holds exactly those numbered at or below the value read next.
                        reader.execute("SELECT 1")
                        row = fence.execute(
                            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END, "
                            "clock_timestamp() FROM nkdaemon.commit_seq"
                        ).fetchone()
                    assert row is not None
                    point = SnapshotPoint(position=int(row[0]), time=row[1])
                    consumer(point, lambda spec: self._table_rows(reader, spec))
            finally:
                reader.close()

    def read_rows(self, spec: TableSpec) -> list[dict[str, Any]]:
        with self._errors(f"reading {spec.name}"):
            conn = self._connection()
            with conn.transaction():
                return list(self._table_rows(conn, spec))

    def uninstall(self) -> None:
        with self._errors("uninstalling capture"):
            conn = self._connection()
            with conn.transaction():
                drop_capture_schema(conn)

    # --- draining --------------------------------------------------------------------

    def _require_installed(self, conn: Connection) -> None:
        row = conn.execute("SELECT to_regclass('nkdaemon.queue') IS NOT NULL").fetchone()
        if not row or not row[0]:
            raise NotInstalledError(
                "capture is not installed in the source database",
                hint="run `nkdaemon install` first",
            )

    def bind(self, installation: str | None) -> None:
        self._bound = True
        self._installation = installation

    def _check_bound(self, conn: Connection) -> None:
        if not self._bound:
            return
        owner = read_owner(conn)
        if owner is not None and owner.installation != self._installation:
            raise not_ours(owner, self._installation)

    def fence(self) -> int:
        with self._errors("fencing the queue"):
            conn = self._connection()
            self._require_installed(conn)
            self._check_bound(conn)
            with conn.transaction():
                # Arm the wake-up before the fence (migration 0003 says why that order
                # loses none); NULL, and nothing done, on a schema from before it.
                conn.execute("SELECT setval(to_regclass('nkdaemon.wake_armed'), 1, false)")
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", FENCE_LOCK)
                row = conn.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM nkdaemon.commit_seq"
                ).fetchone()
            return int(row[0]) if row else 0

    def read(
        self,
        tables: dict[int, TableSpec],
        after: int,
        upto: int,
        cuts: Sequence[int] = (),
    ) -> Iterator[QueuedChange]:
        # The drain moves a table's spec forward in ``tables`` at each schema change it
        # reads: each change is decoded with the spec current when it is yielded.
        decoders: dict[int, RowDecoder] = {}
        query = (
            "SELECT c.seq, c.xid::text, c.commit_time, q.tbl, q.op, q.old::text, q.new::text, "
            "q.old_nulls, q.new_nulls "
            "FROM (SELECT xid, max(seq) AS seq, max(commit_time) AS commit_time "
            "      FROM nkdaemon.commits GROUP BY xid HAVING max(seq) > %s AND max(seq) <= %s) c "
            "JOIN nkdaemon.queue q ON q.xid = c.xid ORDER BY c.seq, q.id"
        )
        with self._errors("reading the queue"):
            conn = self._connection()
            with conn.transaction(), conn.cursor(name="nkd_drain") as cursor:
                # One snapshot for the owner check and the changes: a take-over (and the
                # new owner's deletes) is either seen here or comes after every change read.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                self._check_bound(conn)
                cursor.execute(query, (after, upto))
                while rows := cursor.fetchmany(5000):
                    for seq, xid, commit_time, tbl, op, old, new, old_nulls, new_nulls in rows:
                        if op == "S":  # a schema entry (migration 0006)
                            yield QueuedChange(
                                position=seq,
                                txid=xid,
                                commit_time=commit_time,
                                change=shapes.schema_change(tbl, new),
                            )
                            continue
                        decoder = _decoder(decoders, tables, tbl)
                        if decoder is None:
                            raise SourceError(
                                f"the queue holds a change of table number {tbl}, which the "
                                "registry does not know",
                                hint="run `nkdaemon install` to bring capture up to date",
                            )
                        yield QueuedChange(
                            position=seq,
                            txid=xid,
                            commit_time=commit_time,
                            change=RawChange(
                                table=tbl,
                                op=op,
                                old=None if old is None else decoder.decode(old, old_nulls),
                                new=None if new is None else decoder.decode(new, new_nulls),
                            ),
                        )

    def delete_through(self, upto: int) -> None:
        with self._errors("removing drained changes"):
            conn = self._connection()
            with conn.transaction():
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS nkd_done (xid xid8) ON COMMIT DELETE ROWS"
                )
                conn.execute(
                    "INSERT INTO nkd_done SELECT xid FROM nkdaemon.commits "
                    "GROUP BY xid HAVING max(seq) <= %s",
                    (upto,),
                )
                deleted = conn.execute(
                    "DELETE FROM nkdaemon.queue q USING nkd_done d WHERE q.xid = d.xid"
                ).rowcount
                conn.execute("DELETE FROM nkdaemon.commits c USING nkd_done d WHERE c.xid = d.xid")
        self._deleted_since_vacuum += max(deleted, 0)
        if self._deleted_since_vacuum >= VACUUM_AFTER_ROWS:
            self._vacuum_queue()

    def _vacuum_queue(self) -> None:
        """Give the drained rows' space back, without locking the application out.

        Where autovacuum is off or behind, the queue (no index: every pass scans it) would
        otherwise grow with every row ever captured. TRUNCATE false: cutting empty tail
        pages takes an ACCESS EXCLUSIVE lock, which would stall the application's inserts.
        """
        self._deleted_since_vacuum = 0
        try:
            self._connection().execute("VACUUM (TRUNCATE false) nkdaemon.queue, nkdaemon.commits")
        except psycopg.Error as exc:  # the changes are drained; only space is at stake
            log.warning("queue.vacuum_failed", error=_clean(exc, self._secrets))

    def follow_schema(self, selects: CaptureSelector) -> list[SchemaChange]:
        with self._errors("following schema changes"):
            conn = self._connection()
            queued: list[SchemaChange] = []
            if shapes.capture_mode(conn) == shapes.EACH_PASS:
                queued.extend(shapes.follow_changed_tables(conn, self._schema))
            for name in selects(shapes.uncaptured_tables(conn, self._schema)):
                queued.extend(shapes.capture_new_table(conn, self._schema, name))
            return queued

    def capture_mode(self) -> str:
        with self._errors("reading how schema changes are noticed"):
            return shapes.capture_mode(self._connection())

    def queue_depth(self) -> int:
        with self._errors("measuring the queue"):
            conn = self._connection()
            self._require_installed(conn)
            row = conn.execute("SELECT count(*) FROM nkdaemon.queue").fetchone()
            return int(row[0]) if row else 0

    def oldest_pending(self) -> datetime | None:
        with self._errors("measuring the queue"):
            row = (
                self._connection()
                .execute("SELECT min(commit_time) FROM nkdaemon.commits")
                .fetchone()
            )
            return None if not row or row[0] is None else row[0]
