"""The append-only event log: segment files of checksummed records.

Layout and format are specified in docs/FORMAT.md; the bytes are read and written by
log_format. A transaction is zero or more CHUNK records and one COMMIT record.

Written records are never rewritten. The only bytes ever removed are those past the last
durable point after a crash (a torn tail), and only by :meth:`SegmentLog.recover`. Where
the durable log ends is recorded by log_end (log/end.json) and in state.db's checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nkdaemon.core.errors import LogCorruptionError, LogTruncatedError, RepositoryError
from nkdaemon.core.log import Chunk, Commit, Definition, Epoch, Gap
from nkdaemon.repository.files import fsync_dir
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import DurableEnd, furthest, read_end, write_end
from nkdaemon.repository.log_format import (
    COMPRESS_OVER,
    COMPRESSED,
    FORMAT_VERSION,
    HEADER,
    KIND_CHUNK,
    KIND_COMMIT,
    KIND_EPOCH,
    KIND_GAP,
    MAGIC,
    SUFFIX,
    Record,
    Torn,
    decode_segment,
    encode_record,
    read_segment,
    segment_header,
    segment_name,
)
from nkdaemon.repository.state import Checkpoint

__all__ = [
    "COMPRESSED",
    "COMPRESS_OVER",
    "FORMAT_VERSION",
    "HEADER",
    "KIND_CHUNK",
    "KIND_COMMIT",
    "KIND_EPOCH",
    "KIND_GAP",
    "MAGIC",
    "SUFFIX",
    "LogEnd",
    "Record",
    "SegmentLog",
    "check_reaches_end",
    "encode_record",
    "segment_name",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class LogEnd:
    """Where the log ends: the last whole transaction and the byte after it."""

    segment: str | None
    offset: int
    last_lsn: int
    last_position: int
    last_commit_time: datetime | None


def _place(point: tuple[str | None, int]) -> tuple[str, int]:
    return (point[0] or "", point[1])


def check_reaches_end(names: list[str], end: DurableEnd | None, held: int) -> None:
    """Raise LogTruncatedError when the segment holding the durable end is gone, or the
    log read to its end (last lsn ``held``) holds fewer transactions than it."""
    if end is None or end.segment is None:
        return
    if end.segment not in names:
        detail = f"the file is missing; its durable end is {end.describe()}"
        raise LogTruncatedError(end.segment, 0, detail)
    if held < end.lsn:
        detail = f"the log holds transactions up to {held}; its durable end is {end.describe()}"
        raise LogTruncatedError(names[-1], 0, detail)


def _time_of(entry: Commit | Gap | Epoch) -> datetime | None:
    if isinstance(entry, Commit):
        return entry.commit_time
    return entry.time if isinstance(entry, Epoch) else None


class SegmentLog:
    """The log directory: reading, tail recovery and appending.

    One writer at a time (the repository lock sees to it); readers may run alongside and
    see only whole records. ``checkpoint`` gives the checkpoint of state.db, when there
    is one; with ``log/end.json`` it tells readers where the durable log ends.

    Readers list and read segments, and end.json, through ``store`` (the folder as a
    RepositoryStore); the segment being appended to, and the cutting of a torn tail, are
    the local folder's business (an append cannot go through a store of whole objects).
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        checkpoint: Callable[[], Checkpoint | None] | None = None,
    ) -> None:
        self.directory = directory
        self.store = LocalStore(directory)
        self.segment_bytes = segment_bytes
        self._checkpoint = checkpoint
        # With allow_truncated (see tolerating_damage) reading stops at damage instead of
        # raising, and notes here what it passed over.
        self.allow_truncated = False
        self.damage: list[str] = []
        self._file: Any = None
        self._segment: str | None = None
        self._next_lsn = 1
        self._sync_point: tuple[str | None, int] = (None, 0)
        self._sync_next_lsn = 1
        self._created: list[str] = []

    # --- reading ---------------------------------------------------------------------

    def segments(self) -> list[str]:
        return [name for name in self.store.list() if name.endswith(SUFFIX)]

    def size_bytes(self) -> int:
        return sum(self.store.size(name) for name in self.segments())

    def tolerating_damage(self) -> SegmentLog:
        """A reader of the same log that stops at the first damage instead of raising
        (`restore --allow-truncated-log`); what it passed over is listed in ``damage``."""
        reader = SegmentLog(
            self.directory, segment_bytes=self.segment_bytes, checkpoint=self._checkpoint
        )
        reader.allow_truncated = True
        return reader

    def note_damage(self, error: RepositoryError) -> None:
        """Damage a tolerant reader stops at; anyone else raises it."""
        if not self.allow_truncated:
            raise error
        if error.message not in self.damage:
            self.damage.append(error.message)

    def durable_end(self) -> DurableEnd | None:
        """The furthest durable end recorded in state.db's checkpoint and in log/end.json;
        None for a repository that records neither (an older release, or nothing yet)."""
        recorded = self._checkpoint() if self._checkpoint is not None else None
        ends = [None if recorded is None else DurableEnd.of(recorded, "state.db")]
        try:
            ends.append(read_end(self.store))
        except RepositoryError as exc:
            self.note_damage(exc)
        return furthest(ends)

    def records(self, *, from_lsn: int = 1, strict: bool = False) -> Iterator[Record]:
        """Every whole record from the segment holding ``from_lsn`` on.

        Invalid bytes end the iteration. Past the durable end, at the tail of the last
        segment, they are a write in progress (or torn by a crash); anywhere else they
        are corruption, raised as LogCorruptionError, and a log that stops before its
        durable end raises LogTruncatedError. With ``strict`` even the last segment's
        tail must be clean.
        """
        names = self.segments()
        first = 0
        for i, name in enumerate(names):
            if int(name[: -len(SUFFIX)]) <= from_lsn:
                first = i
        try:
            end = self.durable_end()
            held = 0
            for i, name in enumerate(names[first:], start=first):
                last = i == len(names) - 1
                for record in self.segment_records(name, last=last, end=end, strict=strict):
                    held = max(held, record.last_lsn)
                    yield record
            check_reaches_end(names, end, held)
        except (LogCorruptionError, LogTruncatedError) as exc:
            self.note_damage(exc)

    def segment_records(
        self, name: str, *, last: bool, end: DurableEnd | None, strict: bool = False
    ) -> Iterator[Record]:
        """The whole records of one segment, checked against the durable end ``end``
        (see ``records``); ``last``: no segment follows it."""
        reached = HEADER.size
        try:
            data = self.store.read(name)
        except LogCorruptionError:
            raise
        except RepositoryError as exc:  # e.g. an encrypted object failing its tag
            raise LogCorruptionError(name, 0, exc.message) from None
        for item in decode_segment(name, data):
            if isinstance(item, Torn):
                durable = end is not None and end.covers(name, item.offset)
                if strict or not last or durable:
                    detail = item.detail
                    if durable and last:
                        assert end is not None
                        detail += f", inside the durable log ({end.describe()})"
                    raise LogCorruptionError(name, item.offset, detail)
                return
            reached = item.end
            yield item
        if end is not None and name == end.segment and reached < end.offset:
            raise LogTruncatedError(name, reached, f"its durable end is {end.describe()}")

    # --- writing ---------------------------------------------------------------------

    def recover(self, *, durable_segment: str | None, durable_offset: int) -> LogEnd:
        """Open for appending: cut a torn tail, report corruption, find the end.

        ``durable_segment``/``durable_offset`` is the last point the repository recorded as
        made durable (log/end.json may record a later one: the furthest counts). Invalid
        bytes after it are a crash's torn tail and are cut; invalid bytes before it are
        damage and raise LogCorruptionError.
        """
        durable_segment, durable_offset = self._furthest_written(durable_segment, durable_offset)
        self.directory.mkdir(parents=True, exist_ok=True)
        names = self.segments()
        while names:
            name = names[-1]
            end = self._scan_tail(name, durable_segment, durable_offset)
            if end is not None:
                self._next_lsn = end.last_lsn + 1
                if end.offset >= self.segment_bytes:  # full: the next record starts a new one
                    self._file, self._segment = None, name
                    self._mark_synced()
                else:
                    self._open_for_append(name, end.offset)
                return end
            (self.directory / name).unlink()
            fsync_dir(self.directory)
            names.pop()
        self._segment = None
        self._next_lsn = 1
        self._mark_synced()
        return LogEnd(segment=None, offset=0, last_lsn=0, last_position=0, last_commit_time=None)

    def _scan_tail(
        self, name: str, durable_segment: str | None, durable_offset: int
    ) -> LogEnd | None:
        path = self.directory / name
        last_end: LogEnd | None = None
        torn: Torn | None = None
        for item in read_segment(path):
            if isinstance(item, Torn):
                torn = item
                break
            entry = item.entry
            if not isinstance(entry, Chunk | Definition):
                last_end = LogEnd(
                    segment=name,
                    offset=item.end,
                    last_lsn=item.last_lsn,
                    last_position=entry.position,
                    last_commit_time=_time_of(entry),
                )
        if torn is not None and self._is_damage(path, name, torn, durable_segment, durable_offset):
            raise LogCorruptionError(name, torn.offset, torn.detail)
        cut_at = last_end.offset if last_end is not None else HEADER.size
        if path.stat().st_size > cut_at:
            with path.open("r+b") as handle:
                handle.truncate(cut_at)
                os.fsync(handle.fileno())
        return last_end

    def _furthest_written(self, segment: str | None, offset: int) -> tuple[str | None, int]:
        try:
            recorded = read_end(self.store)
        except RepositoryError:  # damaged: the checkpoint stands; the next publish_end rewrites it
            recorded = None
        if recorded is None or recorded.segment is None:
            return segment, offset
        return max((segment, offset), (recorded.segment, recorded.offset), key=_place)

    def publish_end(self, checkpoint: Checkpoint) -> None:
        """Record a durable end in log/end.json. Call after ``sync``, with what it returned,
        before committing the same checkpoint to state.db."""
        write_end(self.store, checkpoint)

    @staticmethod
    def _is_damage(
        path: Path, name: str, torn: Torn, durable_segment: str | None, durable_offset: int
    ) -> bool:
        """Bad bytes inside what was made durable, where the file is still whole.

        A file that ends before its durable end was truncated, and a durable segment that
        is gone was lost: the records are cut and the drain records the gap. Bad bytes in
        a file that still reaches its durable end are damage, and never cut.
        """
        if durable_segment is None or name != durable_segment:
            return False
        return torn.offset < durable_offset and path.stat().st_size >= durable_offset

    def _open_for_append(self, name: str, offset: int) -> None:
        self._file = (self.directory / name).open("r+b")
        self._file.seek(offset)
        self._segment = name
        self._mark_synced()

    def _mark_synced(self) -> None:
        if self._file is not None:
            offset = self._file.tell()
        elif self._segment is not None:
            offset = (self.directory / self._segment).stat().st_size
        else:
            offset = 0
        self._sync_point = (self._segment, offset)
        self._sync_next_lsn = self._next_lsn
        self._created = []

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    def append_chunk(self, chunk: Chunk) -> None:
        self._write(chunk.lsn, encode_record(chunk))

    def append_definition(self, definition: Definition) -> None:
        """A table's change of shape inside transaction ``definition.lsn`` (before its commit)."""
        self._write(definition.lsn, encode_record(definition))

    def append_commit(self, commit: Commit) -> None:
        self._write(commit.lsn, encode_record(commit))
        self._next_lsn = commit.lsn + 1

    def append_gap(self, gap: Gap) -> None:
        """Record that transactions from_lsn..to_lsn were lost (restore will not cross it)."""
        self._write(gap.from_lsn, encode_record(gap))
        self._next_lsn = gap.to_lsn + 1

    def append_epoch(self, epoch: Epoch) -> None:
        """Record that capture (re)started from a baseline at its source position."""
        self._write(epoch.lsn, encode_record(epoch))
        self._next_lsn = epoch.lsn + 1

    def roll_if_full(self) -> None:
        """Close a full segment; the next record starts a new one. Call between transactions."""
        if self._file is not None and self._file.tell() >= self.segment_bytes:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def _write(self, lsn: int, record: bytes) -> None:
        if self._file is None:
            self._start_segment(lsn)
        self._file.write(record)

    def _start_segment(self, lsn: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = segment_name(lsn)
        path = self.directory / name
        with path.open("xb") as handle:
            handle.write(segment_header())
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.directory)
        self._file = path.open("r+b")
        self._file.seek(0, os.SEEK_END)
        self._segment = name
        self._created.append(name)

    def sync(self) -> tuple[str | None, int]:
        """Make everything written so far durable; return the durable end (segment, offset)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._mark_synced()
        return self._sync_point

    def rollback(self) -> None:
        """Forget everything written since the last sync (a batch that failed)."""
        if self._file is not None:
            # Closing flushes the buffer, which fails again if the write failed (full disk):
            # the buffered bytes are meant to be dropped anyway.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        for name in self._created:
            (self.directory / name).unlink(missing_ok=True)
        segment, offset = self._sync_point
        self._segment = segment
        self._next_lsn = self._sync_next_lsn
        self._created = []
        if segment is not None:
            self._file = (self.directory / segment).open("r+b")
            self._file.truncate(offset)
            self._file.seek(offset)
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
