"""`nkdaemon run`: drain continuously, snapshot on schedule, report health, reload config.

Lifecycle: start (lock, recover, health, wake-ups, scheduler, config watch, READY) ->
run (drain on every wake-up or poll; faults retried with backoff and reported) -> stop
(SIGTERM: finish the batch in hand, stop in reverse order, release the lock, exit 0; a
second SIGTERM exits at once, which loses nothing: the queue keeps what the log lacks).
"""

from __future__ import annotations

import enum
import errno
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nkdaemon.core.errors import CaptureOwnerError, ConfigError, NkdError, SourceUnavailable
from nkdaemon.repository.snapshots import list_snapshots, prune_snapshots
from nkdaemon.repository.state import StateStore
from nkdaemon.runtime.config import Settings, load_settings, parse_duration
from nkdaemon.runtime.health import HealthServer, HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.notify import SystemdNotifier
from nkdaemon.runtime.session import Session
from nkdaemon.runtime.wakeup import PostgresListener, SqliteWatcher, Waker
from nkdaemon.services.drain import Drainer
from nkdaemon.services.install import install, load_registry
from nkdaemon.services.snapshot import take_snapshot
from nkdaemon.sources.factory import open_source

log = structlog.get_logger("nkdaemon.daemon")

GRACE_SECONDS = 30.0
MAX_BACKOFF = 30.0


class RunState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Daemon:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.state = RunState.STARTING
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._signals = 0
        self._stop_signal: int | None = None
        self._backoff = 0.0
        self._session: Session | None = None
        self._drainer: Drainer | None = None
        self._health: HealthState | None = None
        self._server: HealthServer | None = None
        self._waker: Waker | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._config_watch: threading.Thread | None = None
        self._snapshot_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Signal only: the loop finishes the batch in hand, then stops."""
        self._stop.set()
        self._wake.set()

    def request_drain(self) -> None:
        """Wake the loop now (it drains on every wake-up)."""
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def run(self) -> int:
        self._install_signals()
        try:
            self._start()
            self.state = RunState.RUNNING
            self._health_update(state="running")
            self.notifier.ready(self._status_line())
            log.info("daemon.started", source=self.settings.source.redacted_url, pid=os.getpid())
            self._loop()
            return 0
        finally:
            self._shutdown()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # in-process use (the demo, tests): the caller stops it

        def on_term(signum: int, _frame: FrameType | None) -> None:
            # Only flags here: a handler that logs could wait for the lock its own thread
            # holds in the middle of a log line, and never return.
            self._signals += 1
            if self._signals > 1:
                os._exit(1)  # the queue keeps every committed change the log lacks
            self._stop_signal = signum
            self.request_stop()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda _s, _f: self.request_reload())

    def _start(self) -> None:
        self._session = Session(self.settings, writer=True)
        self._health = HealthState(
            self.settings.health,
            {
                "source": self.settings.source.redacted_url,
                "repository": str(self._session.layout.root),
                "pid": os.getpid(),
                "queue_depth": None,
                "lag_seconds": None,
                "last_lsn": 0,
                "last_commit_time": None,
                "log_bytes": self._session.log_store.size_bytes(),
            },
            live=self._repository_status,
        )
        self._server = HealthServer(self.settings.health.listen, self._health, self.metrics)
        self._server.start()
        self._start_waker()
        self._start_scheduler()
        self._start_config_watch()

    def _shutdown(self) -> None:
        self.state = RunState.STOPPING
        self.notifier.stopping()
        if self._health is not None:
            self._health.update(state="stopping")
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._waker is not None:
            self._waker.stop()
        if self._server is not None:
            self._server.stop()
        if self._session is not None:
            self._session.close()
        self.state = RunState.STOPPED
        log.info("daemon.stopped", state=self.state.value)

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        self._loop_until_stopped()
        log.info("daemon.stopping", signal=self._stop_signal)
        # Changes committed before the stop request reach the log before we exit.
        self._drain_pass()

    def _loop_until_stopped(self) -> None:
        interval = self.settings.capture.poll_interval
        watchdog = self.notifier.watchdog_interval()
        last_ping = 0.0
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload()
                interval = self.settings.capture.poll_interval
            self._wake.clear()
            started = time.monotonic()
            self._drain_pass()
            now = time.monotonic()
            if watchdog is not None and now - last_ping >= watchdog:
                self.notifier.watchdog()
                self.notifier.status(self._status_line())
                last_ping = now
            if self._backoff:
                # Backing off is measured in time: wake-ups do not cut it short.
                self._sleep(self._backoff, watchdog)
                continue
            timeout = interval if watchdog is None else min(interval, watchdog)
            woken = self._wake.wait(timeout)
            # Under load a wake-up is waiting as soon as a pass ends; passes back to back
            # cost the application throughput (each fences, reads, deletes and fsyncs for a
            # handful of changes), so a pass starts at most every min_pass_interval.
            rest = self.settings.capture.min_pass_interval - (time.monotonic() - started)
            if rest > 0:
                if woken:  # changes wait for the next pass: /metrics and /status show them
                    self._observe_between_passes()
                self._stop.wait(rest)

    def _sleep(self, seconds: float, watchdog: float | None) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and not self._reload.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, watchdog) if watchdog else left)
            if watchdog is not None:
                self.notifier.watchdog()

    def _drain_pass(self) -> None:
        assert self._session is not None and self._health is not None
        try:
            if self._drainer is None:
                self._drainer = self._session.drainer()
                self._drainer.open()
            result = self._drainer.drain_once()
            self.metrics.events_logged.inc(result.events)
            self.metrics.transactions_logged.inc(result.transactions)
            self.metrics.drain_passes.inc()
            self.metrics.last_drain.set(time.time())
            self._observe()
            self._health.update(source_error=None, repository_error=None, capture_error=None)
            self._backoff = 0.0
        except CaptureOwnerError as exc:  # taken over: drain nothing, say so until it ends
            self._fault(exc.kind, exc.message, capture_error=exc.message)
            self._drainer = None
        except SourceUnavailable as exc:
            self._fault("source", exc.message, source_error=exc.message)
            self._drainer = None  # reconnect and re-reflect when it is back
        except OSError as exc:
            reason = "repository disk is full" if exc.errno == errno.ENOSPC else str(exc)
            self._fault(
                "repository",
                f"{reason}; draining stopped, the queue keeps the changes",
                repository_error=reason,
            )
            self._drainer = None
        except NkdError as exc:
            self._fault(exc.kind, exc.message, repository_error=exc.message)
            self._drainer = None
        except Exception as exc:  # the loop survives what it did not foresee, and says so
            log.exception("daemon.unexpected_error")
            self._fault("unexpected", f"{type(exc).__name__}: {exc}", repository_error=str(exc))
            self._drainer = None

    def _fault(self, kind: str, message: str, **health: Any) -> None:
        assert self._health is not None
        self.metrics.errors.labels(kind=kind).inc()
        self._health.update(**health)
        self._backoff = min(max(self._backoff * 2, 1.0), MAX_BACKOFF)
        log.error("daemon.fault", kind=kind, error=message, retry_in=self._backoff)

    def _observe_between_passes(self) -> None:
        try:
            self._observe()
        except NkdError as exc:  # the next pass meets the same fault and reports it
            log.debug("daemon.observe_failed", error=exc.message)

    def _observe(self) -> None:
        """Queue depth, lag and log position into /status and /metrics."""
        assert self._session is not None and self._health is not None
        source = self._session.source
        depth = source.queue_depth()
        oldest = source.oldest_pending()
        lag = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        checkpoint = self._session.state.checkpoint()
        self.metrics.queue_depth.set(depth)
        self.metrics.lag_seconds.set(lag)
        snapshots = self._health.document().get("snapshots") or []
        if snapshots:
            newest = snapshots[-1].get("current_as_of") or snapshots[-1]["time"]
            age = (datetime.now(UTC) - datetime.fromisoformat(newest)).total_seconds()
            self.metrics.snapshot_age.set(age)
        self._health.update(
            queue_depth=depth,
            lag_seconds=lag,
            last_lsn=checkpoint.lsn,
            last_commit_time=checkpoint.commit_time,
            complete_through=checkpoint.complete_through,  # as `status --json` says it
            log_bytes=self._session.log_store.size_bytes(),
        )

    def _health_update(self, **fields: Any) -> None:
        if self._health is not None:
            self._health.update(**fields)

    def _status_line(self) -> str:
        if self._health is None:
            return "starting"
        doc = self._health.document()
        return (
            f"queue {doc.get('queue_depth')}, last transaction {doc.get('last_lsn')}, "
            f"lag {doc.get('lag_seconds')}"
        )

    # --- wake-ups -------------------------------------------------------------------------

    def _start_waker(self) -> None:
        source = self.settings.source
        if source.dialect == "postgresql":
            self._waker = PostgresListener(self._wake, source.url)
        else:
            self._waker = SqliteWatcher(self._wake, Path(source.database))
        self._waker.start()

    # --- snapshots ------------------------------------------------------------------------

    def _repository_status(self) -> dict[str, Any]:
        """The snapshot list, read from the repository for each /status and /readyz:
        `nkdaemon snapshot` and `prune` change it beside the daemon."""
        error: str | None = None
        for _ in range(2):  # twice: a snapshot may be pruned while it is read
            try:
                return {"snapshots": self._snapshot_list(), "snapshots_error": None}
            except (OSError, NkdError) as exc:
                error = exc.message if isinstance(exc, NkdError) else str(exc)
        return {"snapshots": [], "snapshots_error": error}

    def _snapshot_list(self) -> list[dict[str, Any]]:
        assert self._session is not None
        return [
            {
                "id": s.id,
                "time": s.time,
                "current_as_of": s.current_as_of,  # later when found unchanged since
                "position": s.position,
                "rows": sum(t.rows for t in s.tables),
            }
            for s in list_snapshots(self._session.layout.snapshots_dir)
            if s.imported is None  # an imported backup says nothing of this source's freshness
        ]

    def _start_scheduler(self) -> None:
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._scheduler.start()
        self._schedule_snapshots()

    def _schedule_snapshots(self) -> None:
        assert self._scheduler is not None
        if self._scheduler.get_job("snapshot"):
            self._scheduler.remove_job("snapshot")
        schedule = self.settings.snapshots.schedule
        if not schedule:
            return
        try:
            seconds = parse_duration(schedule, "[snapshots] schedule")
            trigger: Any = IntervalTrigger(seconds=seconds, timezone=UTC)
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
        assert self._session is not None and self._health is not None
        started = time.monotonic()
        with self._snapshot_lock:
            try:
                settings = self.settings
                source = open_source(settings.source, settings.secrets())
                state = StateStore(self._session.layout.state_path, cache_size=16)
                try:
                    installation = state.get_meta("installation_id") or ""
                    tables = dict(load_registry(self._session.engine, settings, source).tables)
                    result = take_snapshot(
                        source=source,
                        tables=tables,
                        directory=self._session.layout.snapshots_dir,
                        installation=installation,
                        log_lsn=lambda: state.checkpoint().lsn,
                        cuts=self._session.cuts,
                        log_store=self._session.log_store,
                    )
                finally:
                    source.close()
                    state.close()
                pruned = prune_snapshots(
                    self._session.layout.snapshots_dir, settings.snapshots.keep
                )
                if result.taken:  # an unchanged source keeps its newest snapshot
                    self.metrics.snapshots.inc()
                self.metrics.snapshot_duration.observe(time.monotonic() - started)
                self._health.job_error("snapshot", None)
                log.info(
                    "job.snapshot_done",
                    id=result.info.id,
                    taken=result.taken,
                    pruned=pruned,
                    seconds=round(time.monotonic() - started, 3),
                )
            except Exception as exc:  # a job's failure must not stop the others
                message = (
                    exc.message if isinstance(exc, NkdError) else f"{type(exc).__name__}: {exc}"
                )
                self.metrics.errors.labels(kind="snapshot").inc()
                self._health.job_error("snapshot", message)
                log.error("job.snapshot_failed", error=message)

    # --- configuration reload -------------------------------------------------------------

    def _start_config_watch(self) -> None:
        path = self.config_path.resolve()

        def watch() -> None:
            from watchfiles import watch as watch_files

            for _ in watch_files(
                path.parent,
                watch_filter=lambda _c, p: Path(p).name == path.name,
                stop_event=self._stop,
                debounce=200,
                rust_timeout=1000,
                yield_on_timeout=False,
            ):
                self.request_reload()

        self._config_watch = threading.Thread(target=watch, name="config-watch", daemon=True)
        self._config_watch.start()

    def _apply_reload(self) -> None:
        """Swap in a whole validated configuration, or keep the old one and say why."""
        assert self._session is not None and self._health is not None
        try:
            new = load_settings(self.config_path)
            if (
                new.source.url != self.settings.source.url
                or new.repository.path != self.settings.repository.path
            ):
                raise ConfigError(
                    "[source] url and [repository] path cannot change while the daemon runs",
                    hint="restart the daemon (systemctl restart nkdaemon) to use them",
                )
            capture_changed = (new.capture.tables, new.capture.exclude, dict(new.tables)) != (
                self.settings.capture.tables,
                self.settings.capture.exclude,
                dict(self.settings.tables),
            )
            if capture_changed:
                self._session.settings = new
                result = install(
                    new,
                    engine=self._session.engine,
                    source=self._session.source,
                    layout=self._session.layout,
                    state=self._session.state,
                    log_store=self._session.log_store,
                )
                self._drainer = None  # re-read the registry with the new tables
                log.info("config.capture_changed", tables=list(result.tables))
            old = self.settings
            self.settings = new
            self._session.settings = new
            if new.snapshots != old.snapshots:
                self._schedule_snapshots()
            self._health.settings = new.health
            self._health.update(config_error=None)
            log.info("config.reloaded", file=str(self.config_path))
        except NkdError as exc:
            self._session.settings = self.settings
            self._health.update(config_error=exc.message)
            self.metrics.errors.labels(kind="config").inc()
            log.error("config.reload_refused", error=exc.message, hint=exc.hint)
