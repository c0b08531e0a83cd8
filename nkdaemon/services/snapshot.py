"""Taking a snapshot: every captured table at one instant, in natural-key form.

The source hands over a consistent read and the position it contains; the rows are
written with their references named by natural key as of that instant (keys of referenced
tables are collected first), so a snapshot restores anywhere, like the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog

from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import SnapshotPoint, TableReader
from nkdaemon.core.replay import MemoryKeyIndex
from nkdaemon.core.translate import ShallowKey, Translator, source_id
from nkdaemon.repository.snapshots import SnapshotInfo, SnapshotWriter

log = structlog.get_logger("nkdaemon.snapshot")

KeySink = Callable[[TableSpec, list[tuple[Any, ShallowKey]]], None]


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
) -> SnapshotInfo:
    """Write a whole snapshot from a consistent read; abort leaves nothing behind."""
    try:
        index = collect_keys(tables, read_table, key_sink)
        total = 0
        for spec in tables.values():
            total += writer.write_table(
                spec.number, spec.name, natural_rows(tables, index, spec, read_table(spec))
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


def take_snapshot(
    *,
    source: Any,
    tables: Mapping[int, TableSpec],
    directory: Any,
    installation: str,
    log_lsn: Callable[[], int],
    cuts: Any,
) -> SnapshotInfo:
    """`nkdaemon snapshot`: a consistent snapshot while writers and the drain go on."""
    result: dict[str, SnapshotInfo] = {}
    registered: list[int] = []
    cuts.lock()
    try:
        hint = log_lsn()

        def consume(point: SnapshotPoint, read_table: TableReader) -> None:
            cuts.register(point.position)
            registered.append(point.position)
            cuts.unlock()
            writer = SnapshotWriter(directory, time=point.time, position=point.position)
            result["info"] = write_snapshot(
                point=point,
                read_table=read_table,
                tables=tables,
                writer=writer,
                installation=installation,
                log_lsn=hint,
                dialect=source.dialect,
            )

        source.snapshot(tables, consume)
    finally:
        cuts.unlock()
        for position in registered:
            cuts.clear(position)
    return result["info"]
