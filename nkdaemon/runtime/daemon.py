"""`nkdaemon run`: drain continuously, snapshot on schedule, report health, reload config.

Lifecycle: start (lock, recover, health, wake-ups, scheduler, config watch, READY) ->
run (drain on every wake-up or poll; faults retried with backoff and reported) -> stop
(SIGTERM: finish the batch in hand, stop in reverse order, release the lock, exit 0; a
second SIGTERM exits at once, which loses nothing: the queue keeps what the log lacks).

This module owns the lifecycle and the signals; each job it runs has its own module:
the drain loop and its backoff (drain_loop.py), the snapshot schedule (schedule.py),
replication to a bucket (replicate_loop.py),
configuration reload (reload.py), and what is observed for health (observe.py).
"""

from __future__ import annotations

import enum
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import structlog

from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.drain_loop import DrainLoop, DrainPasses, LoopEvents
from nkdaemon.runtime.health import HealthServer, HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.notify import SystemdNotifier
from nkdaemon.runtime.observe import Observer, new_health_state, status_line
from nkdaemon.runtime.reload import Reloader, start_config_watch
from nkdaemon.runtime.replicate_loop import ReplicationLoop
from nkdaemon.runtime.schedule import SnapshotSchedule
from nkdaemon.runtime.session import Session
from nkdaemon.runtime.wakeup import PostgresListener, SqliteWatcher, Waker

log = structlog.get_logger("nkdaemon.daemon")

GRACE_SECONDS = 30.0


class RunState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Running:
    """The parts a started daemon works with (built by start, closed by shutdown)."""

    def __init__(self, daemon: Daemon, session: Session) -> None:
        self.session = session
        self.health = new_health_state(daemon.settings, session)
        self.server = HealthServer(daemon.settings.health.listen, self.health, daemon.metrics)
        self.observer = Observer(session, self.health, daemon.metrics)
        self.passes = DrainPasses(session, self.health, daemon.metrics, self.observer)
        self.schedule = SnapshotSchedule(
            session, self.health, daemon.metrics, lambda: daemon.settings
        )
        self.reloader = Reloader(
            daemon.config_path,
            session,
            self.health,
            daemon.metrics,
            capture_changed=self.passes.reset,
            snapshots_changed=self.schedule.reschedule,
        )
        self.waker: Waker | None = None
        self.replication: ReplicationLoop | None = None
        bucket = daemon.settings.repository.bucket
        if bucket is not None:
            self.replication = ReplicationLoop(
                session.layout.root, bucket, self.health, daemon.metrics
            )
            replication = self.replication
            self.health.add_live(lambda: {"replication": replication.status()})


class Daemon:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.state = RunState.STARTING
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self._events = LoopEvents()
        self._signals = 0
        self._stop_signal: int | None = None
        self._session: Session | None = None
        self._running: _Running | None = None
        self._config_watch: threading.Thread | None = None

    @property
    def health(self) -> HealthState | None:
        """The health document's state; None until the daemon has started."""
        return None if self._running is None else self._running.health

    def request_stop(self) -> None:
        """Signal only: the loop finishes the batch in hand, then stops."""
        self._events.stop.set()
        self._events.wake.set()

    def request_drain(self) -> None:
        """Wake the loop now (it drains on every wake-up)."""
        self._events.wake.set()

    def request_reload(self) -> None:
        self._events.reload.set()
        self._events.wake.set()

    def snapshot_job(self) -> None:
        """One snapshot now, as the schedule takes them (a failure is reported, not raised)."""
        assert self._running is not None
        self._running.schedule.snapshot_job()

    def run(self) -> int:
        self._install_signals()
        try:
            running = self._start()
            self.state = RunState.RUNNING
            running.health.update(state="running")
            self.notifier.ready(status_line(self.health))
            log.info("daemon.started", source=self.settings.source.redacted_url, pid=os.getpid())
            self._loop(running)
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

    def _start(self) -> _Running:
        self._session = Session(self.settings, writer=True)
        running = self._running = _Running(self, self._session)
        running.server.start()
        running.waker = self._waker()
        running.waker.start()
        running.schedule.start()
        if running.replication is not None:
            running.replication.start()
        self._config_watch = start_config_watch(
            self.config_path, self._events.stop, self.request_reload
        )
        return running

    def _waker(self) -> Waker:
        """What wakes the loop when the source may hold new changes."""
        source = self.settings.source
        if source.dialect == "postgresql":
            return PostgresListener(self._events.wake, source.url)
        return SqliteWatcher(self._events.wake, Path(source.database))

    def _loop(self, running: _Running) -> None:
        DrainLoop(
            passes=running.passes,
            events=self._events,
            notifier=self.notifier,
            observer=running.observer,
            capture=lambda: self.settings.capture,
            reload=lambda: running.reloader.apply(self.settings, self._commit_settings),
            status_line=lambda: status_line(self.health),
        ).run_until_stopped()
        log.info("daemon.stopping", signal=self._stop_signal)
        # Changes committed before the stop request reach the log before we exit.
        running.passes.run()

    def _commit_settings(self, settings: Settings) -> None:
        self.settings = settings

    def _shutdown(self) -> None:
        """Stop in reverse order of start; always ends STOPPED, and says so."""
        self.state = RunState.STOPPING
        self.notifier.stopping()
        running = self._running
        if running is not None:
            running.health.update(state="stopping")
            running.schedule.shutdown()
            if running.replication is not None:  # after the last drain pass: it goes up too
                running.replication.stop(GRACE_SECONDS)
            if running.waker is not None:
                running.waker.stop()
            running.server.stop()
        if self._session is not None:
            self._session.close()
        self.state = RunState.STOPPED
        log.info("daemon.stopped", state=self.state.value)
