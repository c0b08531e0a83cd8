"""How far the bucket is behind the spool: what `status`, /status and /metrics show.

Read from the spool alone (its ``replication.json`` and the durable end of its log), so
`status` answers without reaching the bucket. Observing never changes anything.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nkdaemon.repository.local_store import LocalStore
from nkdaemon.services.replicate import (
    load_progress,
    new_snapshots,
    pending_bytes,
    segment_bytes,
    snapshot_bytes,
    spool_end,
)

__all__ = ["replication_status", "spool_bytes"]


def replication_status(spool: Path, *, bucket: str, now: datetime | None = None) -> dict[str, Any]:
    """The replicated position, the lag in seconds and bytes, and the spool's size.

    The lag in seconds counts from the upload round that first found bytes the bucket
    lacked (rounds run at least every upload_interval), until a round leaves none."""
    now = now or datetime.now(UTC)
    local = LocalStore(spool)
    progress = load_progress(local)
    waiting = new_snapshots(local, progress)
    lag_bytes = pending_bytes(progress, segment_bytes(local, spool_end(spool)))
    lag_bytes += snapshot_bytes(local, waiting)
    behind = progress.behind_since
    lag = 0.0
    if lag_bytes and behind is not None:
        lag = max(0.0, (now - datetime.fromisoformat(behind)).total_seconds())
    end = progress.end or {}
    return {
        "bucket": bucket,
        "replicated_lsn": end.get("lsn", 0),
        "replicated_position": end.get("position", 0),
        "replicated_commit_time": end.get("commit_time"),
        "lag_seconds": lag,
        "lag_bytes": lag_bytes,
        "snapshots_waiting": len(waiting),
        "spool_bytes": spool_bytes(spool),
        "uploaded_bytes": progress.uploaded_bytes,
        "last_upload": progress.last_upload,
    }


def spool_bytes(spool: Path) -> int:
    """Every byte the spool's files hold (log, snapshots, state), as the disk counts it."""
    total = 0
    for directory, _folders, files in os.walk(spool):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:  # pruned or replaced while counted
                continue
    return total
