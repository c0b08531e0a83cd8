"""The daemon's drain loop: a pass on every wake-up or poll, faults retried with backoff.

A pass that fails is reported (health, metrics, one log line) and retried after a delay
that doubles up to MAX_BACKOFF; the first pass that succeeds clears every fault.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from nkdaemon.core.errors import CaptureError, CaptureOwnerError, NkdError, SourceUnavailable
from nkdaemon.core.settings import CaptureSettings
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.notify import SystemdNotifier
from nkdaemon.runtime.observe import Observer
from nkdaemon.runtime.session import Session
from nkdaemon.services.drain import Drainer

log = structlog.get_logger("nkdaemon.daemon")

MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class LoopEvents:
    """The daemon's flags, set from signal handlers and other threads, read by the loop."""

    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


class DrainPasses:
    """One drain pass at a time, with the fault handling and backoff around it."""

    def __init__(
        self, session: Session, health: HealthState, metrics: Metrics, observer: Observer
    ) -> None:
        self._session = session
        self._health = health
        self._metrics = metrics
        self._observer = observer
        self._drainer: Drainer | None = None
        self.backoff = 0.0

    def reset(self) -> None:
        """Reconnect and re-read the registry on the next pass."""
        self._drainer = None

    def run(self) -> None:
        """One pass; a fault is reported and sets the backoff, never raised."""
        try:
            if self._drainer is None:
                self._drainer = self._session.drainer()
                self._drainer.open()
            result = self._drainer.drain_once()
            self._metrics.events_logged.inc(result.events)
            self._metrics.transactions_logged.inc(result.transactions)
            self._metrics.drain_passes.inc()
            self._metrics.last_drain.set(time.time())
            self._observer.observe()
            self._health.update(source_error=None, repository_error=None, capture_error=None)
            self.backoff = 0.0
        except CaptureOwnerError as exc:  # taken over: drain nothing, say so until it ends
            self._fault(exc.kind, exc.message, capture_error=exc.message)
        except SourceUnavailable as exc:
            self._fault("source", exc.message, source_error=exc.message)
        except CaptureError as exc:  # e.g. a key column dropped: the queue keeps the changes
            reason = f"capture stopped: {exc.message}; the source keeps the changes queued"
            self._fault(exc.kind, reason, capture_error=f"{reason} ({exc.hint})")
        except OSError as exc:
            reason = "repository disk is full" if exc.errno == errno.ENOSPC else str(exc)
            self._fault(
                "repository",
                f"{reason}; draining stopped, the queue keeps the changes",
                repository_error=reason,
            )
        except NkdError as exc:
            self._fault(exc.kind, exc.message, repository_error=exc.message)
        except Exception as exc:  # the loop survives what it did not foresee, and says so
            log.exception("daemon.unexpected_error")
            self._fault("unexpected", f"{type(exc).__name__}: {exc}", repository_error=str(exc))

    def _fault(self, kind: str, message: str, **health: str) -> None:
        self._metrics.errors.labels(kind=kind).inc()
        self._health.update(**health)
        self.backoff = min(max(self.backoff * 2, 1.0), MAX_BACKOFF)
        log.error("daemon.fault", kind=kind, error=message, retry_in=self.backoff)
        self._drainer = None  # reconnect and re-reflect on the next pass


class DrainLoop:
    """Pass after pass until stopped: paced by wake-ups, the poll interval, the minimum
    time between passes and the backoff; pings systemd's watchdog on the way."""

    def __init__(
        self,
        *,
        passes: DrainPasses,
        events: LoopEvents,
        notifier: SystemdNotifier,
        observer: Observer,
        capture: Callable[[], CaptureSettings],
        reload: Callable[[], None],
        status_line: Callable[[], str],
    ) -> None:
        self._passes = passes
        self._events = events
        self._notifier = notifier
        self._observer = observer
        self._capture = capture  # read afresh: a reload may change the intervals
        self._reload = reload
        self._status_line = status_line

    def run_until_stopped(self) -> None:
        events = self._events
        interval = self._capture().poll_interval
        watchdog = self._notifier.watchdog_interval()
        last_ping = 0.0
        while not events.stop.is_set():
            if events.reload.is_set():
                events.reload.clear()
                self._reload()
                interval = self._capture().poll_interval
            events.wake.clear()
            started = time.monotonic()
            self._passes.run()
            now = time.monotonic()
            if watchdog is not None and now - last_ping >= watchdog:
                self._notifier.watchdog()
                self._notifier.status(self._status_line())
                last_ping = now
            if self._passes.backoff:
                # Backing off is measured in time: wake-ups do not cut it short.
                self._sleep(self._passes.backoff, watchdog)
                continue
            timeout = interval if watchdog is None else min(interval, watchdog)
            woken = events.wake.wait(timeout)
            # Under load a wake-up is waiting as soon as a pass ends; passes back to back
            # cost the application throughput (each fences, reads, deletes and fsyncs for a
            # handful of changes), so a pass starts at most every min_pass_interval.
            rest = self._capture().min_pass_interval - (time.monotonic() - started)
            if rest > 0:
                if woken:  # changes wait for the next pass: /metrics and /status show them
                    self._observer.observe_between_passes()
                events.stop.wait(rest)

    def _sleep(self, seconds: float, watchdog: float | None) -> None:
        deadline = time.monotonic() + seconds
        while not self._events.stop.is_set() and not self._events.reload.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._events.stop.wait(min(left, watchdog) if watchdog else left)
            if watchdog is not None:
                self._notifier.watchdog()
