"""Where the durable log ends, as the repository records it (docs/FORMAT.md).

The drain records its checkpoint twice after every fsync of the log: in ``log/end.json``
(first) and in state.db. A reader takes the furthest of the two it finds. Every byte of
the log before that point was made durable, so invalid bytes there are damage, never a
write in progress; and a log that stops before it has lost records. ``end.json`` lives in
the log folder so that a copy of ``log/`` and ``snapshots/`` without state.db (the
off-site case) still carries it.

A bucket is never written over, so there the durable end is a series of immutable
**end markers** ``log/ends/<lsn>-<complete_through>.json`` (same contents as end.json),
named so that the newest name is the furthest end. Readers of any log folder take the
furthest of ``end.json`` and the newest readable marker (a bucket written by an older
release has only ``end.json``); the replicator keeps the newest few markers and deletes
the rest, so a reader that finds a listed marker gone falls back to the next one listed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.repository.local_store import as_store
from nkdaemon.repository.state import Checkpoint

END_FILE = "end.json"
END_FORMAT = 1
ENDS = "ends/"  # the end markers' folder, in the log folder
KEEP_ENDS = 2  # markers the replicator keeps: the newest, and one for a reader racing it
_NO_TIME = "00000000T000000000000Z"  # a marker of an end without complete_through
_LISTINGS = 3  # a reader lists again when every marker it listed is gone (deleted since)


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
    there, and an earlier end is a true lower bound. A bucket takes end markers instead
    (``end_marker``): nothing in it is replaced."""
    as_store(log).replace(END_FILE, encode_end(checkpoint))


def encode_end(checkpoint: Checkpoint) -> bytes:
    """The bytes of end.json, or of an end marker, recording ``checkpoint``: the same
    checkpoint always gives the same bytes."""
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
    return orjson.dumps({**fields, "crc32": zlib.crc32(body)}, option=orjson.OPT_INDENT_2)


def end_marker(checkpoint: Checkpoint) -> tuple[str, bytes]:
    """The name (in the log folder) and bytes of the end marker recording ``checkpoint``.

    Names sort as the ends they record: by lsn (16 digits, as segment names), then by
    ``complete_through`` in UTC (which never goes back), so the last name is the furthest
    end and the latest time up to which the log is complete."""
    through = checkpoint.complete_through
    stamp = _NO_TIME
    if through:
        stamp = datetime.fromisoformat(through).astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{ENDS}{checkpoint.lsn:016d}-{stamp}.json", encode_end(checkpoint)


def surplus_ends(log: RepositoryStore, keep: int = KEEP_ENDS) -> list[str]:
    """What the durable end of the log folder ``log`` no longer needs, oldest first: the
    end markers before the newest ``keep``, and end.json once a marker exists (markers are
    written only after it, each further: end.json is an older release's record)."""
    listed = log.list("end")  # end.json and the markers in one listing: once per round
    markers = [n for n in listed if n.startswith(ENDS)]
    if not markers:
        return []
    legacy = [END_FILE] if END_FILE in listed else []
    return legacy + markers[: max(0, len(markers) - keep)]


def read_end(log: Path | RepositoryStore) -> DurableEnd | None:
    """The durable end the log folder records (``log``: its path or store): the furthest
    of ``end.json`` and the newest end marker; None when there is neither (a repository
    written by an older release). Raises RepositoryError when the one read is damaged."""
    store = as_store(log)
    try:
        raw = store.read(END_FILE)
    except FileNotFoundError:  # ObjectMissingError, whatever the store
        recorded = None
    else:
        recorded = decode_end(END_FILE, raw)
    return furthest([recorded, _newest_marker(store)])


def _newest_marker(store: RepositoryStore) -> DurableEnd | None:
    """The end the newest end marker records. A marker listed but gone when read was
    deleted meanwhile, after a newer one was written: the next one listed is read, and
    when every one listed is gone, the folder is listed again."""
    for _ in range(_LISTINGS):
        listed = store.list(ENDS)
        if not listed:
            return None
        for name in reversed(listed):
            try:
                return decode_end(name, store.read(name))
            except FileNotFoundError:
                continue
    raise RepositoryError(
        f"the end markers in {store.describe(ENDS.rstrip('/'))} were deleted as fast as "
        "they were listed",
        hint="something deletes them without writing newer ones; run the command again",
    )


def decode_end(name: str, raw: bytes) -> DurableEnd:
    """The durable end recorded by ``raw``, the bytes of end.json or of an end marker."""
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
            origin=f"log/{name}",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        intact = False
    if not intact:
        raise RepositoryError(
            f"log/{name}, which records where the durable log ends, is damaged",
            hint="the next `nkdaemon drain` rewrites end.json, and the next upload round "
            "writes a newer end marker; on a copy, copy it again from the repository, or "
            "restore with --allow-truncated-log",
        )
    if int(data.get("format", 0)) > END_FORMAT:
        raise RepositoryError(
            f"log/{name} has format {data['format']}; this release reads up to {END_FORMAT}",
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
