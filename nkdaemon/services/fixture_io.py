"""Fixture files, plain or compressed (gzip, bzip2, xz, zstd), read and written as streams.

Reading recognises the compression by the file's first bytes, whatever its name; writing
chooses it by the name's suffix. Writes go to a temporary name, fsynced, then renamed, so
a fixture exists whole or not at all.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import zstandard

from nkdaemon.core.errors import UsageError

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read through it (progress over a compressed
    file is progress over its compressed bytes)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def compression_of(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(6)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), "none")


@contextlib.contextmanager
def open_fixture(path: Path) -> Iterator[tuple[IO[bytes], CountingReader]]:
    """(decompressed stream, counter of the file's bytes read so far)."""
    try:
        kind = compression_of(path)
        raw = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror}") from None
    counter = CountingReader(raw)
    buffered = io.BufferedReader(counter, buffer_size=1 << 20)
    stream: Any
    if kind == "gzip":
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")
    elif kind == "bzip2":
        stream = bz2.BZ2File(buffered, mode="rb")
    elif kind == "xz":
        stream = lzma.LZMAFile(buffered, mode="rb")  # noqa: SIM115  closed below
    elif kind == "zstd":
        stream = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    else:
        stream = buffered
    try:
        yield stream, counter
    finally:
        stream.close()
        raw.close()


@contextlib.contextmanager
def write_fixture(path: Path | None) -> Iterator[IO[bytes]]:
    """A binary stream into ``path`` (compressed by its suffix), made visible only when
    the block ends without an error; None: standard output."""
    if path is None:
        import sys

        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    kind = _SUFFIXES.get(path.suffix, "none")
    try:
        with tmp.open("wb") as raw:
            yield from _compressed(raw, kind)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _compressed(raw: IO[bytes], kind: str) -> Iterator[IO[bytes]]:
    if kind == "none":
        buffered = io.BufferedWriter(raw, buffer_size=1 << 20)
        yield buffered
        buffered.flush()
        buffered.detach()
        return
    stream: Any
    if kind == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)
    elif kind == "bzip2":
        stream = bz2.BZ2File(raw, mode="wb")
    elif kind == "xz":
        stream = lzma.LZMAFile(raw, mode="wb")  # noqa: SIM115  with below
    else:
        stream = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    with stream:
        yield stream
