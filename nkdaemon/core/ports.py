"""The ports the services drive. Adapters implement them; the core never imports them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Protocol, TypeVar

from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import Sid, TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner

ShallowKey = tuple[Any, ...]


class KeyLookup(Protocol):
    """The id -> shallow natural key index, per captured table.

    Writes are visible to later reads at once, and become durable only when the caller
    commits the index together with the log; they are discarded if it rolls back.
    """

    def get(self, table: int, sid: Sid) -> ShallowKey | None:
        """The shallow key of the row with this source id, or None if unknown."""

    def put(self, table: int, sid: Sid, key: ShallowKey) -> None:
        """Record (or replace) the key of a row."""

    def delete(self, table: int, sid: Sid) -> None:
        """Forget a row."""

    def clear_table(self, table: int) -> None:
        """Forget every row of a table (TRUNCATE)."""

    def entries(self, table: int) -> Iterator[tuple[Sid, ShallowKey]]:
        """Every (source id, shallow key) the index holds for a table."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedChange:
    """One captured change as the source queue holds it, values in canonical form.

    ``position`` orders transactions: consecutive changes with the same position belong
    to one source transaction, and positions only grow in commit order.
    """

    position: int
    txid: str | None
    commit_time: datetime
    change: RawChange | SchemaChange


@dataclass(frozen=True, kw_only=True, slots=True)
class SchemaChange:
    """A captured table changed shape (or appeared, or vanished) at this point of the queue.

    ``columns`` are the table's column names after the change, in order (None: the table
    was dropped). ``renamed`` holds (old, new) pairs the source vouches for as renames (a
    source that cannot tell gives none: a drop and an add). ``baseline`` says that every
    row of the table follows at the same position as a RawChange of op "B" (its values
    now), because values may have changed without a captured row change (a column added
    with a default, a type change, a table rebuilt or new to capture): the drain turns
    them into the inserts, updates and deletes that bring the log's rows to them.
    ``kind`` is "created" (new to capture), "altered", "dropped" or "recaptured" (its
    capture was rebuilt, e.g. after the table was rebuilt under the same name).
    ``command`` is the source's word for the statement ("ALTER TABLE", "CREATE TABLE",
    "DROP TABLE", or "detected" where the source noticed the change afterwards).
    """

    table: int
    name: str
    columns: tuple[str, ...] | None
    kind: str = "altered"  # "created", "altered", "dropped", "recaptured"
    renamed: tuple[tuple[str, str], ...] = ()
    baseline: bool = False
    command: str = ""


CaptureSelector = Callable[[Sequence[str]], list[str]]
"""Given the source's table names, the ones ``[capture]`` selects (patterns applied)."""


class SchemaDrift(Exception):
    """A captured row has columns the registry does not know (a column was added)."""

    def __init__(self, *, table: str, columns: tuple[str, ...]) -> None:
        super().__init__(f"table {table!r} has columns the registry does not know: {columns}")
        self.table = table
        self.columns = columns


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotPoint:
    """An instant of the source: every transaction at or below ``position`` and none above,
    and the source clock's time then (commit times of later transactions are after it)."""

    position: int
    time: datetime


TableReader = Callable[[TableSpec], Iterator[dict[str, Any]]]
"""Reads every row of a table, in canonical form, within one consistent read (repeatable)."""

SnapshotConsumer = Callable[[SnapshotPoint, TableReader], None]
"""Receives a consistent read of the source and the instant it shows."""


class CaptureSource(Protocol):
    """A source database with capture installed (or about to be).

    Every method translates the driver's errors into SourceUnavailable (worth retrying)
    or SourceError (not). One instance is used by one thread at a time.
    """

    dialect: str

    def installation_id(self) -> str | None:
        """The id of the capture installation in the source, or None if not installed."""

    def installed_tables(self) -> dict[str, int]:
        """Captured table name -> table number, as the triggers in the source know them."""

    def owner(self) -> CaptureOwner | None:
        """The repository the capture feeds, or None if capture is not installed."""

    def install(
        self, tables: Mapping[int, TableSpec], seed: SnapshotConsumer, claim: CaptureClaim
    ) -> tuple[str, int]:
        """Install the capture schema and triggers (idempotent) and record ``claim``'s
        repository as the owner; returns the installation id and the baseline position.
        Raises CaptureOwnerError, changing nothing, if the installation id is no longer
        ``claim.seen``.

        ``seed`` gets a read of every captured table inside the transaction that creates
        the triggers, while writers are locked out, so no change falls between the read
        and the first captured change; every queued transaction at or below the baseline
        position is contained in what it reads.
        """

    def follow_schema(self, selects: CaptureSelector) -> list[SchemaChange]:
        """Bring capture in line with the captured tables' shapes now: tables that changed,
        appeared (selected by ``selects``) or vanished since capture last looked.

        In one write transaction that locks out the application's writes to the table, it
        rebuilds what capture needs (SQLite: the triggers, whose column lists are fixed;
        PostgreSQL: the trigger on a new table) and queues a SchemaChange, with a baseline
        of the rows where values may have been missed, so the change is ordered exactly
        among the row changes. A source that queues schema changes itself at the DDL
        (PostgreSQL's event trigger) still handles new tables here. Returns what it queued.
        """

    def capture_mode(self) -> str:
        """How schema changes are noticed, for `status` ("event trigger", "each pass")."""

    def snapshot(self, tables: Mapping[int, TableSpec], consumer: SnapshotConsumer) -> None:
        """A consistent read of every captured table, and the position it contains, while
        writers go on (PostgreSQL: one REPEATABLE READ transaction taken inside the fence)."""

    def uninstall(self) -> None:
        """Remove every trigger and the capture schema (idempotent)."""

    def bind(self, installation: str | None) -> None:
        """From now on, fence() and read() raise CaptureOwnerError when the source's
        capture does not feed ``installation`` (a drain's own repository). read() checks
        within the consistent read it takes the changes from, so a take-over is either
        seen there or comes after every change read."""

    def fence(self) -> int:
        """The highest position at which every committed transaction is final and visible."""

    def read(
        self,
        tables: dict[int, TableSpec],
        after: int,
        upto: int,
        cuts: Sequence[int] = (),
    ) -> Iterator[QueuedChange]:
        """Committed changes with after < position <= upto, in order, grouped by transaction.

        ``cuts`` are snapshot positions: a source that groups several transactions into one
        (SQLite) must not make a group straddle one.
        """

    def delete_through(self, upto: int) -> None:
        """Remove from the queue every transaction with position <= upto."""

    def queue_depth(self) -> int:
        """How many changes wait in the queue."""

    def oldest_pending(self) -> datetime | None:
        """The commit time of the oldest transaction waiting in the queue, if any."""

    def read_rows(self, spec: TableSpec) -> list[dict[str, Any]]:
        """Every row of one captured table now, in canonical form."""

    def close(self) -> None:
        """Release connections."""


class ObjectMissingError(FileNotFoundError):
    """A repository store has no object by that name.

    A FileNotFoundError, so code that reads a file that may be absent reads an object the
    same way, whatever the store."""


class ObjectExistsError(FileExistsError):
    """A repository store already holds an object by that name; it was left as it was."""


class ReadableBytes(Protocol):
    """Anything bytes are read from in blocks: a file, a decompressor, a generator's adapter."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); b"" at the end."""


class RepositoryStore(Protocol):
    """Where a repository keeps its files: whole objects named by relative keys.

    Names are ``/``-separated paths relative to the store, such as
    ``0000000000000001.nkdlog`` or ``20250101T000000000000Z-7/tables/1.jsonl.zst``;
    no part is empty, ``.`` or ``..``, and no part starts with a dot: those names are
    the store's own (temporary files of a write in progress, which no method shows).
    Implementations: a local directory (``repository.local_store``) and an S3-compatible
    bucket (``repository.s3_store``, optionally sealed by ``repository.encrypted_store``),
    so nothing here may depend on directories, renames or appends.

    Atomicity: a reader sees an object whole or not at all, never part of a write, and
    an object, once written, is durable when the method that wrote it returns; a crash
    in between leaves no visible object. ``write_if_absent`` never overwrites, so objects
    written with it (log segments, snapshot files and manifests) are immutable; only the
    small mutable records of a local repository (``log/end.json``, a snapshot's
    ``checked.json``) are written with ``replace``. A bucket store refuses ``replace``:
    nothing in a bucket is overwritten (its durable end is a series of new objects).

    Concurrency: methods may be called from several threads and processes at once. Of
    two ``write_if_absent`` calls for one name, exactly one succeeds; of two ``replace``
    calls, the last one wins. Readers never block writers.

    Errors: a missing object raises ObjectMissingError (a FileNotFoundError); an
    existing one, where it must not exist, ObjectExistsError (a FileExistsError); any
    other failure of the medium (permission, full disk, network) raises OSError.
    Nothing here creates anything on a read: a store on a read-only mount is read.
    """

    def list(self, prefix: str = "") -> list[str]:
        """Names of every object whose name starts with ``prefix``, sorted."""

    def size(self, name: str) -> int:
        """The object's length in bytes."""

    def read(self, name: str) -> bytes:
        """The object's bytes (for small objects; large ones are read with ``open``)."""

    def open(self, name: str) -> IO[bytes]:
        """The object for streamed reading; the caller closes it."""

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        """Store a new object: ``data`` itself, or everything read from it (streamed, so
        a large file is never held in memory). Raises ObjectExistsError, writing nothing,
        when the name is taken (object storage: a put with ``If-None-Match: *``); an error
        raised while reading ``data`` is raised again, and nothing is stored."""

    def replace(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing any object there in one step. A store
        whose objects are never overwritten (a bucket) raises RepositoryError instead."""

    def delete(self, name: str) -> None:
        """Remove the object; a missing one is not an error (it is gone either way)."""

    def describe(self, name: str = "") -> str:
        """Where the object (or, for "", the store) lives, for messages: a path or URL."""


Address = tuple[object, ...]
"""A row's place in a restore target: its primary-key values there (ids the target drew)."""

Converter = Callable[[object], object]
"""Turns a canonical value of one column into the parameter the target's driver takes."""


class TargetTableView(Protocol):
    """What a restore reads of a table that a restore target holds."""

    @property
    def spec(self) -> TableSpec:
        """The captured definition the table is restored from."""

    @property
    def columns(self) -> Collection[str]:
        """The columns the table has in the target."""

    @property
    def types(self) -> Mapping[str, str]:
        """The SQL type each column is declared with in the target."""

    @property
    def primary_key(self) -> tuple[str, ...]:
        """The columns that make a row's Address (a system column for a table without one)."""

    @property
    def generated(self) -> bool:
        """Ids of new rows are drawn by ``RestoreTarget.allocate``, not taken from the row."""

    @property
    def rows_before(self) -> int:
        """How many rows the table held when the restore began."""


TableT = TypeVar("TableT", bound=TargetTableView)


class RestoreTarget(Protocol[TableT]):
    """A database a restore writes into, inside one transaction it owns.

    Nothing is visible to others before ``commit``; any error leaves the transaction to be
    rolled back by the caller, and every method translates its driver's errors into
    RestoreTargetError. Rows are named by Address. One instance serves one restore in one
    thread; ``close`` releases the connection whatever happened.
    """

    def batch(self) -> AbstractContextManager[object]:
        """Writes inside may be sent without waiting for each one's result (pipelined); an
        error they meet surfaces at the latest when the block is left."""

    def attempt(self) -> AbstractContextManager[object]:
        """Work inside is undone if the block raises, the rest of the transaction kept."""

    def check_constraints(self) -> None:
        """Check now what the commit would check (deferred foreign keys); raises if broken."""

    def commit(self) -> None:
        """Make the restore visible."""

    def rollback(self) -> None:
        """Undo the whole restore; never raises."""

    def close(self) -> None:
        """Release the connection; never raises."""

    def inspect(self, spec: TableSpec) -> TableT | None:
        """The target's table for ``spec``, or None when the target has no such table."""

    def create(self, specs: Sequence[TableSpec]) -> list[str]:
        """Create these tables; returns notes on what the definitions could not carry over."""

    def param(self, table: TableT, column: str, value: object) -> object:
        """A canonical value of ``column`` as the parameter the driver takes."""

    def converter(self, table: TableT, column: str) -> Converter:
        """``param`` for one column, as a function (the identity where nothing changes)."""

    def find(
        self, table: TableT, columns: Sequence[str], keys: Sequence[Address]
    ) -> Mapping[Address, Address]:
        """The rows whose ``columns`` hold each of ``keys`` (parameters): key -> address."""

    def find_one_equal(
        self, table: TableT, columns: Sequence[str], values: Sequence[object]
    ) -> Address | None:
        """One row whose ``columns`` equal ``values``, NULL equal to NULL, if there is one."""

    def allocate(self, table: TableT, count: int) -> Sequence[object]:
        """``count`` new ids for a table whose ids the target generates."""

    def insert(
        self, table: TableT, columns: Sequence[str], rows: Iterable[Sequence[object]]
    ) -> None:
        """Insert rows of parameters for ``columns``, a list or a stream."""

    def update(
        self, table: TableT, columns: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> None:
        """Each row: the new values of ``columns``, then the address of the row to update."""

    def delete(self, table: TableT, addresses: Sequence[Address]) -> None:
        """Delete the rows at these addresses (cascades as the target's schema says)."""

    def addresses(self, table: TableT) -> Iterable[Address]:
        """The address of every row of the table now."""

    def delete_all(self, table: TableT) -> None:
        """Delete every row of the table (a logged TRUNCATE)."""

    def advance(self, table: TableT) -> None:
        """Move the table's id generator past the ids the restore wrote."""

    def read(self, table: TableT) -> Iterable[Mapping[str, object]]:
        """Every row as canonical values of the definition's columns and the primary key."""
