"""What the backup looks like now: lag, queue depth, last logged transaction, log size."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from nkdaemon.core.errors import NkdError
from nkdaemon.core.ownership import not_ours
from nkdaemon.core.ports import CaptureSource
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import list_snapshots
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


def collect_status(
    session: StatusView, *, source_name: str, bucket: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The status document (`status --json`, `/status`). Never raises for a down source.

    ``source_name`` is the source's URL with the password hidden; ``bucket`` the bucket
    the repository (then the spool) is replicated to, if any."""
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
    }
    if session.layout.exists():
        _repository_part(session, status)
        if bucket is not None:
            _replication_part(session.layout, bucket, now, status)
    else:
        status["errors"].append("the repository does not exist yet (run `nkdaemon install`)")
    stopped = session.state.get_meta("capture_stopped") if session.layout.exists() else None
    if stopped:
        status["errors"].append(f"capture stopped: {stopped}")
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
    snapshots = list_snapshots(session.layout.snapshots_dir)
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
    layout: RepositoryLayout, bucket: str, now: datetime, status: dict[str, Any]
) -> None:
    """How far the bucket is behind the spool, read from the spool (the bucket is not asked)."""
    try:
        status["replication"] = replication_status(layout.root, bucket=bucket, now=now)
    except (OSError, NkdError) as exc:
        message = exc.message if isinstance(exc, NkdError) else str(exc)
        status["replication"] = {"bucket": bucket, "lag_seconds": None}
        status["errors"].append(f"replication: {message}")


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
    if owner.installation != ours:
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
