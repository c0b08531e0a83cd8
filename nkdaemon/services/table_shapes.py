"""The captured tables' shapes as the drain reads the queue with them.

A queued change must be read with the shape its table had when it was captured, not the
shape it has now: the changes queued before an ALTER lack (or name differently) columns the
table has after it. So the drain keeps the spec of every table as of its checkpoint, in
the state database (meta ``drain_tables``, committed with the checkpoint), and moves a
table's spec forward only where the queue says its shape changed (a SchemaChange), in the
same batch. Tables new to the source are reflected as they appear; tables that vanished
stay known, since changes queued before they went must still be read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog

from nkdaemon.core.definitions import spec_after_change, spec_from_json, spec_to_json
from nkdaemon.core.errors import CaptureError, SchemaError
from nkdaemon.core.keys import ColumnSpec, TableSpec, replace_spec
from nkdaemon.core.ports import SchemaChange, SchemaDrift
from nkdaemon.repository.state import StateStore

log = structlog.get_logger("nkdaemon.drain")

MEMORY_KEY = "drain_tables"


class TableShapes:
    """The registry the drain reads with. ``tables`` stays the same dict object while the
    drain streams (a source decodes each change with the entry current then)."""

    def __init__(
        self, load: Callable[[], dict[int, TableSpec]], state: StateStore | None = None
    ) -> None:
        self._load = load
        self._state = state
        self.tables: dict[int, TableSpec] = {}
        self._live: set[int] = set()
        self._arrange(self._recalled(), self._load_tables())

    # --- as the queue goes ---------------------------------------------------------------

    def apply(self, change: SchemaChange) -> dict[str, Any] | None:
        """Move the table's spec to the shape the change gives it; returns the captured
        definition from here on (None: dropped). Raises CaptureError when the change
        leaves rows that cannot be named (a key column gone)."""
        if change.columns is None:
            self._live.discard(change.table)
            self._arrange(dict(self.tables), {})
            return None
        current = self._load_tables().get(change.table)
        previous = self.tables.get(change.table)
        if previous is None and current is None:  # created and gone before any pass read it
            raise CaptureError(
                f"table {change.name!r} changed shape in the queue but is no longer in the "
                "source, and the drain never read its definition",
                hint="its queued changes cannot be named; restore the table (CREATE it again "
                "as it was) so the drain can read them, or reinstall capture",
            )
        spec = spec_after_change(previous, current, change.columns, change.renamed)
        self.tables[change.table] = spec
        self._live.add(change.table)
        self._remember(in_batch=True)
        return spec_to_json(spec)

    def refresh(self, drift: SchemaDrift | None) -> None:
        """Take in tables new to the source; with ``drift`` (a queued row named columns
        its table's spec lacks: the source noticed an added column only afterwards), add
        those columns to that table's spec, typed as reflected now."""
        fresh = self._load_tables()
        known = dict(self.tables)
        if drift is not None:
            number = self._number_of(drift.table)
            if number is not None:
                known[number] = _with_columns(known[number], fresh.get(number), drift.columns)
            log.warning("drain.schema_changed", table=drift.table, columns=list(drift.columns))
        self._arrange(known, fresh)

    def rollback(self) -> None:
        """Back to the shapes of the checkpoint (after a failed batch; reads no source, which
        may be what failed)."""
        if self._state is not None:  # what state.db holds already: nothing to write back
            self._arrange(self._recalled(), {}, remember=False)

    def _load_tables(self) -> dict[int, TableSpec]:
        """The captured tables as reflected now. A table the rules can no longer capture
        (its natural key's columns gone) stops capture, loudly, until configured."""
        try:
            return self._load()
        except SchemaError as exc:
            raise CaptureError(exc.message, hint=exc.hint) from None

    # --- keeping them --------------------------------------------------------------------

    def _arrange(
        self, known: dict[int, TableSpec], fresh: dict[int, TableSpec], *, remember: bool = True
    ) -> None:
        """``known`` specs win over ``fresh`` ones; vanished tables are placed first, so
        where a dropped table's name is in use again, lookups by name find the live one."""
        merged = dict(known)
        for number, spec in fresh.items():
            merged.setdefault(number, spec)
        if fresh:
            self._live = set(fresh)
        ordered = sorted(merged, key=lambda n: (n in self._live, n))
        changed = merged != self.tables
        self.tables.clear()
        self.tables.update((n, merged[n]) for n in ordered)
        if changed and remember:
            self._remember(in_batch=False)

    def _number_of(self, name: str) -> int | None:
        found = [n for n, spec in self.tables.items() if spec.name == name]
        return found[-1] if found else None

    def _recalled(self) -> dict[int, TableSpec]:
        return remembered_tables(self._state) if self._state is not None else {}

    def _remember(self, *, in_batch: bool) -> None:
        """In a batch: committed with its checkpoint (rolled back with it); outside one:
        at once (a table new to capture, or a column a queued row showed)."""
        if self._state is None:
            return
        if in_batch:
            self._state.begin()
        remember_tables(self._state, self.tables)


def remember_tables(state: StateStore, tables: dict[int, TableSpec]) -> None:
    value = orjson.dumps({str(n): spec_to_json(s) for n, s in tables.items()})
    state.set_meta(MEMORY_KEY, value.decode())


def remembered_tables(state: StateStore) -> dict[int, TableSpec]:
    raw = state.get_meta(MEMORY_KEY)
    if not raw:
        return {}
    return {int(n): spec_from_json(d) for n, d in orjson.loads(raw).items()}


def remembered_numbers(state: StateStore) -> dict[str, int]:
    """Every table the drain has known, by name (the latest number where a name was
    used twice): numbers a new table must never be given again."""
    numbers: dict[str, int] = {}
    for number, spec in sorted(remembered_tables(state).items()):
        numbers[spec.name] = number
    return numbers


def _with_columns(spec: TableSpec, current: TableSpec | None, names: tuple[str, ...]) -> TableSpec:
    extra = [
        current.column_index[n]
        if current is not None and n in current.column_index
        else ColumnSpec(name=n, logical_type="other", nullable=True)
        for n in names
        if n not in spec.column_index
    ]
    return replace_spec(spec, columns=spec.columns + tuple(extra)) if extra else spec
