"""Where the durable log ends, as the repository records it (docs/FORMAT.md).

The drain records its checkpoint twice after every fsync of the log: in ``log/end.json``
(first) and in state.db. A reader takes the furthest of the two it finds. Every byte of
the log before that point was made durable, so invalid bytes there are damage, never a
write in progress; and a log that stops before it has lost records. ``end.json`` lives in
the log folder so that a copy of ``log/`` and ``snapshots/`` without state.db (the
off-site case) still carries it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.repository.local_store import as_store
from nkdaemon.repository.state import Checkpoint

END_FILE = "end.json"
END_FORMAT = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class DurableEnd:
    """The last durable transaction, the byte after it, and how far the log is complete."""

    lsn: int
    segment: str | None
    offset: int
    position: int = 0
    commit_time: str | None = None
    complete_through: str | None = None
    origin: str = ""  # where it was read: "state.db" or "log/end.json"

    @classmethod
    def of(cls, checkpoint: Checkpoint, origin: str) -> DurableEnd:
        return cls(
            lsn=checkpoint.lsn,
            segment=checkpoint.segment,
            offset=checkpoint.offset,
            position=checkpoint.position,
            commit_time=checkpoint.commit_time,
            complete_through=checkpoint.complete_through,
            origin=origin,
        )

    def covers(self, segment: str, offset: int) -> bool:
        """Whether the byte at ``offset`` of ``segment`` was made durable."""
        if self.segment is None:
            return False
        return segment < self.segment or (segment == self.segment and offset < self.offset)

    def describe(self) -> str:
        return (
            f"transaction {self.lsn}, byte {self.offset} of {self.segment}, "
            f"recorded in {self.origin}"
        )

    def covered_until(self) -> datetime | None:
        """The latest instant a restore may ask for: the log is complete up to it."""
        times = [datetime.fromisoformat(t) for t in (self.commit_time, self.complete_through) if t]
        return max(times) if times else None


def write_end(log: Path | RepositoryStore, checkpoint: Checkpoint) -> None:
    """Record the durable end in the log folder (``log``: its path or store), replacing
    the one before in one step (a local store: a temporary file fsynced, renamed, and the
    folder fsynced, so the new end is itself durable once this returns).

    A file claiming bytes that are not durable cannot be: this is called only after the
    log's fsync. Should a crash lose the new end, the previous end.json (or none) is still
    there, and an earlier end is a true lower bound."""
    fields: dict[str, Any] = {
        "format": END_FORMAT,
        "lsn": checkpoint.lsn,
        "segment": checkpoint.segment,
        "offset": checkpoint.offset,
        "position": checkpoint.position,
        "commit_time": checkpoint.commit_time,
        "complete_through": checkpoint.complete_through,
    }
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    data = orjson.dumps({**fields, "crc32": zlib.crc32(body)}, option=orjson.OPT_INDENT_2)
    as_store(log).replace(END_FILE, data)


def read_end(log: Path | RepositoryStore) -> DurableEnd | None:
    """The durable end ``log/end.json`` records (``log``: the log folder's path or store);
    None when there is none (a repository written by an older release). Raises
    RepositoryError when the file is damaged."""
    try:
        raw = as_store(log).read(END_FILE)
    except FileNotFoundError:  # ObjectMissingError, whatever the store
        return None
    try:
        data = orjson.loads(raw)
        crc = data.pop("crc32")
        intact = zlib.crc32(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)) == crc
        end = DurableEnd(
            lsn=int(data["lsn"]),
            segment=data["segment"],
            offset=int(data["offset"]),
            position=int(data["position"]),
            commit_time=data["commit_time"],
            complete_through=data["complete_through"],
            origin=f"log/{END_FILE}",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        intact = False
    if not intact:
        raise RepositoryError(
            f"log/{END_FILE}, which records where the durable log ends, is damaged",
            hint="the next `nkdaemon drain` rewrites it; on a copy, copy it again from the "
            "repository, or restore with --allow-truncated-log",
        )
    if int(data.get("format", 0)) > END_FORMAT:
        raise RepositoryError(
            f"log/{END_FILE} has format {data['format']}; this release reads up to {END_FORMAT}",
            hint="upgrade nkdaemon",
        )
    return end


def furthest(ends: Iterable[DurableEnd | None]) -> DurableEnd | None:
    """The furthest of several records of the durable end (each is a lower bound), with the
    latest time up to which any of them says the log is complete."""
    known = [e for e in ends if e is not None]
    if not known:
        return None
    best = max(known, key=lambda e: (e.lsn, e.segment or "", e.offset))
    complete = [e.complete_through for e in known if e.complete_through]
    latest = max(complete, key=datetime.fromisoformat) if complete else None
    return DurableEnd(
        lsn=best.lsn,
        segment=best.segment,
        offset=best.offset,
        position=best.position,
        commit_time=best.commit_time,
        complete_through=latest,
        origin=best.origin,
    )
