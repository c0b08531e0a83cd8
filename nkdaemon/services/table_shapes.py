"""The captured tables' shapes as the drain knows them while the source's change.

The drain reads queued changes with the registry it reflected; when a queued row or a
schema change names a column it does not know, it re-reflects (``refresh``). Columns and
tables that vanished from the source stay known, since queued changes may still hold them;
what the drain knows is kept in the state database (meta ``drain_tables``), so a drain
started after a table was dropped or a column removed still reads the changes queued
before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog

from nkdaemon.core.definitions import restricted_spec, spec_from_json, spec_to_json
from nkdaemon.core.keys import ColumnSpec, TableSpec, replace_spec
from nkdaemon.core.ports import SchemaChange, SchemaDrift
from nkdaemon.repository.state import StateStore

log = structlog.get_logger("nkdaemon.drain")

MEMORY_KEY = "drain_tables"


class TableShapes:
    """The registry the drain reads with: reflected, plus what vanished since."""

    def __init__(
        self, load: Callable[[], dict[int, TableSpec]], state: StateStore | None = None
    ) -> None:
        self._load_tables = load
        self._state = state
        self._retired: dict[int, dict[str, ColumnSpec]] = {}
        self.tables = self._recalled()
        self._merge(load(), None)

    def definition_of(self, change: SchemaChange) -> dict[str, Any] | None:
        """The captured definition the change gives the table (None: dropped); a shape
        the registry does not know yet is re-reflected first (SchemaDrift)."""
        if change.columns is None:
            return None
        spec = self.tables.get(change.table)
        missing = tuple(c for c in change.columns if spec is None or c not in spec.column_index)
        if spec is None or missing:
            raise SchemaDrift(table=change.name, columns=missing)
        return spec_to_json(restricted_spec(spec, change.columns))

    def refresh(self, drift: SchemaDrift | None) -> None:
        """Re-reflect; columns that vanished from the source stay known, typed 'other', and
        so do tables (their queued changes may still have to be read)."""
        self._merge(self._load_tables(), drift)
        if drift is not None:
            log.warning("drain.schema_changed", table=drift.table, columns=list(drift.columns))

    def _merge(self, fresh: dict[int, TableSpec], drift: SchemaDrift | None) -> None:
        # Vanished tables first: where a dropped table's name is in use again (under a new
        # number), lookups by name must find the live table.
        merged = {n: s for n, s in self.tables.items() if n not in fresh}
        for number, spec in fresh.items():
            old = self.tables.get(number)
            retired = dict(self._retired.get(number, {}))
            if old is not None:
                for column in old.columns:
                    if column.name not in spec.column_index:
                        retired[column.name] = column
            if drift is not None and spec.name == drift.table:
                for name in drift.columns:
                    if name not in spec.column_index and name not in retired:
                        retired[name] = ColumnSpec(name=name, logical_type="other", nullable=True)
            self._retired[number] = retired
            merged[number] = _with_columns(spec, retired)
        changed = merged != self.tables
        self.tables = merged
        if changed:
            self._remember()

    def _recalled(self) -> dict[int, TableSpec]:
        raw = self._state.get_meta(MEMORY_KEY) if self._state is not None else None
        if not raw:
            return {}
        return {int(n): spec_from_json(d) for n, d in orjson.loads(raw).items()}

    def _remember(self) -> None:
        if self._state is None:
            return
        value = orjson.dumps({str(n): spec_to_json(s) for n, s in self.tables.items()})
        self._state.set_meta(MEMORY_KEY, value.decode())


def remembered_numbers(state: StateStore) -> dict[str, int]:
    """Every table the drain has known, by name (the latest number where a name was
    used twice): numbers a new table must never be given again."""
    raw = state.get_meta(MEMORY_KEY)
    if not raw:
        return {}
    numbers: dict[str, int] = {}
    for number, definition in sorted(orjson.loads(raw).items(), key=lambda item: int(item[0])):
        numbers[str(definition["name"])] = int(number)
    return numbers


def _with_columns(spec: TableSpec, extra: dict[str, ColumnSpec]) -> TableSpec:
    if not extra:
        return spec
    columns = spec.columns + tuple(c for n, c in extra.items() if n not in spec.column_index)
    return replace_spec(spec, columns=columns)
