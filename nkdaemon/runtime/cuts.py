"""Snapshot positions the drain must not log a transaction across (SQLite grouping).

A snapshot takes the cut lock before it reads its position and registers that position as
a pending cut before releasing it; the drain takes the lock around its fence and the
reading of the cut list. So a drain pass always knows every snapshot position below its
fence. (PostgreSQL logs exact transactions, so cuts never split anything there.)
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nkdaemon.core.errors import RepositoryError
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.snapshots import list_snapshots


class CutRegistry:
    def __init__(self, layout: RepositoryLayout) -> None:
        self._layout = layout
        self._lock_path = layout.root / "cuts.lock"
        self._held: IO[str] | None = None

    def _pending(self) -> Path:
        return self._layout.snapshots_dir

    def lock(self) -> None:
        handle = self._lock_path.open("a+")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        self._held = handle

    def unlock(self) -> None:
        if self._held is not None:
            fcntl.flock(self._held.fileno(), fcntl.LOCK_UN)
            self._held.close()
            self._held = None

    def register(self, position: int) -> None:
        (self._pending() / f".cut-{position}").touch()

    def clear(self, position: int) -> None:
        (self._pending() / f".cut-{position}").unlink(missing_ok=True)

    def positions(self) -> list[int]:
        """Snapshot positions; a snapshots folder that cannot be read is the snapshot
        job's problem (it reports it), never a reason to stop draining."""
        directory = self._pending()
        try:
            pending = [int(p.name[5:]) for p in directory.glob(".cut-*") if p.name[5:].isdigit()]
            taken = [s.position for s in list_snapshots(directory)]
        except (OSError, RepositoryError):
            return []
        return sorted({*pending, *taken})

    @contextlib.contextmanager
    def guard(self) -> Iterator[CutRegistry]:
        self.lock()
        try:
            yield self
        finally:
            self.unlock()
