"""Reading the log back as whole transactions (chunks joined to their commit)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nkdaemon.core.errors import LogCorruptionError
from nkdaemon.repository.segments import (
    KIND_CHUNK,
    KIND_COMMIT,
    KIND_EPOCH,
    KIND_GAP,
    Record,
    SegmentLog,
)


@dataclass(frozen=True, kw_only=True)
class LoggedTransaction:
    lsn: int
    position: int
    txid: str | None
    commit_time: str
    events: list[dict[str, Any]] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class LogMarker:
    """A GAP (lost transactions) or an EPOCH (capture restarted from a baseline)."""

    kind: str
    lsn: int
    payload: dict[str, Any]


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
    pending: list[dict[str, Any]] = []
    pending_lsn: int | None = None
    numbering = _Numbering(from_lsn)
    for record in log.records(from_lsn=from_lsn):
        numbering.check(record)
        payload = record.payload
        if record.kind == KIND_CHUNK:
            if pending_lsn is not None and payload["lsn"] != pending_lsn:
                raise LogCorruptionError(
                    record.segment, record.offset, "a chunk of another transaction interrupts one"
                )
            pending_lsn = payload["lsn"]
            pending.extend(payload["events"])
            continue
        if record.kind == KIND_COMMIT:
            if pending_lsn is not None and payload["lsn"] != pending_lsn:
                raise LogCorruptionError(
                    record.segment, record.offset, "a commit does not match its chunks"
                )
            events = pending + payload["events"]
            pending, pending_lsn = [], None
            if payload["lsn"] < from_lsn:
                continue
            yield LoggedTransaction(
                lsn=payload["lsn"],
                position=payload["pos"],
                txid=payload.get("xid"),
                commit_time=payload["time"],
                events=events,
            )
        elif record.kind in (KIND_GAP, KIND_EPOCH):
            lsn = payload.get("lsn", payload.get("from_lsn", 0))
            if lsn >= from_lsn:
                kind = "gap" if record.kind == KIND_GAP else "epoch"
                yield LogMarker(kind=kind, lsn=lsn, payload=payload)


class _Numbering:
    """Transactions are numbered 1, 2, 3, ... without holes; a hole is lost records (a
    segment missing or cut short)."""

    def __init__(self, from_lsn: int) -> None:
        self._from = from_lsn
        self._next: int | None = None
        self._previous: Record | None = None

    def check(self, record: Record) -> None:
        payload = record.payload
        lsn = int(payload["from_lsn"] if record.kind == KIND_GAP else payload["lsn"])
        expected = self._next
        if expected is None and lsn > self._from:  # the log must hold from_lsn on
            expected = max(1, self._from)
        if expected is not None and lsn != expected:
            detail = self._hole(record, expected, lsn)
            raise LogCorruptionError(record.segment, record.offset, detail)
        self._next = lsn if record.kind == KIND_CHUNK else int(payload.get("to_lsn", lsn)) + 1
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
