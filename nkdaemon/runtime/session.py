"""Wiring: the adapters one command or the daemon works with, opened lazily, closed once."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from nkdaemon.core.errors import ConfigError
from nkdaemon.core.key_rules import capture_selector
from nkdaemon.core.ports import CaptureSource, RepositoryStore
from nkdaemon.repository.bucket_layout import (
    bucket_log,
    bucket_snapshots,
    require_bucket_repository,
)
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import StateStore, read_checkpoint
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.cuts import CutRegistry
from nkdaemon.runtime.lock import RepositoryLock
from nkdaemon.runtime.logging import register_secrets
from nkdaemon.runtime.replicate_loop import bucket_store, sealed
from nkdaemon.services.drain import Drainer
from nkdaemon.services.install import load_registry
from nkdaemon.sources.factory import make_engine, open_source


class Session:
    """The pieces a command needs. ``writer`` sessions hold the repository lock.

    A reader whose configuration names a bucket reads the bucket when there is no spool
    here (``from_bucket``: a machine with nothing but the configuration); otherwise it
    reads the spool, which is as fresh as the bucket or fresher."""

    def __init__(self, settings: Settings, *, writer: bool) -> None:
        self.settings = settings
        self.layout = RepositoryLayout(settings.repository.path)
        register_secrets(settings.secrets())
        self._lock: RepositoryLock | None = None
        bucket = settings.repository.bucket
        self.from_bucket = not writer and bucket is not None and not self.layout.exists()
        if writer:
            self.layout.ensure()
            self._lock = RepositoryLock(self.layout.lock_path)
            self._lock.acquire()

    def require_repository(self) -> None:
        """Raise RepositoryError unless the repository read (spool or bucket) exists."""
        if self.from_bucket:
            require_bucket_repository(self._bucket)
        else:
            self.layout.require()

    @property
    def snapshots(self) -> Path | RepositoryStore:
        """Where the snapshots are read: the spool's folder, or the bucket's."""
        return bucket_snapshots(self._bucket) if self.from_bucket else self.layout.snapshots_dir

    def logged_position(self) -> int:
        """The source position the log read holds every transaction up to."""
        if self.from_bucket:
            end = self.log_store.durable_end()
            return 0 if end is None else end.position
        return self.state.checkpoint().position

    def installed_tables(self) -> list[str]:
        """The tables capture was installed for, as the spool's state records them (a
        bucket has no state: its snapshots and log name the tables)."""
        if self.from_bucket:
            return []
        return list(json.loads(self.state.get_meta("tables") or "{}"))

    @cached_property
    def _bucket(self) -> RepositoryStore:
        assert self.settings.repository.bucket is not None
        bucket = self.settings.repository.bucket
        return sealed(bucket_store(bucket), bucket)

    @cached_property
    def engine(self) -> Engine:
        self._require_source()
        return make_engine(self.settings.source)

    @cached_property
    def source(self) -> CaptureSource:
        self._require_source()
        return open_source(self.settings.source, self.settings.secrets())

    def _require_source(self) -> None:
        if not self.settings.source.configured:
            raise ConfigError(
                "[source] url: missing (this configuration names only a bucket)",
                hint='add [source] url = "..." to capture or compare with the source; '
                "restore, verify, history, status and export read the bucket without it",
            )

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
        if self.from_bucket:
            return bucket_log(self._bucket)
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
