"""The ports the services drive. Adapters implement them; the core never imports them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedChange:
    """One captured change as the source queue holds it, values in canonical form.

    ``position`` orders transactions: consecutive changes with the same position belong
    to one source transaction, and positions only grow in commit order.
    """

    position: int
    txid: str | None
    commit_time: datetime
    change: RawChange


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
