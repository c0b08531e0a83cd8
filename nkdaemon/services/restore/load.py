"""Loading the starting state: a snapshot into empty tables (the log is replayed after it),
or the state at the restore time, folded from the snapshot and the log, over a target that
holds rows already (written by natural key)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Generic

from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import ForeignKeySpec, NaturalKey
from nkdaemon.core.log import LoggedTransaction
from nkdaemon.core.ports import Address, RestoreTarget, TableT
from nkdaemon.core.replay import fold_state
from nkdaemon.core.restore_plan import InsertOrder
from nkdaemon.core.restore_runs import Keyed, Row, in_column_order, show_key
from nkdaemon.core.shapes import fold_in_shape, missing_values, project_row
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotInfo, TableFile, read_table, read_table_batches
from nkdaemon.services.restore.plan import (
    Progress,
    RestoreError,
    RestorePlan,
    RestoreReport,
    replay_range,
)
from nkdaemon.services.restore.resolve import canonical_text
from nkdaemon.services.restore.validate import TargetRenderer
from nkdaemon.services.restore.write import RowWriter

CHUNK = 5000


class WholeRows:
    """Rows captured whole, in target tables that held some: the rows there before, and
    those of them the restored state claimed as its own (a multiset: equal rows are
    interchangeable). --prune-target deletes the rest."""

    def __init__(self, before: dict[str, set[Address]]) -> None:
        self.before = before
        self.claimed: dict[str, set[Address]] = {n: set() for n in before}


class Loader(Generic[TableT]):
    """Writes the starting state of a restore; see the module docstring."""

    def __init__(
        self,
        *,
        plan: RestorePlan,
        log_store: SegmentLog,
        writer: RowWriter[TableT],
        selected: set[str],
        whole: WholeRows,
        report: RestoreReport,
        progress: Progress,
    ) -> None:
        self.plan = plan
        self.log_store = log_store
        self.writer = writer
        self.target: RestoreTarget[TableT] = writer.target
        self.tables: Mapping[str, TableT] = writer.tables
        self.selected = selected
        self.whole = whole
        self.report = report
        self.progress = progress
        self.refuse_missing_references = False
        self.shaped = False  # fold in the instant's shape (core/shapes.py)

    # --- a snapshot into empty tables ---------------------------------------------------

    def load_snapshot(self, order: InsertOrder) -> None:
        snapshot = self.plan.snapshot
        for name in order.tables:
            file = snapshot.table(name)
            if file is None:
                continue
            table = self.tables[name]
            if name in self.whole.before:
                self._load_whole_rows_into_rows(table, file)
                continue
            match = table.rows_before > 0 and not table.spec.full_row_identity
            straight = None if match or order.deferred.get(name) else self._straight_copy(table)
            if straight is not None:
                # one COPY for the whole table: the server inserts while rows are parsed here
                self.target.insert(table, straight, self._picked_rows(snapshot, file, straight))
                continue
            deferred = order.deferred.get(name, ())
            for batch in read_table_batches(snapshot, file):
                for start in range(0, len(batch), CHUNK):
                    chunk = [(item["k"], item["r"]) for item in batch[start : start + CHUNK]]
                    self.writer.write(table, chunk, match=match, deferred=deferred)
                    self.report.rows_loaded += len(chunk)
                    self.progress("load", len(chunk))
        self.writer.apply_deferred()

    def _picked_rows(
        self, snapshot: SnapshotInfo, file: TableFile, columns: list[str]
    ) -> Iterator[tuple[object, ...]]:
        for batch in read_table_batches(snapshot, file):
            yield from in_column_order([item["r"] for item in batch], columns)
            self.report.rows_loaded += len(batch)
            self.progress("load", len(batch))

    def _straight_copy(self, table: TableT) -> list[str] | None:
        """For a table whose snapshot rows go into the target as they are (no reference
        to resolve, no id to draw, no value to convert, no address to remember): its
        columns; otherwise None."""
        spec = table.spec
        if spec.foreign_keys or spec.surrogate_columns or spec.name in self.writer.referenced:
            return None
        if spec.name in self.writer.written:
            return None
        columns = [c.name for c in spec.columns]
        if not self.writer.as_is(table, columns):
            return None
        return columns

    # --- rows captured whole ------------------------------------------------------------

    def _load_whole_rows_into_rows(self, table: TableT, file: TableFile) -> None:
        """Rows captured whole, into a table that holds some: each snapshot row takes an
        equal row of the target if one is left unclaimed, and is inserted otherwise, so
        restoring the same state twice leaves the table as it was."""
        rows = [item["r"] for item in read_table(self.plan.snapshot, file)]
        self.report.rows_loaded += len(rows)
        self._claim_whole_rows(table, rows)

    def _claim_whole_rows(self, table: TableT, rows: Iterable[Row]) -> None:
        name = table.spec.name
        waiting: dict[str, list[Address]] = {}
        renderer = TargetRenderer(self.target, self.tables)
        for address, (_key, payload) in renderer.rows_with_addresses(name):
            waiting.setdefault(canonical_text(payload), []).append(address)
        new_rows = []
        for row in rows:
            equal = waiting.get(canonical_text(row))
            if equal:
                self.whole.claimed.setdefault(name, set()).add(equal.pop())
            else:
                new_rows.append((row, row))
        for start in range(0, len(new_rows), CHUNK):
            self.writer.write(table, new_rows[start : start + CHUNK], match=False)

    # --- the state at the restore time over rows the target holds -----------------------

    def load_state(self, order: InsertOrder) -> None:
        """Write the state at T, folded from the snapshot and the log, over the target's
        rows by natural key; rows of the closure are only added where missing."""
        state = self._state()
        needed = state.referenced_closure(self.selected)
        if self.refuse_missing_references:
            self._refuse_missing(needed)
        for name in order.tables:
            table = self.tables[name]
            deferred = order.deferred.get(name, ())
            if name not in self.selected:
                self._add_missing(table, needed.get(name, []), deferred)
            elif table.spec.full_row_identity:
                rows = [
                    project_row(table.spec, row)
                    for _k, row, count in state.rendered(name)
                    for _ in range(count)
                ]
                self._claim_whole_rows(table, rows)
            else:
                items = [(key, row) for key, row, _count in state.rendered(name)]
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    self.writer.write(table, chunk, match=True, deferred=deferred, late_refs=True)
                    self.progress("load", len(chunk))
            self.writer.apply_deferred(partial=True)
        self.writer.apply_deferred()

    def _state(self) -> LogFold:
        """The state at T: folded in T's shape when shapes changed or the target is
        narrower (what cannot be written is counted into the report), else as it is."""
        if not self.shaped:
            return fold_state(self.plan.context, self._snapshot_events(), self._counted_log())
        assert self.plan.shapes is not None
        state, walk = fold_in_shape(self.plan.shapes, self._snapshot_events(), self._counted_log())
        narrowed = {
            name: [
                c.name for c in spec.columns if c.name not in self.tables[name].spec.column_index
            ]
            for name, spec in ((s.name, s) for s in self.plan.context)
            if name in self.tables
        }
        written = [s for s in self.plan.context if s.name in self.tables]
        lacking, dropped = missing_values(state, written, narrowed)
        report = self.report
        report.lacking_values = {k: n for k, n in lacking.items() if k[0] in self.selected}
        report.dropped_values = {k: n for k, n in dropped.items() if k[0] in self.selected}
        report.unplaced_values = {k: n for k, n in walk.unplaced.items() if k[0] in self.selected}
        self._refuse_lacking_required(report.lacking_values)
        return state

    def _refuse_lacking_required(self, lacking: Mapping[tuple[str, str], int]) -> None:
        """Rows the log gave no value of a NOT NULL column: no value to write, and NULL
        is not one; say which, before the target refuses in its own words."""
        required = [
            (name, column, count)
            for (name, column), count in sorted(lacking.items())
            if column in self.tables[name].spec.column_index
            and not self.tables[name].spec.column(column).nullable
        ]
        if required:
            raise RestoreError(
                "the log holds no value of a NOT NULL column for some rows (the column was "
                "added with a default and no baseline was logged):\n  "
                + "\n  ".join(f"{n}.{c}: {k} rows" for n, c, k in required),
                hint="restore to a time before the column was added, or from a snapshot "
                "taken after it",
            )

    def _snapshot_events(self) -> Iterator[tuple[str, NaturalKey, Row]]:
        snapshot = self.plan.snapshot
        for spec in self.plan.context:
            file = snapshot.table(spec.name)
            if file is not None:
                for item in read_table(snapshot, file):
                    if spec.name in self.selected:
                        self.report.rows_loaded += 1
                    yield spec.name, item["k"], item["r"]

    def _counted_log(self) -> Iterator[LoggedTransaction]:
        for tx in replay_range(self.log_store, self.plan.snapshot, self.plan.at):
            self.report.events_applied += sum(1 for e in tx.events if e.table in self.selected)
            yield tx

    def _add_missing(
        self, table: TableT, items: list[Keyed], deferred: Sequence[ForeignKeySpec]
    ) -> None:
        """Rows of a table outside --table that restored rows refer to: inserted where the
        target lacks them (or, with refuse_missing_references, listed and refused)."""
        name = table.spec.name
        missing = self._missing(name, items)
        if missing:
            self.writer.write(table, missing, match=False, deferred=deferred, late_refs=True)
            self.report.referenced_rows_added[name] = len(missing)

    def _missing(self, name: str, items: list[Keyed]) -> list[Keyed]:
        found = self.writer.resolver.resolve(name, [key for key, _row in items])
        return [(key, row) for key, row in items if found.get(canonical_text(key)) is None]

    def _refuse_missing(self, needed: Mapping[str, list[Keyed]]) -> None:
        """--no-referenced-rows: name every referenced row the target lacks, and refuse."""
        lines = []
        for name, items in sorted(needed.items()):
            missing = self._missing(name, items)
            if missing:
                shown = ", ".join(show_key(key) for key, _row in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                lines.append(f"{len(missing)} {name} rows the target lacks: {shown}{more}")
        if lines:
            raise RestoreError(
                "the restored rows refer to rows outside --table that the target lacks:\n  "
                + "\n  ".join(lines),
                hint="create them first, restore those tables too, or drop "
                "--no-referenced-rows to have them added as they were at the restore time",
            )
