"""Planning a restore: which snapshot, which part of the log, which tables; and the report.

The pure decisions (the snapshot for a time, the insert order) are in core.restore_plan;
this module reads the repository to make them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.errors import NkdError, UsageError
from nkdaemon.core.expectation import TableDiff
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.replay import NaturalState, shapes_of
from nkdaemon.core.restore_plan import SnapshotChoice, choose_snapshot, insert_order
from nkdaemon.core.restore_runs import LogEvent
from nkdaemon.repository.reader import LoggedTransaction, LogMarker, read_log
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots

Progress = Callable[[str, int], None]
"""Told (stage, how many rows or events) as a restore goes."""


class RestoreError(NkdError):
    """The restore could not be completed; the target was rolled back."""

    kind = "restore"


@dataclass(frozen=True, kw_only=True)
class RestorePlan:
    snapshot: SnapshotInfo
    at: datetime | None
    tables: tuple[TableSpec, ...]
    context: tuple[TableSpec, ...]
    transactions: int
    events: int
    first_lsn: int | None
    last_lsn: int | None
    snapshot_rows: int
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        when = "the latest logged state" if self.at is None else self.at.isoformat()
        lines = [
            f"restore {when}",
            f"  snapshot {self.snapshot.id} ({self.snapshot_rows} rows, source position "
            f"{self.snapshot.position})",
        ]
        if self.transactions:
            lines.append(
                f"  then {self.transactions} logged transactions ({self.events} events), "
                f"log {self.first_lsn}..{self.last_lsn}"
            )
        else:
            lines.append("  no logged transaction after the snapshot")
        lines.append(f"  tables: {', '.join(s.name for s in self.tables)}")
        return lines


@dataclass(kw_only=True)
class RestoreReport:
    plan: RestorePlan
    committed: bool = False
    rows_loaded: int = 0
    events_applied: int = 0
    target_only: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    diffs: list[TableDiff] = field(default_factory=list)
    referenced_rows_added: dict[str, int] = field(default_factory=dict)
    schema_notes: list[str] = field(default_factory=list)  # what --create-schema left out
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    cross_checked: str | None = None  # the snapshot whose digests the restored rows matched


def _choices(snapshots: Sequence[SnapshotInfo]) -> list[SnapshotChoice]:
    return [
        SnapshotChoice(
            id=s.id,
            time=s.moment,
            position=s.position,
            installation=s.installation,
            imported=s.imported is not None,
        )
        for s in snapshots
    ]


def _chosen_snapshot(
    snapshots: list[SnapshotInfo], at: datetime | None, last_logged: datetime | None
) -> SnapshotInfo:
    if at is None:
        if not snapshots:
            choose_snapshot([], datetime.now(UTC), last_logged)  # raises: says what to do
        captured = [s for s in snapshots if s.imported is None]
        return (captured or snapshots)[-1]
    picked = choose_snapshot(_choices(snapshots), at, last_logged)
    return next(s for s in snapshots if s.id == picked.id)


def plan_restore(
    *,
    snapshots_dir: Path,
    log_store: SegmentLog,
    at: datetime | None,
    last_logged: datetime | None,
    tables: Sequence[str] = (),
) -> RestorePlan:
    chosen = _chosen_snapshot(list_snapshots(snapshots_dir), at, last_logged)
    definitions = [spec_from_json(d) for d in chosen.definitions]
    by_name = {s.name: s for s in definitions}
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        raise UsageError(
            f"--table {', '.join(unknown)}: not captured in snapshot {chosen.id}",
            hint=f"tables there: {', '.join(sorted(by_name))}",
        )
    selected = tuple(by_name[t] for t in tables) if tables else tuple(definitions)
    names = {s.name for s in selected}
    count = events = 0
    first = last = None
    for tx in replay_range(log_store, chosen, at):
        count += 1
        events += sum(1 for e in tx.events if e["t"] in names)
        first = first or tx.lsn
        last = tx.lsn
    rows = sum(t.rows for t in chosen.tables if t.name in {s.name for s in selected})
    return RestorePlan(
        snapshot=chosen,
        at=at,
        tables=selected,
        context=tuple(definitions),
        transactions=count,
        events=events,
        first_lsn=first,
        last_lsn=last,
        snapshot_rows=rows,
    )


def replay_range(
    log_store: SegmentLog, snapshot: SnapshotInfo, at: datetime | None
) -> Iterator[LoggedTransaction]:
    """The logged transactions after a snapshot, up to ``at``, within its capture epoch
    (none after an imported snapshot: the log does not continue it)."""
    if snapshot.imported is not None:
        return
    limit = None if at is None else at.isoformat(timespec="microseconds")
    for item in read_log(log_store, from_lsn=max(1, snapshot.log_lsn)):
        if isinstance(item, LogMarker):
            if item.lsn <= snapshot.log_lsn:
                continue
            if item.kind == "epoch":
                return  # capture was re-installed: its baseline snapshot takes over
            raise RestoreError(
                f"the log lost transactions {item.payload['from_lsn']}..{item.payload['to_lsn']} "
                "after the chosen snapshot",
                hint="restore to a time before the gap, or after a snapshot taken after it",
            )
        if item.position <= snapshot.position:
            continue
        if limit is not None and _utc(item.commit_time) > limit:
            return
        yield item


def _utc(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds")


def fold_state(
    specs: Sequence[TableSpec],
    snapshot_events: Iterable[LogEvent],
    transactions: Iterable[LoggedTransaction],
) -> NaturalState:
    """The natural-key state made by a snapshot's rows and the log after it."""
    shapes = shapes_of(specs)
    order = insert_order(specs).tables
    rank = {name: i for i, name in enumerate(order)}
    state = NaturalState(shapes=shapes)
    # a key names its parents' keys, so parents are loaded first
    by_table: dict[str, list[LogEvent]] = {}
    for event in snapshot_events:
        by_table.setdefault(event["t"], []).append(event)
    state.apply_transaction(
        (e for name in sorted(by_table, key=lambda n: rank.get(n, 0)) for e in by_table[name]),
        where="snapshot: ",
    )
    for tx in transactions:
        state.apply_transaction(tx.events, where=f"log transaction {tx.lsn}: ")
    return state
