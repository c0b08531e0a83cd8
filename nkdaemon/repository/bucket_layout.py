"""A repository replicated to a bucket, as its readers see it (docs/FORMAT.md, "The
repository in a bucket"): the log folder as whole segments, however they were uploaded,
and the snapshots' folder, each a RepositoryStore over the bucket's store.

A closed segment is one object ``log/<segment>``; the open one is its pieces
``log/pieces/<segment>/<offset>``, which ``read_segment`` concatenates, checking that
each starts where the one before ended. The durable end is in the end markers
``log/ends/`` (repository/log_end.py), or in ``log/end.json`` where an older release
wrote the bucket. Both views are read-only.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path
from typing import IO

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ReadableBytes, RepositoryStore
from nkdaemon.repository.layout import MARKER
from nkdaemon.repository.log_end import END_FILE, ENDS
from nkdaemon.repository.log_format import SUFFIX
from nkdaemon.repository.segments import SegmentLog

__all__ = [
    "PIECES",
    "BucketLog",
    "Within",
    "bucket_log",
    "bucket_snapshots",
    "read_segment",
    "require_bucket_repository",
]

PIECES = "log/pieces"


def read_segment(bucket: RepositoryStore, segment: str) -> bytes:
    """The bytes of ``segment`` the bucket holds: the whole object, else its pieces
    concatenated (each must start where the one before ended)."""
    if f"log/{segment}" in bucket.list(f"log/{segment}"):
        return bucket.read(f"log/{segment}")
    out = io.BytesIO()
    for piece in bucket.list(f"{PIECES}/{segment}/"):
        start = int(piece.rsplit("/", 1)[1])
        if start != out.tell():
            raise RepositoryError(
                f"{bucket.describe(piece)} starts at byte {start}, but the pieces before "
                f"it end at byte {out.tell()}",
                hint="a piece is missing or doubled; copy the segment from the spool",
            )
        out.write(bucket.read(piece))
    return out.getvalue()


class Within:
    """The objects of ``store`` under ``folder`` (ending in "/"), as a store."""

    def __init__(self, store: RepositoryStore, folder: str) -> None:
        self._store, self._folder = store, folder

    def list(self, prefix: str = "") -> list[str]:
        return [n.removeprefix(self._folder) for n in self._store.list(self._folder + prefix)]

    def size(self, name: str) -> int:
        return self._store.size(self._folder + name)

    def read(self, name: str) -> bytes:
        return self._store.read(self._folder + name)

    def open(self, name: str) -> IO[bytes]:
        return self._store.open(self._folder + name)

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        self._store.write_if_absent(self._folder + name, data)

    def replace(self, name: str, data: bytes) -> None:
        self._store.replace(self._folder + name, data)

    def delete(self, name: str) -> None:
        self._store.delete(self._folder + name)

    def describe(self, name: str = "") -> str:
        return self._store.describe(self._folder + name)


class BucketLog:
    """The bucket's ``log/`` as the log folder a SegmentLog reads: segments by name
    (whole, or assembled from their pieces), the end markers and ``end.json``. Read-only."""

    def __init__(self, bucket: RepositoryStore) -> None:
        self._bucket = bucket

    def list(self, prefix: str = "") -> list[str]:
        # segments held as pieces are named by the folder of their pieces: the whole
        # log folder is listed, but for the end markers alone (read_end lists them often)
        folder = f"log/{prefix}" if prefix.startswith(ENDS) else "log/"
        names = {n.removeprefix("log/") for n in self._bucket.list(folder)}
        whole = {n for n in names if "/" not in n and n.endswith(SUFFIX)}
        pieces = {n.split("/")[1] for n in names if n.startswith("pieces/") and n.count("/") == 2}
        ends = {n for n in names if n == END_FILE or n.startswith(ENDS)}
        return sorted(n for n in whole | pieces | ends if n.startswith(prefix))

    def size(self, name: str) -> int:
        return len(self.read(name)) if name.endswith(SUFFIX) else self._bucket.size(f"log/{name}")

    def read(self, name: str) -> bytes:
        if name.endswith(SUFFIX):
            data = read_segment(self._bucket, name)
            if not data:
                raise FileNotFoundError(errno.ENOENT, f"segment {name} is not in the bucket")
            return data
        return self._bucket.read(f"log/{name}")

    def open(self, name: str) -> IO[bytes]:
        return io.BytesIO(self.read(name))

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        raise self._read_only(name)

    def replace(self, name: str, data: bytes) -> None:
        raise self._read_only(name)

    def delete(self, name: str) -> None:
        raise self._read_only(name)

    def describe(self, name: str = "") -> str:
        return self._bucket.describe(f"log/{name}" if name else "log")

    def _read_only(self, name: str) -> RepositoryError:
        return RepositoryError(
            f"{self.describe(name)}: the bucket's log is read here, never written",
            hint="the daemon writes the spool and replicates it",
        )


def bucket_log(bucket: RepositoryStore) -> SegmentLog:
    """A reader of the bucket's log (records, durable end) as of a SegmentLog: its
    ``store`` is the port every read goes through. Nothing is appended to it."""
    log = SegmentLog(Path(bucket.describe("log")))
    log.store = BucketLog(bucket)  # type: ignore[assignment]  # the readers' port
    return log


def require_bucket_repository(bucket: RepositoryStore) -> None:
    """Raise RepositoryError unless the bucket holds a repository (its marker)."""
    if MARKER not in bucket.list(MARKER):
        raise RepositoryError(
            f"{bucket.describe()} holds no nkdaemon repository",
            hint="check [repository] url (bucket and prefix) and endpoint_url; a daemon "
            "uploads its marker with its first round",
        )


def bucket_snapshots(bucket: RepositoryStore) -> RepositoryStore:
    """The bucket's ``snapshots/`` as the snapshots' store (list_snapshots, read_table)."""
    return Within(bucket, "snapshots/")


_: type[RepositoryStore] = BucketLog
__: type[RepositoryStore] = Within
