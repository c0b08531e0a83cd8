"""Replication of the local repository (the spool) to a bucket, as immutable objects.

The spool is the repository the drain and the snapshots write, durable on local disk;
the bucket is its copy off the machine, with the same names (docs/FORMAT.md, "The
repository in a bucket"). One round (``Replicator.run_once``) uploads, in order:

1. the format marker (once);
2. every closed segment (one before the segment holding the durable end) whole, as
   ``log/<segment>``, then deletes the pieces it was uploaded as while it was open;
3. the open segment's durable bytes not yet uploaded, as one more piece
   ``log/pieces/<segment>/<first byte's offset, 12 digits>``; a reader concatenates a
   segment's pieces in order of their offsets;
4. an end marker ``log/ends/<lsn>-<complete_through>.json``: the durable end the
   uploaded log reaches (never beyond it), written after the bytes it covers; then the
   markers before the newest two (and an older release's ``log/end.json``) are deleted;
5. each complete local snapshot not yet uploaded: its files, then its manifest.

Every object is written with ``write_if_absent``, never overwritten (a bucket with object
lock or a policy refusing overwrites takes it), and counted done only once the store has
confirmed the write (S3Store: the SHA-256 the server checked). An object that already
exists (an upload whose confirmation was lost to a crash) is compared with the spool's
bytes: the same bytes count as uploaded, other bytes raise ReplicationConflict (another
repository writes to the same prefix). What has been uploaded is recorded in the spool's
``replication.json`` after each object, so a restart neither uploads again nor skips
anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ObjectExistsError, RepositoryStore
from nkdaemon.repository.bucket_layout import PIECES, Within
from nkdaemon.repository.layout import MARKER
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import (
    DurableEnd,
    end_marker,
    furthest,
    read_end,
    surplus_ends,
)
from nkdaemon.repository.log_format import SUFFIX
from nkdaemon.repository.snapshots import CHECKED, MANIFEST
from nkdaemon.repository.state import Checkpoint, read_checkpoint

__all__ = [
    "PIECES",
    "PROGRESS_FILE",
    "Progress",
    "ReplicationConflict",
    "Replicator",
    "load_progress",
    "new_snapshots",
    "pending_bytes",
    "segment_bytes",
    "snapshot_bytes",
    "spool_end",
]

log = structlog.get_logger("nkdaemon.replicate")

PROGRESS_FILE = "replication.json"
PROGRESS_FORMAT = 1
PIECE_LIMIT = 16 << 20  # a longer backlog of the open segment goes up in several pieces
_BLOCK = 1 << 20


class ReplicationConflict(RepositoryError):
    """The bucket holds an object by a name the spool uploads, with other bytes."""

    kind = "replication_conflict"


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """What the bucket holds of the spool, as recorded in ``replication.json``.

    ``whole``: segments uploaded whole; ``open_segment``/``open_offset``: the segment
    uploaded as pieces, and how many of its bytes; ``end``: the durable end last written
    to the bucket (its newest end marker); ``snapshots``: the ids uploaded whole (manifest
    included); ``uploaded_bytes``: every byte uploaded, ever; ``behind_since``: when the
    replicator first found bytes it had not uploaded (None: it is caught up)."""

    whole: tuple[str, ...] = ()
    open_segment: str | None = None
    open_offset: int = 0
    end: dict[str, Any] | None = None
    snapshots: tuple[str, ...] = ()
    marker: bool = False
    uploaded_bytes: int = 0
    behind_since: str | None = None
    last_upload: str | None = None

    def uploaded_of(self, segment: str) -> int:
        """How many bytes of ``segment`` the bucket holds as pieces."""
        return self.open_offset if segment == self.open_segment else 0

    def as_json(self) -> bytes:
        fields = {f: getattr(self, f) for f in self.__slots__}
        return orjson.dumps({"format": PROGRESS_FORMAT, **fields}, option=orjson.OPT_INDENT_2)


def load_progress(spool: RepositoryStore) -> Progress:
    """The progress recorded in the spool; nothing uploaded when there is none."""
    try:
        data = orjson.loads(spool.read(PROGRESS_FILE))
    except FileNotFoundError:
        return Progress()
    except orjson.JSONDecodeError:
        raise RepositoryError(
            f"{spool.describe(PROGRESS_FILE)} is damaged",
            hint="delete it: the next round compares every object with the bucket's "
            "and uploads only what is missing",
        ) from None
    data.pop("format", None)
    for name in ("whole", "snapshots"):
        data[name] = tuple(data.get(name, ()))
    return Progress(**data)


def segment_bytes(spool: RepositoryStore, end: DurableEnd | None) -> dict[str, int]:
    """The durable bytes of each segment of the spool: whole for a closed segment, up to
    the durable end for the open one; segments past the durable end are not yet durable."""
    if end is None or end.segment is None:
        return {}
    sizes: dict[str, int] = {}
    for name in spool.list("log/"):
        segment = name.removeprefix("log/")
        if "/" in segment or not segment.endswith(SUFFIX) or segment > end.segment:
            continue
        try:
            sizes[segment] = end.offset if segment == end.segment else spool.size(name)
        except FileNotFoundError:  # pruned since listed (services/prune): uploaded already
            continue
    return sizes


def spool_end(spool: Path) -> DurableEnd | None:
    """Where the spool's durable log ends: the furthest of log/end.json and state.db's
    checkpoint (a repository of an older release may have only the checkpoint)."""
    checkpoint = read_checkpoint(spool / "state.db")
    recorded = None if checkpoint is None else DurableEnd.of(checkpoint, "state.db")
    return furthest([read_end(LocalStore(spool / "log")), recorded])


def pending_bytes(progress: Progress, sizes: dict[str, int]) -> int:
    """Durable log bytes (``sizes``: see segment_bytes) the bucket lacks by ``progress``."""
    whole = set(progress.whole)
    return sum(size - progress.uploaded_of(n) for n, size in sizes.items() if n not in whole)


def snapshot_bytes(spool: RepositoryStore, snapshots: list[str]) -> int:
    """The size of these snapshots' files in the spool (0 for one pruned meanwhile)."""
    total = 0
    for snapshot in snapshots:
        try:
            total += sum(spool.size(n) for n in spool.list(f"snapshots/{snapshot}/"))
        except FileNotFoundError:
            continue
    return total


def new_snapshots(spool: RepositoryStore, progress: Progress) -> list[str]:
    """The complete snapshots of the spool (manifest written) not yet uploaded."""
    done = set(progress.snapshots)
    return [
        name.split("/")[1]
        for name in spool.list("snapshots/")
        if name.count("/") == 2 and name.endswith(f"/{MANIFEST}")
        if name.split("/")[1] not in done
    ]


@dataclass(kw_only=True)
class Replicator:
    """Uploads the spool at ``spool`` to ``bucket`` (see the module docstring). One
    round at a time; the spool's writers (drain, snapshots) may run alongside."""

    spool: Path
    bucket: RepositoryStore
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    local: LocalStore = field(init=False)
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.local = LocalStore(self.spool)
        self.progress = load_progress(self.local)

    def run_once(self) -> Progress:
        """Upload everything durable in the spool that the bucket lacks; return the
        progress, recorded. A failure raises (the store's errors, or ReplicationConflict)
        with what was confirmed before it recorded."""
        end, sizes = self.note_backlog()
        if not self.progress.marker:
            self._upload(MARKER, self.local.size(MARKER))
            self._record(marker=True)
        if end is not None and end.segment is not None:
            self._upload_log(end, sizes)
        for snapshot in self._new_snapshots():
            self._upload_snapshot(snapshot)
        if not self.pending_bytes(sizes):
            self._record(behind_since=None)
        return self.progress

    def note_backlog(self) -> tuple[DurableEnd | None, dict[str, int]]:
        """Record since when the bucket lacks durable bytes, if it does and that is not
        recorded yet; reads the spool only, so the lag counts while the store is down.
        Returns the spool's durable end and its segments' durable sizes."""
        end = spool_end(self.spool)
        sizes = segment_bytes(self.local, end)
        if self.pending_bytes(sizes) and self.progress.behind_since is None:
            self._record(behind_since=self.clock().isoformat())
        return end, sizes

    def pending_bytes(self, sizes: dict[str, int]) -> int:
        """Durable log bytes of the spool (``sizes``: see segment_bytes) the bucket lacks,
        and the bytes of complete snapshots not yet uploaded."""
        return pending_bytes(self.progress, sizes) + snapshot_bytes(
            self.local, self._new_snapshots()
        )

    # --- the log -----------------------------------------------------------------------

    def _upload_log(self, end: DurableEnd, sizes: dict[str, int]) -> None:
        assert end.segment is not None
        for name in sorted(sizes):
            if name < end.segment and name not in self.progress.whole:
                self._upload_whole(name, sizes[name])
        while self.progress.uploaded_of(end.segment) < end.offset:
            self._upload_piece(end.segment, end.offset)
        if self.progress.end != _end_fields(end):
            self._upload_end(end)
            self._record(end=_end_fields(end))
            self._trim_ends()

    def _upload_end(self, end: DurableEnd) -> None:
        """Write the end marker of ``end``; one already there with the same bytes (written
        before a crash lost our record of it) is the same end, written."""
        name, data = end_marker(_checkpoint(end))
        try:
            self.bucket.write_if_absent(f"log/{name}", data)
        except ObjectExistsError:
            if self.bucket.read(f"log/{name}") != data:
                raise ReplicationConflict(
                    f"{self.bucket.describe(f'log/{name}')} exists with another durable end "
                    f"than the spool's ({end.describe()})",
                    hint="another repository writes to this bucket and prefix: give each "
                    "repository its own [repository] url",
                ) from None
        log.debug("replicate.end", marker=name, lsn=end.lsn)

    def _trim_ends(self) -> None:
        """Delete the end markers the newest ones supersede (a reader that listed one
        reads the next; see log_end), once the newest is confirmed."""
        for name in surplus_ends(Within(self.bucket, "log/")):
            self.bucket.delete(f"log/{name}")

    def _upload_whole(self, segment: str, size: int) -> None:
        self._upload(f"log/{segment}", size)
        for piece in self.bucket.list(f"{PIECES}/{segment}/"):  # the whole replaces them
            self.bucket.delete(piece)
        opened = self.progress.open_segment == segment
        self._record(
            whole=(*self.progress.whole, segment),
            open_segment=None if opened else self.progress.open_segment,
            open_offset=0 if opened else self.progress.open_offset,
        )
        log.info("replicate.segment", segment=segment, bytes=size)

    def _upload_piece(self, segment: str, durable: int) -> None:
        start = self.progress.uploaded_of(segment)
        with self.local.open(f"log/{segment}") as handle:
            handle.seek(start)
            data = handle.read(min(durable - start, PIECE_LIMIT))
        name = f"{PIECES}/{segment}/{start:012d}"
        try:
            self.bucket.write_if_absent(name, data)
            length = sent = len(data)
        except ObjectExistsError:  # uploaded before a crash lost our record of it
            length, sent = self._check_piece(name, segment, start), 0
        self._record(
            open_segment=segment,
            open_offset=start + length,
            uploaded_bytes=self.progress.uploaded_bytes + sent,
            last_upload=self.clock().isoformat(),
        )
        log.debug("replicate.piece", segment=segment, start=start, bytes=length)

    def _check_piece(self, name: str, segment: str, start: int) -> int:
        """The length of a piece the bucket already holds, if the spool holds its bytes."""
        held = self.bucket.read(name)
        with self.local.open(f"log/{segment}") as handle:
            handle.seek(start)
            mine = handle.read(len(held))
        if not held or mine != held:
            raise self._conflict(name)
        return len(held)

    # --- snapshots ---------------------------------------------------------------------

    def _new_snapshots(self) -> list[str]:
        return new_snapshots(self.local, self.progress)

    def _upload_snapshot(self, snapshot: str) -> None:
        folder = f"snapshots/{snapshot}/"
        try:
            files = [n for n in self.local.list(folder) if not n.endswith((MANIFEST, CHECKED))]
            for name in [*files, folder + MANIFEST]:  # the manifest last
                self._upload(name, self.local.size(name))
        except FileNotFoundError:  # pruned from the spool meanwhile: nothing to keep
            log.info("replicate.snapshot_gone", snapshot=snapshot)
            return
        self._record(snapshots=(*self.progress.snapshots, snapshot))
        log.info("replicate.snapshot", snapshot=snapshot)

    # --- objects -----------------------------------------------------------------------

    def _upload(self, name: str, size: int) -> None:
        """Upload the spool's object ``name`` unless the bucket holds the same bytes."""
        try:
            with self.local.open(name) as handle:
                self.bucket.write_if_absent(name, handle)
        except ObjectExistsError:
            if _sha256(self.bucket.open(name)) != _sha256(self.local.open(name)):
                raise self._conflict(name) from None
            size = 0  # not uploaded now
        self._record(
            uploaded_bytes=self.progress.uploaded_bytes + size,
            last_upload=self.clock().isoformat(),
        )

    def _conflict(self, name: str) -> ReplicationConflict:
        return ReplicationConflict(
            f"{self.bucket.describe(name)} exists with other bytes than "
            f"{self.local.describe(name)}",
            hint="another repository writes to this bucket and prefix: give each "
            "repository its own [repository] url",
        )

    def _record(self, **changes: Any) -> None:
        self.progress = replace(self.progress, **changes)
        self.local.replace(PROGRESS_FILE, self.progress.as_json())


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    with handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _end_fields(end: DurableEnd) -> dict[str, Any]:
    return {
        "lsn": end.lsn,
        "segment": end.segment,
        "offset": end.offset,
        "position": end.position,
        "commit_time": end.commit_time,
        "complete_through": end.complete_through,
    }


def _checkpoint(end: DurableEnd) -> Checkpoint:
    return Checkpoint(**_end_fields(end))
