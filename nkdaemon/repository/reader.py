"""Reading the log back as whole transactions (chunks joined to their commit).

``read_log`` gives every whole transaction and marker in order; ``transactions_between``
is the public way to read the transactions between two source positions (or up to a
time) that restore, export and verify replay, with what a GAP or EPOCH marker means to
each caller stated by an explicit rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from nkdaemon.core.errors import LogCorruptionError, NkdError
from nkdaemon.core.log import (
    ChangeEvent,
    Chunk,
    Commit,
    Definition,
    Epoch,
    Gap,
    LoggedTransaction,
    LogMarker,
    is_partial,
)
from nkdaemon.repository.segments import Record, SegmentLog

__all__ = [
    "AtMarker",
    "CrossedGap",
    "LogMarker",
    "LogRange",
    "LoggedTransaction",
    "read_log",
    "transactions_between",
]


def read_log(log: SegmentLog, *, from_lsn: int = 1) -> Iterator[LoggedTransaction | LogMarker]:
    """The whole transactions and markers with lsn ``from_lsn`` or later, in order.

    Raises LogCorruptionError at damage and where transactions are missing (lsns run
    without holes, from the first one the log holds); a reader from
    ``SegmentLog.tolerating_damage`` stops there instead, after the last whole one."""
    try:
        yield from _read_log(log, from_lsn)
    except LogCorruptionError as exc:
        log.note_damage(exc)


def _read_log(log: SegmentLog, from_lsn: int) -> Iterator[LoggedTransaction | LogMarker]:
    pending: list[ChangeEvent] = []
    definitions: list[Definition] = []
    pending_lsn: int | None = None
    numbering = _Numbering(from_lsn)
    for record in log.records(from_lsn=from_lsn):
        numbering.check(record)
        entry = record.entry
        if isinstance(entry, Chunk | Definition):
            if pending_lsn is not None and entry.lsn != pending_lsn:
                raise LogCorruptionError(
                    record.segment, record.offset, "a record of another transaction interrupts one"
                )
            pending_lsn = entry.lsn
            if isinstance(entry, Chunk):
                pending.extend(entry.events)
            else:
                definitions.append(entry)
            continue
        if isinstance(entry, Commit):
            if pending_lsn is not None and entry.lsn != pending_lsn:
                raise LogCorruptionError(
                    record.segment, record.offset, "a commit does not match its chunks"
                )
            before, pending, pending_lsn = pending, [], None
            changes, definitions = definitions, []
            if entry.lsn >= from_lsn:
                yield LoggedTransaction.joined(entry, before, changes)
        elif entry.lsn >= from_lsn:
            yield entry


class _Numbering:
    """Transactions are numbered 1, 2, 3, ... without holes; a hole is lost records (a
    segment missing or cut short)."""

    def __init__(self, from_lsn: int) -> None:
        self._from = from_lsn
        self._next: int | None = None
        self._previous: Record | None = None

    def check(self, record: Record) -> None:
        lsn = record.entry.lsn
        expected = self._next
        if expected is None and lsn > self._from:  # the log must hold from_lsn on
            expected = max(1, self._from)
        if expected is not None and lsn != expected:
            detail = self._hole(record, expected, lsn)
            raise LogCorruptionError(record.segment, record.offset, detail)
        self._next = lsn if is_partial(record.entry) else record.last_lsn + 1
        self._previous = record

    def _hole(self, record: Record, expected: int, lsn: int) -> str:
        if lsn < expected:
            return f"transaction {lsn} follows {expected - 1} (numbered out of order)"
        missing = f"transaction {lsn} follows {expected - 1}: {expected}..{lsn - 1} are missing"
        previous = self._previous
        if previous is None:
            return f"{missing} (the log holds nothing before it)"
        if previous.segment != record.segment:
            return (
                f"{missing} ({previous.segment} ends at byte {previous.end}: it was cut short, "
                "or a segment between them is missing)"
            )
        return missing


# --- a range of transactions to replay ----------------------------------------------------


class CrossedGap(NkdError):
    """A range read with ``AtMarker.RESTORE`` reached lost transactions (a GAP)."""

    def __init__(self, gap: Gap) -> None:
        super().__init__(f"the log lost transactions {gap.from_lsn}..{gap.to_lsn}")
        self.gap = gap


class AtMarker(Enum):
    """What a GAP or EPOCH marker inside the range means to the caller.

    - ``RESTORE``: an EPOCH ends the range (capture was re-installed; its baseline snapshot
      takes over), a GAP raises CrossedGap (restore never crosses lost transactions).
    - ``REFUSE``: any marker raises NkdError naming it (verify's check of the log between
      two snapshots of one installation: nothing may lie between them).
    - ``SKIP``: markers are passed over (verify --source, which compares the source with a
      snapshot and the log as they stand, and reports any difference as a diff).
    """

    RESTORE = "restore"
    REFUSE = "refuse"
    SKIP = "skip"


@dataclass(kw_only=True)
class LogRange:
    """The logged transactions after source position ``after`` (read from ``from_lsn``,
    the log's lsn when that position was read), up to position ``through`` and up to
    commit time ``until`` (either may be None: no limit).

    Iterate it once. ``passed_limit`` is then True when it stopped at a transaction beyond
    a limit: the log is known to reach it."""

    log: SegmentLog
    from_lsn: int
    after: int
    through: int | None = None
    until: datetime | None = None
    at_marker: AtMarker = AtMarker.RESTORE
    passed_limit: bool = False

    def __iter__(self) -> Iterator[LoggedTransaction]:
        for item in read_log(self.log, from_lsn=max(1, self.from_lsn)):
            if isinstance(item, Gap | Epoch):
                if self._ends_at(item):
                    return
                continue
            if item.position <= self.after:
                continue
            if self._beyond(item):
                self.passed_limit = True
                return
            yield item

    def _beyond(self, tx: LoggedTransaction) -> bool:
        if self.through is not None and tx.position > self.through:
            return True
        return self.until is not None and tx.commit_time > self.until

    def _ends_at(self, marker: LogMarker) -> bool:
        """True when the marker ends the range; raises where it must not be crossed."""
        if self.at_marker is AtMarker.SKIP or marker.lsn <= self.from_lsn:
            return False  # the snapshot's own epoch, or a marker it already accounts for
        if self.at_marker is AtMarker.REFUSE:
            raise NkdError(f"the log holds a {marker.kind} marker (lsn {marker.lsn}) between them")
        if isinstance(marker, Epoch):
            return True
        raise CrossedGap(marker)


def transactions_between(
    log: SegmentLog,
    *,
    from_lsn: int,
    after: int,
    through: int | None = None,
    until: datetime | None = None,
    at_marker: AtMarker = AtMarker.RESTORE,
) -> LogRange:
    """The transactions a replay from a snapshot applies (see LogRange and AtMarker)."""
    return LogRange(
        log=log, from_lsn=from_lsn, after=after, through=through, until=until, at_marker=at_marker
    )
