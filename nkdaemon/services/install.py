"""Install and uninstall capture; open the pieces a repository is made of."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from sqlalchemy.engine import Engine

from nkdaemon.core.errors import NkdError, NotInstalledError
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import CaptureSource
from nkdaemon.core.translate import seed_entries
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import Checkpoint, StateStore
from nkdaemon.runtime.config import Settings
from nkdaemon.sources.registry import Registry, reflect_registry

log = structlog.get_logger("nkdaemon.install")


@dataclass(frozen=True, kw_only=True)
class InstallResult:
    installation_id: str
    tables: tuple[str, ...]
    seeded_rows: int
    rebaselined: bool
    baseline_position: int


def known_table_numbers(state: StateStore, source: CaptureSource) -> dict[str, int]:
    raw = state.get_meta("tables")
    numbers: dict[str, int] = orjson.loads(raw) if raw else {}
    numbers.update(source.installed_tables())
    return numbers


def load_registry(engine: Engine, settings: Settings, source: CaptureSource) -> Registry:
    """The registry of the tables capture is installed on (numbers as the triggers know them)."""
    installed = source.installed_tables()
    if not installed:
        raise NotInstalledError(
            "capture is not installed in the source database", hint="run `nkdaemon install` first"
        )
    registry = reflect_registry(engine, settings, numbers=installed)
    return Registry(tables={n: s for n, s in registry.tables.items() if s.name in installed})


def install(
    settings: Settings,
    *,
    engine: Engine,
    source: CaptureSource,
    layout: RepositoryLayout,
    state: StateStore,
    log_store: SegmentLog,
) -> InstallResult:
    registry = reflect_registry(engine, settings, numbers=known_table_numbers(state, source))
    source_installation = source.installation_id()
    rebaseline = source_installation is None or source_installation != state.get_meta(
        "installation_id"
    )
    seeded = 0
    state.begin()
    if rebaseline:
        state.clear_all()

    def seed(spec: TableSpec, rows: Iterator[dict[str, Any]]) -> None:
        nonlocal seeded
        if not spec.referenced:
            return
        entries = list(seed_entries(registry.tables, spec, rows))
        state.put_many(spec.number, entries)
        seeded += len(entries)

    try:
        installation, baseline = source.install(registry.tables, seed, seed_all=rebaseline)
    except NkdError:
        state.rollback()
        raise
    state.set_meta("tables", orjson.dumps({s.name: n for n, s in registry.tables.items()}).decode())
    state.set_meta("installation_id", installation)
    if rebaseline:
        _write_epoch(state, log_store, installation, baseline)
        source.delete_through(baseline)
    else:
        state.commit()
    log.info(
        "install.done",
        tables=len(registry.tables),
        seeded_rows=seeded,
        rebaselined=rebaseline,
        baseline_position=baseline,
    )
    return InstallResult(
        installation_id=installation,
        tables=tuple(s.name for s in registry.tables.values()),
        seeded_rows=seeded,
        rebaselined=rebaseline,
        baseline_position=baseline,
    )


def _write_epoch(
    state: StateStore, log_store: SegmentLog, installation: str, baseline: int
) -> None:
    previous = state.checkpoint()
    log_store.recover(durable_segment=previous.segment, durable_offset=previous.offset)
    lsn = log_store.next_lsn
    when = datetime.now(UTC).isoformat(timespec="microseconds")
    log_store.append_epoch(
        {"lsn": lsn, "pos": baseline, "installation": installation, "time": when}
    )
    segment, offset = log_store.sync()
    state.commit(
        Checkpoint(lsn=lsn, position=baseline, segment=segment, offset=offset, commit_time=when)
    )


def uninstall(source: CaptureSource, *, force: bool) -> int:
    """Remove capture; refuses while changes wait in the queue unless forced."""
    depth = 0
    if source.installation_id() is not None:
        depth = source.queue_depth()
    if depth and not force:
        raise NkdError(
            f"{depth} captured changes have not reached the log yet; uninstalling would lose them",
            hint="run `nkdaemon drain` first, or pass --force to discard them",
        )
    source.uninstall()
    log.info("uninstall.done", discarded=depth)
    return depth
