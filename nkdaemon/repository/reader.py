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
    pending: list[dict[str, Any]] = []
    pending_lsn: int | None = None
    for record in log.records(from_lsn=from_lsn):
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
