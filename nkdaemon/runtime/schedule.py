"""Scheduled snapshots: [snapshots] schedule as an APScheduler job, one at a time.

A job's failure is logged, counted and shown in health; it never stops the daemon or the
next run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nkdaemon.core.errors import ConfigError, NkdError
from nkdaemon.core.settings import Settings
from nkdaemon.repository.snapshots import prune_snapshots
from nkdaemon.repository.state import StateStore
from nkdaemon.runtime.config import parse_duration
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.retention import prune_configured
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from nkdaemon.services.snapshot import take_snapshot
from nkdaemon.sources.factory import open_source

log = structlog.get_logger("nkdaemon.daemon")


class SnapshotSchedule:
    """The snapshot job and the scheduler that runs it."""

    def __init__(
        self,
        session: Session,
        health: HealthState,
        metrics: Metrics,
        settings: Callable[[], Settings],
    ) -> None:
        self._session = session
        self._health = health
        self._metrics = metrics
        self._settings = settings  # read afresh: a reload may change them
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._scheduler.start()
        self.reschedule()

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    def reschedule(self) -> None:
        """(Re)place the job by the current [snapshots] schedule; none when it is unset."""
        assert self._scheduler is not None
        if self._scheduler.get_job("snapshot"):
            self._scheduler.remove_job("snapshot")
        schedule = self._settings().snapshots.schedule
        if not schedule:
            return
        trigger: IntervalTrigger | CronTrigger
        try:
            seconds = parse_duration(schedule, "[snapshots] schedule")
            trigger = IntervalTrigger(seconds=seconds, timezone=UTC)
        except ConfigError:
            trigger = CronTrigger.from_crontab(schedule, timezone=UTC)
        self._scheduler.add_job(
            self.snapshot_job,
            trigger,
            id="snapshot",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
        log.info("schedule.snapshots", schedule=schedule)

    def snapshot_job(self) -> None:
        """One scheduled snapshot; a failure is logged and reported, never fatal."""
        started = time.monotonic()
        with self._lock:
            try:
                self._snapshot(started)
            except Exception as exc:  # a job's failure must not stop the others
                message = (
                    exc.message if isinstance(exc, NkdError) else f"{type(exc).__name__}: {exc}"
                )
                self._metrics.errors.labels(kind="snapshot").inc()
                self._health.job_error("snapshot", message)
                log.error("job.snapshot_failed", error=message)

    def _snapshot(self, started: float) -> None:
        settings = self._settings()
        session = self._session
        source = open_source(settings.source, settings.secrets())
        state = StateStore(session.layout.state_path, cache_size=16)
        try:
            installation = state.get_meta("installation_id") or ""
            tables = dict(load_registry(session.engine, settings, source).tables)
            result = take_snapshot(
                source=source,
                tables=tables,
                directory=session.layout.snapshots_dir,
                installation=installation,
                log_lsn=lambda: state.checkpoint().lsn,
                cuts=session.cuts,
                log_store=session.log_store,
            )
        finally:
            source.close()
            state.close()
        pruned = self._prune(settings)
        if result.taken:  # an unchanged source keeps its newest snapshot
            self._metrics.snapshots.inc()
        self._metrics.snapshot_duration.observe(time.monotonic() - started)
        self._health.job_error("snapshot", None)
        log.info(
            "job.snapshot_done",
            id=result.info.id,
            taken=result.taken,
            pruned=pruned,
            seconds=round(time.monotonic() - started, 3),
        )

    def _prune(self, settings: Settings) -> list[str]:
        """After each scheduled snapshot: by [retention] when it is set (the spool and the
        bucket, snapshots and log), else by the older [snapshots] keep (the spool's
        snapshots only). A failed prune is reported as its own job; the snapshot stands."""
        if not settings.retention.configured:
            return prune_snapshots(self._session.layout.snapshots_dir, settings.snapshots.keep)
        try:
            results = prune_configured(settings, dry_run=False)
        except Exception as exc:  # the snapshot is taken; a failed prune is retried next time
            message = exc.message if isinstance(exc, NkdError) else f"{type(exc).__name__}: {exc}"
            self._metrics.errors.labels(kind="prune").inc()
            self._health.job_error("prune", message)
            log.error("job.prune_failed", error=message)
            return []
        self._health.job_error("prune", None)
        deleted = [f"{r.where}:{d.kind}:{d.name}" for r in results for d in r.plan.deletions]
        log.info("job.prune_done", deleted=len(deleted))
        return deleted
