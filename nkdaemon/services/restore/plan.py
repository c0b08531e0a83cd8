"""Planning a restore: which snapshot, which part of the log, which tables; and the report.

The pure decisions (the snapshot for a time, the insert order) are in core.restore_plan;
this module reads the repository to make them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.errors import NkdError, UsageError
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.log import LoggedTransaction
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.core.restore_plan import SnapshotChoice, choose_snapshot
from nkdaemon.core.shapes import ColumnRef, ShapeHistory
from nkdaemon.core.table_diff import TableDiff
from nkdaemon.repository.reader import AtMarker, CrossedGap, transactions_between
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
    # the snapshot's definitions and the log's up to ``at``; ``context`` is their end
    shapes: ShapeHistory | None = None

    @property
    def shape_changed(self) -> bool:
        """True when some table changed shape between the snapshot and the instant."""
        return self.shapes is not None and self.shapes.changed

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
        if self.shapes is not None and self.shapes.changed:
            changed = ", ".join(f"{t} ({n})" for t, n in sorted(self.shapes.changes().items()))
            lines.append(
                f"  schema changes on the way (restored in the shape at the end): {changed}"
            )
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
    # the target's shape against the instant's (see core/shapes.py)
    skipped_columns: dict[str, list[str]] = field(default_factory=dict)  # the target lacks
    target_only_columns: dict[str, list[str]] = field(default_factory=dict)  # its default
    # of another type in the target than at the instant: compared read back in the
    # instant's type where that is lossless (an int column now REAL)
    converted_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    dropped_values: dict[ColumnRef, int] = field(default_factory=dict)  # non-NULL, left out
    lacking_values: dict[ColumnRef, int] = field(default_factory=dict)  # the log never gave
    unplaced_values: dict[ColumnRef, int] = field(default_factory=dict)  # no column held them


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
    snapshots_dir: Path | RepositoryStore,
    log_store: SegmentLog,
    at: datetime | None,
    last_logged: datetime | None,
    tables: Sequence[str] = (),
) -> RestorePlan:
    chosen = _chosen_snapshot(list_snapshots(snapshots_dir), at, last_logged)
    shapes = ShapeHistory(spec_from_json(d) for d in chosen.definitions)
    count = events = 0
    first = last = None
    per_table: dict[str, int] = {}
    for tx in replay_range(log_store, chosen, at):
        count += 1
        for definition in tx.definitions:
            shapes.add(definition)
        for event in tx.events:
            per_table[event.table] = per_table.get(event.table, 0) + 1
        first = first or tx.lsn
        last = tx.lsn
    # the tables as they are at the instant (the snapshot's, unless the log changed them)
    definitions = shapes.specs_at_end()
    by_name = {s.name: s for s in definitions}
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        where = f"snapshot {chosen.id}" + (" nor at the restore time" if shapes.changed else "")
        raise UsageError(
            f"--table {', '.join(unknown)}: not captured in {where}",
            hint=f"tables there: {', '.join(sorted(by_name))}",
        )
    selected = tuple(by_name[t] for t in tables) if tables else tuple(definitions)
    names = {s.name for s in selected}
    events = sum(n for name, n in per_table.items() if name in names)
    rows = sum(t.rows for t in chosen.tables if t.name in names)
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
        shapes=shapes,
    )


def replay_range(
    log_store: SegmentLog, snapshot: SnapshotInfo, at: datetime | None
) -> Iterator[LoggedTransaction]:
    """The logged transactions after a snapshot, up to ``at``, within its capture epoch
    (none after an imported snapshot: the log does not continue it)."""
    if snapshot.imported is not None:
        return
    try:
        yield from transactions_between(
            log_store,
            from_lsn=snapshot.log_lsn,
            after=snapshot.position,
            until=at,
            at_marker=AtMarker.RESTORE,
        )
    except CrossedGap as crossed:
        raise RestoreError(
            f"the log lost transactions {crossed.gap.from_lsn}..{crossed.gap.to_lsn} "
            "after the chosen snapshot",
            hint="restore to a time before the gap, or after a snapshot taken after it",
        ) from None
