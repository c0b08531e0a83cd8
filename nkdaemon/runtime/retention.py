"""Prune as configured: [retention]'s policy over the copies the configuration names
(services/prune), for `nkdaemon prune` and the daemon's schedule.

A local repository is one copy. With a bucket, the spool here and the bucket are two;
on a machine with no spool (a configuration naming only the bucket) the bucket is the
only one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nkdaemon.core.retention import RetentionPolicy
from nkdaemon.core.settings import Settings
from nkdaemon.repository.bucket_layout import require_bucket_repository
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.runtime.replicate_loop import bucket_store, sealed
from nkdaemon.services.prune import PruneResult, PruneSide, bucket_side, local_side, prune


def retention_policy(settings: Settings) -> RetentionPolicy:
    """[retention] as the policy; raises its UsageError when none is configured."""
    retention = settings.retention
    return RetentionPolicy(keep_snapshots=retention.keep_snapshots, keep_days=retention.keep_days)


def repository_sides(settings: Settings) -> list[PruneSide]:
    """The copies of the configured repository that prune plans and deletes in."""
    repository = settings.repository
    bucket = repository.bucket
    sides = []
    layout = RepositoryLayout(repository.path)
    if bucket is None or layout.exists():
        layout.require()
        where = "repository" if bucket is None else "spool"
        sides.append(local_side(repository.path, replicated=bucket is not None, where=where))
    if bucket is not None:
        store = sealed(bucket_store(bucket), bucket)
        require_bucket_repository(store)
        sides.append(bucket_side(store))
    return sides


def prune_configured(
    settings: Settings, *, dry_run: bool, now: datetime | None = None
) -> list[PruneResult]:
    """Prune every copy by [retention] (policy checked before anything is read)."""
    policy = retention_policy(settings)
    return prune(repository_sides(settings), policy, now or datetime.now(UTC), dry_run=dry_run)
