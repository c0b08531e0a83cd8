"""What the log says a restored database must hold, kept compactly for validation.

Rows are identified by their natural key in *entity form*: a reference inside a key or a
row is replaced by the referenced row's entity number, which stays the same when that row
is renamed (as an id does in a database). Each table maps entity-form key text to the
hash of the entity-form row; comparing a restored target with it needs no copy of the
data in memory, only a key and a number per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from nkdaemon.core.errors import NkdError
from nkdaemon.core.keys import TableSpec, key_references, row_references


class ExpectationError(NkdError):
    """The log cannot be applied: an event contradicts the state before it."""

    kind = "replay"


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _fast(value: Any) -> bytes:
    """Canonical bytes of a JSON value for keys and hashes (sorted keys; much faster)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class _Table:
    spec: TableSpec
    key_refs: dict[str, str]
    row_refs: dict[str, str]
    # entity-form key text -> entity number (tables others refer to) and row hash
    entity: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


class _Unresolved(Exception):
    pass


class Expectation:
    """Build from a snapshot (``load``), then apply transactions in order."""

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        self._tables: dict[str, _Table] = {}
        for spec in specs:
            self._tables[spec.name] = _Table(
                spec=spec,
                key_refs=key_references(spec),
                row_refs=row_references(spec),
            )
        self._next_entity = 1
        self._pending: list[tuple[str, str, dict[str, Any], str]] = []
        self._deleted: dict[tuple[str, str], int] = {}

    def tables(self) -> list[str]:
        return list(self._tables)

    # --- entity form ---------------------------------------------------------------------

    def entity_key(self, table: str, key: Mapping[str, Any]) -> str:
        """The entity-form text of a natural key (raises _Unresolved if a part is unknown)."""
        refs = self._tables[table].key_refs if table in self._tables else {}
        form = {}
        for part, value in key.items():
            if part in refs and value is not None:
                form[part] = ["@", self._entity_of(refs[part], value)]
            else:
                form[part] = value
        return _fast(form).decode()

    def _entity_of(self, table: str, key: Any) -> int | str:
        if table not in self._tables:
            return _text(key)  # a table outside the restore: named by its key
        text = self.entity_key(table, key)
        found = self._tables[table].entity.get(text)
        if found is None:
            found = self._deleted.get((table, text))
        if found is None:
            raise _Unresolved(f"{table} {_text(key)}")
        return found

    def _row_hash(self, table: str, row: Mapping[str, Any]) -> int:
        refs = self._tables[table].row_refs
        form = {
            name: ["@", self._entity_of(refs[name], value)]
            if name in refs and value is not None
            else value
            for name, value in row.items()
        }
        return hash(_fast(form))

    # --- building ------------------------------------------------------------------------

    def load(self, table: str, key: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        """A snapshot row (tables in insert order; forward references wait for finish)."""
        self._insert(table, key, row, where=f"snapshot {table}: ")

    def finish_load(self) -> None:
        self._resolve_pending()

    def apply_transaction(self, events: Iterable[Mapping[str, Any]], *, where: str = "") -> None:
        for event in events:
            self._apply(event, where)
        self._resolve_pending()
        self._deleted.clear()

    def _apply(self, event: Mapping[str, Any], where: str) -> None:
        table, op = event["t"], event["o"]
        if table not in self._tables:
            return
        t = self._tables[table]
        if op == "T":
            t.rows.clear()
            t.entity.clear()
            return
        if t.spec.full_row_identity:
            self._apply_multiset(t, event, where)
            return
        try:
            if op == "I":
                self._insert(table, event["k"], event["r"], where=where)
            elif op == "U":
                old = self.entity_key(table, event.get("ok") or event["k"])
                if old not in t.rows:
                    raise ExpectationError(
                        f"{where}update of {table} {_text(event.get('ok') or event['k'])}, "
                        "which does not exist"
                    )
                del t.rows[old]
                entity = t.entity.pop(old, None)
                new = self.entity_key(table, event["k"])
                if new in t.rows:
                    raise ExpectationError(
                        f"{where}update of {table} to {_text(event['k'])}, which exists"
                    )
                if entity is not None:
                    t.entity[new] = entity
                self._set_row(table, new, event["r"], where)
            else:
                text = self.entity_key(table, event["k"])
                if t.rows.pop(text, None) is None:
                    raise ExpectationError(
                        f"{where}delete of {table} {_text(event['k'])}, which does not exist"
                    )
                entity = t.entity.pop(text, None)
                if entity is not None:
                    self._deleted[(table, text)] = entity
        except _Unresolved as missing:
            raise ExpectationError(
                f"{where}{table} refers to {missing}, which does not exist"
            ) from None

    def _insert(
        self, table: str, key: Mapping[str, Any], row: Mapping[str, Any], *, where: str
    ) -> None:
        t = self._tables[table]
        if t.spec.full_row_identity:
            self._apply_multiset(t, {"o": "I", "r": row}, where)
            return
        text = self.entity_key(table, key)
        if text in t.rows:
            raise ExpectationError(f"{where}insert of {table} {_text(key)}, which exists")
        if t.spec.referenced:
            t.entity[text] = self._next_entity
            self._next_entity += 1
        self._set_row(table, text, row, where)

    def _set_row(self, table: str, text: str, row: Mapping[str, Any], where: str) -> None:
        try:
            self._tables[table].rows[text] = self._row_hash(table, row)
        except _Unresolved:
            self._tables[table].rows[text] = 0
            self._pending.append((table, text, dict(row), where))

    def _resolve_pending(self) -> None:
        pending, self._pending = self._pending, []
        for table, text, row, where in pending:
            if text not in self._tables[table].rows:
                continue
            try:
                self._tables[table].rows[text] = self._row_hash(table, row)
            except _Unresolved as missing:
                raise ExpectationError(
                    f"{where}{table} refers to {missing}, which does not exist"
                ) from None

    def _apply_multiset(self, t: _Table, event: Mapping[str, Any], where: str) -> None:
        op = event["o"]
        try:
            if op in ("U", "D"):
                old = str(self._row_hash(t.spec.name, event.get("ok") or event["k"]))
                count = t.rows.get(old, 0)
                if count == 0:
                    raise ExpectationError(
                        f"{where}{op} of a {t.spec.name} row that does not exist"
                    )
                if count == 1:
                    del t.rows[old]
                else:
                    t.rows[old] = count - 1
            if op in ("I", "U"):
                new = str(self._row_hash(t.spec.name, event["r"]))
                t.rows[new] = t.rows.get(new, 0) + 1
        except _Unresolved as missing:
            raise ExpectationError(
                f"{where}{t.spec.name} refers to {missing}, which does not exist"
            ) from None

    # --- comparing -----------------------------------------------------------------------

    def count(self, table: str) -> int:
        t = self._tables[table]
        return sum(t.rows.values()) if t.spec.full_row_identity else len(t.rows)

    def entity_for(self, table: str, key: Mapping[str, Any]) -> int | None:
        """The entity a (target) row with this natural key stands for, if expected."""
        try:
            return self._tables[table].entity.get(self.entity_key(table, key))
        except _Unresolved:
            return None

    def compare(
        self, table: str, actual: Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> TableDiff:
        """Compare (natural key, row) pairs read back from the target (refs as natural keys).

        Consumes the table's expected rows (each matched row is dropped as it is seen, so a
        million-row table is not held twice); compare each table once."""
        t = self._tables[table]
        diff = TableDiff(table=table, expected=self.count(table))
        if t.spec.full_row_identity:
            return self._compare_multiset(t, diff, actual)
        remaining = t.rows
        for key, row in actual:
            diff.actual += 1
            try:
                text = self.entity_key(table, key)
                digest = self._row_hash(table, row)
            except _Unresolved as missing:
                diff.unexpected.append(f"{_text(key)} (refers to {missing})")
                continue
            expected = remaining.pop(text, None)
            if expected is None:  # not expected, or a second row with the same key
                diff.unexpected.append(_text(key))
            elif expected != digest:
                diff.differing.append(_text(key))
        diff.missing.extend(remaining)
        remaining.clear()
        return diff

    def _compare_multiset(
        self,
        t: _Table,
        diff: TableDiff,
        actual: Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]],
    ) -> TableDiff:
        """Rows without a key are compared as a multiset: each target row takes one equal
        expected row; what is left over on either side is unexpected or missing."""
        counts: dict[str, int] = {}
        shown: dict[str, str] = {}
        for _key, row in actual:
            diff.actual += 1
            try:
                text = str(self._row_hash(t.spec.name, row))
            except _Unresolved as missing:
                text = f"? {_text(row)} (refers to {missing})"
            counts[text] = counts.get(text, 0) + 1
            shown.setdefault(text, _text(row))
        for text, count in counts.items():
            diff.unexpected.extend([shown[text]] * max(0, count - t.rows.get(text, 0)))
        for text, count in t.rows.items():
            short = count - counts.get(text, 0)
            diff.missing.extend([f"a whole row with digest {int(text):x}"] * max(0, short))
        return diff


@dataclass
class TableDiff:
    table: str
    expected: int
    actual: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not (self.missing or self.unexpected or self.differing) and self.expected == self.actual
        )

    def summary(self, limit: int = 3) -> str:
        parts = [f"{self.table}: expected {self.expected} rows, found {self.actual}"]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("different", self.differing),
        ):
            if items:
                shown = "; ".join(items[:limit]) + (
                    f"; and {len(items) - limit} more" if len(items) > limit else ""
                )
                parts.append(f"{label}: {shown}")
        return " — ".join(parts)
