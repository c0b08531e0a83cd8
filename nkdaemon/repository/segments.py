"""The append-only event log: segment files of checksummed records.

Layout and format are specified in docs/FORMAT.md. In short: each segment starts with a
16-byte header (magic, format version, header CRC); each record is ``u32 length, u32
crc32, body`` where the body is one kind byte and a JSON payload (zstd-compressed when the
kind byte has bit 0x80). A transaction is zero or more CHUNK records and one COMMIT record.

Written records are never rewritten. The only bytes ever removed are those past the last
durable point after a crash (a torn tail), and only by :meth:`SegmentLog.recover`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from nkdaemon.core.errors import LogCorruptionError, RepositoryError
from nkdaemon.repository.files import fsync_dir

MAGIC = b"NKDLOG\r\n"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
FRAME = struct.Struct("<II")
SUFFIX = ".nkdlog"
MAX_RECORD = 1 << 30

KIND_CHUNK = 1
KIND_COMMIT = 2
KIND_GAP = 3
KIND_EPOCH = 4
ENDING_KINDS = (KIND_COMMIT, KIND_GAP, KIND_EPOCH)
COMPRESSED = 0x80
COMPRESS_OVER = 4096

_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One decoded record and where it lies."""

    segment: str
    offset: int
    end: int
    kind: int
    payload: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class LogEnd:
    """Where the log ends: the last whole transaction and the byte after it."""

    segment: str | None
    offset: int
    last_lsn: int
    last_position: int
    last_commit_time: str | None


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016d}{SUFFIX}"


def encode_record(kind: int, payload: dict[str, Any]) -> bytes:
    body = orjson.dumps(payload)
    if len(body) > COMPRESS_OVER:
        body = _compressor.compress(body)
        kind |= COMPRESSED
    framed = bytes([kind]) + body
    return FRAME.pack(len(framed), zlib.crc32(framed)) + framed


def _header() -> bytes:
    head = struct.pack("<8sHH", MAGIC, FORMAT_VERSION, 0)
    return head + struct.pack("<I", zlib.crc32(head))


class _Torn(Exception):
    """The bytes at an offset are not a whole valid record."""

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(detail)
        self.offset = offset
        self.detail = detail


def _read_segment(path: Path, *, start: int = HEADER.size) -> Iterator[Record | _Torn]:
    """Yield the records of one segment; a _Torn marks the first invalid bytes, then stops."""
    data = path.read_bytes()
    if len(data) < HEADER.size:
        yield _Torn(0, "segment header is incomplete")
        return
    magic, version, _reserved, crc = HEADER.unpack_from(data)
    if magic != MAGIC or zlib.crc32(data[:12]) != crc:
        yield _Torn(0, "segment header is not an nkdaemon log header")
        return
    if version > FORMAT_VERSION:
        raise RepositoryError(
            f"log segment {path.name} has format version {version}; this release reads up "
            f"to {FORMAT_VERSION}",
            hint="upgrade nkdaemon to read this repository",
        )
    offset = max(start, HEADER.size)
    while offset < len(data):
        if len(data) - offset < FRAME.size:
            yield _Torn(offset, "record header is cut short")
            return
        length, crc = FRAME.unpack_from(data, offset)
        body_start = offset + FRAME.size
        if length == 0 or length > MAX_RECORD or body_start + length > len(data):
            yield _Torn(offset, f"record length {length} runs past the end of the segment")
            return
        body = data[body_start : body_start + length]
        if zlib.crc32(body) != crc:
            yield _Torn(offset, "record checksum does not match its contents")
            return
        kind = body[0]
        raw = body[1:]
        if kind & COMPRESSED:
            raw = _decompressor.decompress(raw)
            kind &= ~COMPRESSED
        yield Record(
            segment=path.name,
            offset=offset,
            end=body_start + length,
            kind=kind,
            payload=orjson.loads(raw),
        )
        offset = body_start + length


class SegmentLog:
    """The log directory: reading, tail recovery and appending.

    One writer at a time (the repository lock sees to it); readers may run alongside and
    see only whole records.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._file: Any = None
        self._segment: str | None = None
        self._next_lsn = 1
        self._sync_point: tuple[str | None, int] = (None, 0)
        self._sync_next_lsn = 1
        self._created: list[str] = []

    # --- reading ---------------------------------------------------------------------

    def segments(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX))

    def size_bytes(self) -> int:
        return sum((self.directory / name).stat().st_size for name in self.segments())

    def records(self, *, from_lsn: int = 1, strict: bool = False) -> Iterator[Record]:
        """Every whole record from the segment holding ``from_lsn`` on.

        Invalid bytes end the iteration: at the tail of the last segment they are a write
        in progress (or torn by a crash); anywhere else they are corruption, raised as
        LogCorruptionError. With ``strict`` even the last segment's tail must be clean.
        """
        names = self.segments()
        first = 0
        for i, name in enumerate(names):
            if int(name[: -len(SUFFIX)]) <= from_lsn:
                first = i
        for i, name in enumerate(names[first:], start=first):
            last = i == len(names) - 1
            for item in _read_segment(self.directory / name):
                if isinstance(item, _Torn):
                    if strict or not last:
                        raise LogCorruptionError(name, item.offset, item.detail)
                    return
                yield item

    # --- writing ---------------------------------------------------------------------

    def recover(self, *, durable_segment: str | None, durable_offset: int) -> LogEnd:
        """Open for appending: cut a torn tail, report corruption, find the end.

        ``durable_segment``/``durable_offset`` is the last point the repository recorded as
        made durable. Invalid bytes after it are a crash's torn tail and are cut; invalid
        bytes before it are damage and raise LogCorruptionError.
        """
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
        torn: _Torn | None = None
        for item in _read_segment(path):
            if isinstance(item, _Torn):
                torn = item
                break
            if item.kind in ENDING_KINDS:
                last_end = LogEnd(
                    segment=name,
                    offset=item.end,
                    last_lsn=int(item.payload.get("lsn", item.payload.get("to_lsn", 0))),
                    last_position=int(item.payload.get("pos", 0)),
                    last_commit_time=item.payload.get("time"),
                )
        if torn is not None and self._is_damage(path, name, torn, durable_segment, durable_offset):
            raise LogCorruptionError(name, torn.offset, torn.detail)
        cut_at = last_end.offset if last_end is not None else HEADER.size
        if path.stat().st_size > cut_at:
            with path.open("r+b") as handle:
                handle.truncate(cut_at)
                os.fsync(handle.fileno())
        return last_end

    @staticmethod
    def _is_damage(
        path: Path, name: str, torn: _Torn, durable_segment: str | None, durable_offset: int
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

    def append_chunk(self, lsn: int, part: int, events: list[dict[str, Any]]) -> None:
        self._write(lsn, encode_record(KIND_CHUNK, {"lsn": lsn, "part": part, "events": events}))

    def append_commit(self, payload: dict[str, Any]) -> None:
        lsn = int(payload["lsn"])
        self._write(lsn, encode_record(KIND_COMMIT, payload))
        self._next_lsn = lsn + 1

    def append_gap(self, from_lsn: int, to_lsn: int, position: int, reason: str) -> None:
        """Record that transactions from_lsn..to_lsn were lost (restore will not cross it)."""
        payload = {"from_lsn": from_lsn, "to_lsn": to_lsn, "pos": position, "reason": reason}
        self._write(from_lsn, encode_record(KIND_GAP, payload))
        self._next_lsn = to_lsn + 1

    def append_epoch(self, payload: dict[str, Any]) -> None:
        """Record that capture (re)started from a baseline at source position ``pos``."""
        lsn = int(payload["lsn"])
        self._write(lsn, encode_record(KIND_EPOCH, payload))
        self._next_lsn = lsn + 1

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
            handle.write(_header())
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
