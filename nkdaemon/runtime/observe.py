"""What the daemon reports about the backup: queue depth, lag, log position, snapshots.

Read from the source and the repository into the health document (/status, /readyz) and
the metrics (/metrics). Observing never changes anything.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TypedDict

import structlog

from nkdaemon.core.errors import NkdError
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.session import Session

log = structlog.get_logger("nkdaemon.daemon")


class SnapshotEntry(TypedDict):
    """One snapshot as /status lists it."""

    id: str
    time: str
    current_as_of: str  # later than time when found unchanged since
    position: int
    rows: int


def new_health_state(settings: Settings, session: Session) -> HealthState:
    """The health document at start: nothing observed yet, snapshots read on each request."""
    return HealthState(
        settings.health,
        {
            "source": settings.source.redacted_url,
            "repository": str(session.layout.root),
            "pid": os.getpid(),
            "queue_depth": None,
            "lag_seconds": None,
            "last_lsn": 0,
            "last_commit_time": None,
            "log_bytes": session.log_store.size_bytes(),
        },
        live=lambda: repository_status(session.layout),
    )


def repository_status(layout: RepositoryLayout) -> dict[str, object]:
    """The snapshot list, read from the repository for each /status and /readyz:
    `nkdaemon snapshot` and `prune` change it beside the daemon."""
    error: str | None = None
    for _ in range(2):  # twice: a snapshot may be pruned while it is read
        try:
            return {"snapshots": snapshot_list(layout), "snapshots_error": None}
        except (OSError, NkdError) as exc:
            error = exc.message if isinstance(exc, NkdError) else str(exc)
    return {"snapshots": [], "snapshots_error": error}


def snapshot_list(layout: RepositoryLayout) -> list[SnapshotEntry]:
    return [
        SnapshotEntry(
            id=s.id,
            time=s.time,
            current_as_of=s.current_as_of,
            position=s.position,
            rows=sum(t.rows for t in s.tables),
        )
        for s in list_snapshots(layout.snapshots_dir)
        if s.imported is None  # an imported backup says nothing of this source's freshness
    ]


class Observer:
    """Queue depth, lag and log position into /status and /metrics."""

    def __init__(self, session: Session, health: HealthState, metrics: Metrics) -> None:
        self._session = session
        self._health = health
        self._metrics = metrics

    def observe(self) -> None:
        source = self._session.source
        depth = source.queue_depth()
        oldest = source.oldest_pending()
        lag = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        checkpoint = self._session.state.checkpoint()
        self._metrics.queue_depth.set(depth)
        self._metrics.lag_seconds.set(lag)
        snapshots = self._health.document().get("snapshots") or []
        if snapshots:
            newest = snapshots[-1].get("current_as_of") or snapshots[-1]["time"]
            age = (datetime.now(UTC) - datetime.fromisoformat(newest)).total_seconds()
            self._metrics.snapshot_age.set(age)
        self._health.update(
            queue_depth=depth,
            lag_seconds=lag,
            last_lsn=checkpoint.lsn,
            last_commit_time=checkpoint.commit_time,
            complete_through=checkpoint.complete_through,  # as `status --json` says it
            log_bytes=self._session.log_store.size_bytes(),
        )

    def observe_between_passes(self) -> None:
        try:
            self.observe()
        except NkdError as exc:  # the next pass meets the same fault and reports it
            log.debug("daemon.observe_failed", error=exc.message)


def status_line(health: HealthState | None) -> str:
    """One line for systemd's status: queue, last transaction, lag."""
    if health is None:
        return "starting"
    doc = health.document()
    return (
        f"queue {doc.get('queue_depth')}, last transaction {doc.get('last_lsn')}, "
        f"lag {doc.get('lag_seconds')}"
    )
