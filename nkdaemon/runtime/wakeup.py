"""Wake-ups for the daemon: PostgreSQL LISTEN/NOTIFY, SQLite file changes (watchfiles).

Only wake-ups: the daemon always re-reads the queue, and polls as a fallback, so a missed
wake-up costs latency, never data.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import psycopg
import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger("nkdaemon.wakeup")

CHANNEL = "nkdaemon_queue"


class Waker:
    """Sets ``event`` when the source may have new changes; start/stop run a thread."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        raise NotImplementedError


class PostgresListener(Waker):
    def __init__(self, event: threading.Event, url: str) -> None:
        super().__init__(event)
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 1.0
                    self.event.set()  # changes may have come while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.event.set()
            except psycopg.Error:
                self._stop.wait(delay)  # the main loop reports the source's state
                delay = min(delay * 2, 30.0)


class SqliteWatcher(Waker):
    def __init__(self, event: threading.Event, database: Path) -> None:
        super().__init__(event)
        self._database = database.resolve()
        self._names = {self._database.name + suffix for suffix in ("", "-wal", "-journal", "-shm")}

    def _run(self) -> None:
        from watchfiles import watch

        def relevant(_change: object, path: str) -> bool:
            return Path(path).name in self._names

        with contextlib.suppress(Exception):
            for _changes in watch(
                self._database.parent,
                watch_filter=relevant,
                stop_event=self._stop,
                debounce=50,
                step=20,
                rust_timeout=1000,
                yield_on_timeout=False,
            ):
                self.event.set()
