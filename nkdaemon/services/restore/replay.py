"""Replaying the log after a snapshot onto the rows it loaded, in windows of transactions:
keys prefetched in a few queries, runs of plain inserts and in-place updates applied as
their net change, anything else one transaction after another."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic

import structlog

from nkdaemon.core.errors import NkdError
from nkdaemon.core.keys import NaturalKey
from nkdaemon.core.log import LoggedTransaction
from nkdaemon.core.ports import RestoreTarget, TableT
from nkdaemon.core.restore_plan import InsertOrder
from nkdaemon.core.restore_runs import (
    LogEvent,
    Row,
    foldable_runs,
    is_foldable,
    key_of,
    net_change,
    prefetch_keys,
    row_of,
    runs,
    value_columns,
)
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.services.restore.plan import (
    Progress,
    RestoreError,
    RestorePlan,
    RestoreReport,
    replay_range,
)
from nkdaemon.services.restore.resolve import canonical_text
from nkdaemon.services.restore.write import RowWriter

log = structlog.get_logger("nkdaemon.restore")

WINDOW_EVENTS = 2000
# Updates and deletes of one table in a row are resolved and written this many at a time:
# one lookup query per chunk, and never more keys in hand than the resolver's cache holds
# (a million-row UPDATE resolved at once evicted its own keys and then looked each one up
# again: 499 events/s at pgbench scale 10).
CHUNK_EVENTS = 5000


class Replayer(Generic[TableT]):
    """Applies the logged transactions of a plan to the target; see the module docstring."""

    def __init__(
        self,
        *,
        plan: RestorePlan,
        log_store: SegmentLog,
        writer: RowWriter[TableT],
        selected: set[str],
        order: InsertOrder,
        report: RestoreReport,
        progress: Progress,
    ) -> None:
        self.plan = plan
        self.log_store = log_store
        self.writer = writer
        self.resolver = writer.resolver
        self.target: RestoreTarget[TableT] = writer.target
        self.tables: Mapping[str, TableT] = writer.tables
        self.selected = selected
        self.whole = {n for n in selected if self.tables[n].spec.full_row_identity}
        self.order = order
        self.report = report
        self.progress = progress
        self._fold_refusal = ""

    def replay(self) -> None:
        window: list[LoggedTransaction] = []
        size = 0
        for tx in replay_range(self.log_store, self.plan.snapshot, self.plan.at):
            window.append(tx)
            size += len(tx.events)
            if size >= WINDOW_EVENTS:
                self._replay_window(window)
                window, size = [], 0
        if window:
            self._replay_window(window)

    def _replay_window(self, window: list[LoggedTransaction]) -> None:
        """Resolve the keys a window of transactions names in a few queries, then apply it
        with the writes pipelined (their results are not waited for one by one).

        Runs of transactions that only insert rows and update them in place are applied as
        their net change, table by table; anything else, one transaction after another."""
        self._prefetch(window)
        self._fold_refusal = ""
        try:
            with self.target.batch():
                for run, foldable in foldable_runs(window, self._foldable):
                    if not (foldable and len(run) > 1 and self._apply_folded(run)):
                        for tx in run:
                            self._apply_transaction(tx)
        except NkdError as exc:
            if self._fold_refusal:  # the first refusal is often the real cause: say both
                exc.message += (
                    " (before that, applying the same changes as their net change failed: "
                    f"{self._fold_refusal.splitlines()[0]})"
                )
            raise

    def _prefetch(self, window: list[LoggedTransaction]) -> None:
        specs = {name: self.tables[name].spec for name in self.selected}
        events = (event for tx in window for event in tx.events)
        for name, keys in prefetch_keys(events, specs, self.selected).items():
            # more keys than the cache keeps would push each other out before their use:
            # those are resolved chunk by chunk as they are applied
            if name in self.tables and len(keys) <= self.resolver.capacity // 2:
                self.resolver.resolve(name, keys)

    def _foldable(self, tx: LoggedTransaction) -> bool:
        return is_foldable(tx.events, self.selected, self.whole)

    def _apply_transaction(self, tx: LoggedTransaction) -> None:
        for (table_name, op), events in runs(tx.events):
            if table_name not in self.selected:
                continue
            self._apply(self.tables[table_name], op, events)
            self.report.events_applied += len(events)
            if self.writer.deferred:
                self.writer.apply_deferred(partial=True)
        self.writer.apply_deferred()
        self.resolver.end_transaction()
        self.progress("replay", sum(1 for e in tx.events if e.table in self.selected))

    def _apply_folded(self, run: list[LoggedTransaction]) -> bool:
        """Apply a run of foldable transactions as its net change, inside a savepoint.

        The order of rows within a table can differ from the log's (each row moves to its
        first change), which a target's own unique constraint on other columns may refuse
        for a moment (two rows swapping a value). Then the savepoint is rolled back and the
        caller applies the run in log order: returns False."""
        change = net_change(
            (tx.events for tx in run),
            selected=self.selected,
            whole=self.whole,
            text=canonical_text,
        )
        try:
            with self.target.attempt():
                for name in self.order.tables:
                    table = self.tables[name]
                    if name in change.whole:
                        self.writer.write(table, [(r, r) for r in change.whole[name]], match=False)
                    if name in change.inserts:
                        inserts = list(change.inserts[name].values())
                        self.writer.write(table, inserts, match=True, late_refs=True)
                    if name in change.updates:
                        self.writer.update_many(table, list(change.updates[name].values()))
                self.writer.apply_deferred()
        except NkdError as exc:
            log.info("restore.fold_refused", transactions=len(run), reason=str(exc))
            self._fold_refusal = str(exc)
            self.writer.discard_pending()
            self.resolver.forget()
            return False
        self.report.events_applied += change.events
        self.progress("replay", change.events)
        return True

    def _apply(self, table: TableT, op: str, events: Sequence[LogEvent]) -> None:
        name = table.spec.name
        if op == "T":
            self.target.delete_all(table)
            self.resolver.changed(name)
            return
        if table.spec.full_row_identity:
            self._apply_multiset(table, op, events)
            return
        if op == "I":
            items = [(key_of(e), row_of(e)) for e in events]
            self.writer.write(table, items, match=True, late_refs=True)
            return
        if op == "D":
            for start in range(0, len(events), CHUNK_EVENTS):
                chunk = events[start : start + CHUNK_EVENTS]
                found = self.resolver.resolve(name, [key_of(e) for e in chunk])
                addresses = [a for a in found.values() if a is not None]  # cascades took them
                self.target.delete(table, addresses)
                self.resolver.deleted(name, found)
            return
        # updates in place, in log order, a chunk per statement batch; a rename alone, as it
        # changes what later ones find
        in_place: list[tuple[NaturalKey, Row]] = []
        for event in events:
            if event.old_key is None:
                in_place.append((key_of(event), row_of(event)))
                if len(in_place) >= CHUNK_EVENTS:
                    self.writer.update_many(table, in_place)
                    in_place = []
                continue
            if in_place:
                self.writer.update_many(table, in_place)
                in_place = []
            self.writer.update_many(table, [(key_of(event), row_of(event))], old_key=event.old_key)
            self.resolver.changed(name)
        if in_place:
            self.writer.update_many(table, in_place)

    def _apply_multiset(self, table: TableT, op: str, events: Sequence[LogEvent]) -> None:
        for event in events:
            if op in ("U", "D"):
                self._delete_one_equal(table, key_of(event, before=True))
            if op in ("I", "U"):
                self.writer.write(table, [(row_of(event), row_of(event))], match=False)

    def _delete_one_equal(self, table: TableT, row: Row) -> None:
        spec = table.spec
        found = self._as_target_values(table, row)
        address = self.target.find_one_equal(table, *found) if found is not None else None
        if address is None:
            raise RestoreError(f"the log deletes a {spec.name} row the target does not hold")
        self.target.delete(table, [address])

    def _as_target_values(self, table: TableT, row: Row) -> tuple[list[str], list[object]] | None:
        """A logged whole row as the target's columns and values: references (logged as
        the natural keys of the rows they name) become those rows' addresses, or key
        values. None when a row it refers to is not in the target (nor was it earlier in
        the transaction in hand), so no equal row can be there either."""
        plain, _references = value_columns(table.spec)
        columns = [c for c in plain if c in row]
        values = [self.target.param(table, c, row.get(c)) for c in columns]
        for fk in table.spec.foreign_keys:
            key = row.get(fk.part_name)
            columns.extend(fk.columns)
            if key is None:
                values.extend([None] * len(fk.columns))
                continue
            held = self.resolver.reference_values(fk, [key], deleted_too=True)[canonical_text(key)]
            if held is None:
                return None
            values.extend(held)
        return columns, values
