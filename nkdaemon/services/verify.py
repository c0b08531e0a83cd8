"""`nkdaemon verify`: is the repository whole, and (with --source) does it reproduce the source?

Checks every log segment (record checksums, transactions numbered without holes, chunks
joined to their commits, commit times never running backwards) and every snapshot
(manifest, files present, SHA-256 and row counts). With a source, it takes a consistent
read of it and compares every table, by natural key, with what the latest snapshot plus
the log say the state at that instant is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nkdaemon.core.errors import LogCorruptionError, NkdError, RepositoryError
from nkdaemon.core.events import RawChange
from nkdaemon.core.expectation import Expectation, TableDiff
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import CaptureSource, SnapshotPoint, TableReader
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.core.translate import Translator
from nkdaemon.repository.reader import LoggedTransaction, LogMarker, read_log
from nkdaemon.repository.segments import KIND_CHUNK, SegmentLog
from nkdaemon.repository.snapshots import (
    SnapshotInfo,
    file_checksum,
    list_snapshots,
    read_table,
)
from nkdaemon.services.snapshot import collect_keys
from nkdaemon.services.verify_snapshots import verify_snapshot_chain


@dataclass
class VerifyReport:
    segments: int = 0
    transactions: int = 0
    snapshots: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diffs: list[TableDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(d.ok for d in self.diffs)


def verify_log(log_store: SegmentLog, report: VerifyReport) -> None:
    names = log_store.segments()
    report.segments = len(names)
    expected_lsn: int | None = None
    last_time = ""
    for index, name in enumerate(names):
        first = int(name.split(".")[0])
        if expected_lsn is not None and first != expected_lsn:
            report.problems.append(
                f"log segment for transactions {expected_lsn}..{first - 1} is missing "
                f"(the segment before {name})"
            )
        last = index == len(names) - 1
        try:
            for record in _segment_records(log_store, name, strict=not last):
                if record.kind == KIND_CHUNK:
                    continue
                lsn = int(record.payload.get("lsn", record.payload.get("from_lsn", 0)))
                if expected_lsn is not None and lsn != expected_lsn:
                    report.problems.append(
                        f"{name} offset {record.offset}: transaction {lsn} follows "
                        f"{expected_lsn - 1} (transactions must be numbered without holes)"
                    )
                end = int(record.payload.get("to_lsn", lsn))
                expected_lsn = end + 1
                when = str(record.payload.get("time", ""))
                if when and last_time and when < last_time:
                    report.problems.append(
                        f"{name} offset {record.offset}: commit time runs backwards"
                    )
                last_time = when or last_time
                if "to_lsn" in record.payload:
                    report.warnings.append(
                        f"the log records lost transactions {lsn}..{end}: "
                        f"{record.payload.get('reason', '')}"
                    )
                else:
                    report.transactions += 1
        except LogCorruptionError as exc:
            report.problems.append(exc.message)
            expected_lsn = None


def _segment_records(log_store: SegmentLog, name: str, *, strict: bool) -> Iterator[Any]:
    from nkdaemon.repository.segments import _read_segment, _Torn

    for item in _read_segment(log_store.directory / name):
        if isinstance(item, _Torn):
            if strict:
                raise LogCorruptionError(name, item.offset, item.detail)
            return
        yield item


def verify_snapshots(
    directory: Any,
    report: VerifyReport,
    *,
    log_store: SegmentLog | None = None,
    logged_position: int | None = None,
) -> list[SnapshotInfo]:
    try:
        snapshots = list_snapshots(directory)
    except RepositoryError as exc:
        report.problems.append(exc.message)
        return []
    report.snapshots = len(snapshots)
    for snapshot in snapshots:
        for table in snapshot.tables:
            path = snapshot.path / table.file
            if not path.exists():
                report.problems.append(
                    f"snapshot {snapshot.id}: file {table.file} ({table.name}) is missing"
                )
                continue
            if file_checksum(snapshot, table) != table.sha256:
                report.problems.append(
                    f"snapshot {snapshot.id}: {table.file} ({table.name}) "
                    "fails its SHA-256 checksum"
                )
                continue
            try:
                rows = sum(1 for _ in read_table(snapshot, table))
            except Exception as exc:  # a damaged file cannot be read at all
                report.problems.append(
                    f"snapshot {snapshot.id}: {table.file} cannot be read ({exc})"
                )
                continue
            if rows != table.rows:
                report.problems.append(
                    f"snapshot {snapshot.id}: {table.name} holds {rows} rows, "
                    f"the manifest says {table.rows}"
                )
    if log_store is not None:  # each snapshot's digests, and the log between each two
        verify_snapshot_chain(snapshots, log_store, report, logged_position=logged_position)
    return snapshots


def verify_source(
    *,
    source: CaptureSource,
    tables: Mapping[int, TableSpec],
    snapshots: list[SnapshotInfo],
    log_store: SegmentLog,
    logged_position: int,
    report: VerifyReport,
) -> None:
    """Compare the live source, read at one instant, with snapshot + log at that instant."""

    def compare(point: SnapshotPoint, read_table_now: TableReader) -> None:
        if point.position > logged_position:
            raise NkdError(
                f"the log is behind the source (it holds up to position {logged_position}, the "
                f"source is at {point.position})",
                hint="run `nkdaemon drain` (or wait for the daemon) and verify again",
            )
        usable = [s for s in snapshots if s.position <= point.position]
        if not usable:
            raise NkdError("no snapshot is older than the source's current state")
        snapshot = usable[-1]
        specs = list(tables.values())
        order = insert_order(specs)
        expectation = Expectation([next(s for s in specs if s.name == n) for n in order.tables])
        for name in order.tables:
            file = snapshot.table(name)
            if file is not None:
                for row in read_table(snapshot, file):
                    expectation.load(name, row["k"], row["r"])
        expectation.finish_load()
        for item in read_log(log_store, from_lsn=max(1, snapshot.log_lsn)):
            if isinstance(item, LogMarker):
                continue
            assert isinstance(item, LoggedTransaction)
            if item.position <= snapshot.position:
                continue
            if item.position > point.position:
                break
            expectation.apply_transaction(item.events, where=f"log transaction {item.lsn}: ")
        index = collect_keys(tables, read_table_now)
        for name in order.tables:
            spec = next(s for s in specs if s.name == name)
            report.diffs.append(
                expectation.compare(name, _natural(tables, index, spec, read_table_now))
            )

    source.snapshot(tables, compare)


def _natural(
    tables: Mapping[int, TableSpec], index: Any, spec: TableSpec, read: TableReader
) -> Iterator[tuple[Any, Any]]:
    translator = Translator(tables, index)
    for row in read(spec):
        translator.translate(RawChange(table=spec.number, op="I", old=None, new=row))
        for event in translator.ready():
            yield (event.key if not spec.full_row_identity else event.row), event.row
    for event in translator.finish():
        yield (event.key if not spec.full_row_identity else event.row), event.row
