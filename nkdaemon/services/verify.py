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
from datetime import datetime
from typing import Any

from nkdaemon.core.errors import (
    LogCorruptionError,
    LogTruncatedError,
    NkdError,
    RepositoryError,
)
from nkdaemon.core.events import RawChange
from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.log import Chunk, Commit, Definition, Epoch, Gap
from nkdaemon.core.ports import CaptureSource, SnapshotPoint, TableReader
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.core.table_diff import TableDiff
from nkdaemon.core.translate import Translator
from nkdaemon.repository.log_end import DurableEnd
from nkdaemon.repository.reader import AtMarker, transactions_between
from nkdaemon.repository.segments import (
    Record,
    SegmentLog,
    check_reaches_end,
    segment_name,
)
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
    durable_end: DurableEnd | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diffs: list[TableDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(d.ok for d in self.diffs)


def verify_log(log_store: SegmentLog, report: VerifyReport, *, needed_from: int = 1) -> None:
    """Every record's checksum, lsns without holes, commit times that never run backwards,
    and every byte up to the durable end present and whole. ``needed_from``: the first
    transaction a restore needs (after the oldest snapshot's; prune deletes the log
    before it), so a log that starts there or earlier is whole."""
    names = log_store.segments()
    report.segments = len(names)
    end = _durable_end(log_store, report)
    check = _Sequence(report, needed_from)
    for index, name in enumerate(names):
        check.segment_starts(name)
        try:
            for record in log_store.segment_records(name, last=index == len(names) - 1, end=end):
                check.record(name, record)
        except (LogCorruptionError, LogTruncatedError) as exc:
            report.problems.append(exc.message)
            check.lost_track()
    try:
        check_reaches_end(names, end, check.last_lsn)
    except LogTruncatedError as exc:
        if exc.message not in report.problems:
            report.problems.append(exc.message)


def _durable_end(log_store: SegmentLog, report: VerifyReport) -> DurableEnd | None:
    try:
        end = log_store.durable_end()
    except RepositoryError as exc:
        report.problems.append(exc.message)
        return None
    report.durable_end = end
    if end is None and log_store.segments():
        report.warnings.append(
            "the repository records no durable end (written by an older release, and "
            "state.db is absent): damage at the end of the last segment cannot be told from "
            "a write in progress; `nkdaemon drain` records it"
        )
    return end


class _Sequence:
    """Numbering and time order across the records of every segment."""

    def __init__(self, report: VerifyReport, needed_from: int = 1) -> None:
        self._report = report
        self._needed_from = needed_from
        self._expected: int | None = None
        self._previous = ""
        self._last_time: datetime | None = None
        self.last_lsn = 0

    def segment_starts(self, name: str) -> None:
        first = int(name.split(".")[0])
        if not self._previous and 1 < first <= self._needed_from:
            self._report.notes.append(
                f"the log starts at transaction {first}: the transactions before it are in "
                "the oldest snapshot (the log before it was pruned)"
            )
        elif not self._previous and first != 1:
            self._report.problems.append(
                f"the log starts with {name}: the segment for transactions 1..{first - 1} "
                f"({segment_name(1)}) is missing"
            )
        elif self._expected is not None and first != self._expected:
            self._report.problems.append(
                f"log segment for transactions {self._expected}..{first - 1} is missing "
                f"({segment_name(self._expected)}, the segment before {name}), or "
                f"{self._previous} was cut short"
            )
        self._expected = first  # each hole reported once
        self._previous = name

    def lost_track(self) -> None:
        self._expected = None

    def record(self, name: str, record: Record) -> None:
        entry = record.entry
        if isinstance(entry, Chunk | Definition):
            return
        lsn = entry.lsn
        if self._expected is not None and lsn != self._expected:
            self._report.problems.append(
                f"{name} offset {record.offset}: transaction {lsn} follows "
                f"{self._expected - 1} (transactions must be numbered without holes)"
            )
        last = record.last_lsn
        self._expected = last + 1
        self.last_lsn = max(self.last_lsn, last)
        when = None if isinstance(entry, Gap) else _time_of(entry)
        if when is not None and self._last_time is not None and when < self._last_time:
            self._report.problems.append(
                f"{name} offset {record.offset}: commit time runs backwards"
            )
        self._last_time = when or self._last_time
        if isinstance(entry, Gap):
            self._report.warnings.append(
                f"the log records lost transactions {lsn}..{last}: {entry.reason}"
            )
        else:
            self._report.transactions += 1


def _time_of(entry: Commit | Epoch) -> datetime:
    return entry.commit_time if isinstance(entry, Commit) else entry.time


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
            name = snapshot.object(table.file)  # through the store: a folder or a bucket
            if name not in snapshot.store.list(name):
                report.problems.append(
                    f"snapshot {snapshot.id}: file {table.file} ({table.name}) is missing"
                )
                continue
            try:
                checksum = file_checksum(snapshot, table)
            except RepositoryError as exc:  # e.g. an encrypted object failing its tag
                report.problems.append(f"snapshot {snapshot.id}: {exc.message}")
                continue
            if checksum != table.sha256:
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
        expectation = LogFold([next(s for s in specs if s.name == n) for n in order.tables])
        for name in order.tables:
            file = snapshot.table(name)
            if file is not None:
                for row in read_table(snapshot, file):
                    expectation.load(name, row["k"], row["r"])
        expectation.finish_load()
        replay = transactions_between(
            log_store,
            from_lsn=snapshot.log_lsn,
            after=snapshot.position,
            through=point.position,
            at_marker=AtMarker.SKIP,  # compared as it stands: a difference shows in the diffs
        )
        for item in replay:
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
