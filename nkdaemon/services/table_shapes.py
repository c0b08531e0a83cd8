"""The captured tables' shapes as the drain knows them while the source's change.

The drain reads queued changes with the registry it reflected; when a queued row or a
schema change names a column it does not know, it re-reflects (``refresh``). Columns and
tables that vanished from the source stay known, since queued changes may still hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from nkdaemon.core.definitions import restricted_spec, spec_to_json
from nkdaemon.core.keys import ColumnSpec, TableSpec, replace_spec
from nkdaemon.core.ports import SchemaChange, SchemaDrift

log = structlog.get_logger("nkdaemon.drain")


class TableShapes:
    """The registry the drain reads with: reflected, plus what vanished since."""

    def __init__(self, load: Callable[[], dict[int, TableSpec]]) -> None:
        self._load_tables = load
        self.tables = load()
        self._retired: dict[int, dict[str, ColumnSpec]] = {}

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
        fresh = self._load_tables()
        for number, old_spec in self.tables.items():
            fresh.setdefault(number, old_spec)
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
            fresh[number] = _with_columns(spec, retired)
        self.tables = fresh
        if drift is not None:
            log.warning("drain.schema_changed", table=drift.table, columns=list(drift.columns))


def _with_columns(spec: TableSpec, extra: dict[str, ColumnSpec]) -> TableSpec:
    if not extra:
        return spec
    columns = spec.columns + tuple(c for n, c in extra.items() if n not in spec.column_index)
    return replace_spec(spec, columns=columns)
