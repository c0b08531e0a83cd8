"""What the backup looks like now: lag, queue depth, last logged transaction, log size.

Read from the local repository (with a bucket: the spool, and how far the bucket is
behind it); on a machine with no spool and a configuration naming a bucket, from the
bucket itself: its snapshots, the end of its log, the position it is replicated to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nkdaemon.core.errors import NkdError
from nkdaemon.core.ownership import not_ours
from nkdaemon.core.ports import CaptureSource, RepositoryStore
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.log_end import DurableEnd
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots
from nkdaemon.repository.state import StateStore
from nkdaemon.services.replication_status import replication_status


class StatusView(Protocol):
    """What status reads: the repository and the source, each opened only when read (the
    state only if the repository exists, the source last, so a down source costs nothing
    else). The runtime's Session is one."""

    @property
    def layout(self) -> RepositoryLayout: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def log_store(self) -> SegmentLog: ...

    @property
    def source(self) -> CaptureSource: ...

    @property
    def from_bucket(self) -> bool:
        """True when the repository read is the bucket (no spool on this machine)."""

    @property
    def snapshots(self) -> Path | RepositoryStore: ...

    def require_repository(self) -> None: ...


def collect_status(
    session: StatusView,
    *,
    source_name: str,
    bucket: str | None = None,
    bucket_objects: RepositoryStore | None = None,
    max_replication_lag: float | None = None,
    source_configured: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The status document (`status --json`, `/status`). Never raises for a down source
    or an unreachable bucket.

    ``source_name`` is the source's URL with the password hidden; ``bucket`` the bucket
    the repository (then the spool) is replicated to, if any; ``bucket_objects`` the
    bucket's objects as stored (their sizes are the log's size when the bucket is read);
    with ``max_replication_lag``, a bucket behind the spool for longer is a problem."""
    now = now or datetime.now(UTC)
    status: dict[str, Any] = {
        "source": source_name,
        "repository": str(session.layout.root),
        "queue_depth": None,
        "lag_seconds": None,
        "last_lsn": 0,
        "last_commit_time": None,
        "complete_through": None,
        "snapshots": [],
        "log_bytes": 0,
        "log_segments": 0,
        "capture_mode": None,
        "errors": [],
        "notes": [],
    }
    if session.from_bucket and bucket is not None:
        _bucket_part(session, bucket, bucket_objects, status)
    elif session.layout.exists():
        _repository_part(session, status)
        if bucket is not None:
            _replication_part(session.layout, bucket, now, status, max_replication_lag)
    else:
        status["errors"].append("the repository does not exist yet (run `nkdaemon install`)")
    stopped = session.state.get_meta("capture_stopped") if session.layout.exists() else None
    if stopped:
        status["errors"].append(f"capture stopped: {stopped}")
    if not source_configured:
        status["notes"].append(
            "no [source] in this configuration: what the bucket holds is shown; the queue "
            "and the capture lag are known where the source is configured"
        )
        return status
    try:
        status["capture_mode"] = session.source.capture_mode()
        _capture_owner(session, status)
        status["queue_depth"] = session.source.queue_depth()
        oldest = session.source.oldest_pending()
        status["lag_seconds"] = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    except NkdError as exc:
        status["errors"].append(exc.message)
    return status


def _repository_part(session: StatusView, status: dict[str, Any]) -> None:
    """The log's position and size, and the snapshots, into ``status``."""
    checkpoint = session.state.checkpoint()
    status["last_lsn"] = checkpoint.lsn
    status["last_commit_time"] = checkpoint.commit_time
    status["complete_through"] = _complete_through(session, status["errors"])
    status["log_bytes"] = session.log_store.size_bytes()
    status["log_segments"] = len(session.log_store.segments())
    _snapshot_part(list_snapshots(session.layout.snapshots_dir), status)


def _snapshot_part(snapshots: list[SnapshotInfo], status: dict[str, Any]) -> None:
    """The snapshots into ``status``: those taken, and those imported apart."""
    status["snapshots"] = [
        {
            "id": s.id,
            "time": s.time,
            "position": s.position,
            "rows": sum(t.rows for t in s.tables),
        }
        for s in snapshots
        if s.imported is None
    ]
    # older backups taken in by import-legacy: restore points at their own instant only
    status["imported_snapshots"] = [
        {"id": s.id, "time": s.time, "rows": sum(t.rows for t in s.tables), **s.imported}
        for s in snapshots
        if s.imported is not None
    ]


def _replication_part(
    layout: RepositoryLayout,
    bucket: str,
    now: datetime,
    status: dict[str, Any],
    max_lag: float | None,
) -> None:
    """How far the bucket is behind the spool, read from the spool (the bucket is not
    asked); behind for longer than ``max_lag``: replication is failing, a problem."""
    try:
        replication = replication_status(layout.root, bucket=bucket, now=now)
    except (OSError, NkdError) as exc:
        message = exc.message if isinstance(exc, NkdError) else str(exc)
        status["replication"] = {"bucket": bucket, "lag_seconds": None}
        status["errors"].append(f"replication: {message}")
        return
    lag = replication["lag_seconds"]
    replication["failing"] = max_lag is not None and lag > max_lag
    status["replication"] = replication
    if replication["failing"]:
        status["errors"].append(
            f"replication is failing: the bucket has lacked {replication['lag_bytes']} bytes "
            f"of the spool for {lag:.1f} s, longer than [health] max_replication_lag "
            f"({max_lag:.0f} s); last upload {replication['last_upload'] or 'never'}. "
            "The daemon's /readyz and its log say why; capture goes on into the spool, and "
            "the backlog goes up once the store answers"
        )


def _bucket_part(
    session: StatusView,
    bucket: str,
    objects: RepositoryStore | None,
    status: dict[str, Any],
) -> None:
    """What the bucket holds, read from it (no spool here): its snapshots, where its log
    ends, the position it is replicated to. How far it is behind is known only where the
    spool is (the daemon's machine)."""
    status["repository"] = bucket
    status["replication"] = {"bucket": bucket, "read_from": "bucket", "lag_seconds": None}
    try:
        session.require_repository()
        end = session.log_store.durable_end()
        segments = session.log_store.segments()
        listed = list_snapshots(session.snapshots)
        log_bytes = _bucket_log_bytes(objects, segments, end)
    except (OSError, NkdError) as exc:  # said on one line, with what to do
        hint = exc.hint if isinstance(exc, NkdError) else None
        message = exc.message if isinstance(exc, NkdError) else f"bucket {bucket}: {exc}"
        status["errors"].append(f"{message} (hint: {hint})" if hint else message)
        return
    _snapshot_part(listed, status)
    status["log_segments"] = len(segments)
    status["log_bytes"] = log_bytes
    if end is not None:
        status["last_lsn"] = end.lsn
        status["last_commit_time"] = end.commit_time
        status["complete_through"] = end.complete_through
    status["replication"].update(
        replicated_lsn=0 if end is None else end.lsn,
        replicated_position=0 if end is None else end.position,
        replicated_commit_time=None if end is None else end.commit_time,
    )


def _bucket_log_bytes(
    objects: RepositoryStore | None, segments: list[str], end: DurableEnd | None
) -> int:
    """The bytes of the bucket's log up to its durable end: each closed segment as stored
    (whole, one object each), and the open one's bytes its end.json counts (its pieces
    are not asked one by one: there may be thousands)."""
    if end is None or end.segment is None:
        return 0
    closed = [s for s in segments if s < end.segment]
    held = 0 if objects is None else sum(objects.size(f"log/{s}") for s in closed)
    return held + end.offset


def _capture_owner(session: StatusView, status: dict[str, Any]) -> None:
    """Which repository the source's capture feeds; an error when it is not this one."""
    status["capture_owner"] = None
    owner = session.source.owner()
    if owner is None:
        return
    ours = session.state.get_meta("installation_id") if session.layout.exists() else None
    status["capture_owner"] = {
        "repository": owner.repository,
        "host": owner.host,
        "since": None if owner.since is None else owner.since.isoformat(),
        "this_repository": owner.installation == ours,
    }
    if owner.installation != ours and not session.from_bucket:  # the bucket has no state
        status["errors"].append(not_ours(owner, ours).message)


def _complete_through(session: StatusView, errors: list[str]) -> str | None:
    """The time up to which the log holds every committed transaction (the last drain pass
    that read the whole queue), so `restore --at` any time up to it."""
    try:
        end = session.log_store.durable_end()
    except NkdError as exc:
        errors.append(exc.message)
        return None
    return None if end is None else end.complete_through
