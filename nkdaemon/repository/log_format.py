"""The log's bytes: segment header, record framing and kinds, encoding and decoding.

Specified in docs/FORMAT.md. Little-endian; each segment starts with a 16-byte header
(magic, format version, header CRC); each record is ``u32 length, u32 crc32, body`` where
the body is one kind byte and a JSON payload (zstd-compressed when the kind byte has bit
0x80).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.log import (
    KIND_CHUNK,
    KIND_COMMIT,
    KIND_DEFINITION,
    KIND_EPOCH,
    KIND_GAP,
    Entry,
    Gap,
    UnknownRecord,
    decode,
    encode,
    is_partial,
)

__all__ = [
    "COMPRESSED",
    "COMPRESS_OVER",
    "ENDING_KINDS",
    "FORMAT_VERSION",
    "HEADER",
    "KIND_CHUNK",
    "KIND_COMMIT",
    "KIND_DEFINITION",
    "KIND_EPOCH",
    "KIND_GAP",
    "MAGIC",
    "SUFFIX",
    "Record",
    "Torn",
    "encode_record",
    "read_segment",
    "segment_header",
    "segment_name",
]

MAGIC = b"NKDLOG\r\n"
# Version 2 added DEFINITION records (a release that reads 1 only would skip a table's
# change of shape, so it must refuse); segments of version 1 are read as before.
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sHHI")
FRAME = struct.Struct("<II")
SUFFIX = ".nkdlog"
MAX_RECORD = 1 << 30

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
    entry: Entry

    @property
    def last_lsn(self) -> int:
        """The last lsn the record accounts for: 0 for a chunk (its transaction is not
        whole yet), the commit's or epoch's lsn, a gap's last lost lsn."""
        entry = self.entry
        if is_partial(entry):
            return 0
        return entry.to_lsn if isinstance(entry, Gap) else entry.lsn


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016d}{SUFFIX}"


def encode_record(entry: Entry) -> bytes:
    """The framed bytes of one record (see core/log.py for its payload)."""
    kind, payload = encode(entry)
    body = orjson.dumps(payload)
    if len(body) > COMPRESS_OVER:
        body = _compressor.compress(body)
        kind |= COMPRESSED
    framed = bytes([kind]) + body
    return FRAME.pack(len(framed), zlib.crc32(framed)) + framed


def segment_header() -> bytes:
    head = struct.pack("<8sHH", MAGIC, FORMAT_VERSION, 0)
    return head + struct.pack("<I", zlib.crc32(head))


class Torn(Exception):
    """The bytes at an offset are not a whole valid record."""

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(detail)
        self.offset = offset
        self.detail = detail


def read_segment(path: Path, *, start: int = HEADER.size) -> Iterator[Record | Torn]:
    """Yield the records of one segment file (see decode_segment)."""
    yield from decode_segment(path.name, path.read_bytes(), start=start)


def decode_segment(name: str, data: bytes, *, start: int = HEADER.size) -> Iterator[Record | Torn]:
    """Yield the records of segment ``name``, whose bytes are ``data``; a Torn marks the
    first invalid bytes, then stops."""
    if len(data) < HEADER.size:
        yield Torn(0, "segment header is incomplete")
        return
    magic, version, _reserved, crc = HEADER.unpack_from(data)
    if magic != MAGIC or zlib.crc32(data[:12]) != crc:
        yield Torn(0, "segment header is not an nkdaemon log header")
        return
    if version > FORMAT_VERSION:
        raise RepositoryError(
            f"log segment {name} has format version {version}; this release reads up "
            f"to {FORMAT_VERSION}",
            hint="upgrade nkdaemon to read this repository",
        )
    offset = max(start, HEADER.size)
    while offset < len(data):
        if len(data) - offset < FRAME.size:
            yield Torn(offset, "record header is cut short")
            return
        length, crc = FRAME.unpack_from(data, offset)
        body_start = offset + FRAME.size
        if length == 0 or length > MAX_RECORD or body_start + length > len(data):
            yield Torn(offset, f"record length {length} runs past the end of the segment")
            return
        body = data[body_start : body_start + length]
        if zlib.crc32(body) != crc:
            yield Torn(offset, "record checksum does not match its contents")
            return
        kind = body[0]
        raw = body[1:]
        if kind & COMPRESSED:
            raw = _decompressor.decompress(raw)
            kind &= ~COMPRESSED
        yield Record(
            segment=name,
            offset=offset,
            end=body_start + length,
            kind=kind,
            entry=_decoded(name, offset, kind, raw),
        )
        offset = body_start + length


def _decoded(name: str, offset: int, kind: int, raw: bytes) -> Entry:
    try:
        return decode(kind, orjson.loads(raw))
    except UnknownRecord as exc:  # a whole record, checksum valid: written by a later release
        raise RepositoryError(
            f"log segment {name} offset {offset}: {exc}",
            hint="upgrade nkdaemon to read this repository",
        ) from None
