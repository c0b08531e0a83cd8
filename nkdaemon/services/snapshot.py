"""Taking a snapshot: every captured table at one instant, in natural-key form.

The source hands over a consistent read and the position it contains; the rows are
written with their references named by natural key as of that instant (keys of referenced
tables are collected first), so a snapshot restores anywhere, like the log.

A snapshot is not taken when the source has not changed since the newest one (same
installation, same source position, nothing logged since, same table definitions, its
files intact): an identical copy would only push older restore points out of retention.
The newest snapshot then records that it is still current (for health checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.errors import NkdError, RepositoryError
from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import RepositoryStore, SnapshotPoint, TableReader
from nkdaemon.core.replay import MemoryKeyIndex
from nkdaemon.core.translate import ShallowKey, Translator, source_id
from nkdaemon.repository.reader import LogMarker, read_log
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import (
    SnapshotInfo,
    SnapshotWriter,
    check_table_file,
    confirm_unchanged,
    list_snapshots,
)

log = structlog.get_logger("nkdaemon.snapshot")

KeySink = Callable[[TableSpec, list[tuple[Any, ShallowKey]]], None]
Progress = Callable[[str, int], None]
"""Told (stage, rows read since the last call) as a snapshot reads the source: stage
"index" for the first pass over referenced tables, "snapshot" for the rows written."""
PROGRESS_EVERY = 10_000


def counting(read_table: TableReader, progress: Progress | None, stage: str) -> TableReader:
    """``read_table``, telling ``progress`` every PROGRESS_EVERY rows read."""
    if progress is None:
        return read_table

    def read(spec: TableSpec) -> Iterator[dict[str, Any]]:
        count = 0
        for row in read_table(spec):
            yield row
            count += 1
            if count == PROGRESS_EVERY:
                progress(stage, count)
                count = 0
        if count:
            progress(stage, count)

    return read


def write_tables(
    *,
    writer: SnapshotWriter,
    tables: Mapping[int, TableSpec],
    read_table: TableReader,
    key_sink: KeySink | None = None,
    progress: Progress | None = None,
) -> int:
    """Both passes of a snapshot into ``writer`` (not committed): the rows written."""
    index = collect_keys(tables, counting(read_table, progress, "index"), key_sink)
    rows = counting(read_table, progress, "snapshot")
    total = 0
    for spec in tables.values():
        total += writer.write_table(
            spec.number, spec.name, natural_rows(tables, index, spec, rows(spec))
        )
    return total


def collect_keys(
    tables: Mapping[int, TableSpec], read_table: TableReader, sink: KeySink | None = None
) -> MemoryKeyIndex:
    """Pass one: the id -> shallow key of every row of every referenced table."""
    index = MemoryKeyIndex()
    translator = Translator(tables, index)
    for number, spec in tables.items():
        if not spec.referenced or spec.full_row_identity:
            continue
        entries: list[tuple[Any, ShallowKey]] = []
        for row in read_table(spec):
            shallow = translator.shallow_key(spec, row)
            if shallow is not None:
                sid = source_id(spec, row)
                index.put(number, sid, shallow)
                entries.append((sid, shallow))
        if sink is not None:
            sink(spec, entries)
    return index


def natural_rows(
    tables: Mapping[int, TableSpec],
    index: MemoryKeyIndex,
    spec: TableSpec,
    rows: Iterator[dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    """Pass two: one table's rows with every reference named by natural key."""
    translator = Translator(tables, index)
    for row in rows:
        translator.translate(RawChange(table=spec.number, op="I", old=None, new=row))
        for event in translator.ready():
            yield {"k": event.key, "r": event.row, "s": event.sid}
    for event in translator.finish():
        yield {"k": event.key, "r": event.row, "s": event.sid}


def write_snapshot(
    *,
    point: SnapshotPoint,
    read_table: TableReader,
    tables: Mapping[int, TableSpec],
    writer: SnapshotWriter,
    installation: str,
    log_lsn: int,
    dialect: str,
    key_sink: KeySink | None = None,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Write a whole snapshot from a consistent read; abort leaves nothing behind."""
    try:
        total = write_tables(
            writer=writer,
            tables=tables,
            read_table=read_table,
            key_sink=key_sink,
            progress=progress,
        )
        info = writer.commit(
            installation=installation,
            log_lsn=log_lsn,
            dialect=dialect,
            definitions=[spec_to_json(s) for s in tables.values()],
        )
    except BaseException:
        writer.abort()
        raise
    log.info("snapshot.written", id=info.id, position=point.position, rows=total)
    return info


@dataclass(frozen=True, kw_only=True)
class SnapshotResult:
    """What `nkdaemon snapshot` did: ``info`` is the new snapshot, or the unchanged one
    that stands; ``note`` says why none was taken, or why one was though nothing changed."""

    info: SnapshotInfo
    taken: bool
    note: str | None = None


def take_snapshot(
    *,
    source: Any,
    tables: Mapping[int, TableSpec],
    directory: Path | RepositoryStore,
    installation: str,
    log_lsn: Callable[[], int],
    cuts: Any,
    force: bool = False,
    log_store: SegmentLog | None = None,
    progress: Progress | None = None,
) -> SnapshotResult:
    """`nkdaemon snapshot`: a consistent snapshot while writers and the drain go on, unless
    nothing changed since the newest one (``force`` takes one anyway). ``log_store``: to
    look for a gap in the log since then (without it, any growth of the log counts)."""
    result: dict[str, SnapshotResult] = {}
    registered: list[int] = []
    definitions = [spec_to_json(s) for s in tables.values()]
    cuts.lock()
    try:
        hint = log_lsn()
        # an imported snapshot is no capture of this source: compare with the newest one that is
        previous = [s for s in list_snapshots(directory) if s.imported is None][-1:]

        def consume(point: SnapshotPoint, read_table: TableReader) -> None:
            cuts.register(point.position)
            registered.append(point.position)
            cuts.unlock()
            note = (
                _why_new(previous[0], point, hint, installation, definitions, log_store)
                if previous
                else ""
            )
            if note is None and not force:
                result["out"] = _still_current(previous[0], point)
                return
            if note is None:
                note = f"no change since snapshot {previous[0].id}; taken all the same (--force)"
            writer = SnapshotWriter(directory, time=point.time, position=point.position)
            info = write_snapshot(
                point=point,
                read_table=read_table,
                tables=tables,
                writer=writer,
                installation=installation,
                log_lsn=hint,
                dialect=source.dialect,
                progress=progress,
            )
            result["out"] = SnapshotResult(info=info, taken=True, note=note or None)

        source.snapshot(tables, consume)
    finally:
        cuts.unlock()
        for position in registered:
            cuts.clear(position)
    out = result["out"]
    if not out.taken:
        log.info("snapshot.unchanged", id=out.info.id, position=out.info.position)
    return out


def _still_current(previous: SnapshotInfo, point: SnapshotPoint) -> SnapshotResult:
    confirm_unchanged(previous, point.time)
    return SnapshotResult(
        info=previous, taken=False, note=f"no change since snapshot {previous.id}; not taken"
    )


def _why_new(
    previous: SnapshotInfo,
    point: SnapshotPoint,
    log_lsn: int,
    installation: str,
    definitions: list[dict[str, Any]],
    log_store: SegmentLog | None,
) -> str | None:
    """Why ``previous`` cannot stand for the source read at ``point``: "" when the source
    changed (the usual case, nothing to say), a reason when it did not but a new snapshot
    is needed all the same, None when ``previous`` holds exactly what a new one would."""
    if previous.installation != installation or previous.position != point.position:
        return ""
    if previous.log_lsn != log_lsn:
        marker = _marker_since(previous, log_lsn, log_store)
        if marker:
            return f"the source is unchanged since snapshot {previous.id}, but {marker}; taken"
    if orjson.loads(orjson.dumps(definitions)) != list(previous.definitions):
        return f"the captured tables' definitions changed since snapshot {previous.id}; taken"
    try:
        for table in previous.tables:
            check_table_file(previous, table)
    except RepositoryError as exc:
        return f"the source is unchanged, but {exc.message}; taken"
    return None


def _marker_since(previous: SnapshotInfo, log_lsn: int, log_store: SegmentLog | None) -> str:
    """What in the log logged since ``previous`` (transactions it already held, drained
    after it was read) makes restores from it fail: a GAP or EPOCH marker, or damage."""
    if log_store is None:
        return f"the log grew since (transactions {previous.log_lsn + 1}..{log_lsn})"
    try:
        for item in read_log(log_store, from_lsn=previous.log_lsn + 1):
            if isinstance(item, LogMarker):
                return f"the log holds a {item.kind} marker after it (lsn {item.lsn})"
            if item.lsn >= log_lsn:
                break
    except NkdError as exc:
        return f"the log after it cannot be read ({exc.message})"
    return ""
