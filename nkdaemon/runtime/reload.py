"""Configuration reload: watch the file, then swap in a whole validated configuration or
keep the old one and say why.

[source] url and [repository] path cannot change while the daemon runs; a change of what is
captured reinstalls capture before the new settings take effect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from nkdaemon.core.errors import ConfigError, NkdError
from nkdaemon.core.settings import Settings
from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install

log = structlog.get_logger("nkdaemon.daemon")


def start_config_watch(
    config_path: Path, stop: threading.Event, on_change: Callable[[], None]
) -> threading.Thread:
    """A daemon thread that calls ``on_change`` whenever the file changes, until ``stop``."""
    path = config_path.resolve()

    def watch() -> None:
        from watchfiles import watch as watch_files

        for _ in watch_files(
            path.parent,
            watch_filter=lambda _c, p: Path(p).name == path.name,
            stop_event=stop,
            debounce=200,
            rust_timeout=1000,
            yield_on_timeout=False,
        ):
            on_change()

    thread = threading.Thread(target=watch, name="config-watch", daemon=True)
    thread.start()
    return thread


class Reloader:
    """Reads the configuration file again and applies what changed."""

    def __init__(
        self,
        config_path: Path,
        session: Session,
        health: HealthState,
        metrics: Metrics,
        *,
        capture_changed: Callable[[], None],
        snapshots_changed: Callable[[], None],
    ) -> None:
        self._config_path = config_path
        self._session = session
        self._health = health
        self._metrics = metrics
        self._capture_changed = capture_changed  # after capture was reinstalled
        self._snapshots_changed = snapshots_changed  # after the new settings are in force

    def apply(self, current: Settings, commit: Callable[[Settings], None]) -> None:
        """Load the file; when valid, ``commit`` the new settings (then reschedule), else
        keep ``current`` and report why in health, metrics and the log."""
        try:
            new = load_settings(self._config_path)
            _refuse_fixed_changes(current, new)
            if _capture_differs(current, new):
                self._reinstall(new)
            commit(new)
            self._session.settings = new
            if new.snapshots != current.snapshots:
                self._snapshots_changed()
            self._health.settings = new.health
            self._health.update(config_error=None)
            log.info("config.reloaded", file=str(self._config_path))
        except NkdError as exc:
            self._session.settings = current
            self._health.update(config_error=exc.message)
            self._metrics.errors.labels(kind="config").inc()
            log.error("config.reload_refused", error=exc.message, hint=exc.hint)

    def _reinstall(self, new: Settings) -> None:
        session = self._session
        session.settings = new
        result = install(
            new,
            engine=session.engine,
            source=session.source,
            layout=session.layout,
            state=session.state,
            log_store=session.log_store,
        )
        self._capture_changed()  # re-read the registry with the new tables
        log.info("config.capture_changed", tables=list(result.tables))


def _refuse_fixed_changes(current: Settings, new: Settings) -> None:
    if new.repository.bucket != current.repository.bucket:  # the upload job keeps its own
        raise ConfigError(
            "[repository] url and its bucket settings cannot change while the daemon runs",
            hint="restart the daemon (systemctl restart nkdaemon) to use them",
        )
    if new.source.url != current.source.url or new.repository.path != current.repository.path:
        raise ConfigError(
            "[source] url and [repository] path cannot change while the daemon runs",
            hint="restart the daemon (systemctl restart nkdaemon) to use them",
        )


def _capture_differs(current: Settings, new: Settings) -> bool:
    return (new.capture.tables, new.capture.exclude, dict(new.tables)) != (
        current.capture.tables,
        current.capture.exclude,
        dict(current.tables),
    )
