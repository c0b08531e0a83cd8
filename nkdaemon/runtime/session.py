"""Wiring: the adapters one command or the daemon works with, opened lazily, closed once."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sqlalchemy.engine import Engine

from nkdaemon.core.key_rules import capture_selector
from nkdaemon.core.ports import CaptureSource
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import StateStore, read_checkpoint
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.cuts import CutRegistry
from nkdaemon.runtime.lock import RepositoryLock
from nkdaemon.runtime.logging import register_secrets
from nkdaemon.services.drain import Drainer
from nkdaemon.services.install import load_registry
from nkdaemon.sources.factory import make_engine, open_source


class Session:
    """The pieces a command needs. ``writer`` sessions hold the repository lock."""

    def __init__(self, settings: Settings, *, writer: bool) -> None:
        self.settings = settings
        self.layout = RepositoryLayout(settings.repository.path)
        register_secrets(settings.secrets())
        self._lock: RepositoryLock | None = None
        if writer:
            self.layout.ensure()
            self._lock = RepositoryLock(self.layout.lock_path)
            self._lock.acquire()

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.source)

    @cached_property
    def source(self) -> CaptureSource:
        return open_source(self.settings.source, self.settings.secrets())

    @cached_property
    def state(self) -> StateStore:
        self.layout.require()
        return StateStore(
            self.layout.state_path,
            cache_size=self.settings.capture.key_cache_size,
            read_only=self._lock is None,  # readers may work on a read-only copy
        )

    @cached_property
    def log_store(self) -> SegmentLog:
        return SegmentLog(
            self.layout.log_dir,
            segment_bytes=self.settings.repository.segment_bytes,
            checkpoint=lambda: read_checkpoint(self.layout.state_path),
        )

    @cached_property
    def cuts(self) -> CutRegistry:
        return CutRegistry(self.layout)

    def drainer(self, **options: Any) -> Drainer:
        options.setdefault("batch_transactions", self.settings.capture.batch_transactions)
        options.setdefault("fence_guard", self.cuts.guard)
        options.setdefault("cuts", self.cuts.positions)
        return Drainer(
            source=self.source,
            log_store=self.log_store,
            state=self.state,
            tables=lambda: dict(load_registry(self.engine, self.settings, self.source).tables),
            selects=capture_selector(self.settings.capture.tables, self.settings.capture.exclude),
            **options,
        )

    def close(self) -> None:
        for name in ("log_store", "state", "source"):
            if name in self.__dict__:
                self.__dict__[name].close()
        if "engine" in self.__dict__:
            self.__dict__["engine"].dispose()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
