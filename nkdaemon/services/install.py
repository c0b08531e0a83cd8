"""Install and uninstall capture; open the pieces a repository is made of."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import orjson
import structlog
from sqlalchemy.engine import Engine

from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.errors import NkdError, NotInstalledError
from nkdaemon.core.key_rules import Registry
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.log import Epoch
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, not_ours, owned_elsewhere
from nkdaemon.core.ports import CaptureSource, SnapshotPoint, TableReader
from nkdaemon.core.settings import Settings
from nkdaemon.core.translate import ShallowKey
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotWriter
from nkdaemon.repository.state import Checkpoint, StateStore
from nkdaemon.services.snapshot import Progress, write_tables
from nkdaemon.services.table_shapes import (
    remember_tables,
    remembered_numbers,
    remembered_tables,
)
from nkdaemon.sources.registry import reflect_registry

log = structlog.get_logger("nkdaemon.install")


@dataclass(frozen=True, kw_only=True)
class InstallResult:
    installation_id: str
    tables: tuple[str, ...]
    seeded_rows: int
    rebaselined: bool
    baseline_position: int
    snapshot_id: str
    taken_from: CaptureOwner | None = None


def known_table_numbers(state: StateStore, source: CaptureSource) -> dict[str, int]:
    """Table numbers in use or used before (a dropped table's number must never be given
    to another table: the key index may still hold its rows' keys)."""
    numbers = remembered_numbers(state)
    raw = state.get_meta("tables")
    numbers.update(orjson.loads(raw) if raw else {})
    numbers.update(source.installed_tables())
    return numbers


def load_registry(engine: Engine, settings: Settings, source: CaptureSource) -> Registry:
    """The registry of the tables capture is installed on (numbers as the triggers know them)."""
    installed = source.installed_tables()
    if not installed and source.installation_id() is not None:
        return Registry(tables={})  # every captured table was dropped: capture goes on
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
    take_over: bool = False,
    progress: Progress | None = None,
) -> InstallResult:
    """Install (or bring up to date) capture for this repository; refuses a source another
    repository captures unless ``take_over``, which moves capture here."""
    registry = reflect_registry(engine, settings, numbers=known_table_numbers(state, source))
    owner = source.owner()
    claim = _claim(settings, owner, state.get_meta("installation_id"), take_over=take_over)
    rebaseline = claim.new
    already = set(source.installed_tables()) if not rebaseline else set()
    seeded = 0
    state.begin()
    if rebaseline:
        state.clear_all()
    snapshot: dict[str, Any] = {}

    # Tables the drain read as referenced by nothing: the index never held their rows.
    remembered = remembered_tables(state)  # (after clear_all: a new history knows none)
    unindexed = {n for n, s in remembered.items() if not s.referenced}

    def seed_index(spec: TableSpec, entries: list[tuple[Any, ShallowKey]]) -> None:
        # The drain's index follows the log; only tables it has never seen start here, and
        # referenced tables it never indexed (a foreign key added since, to a table nothing
        # referred to: the drain stops at the first row that uses it, until this).
        nonlocal seeded
        if spec.name not in already or spec.number in unindexed:
            state.put_many(spec.number, entries)
            seeded += len(entries)

    def baseline_snapshot(point: SnapshotPoint, read_table: TableReader) -> None:
        writer = SnapshotWriter(layout.snapshots_dir, time=point.time, position=point.position)
        snapshot.update(point=point, writer=writer, read_table=read_table)
        write_tables(
            writer=writer,
            tables=registry.tables,
            read_table=read_table,
            key_sink=seed_index,
            progress=progress,
        )

    try:
        installation, baseline = source.install(registry.tables, baseline_snapshot, claim)
    except BaseException:
        state.rollback()
        if "writer" in snapshot:
            snapshot["writer"].abort()
        raise
    point: SnapshotPoint = snapshot["point"]
    state.set_meta("tables", orjson.dumps({s.name: n for n, s in registry.tables.items()}).decode())
    state.set_meta("installation_id", installation)
    # The drain reads the queue with these specs from here on; tables no longer captured
    # stay known (their changes queued before may still be drained).
    remember_tables(state, {**remembered, **registry.tables})
    if rebaseline:
        log_lsn = _write_epoch(state, log_store, installation, point)
        source.delete_through(baseline)
    else:
        state.commit()
        log_lsn = state.checkpoint().lsn
    info = snapshot["writer"].commit(
        installation=installation,
        log_lsn=log_lsn,
        dialect=source.dialect,
        definitions=[spec_to_json(s) for s in registry.tables.values()],
    )
    taken_from = owner if claim.new and owner is not None else None
    if taken_from is not None:
        log.warning("install.took_over", previous_owner=taken_from.describe())
    log.info(
        "install.done",
        tables=len(registry.tables),
        seeded_rows=seeded,
        rebaselined=rebaseline,
        baseline_position=baseline,
        snapshot=info.id,
    )
    return InstallResult(
        installation_id=installation,
        tables=tuple(s.name for s in registry.tables.values()),
        seeded_rows=seeded,
        rebaselined=rebaseline,
        baseline_position=baseline,
        snapshot_id=info.id,
        taken_from=taken_from,
    )


def _claim(
    settings: Settings, owner: CaptureOwner | None, ours: str | None, *, take_over: bool
) -> CaptureClaim:
    """What install may claim; refuses a source that another repository captures."""
    if owner is not None and owner.installation != ours and not take_over:
        raise owned_elsewhere(owner)
    return CaptureClaim(
        repository=str(settings.repository.path),
        host=socket.gethostname(),
        seen=None if owner is None else owner.installation,
        new=owner is None or owner.installation != ours,
    )


def _write_epoch(
    state: StateStore, log_store: SegmentLog, installation: str, point: SnapshotPoint
) -> int:
    previous = state.checkpoint()
    log_store.recover(durable_segment=previous.segment, durable_offset=previous.offset)
    lsn = log_store.next_lsn
    when = point.time.astimezone(UTC).isoformat(timespec="microseconds")
    log_store.append_epoch(
        Epoch(lsn=lsn, position=point.position, installation=installation, time=point.time)
    )
    segment, offset = log_store.sync()
    state.commit(
        Checkpoint(
            lsn=lsn, position=point.position, segment=segment, offset=offset, commit_time=when
        )
    )
    return lsn


def uninstall(source: CaptureSource, *, ours: str | None, force: bool) -> int:
    """Remove capture; refuses while changes wait in the queue, or when the capture feeds
    another repository (``ours``: this repository's installation id), unless forced."""
    depth = 0
    if source.installation_id() is not None:
        owner = source.owner()
        if owner is not None and owner.installation != ours and not force:
            error = not_ours(owner, ours)
            error.hint = (
                "uninstall from that repository's configuration, or pass --force to remove "
                "its capture anyway (it then receives no more changes)"
            )
            raise error
        depth = source.queue_depth()
    if depth and not force:
        raise NkdError(
            f"{depth} captured changes have not reached the log yet; uninstalling would lose them",
            hint="run `nkdaemon drain` first, or pass --force to discard them",
        )
    source.uninstall()
    log.info("uninstall.done", discarded=depth)
    return depth
