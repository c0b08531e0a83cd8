"""The one fold of the log: a snapshot's rows, then logged transactions, as rows by key.

Rows are identified by their natural key in *entity form*: a reference inside a key or a
row is replaced by the referenced row's entity number, which stays the same when that row
is renamed (as an id does in a database). So renaming a user renames it for every document
that points at it, and a key that contains another row's key (a state's workflow) follows
that row's renames, just as a restore into a real database does.

Each table maps entity-form key text to the hash of the entity-form row: comparing a
restored target with it (restore validation, verify) needs no copy of the data in memory,
only a key and a number per row. With ``keep_rows`` the fold also keeps each row's entity
form, so it can render its state back into natural keys (merge-mode restore, export,
the demo's and the tests' view of a database).

The fold is strict: inserting a key that exists, or updating or deleting one that does
not, is a ReplayError, because it means the log's order or content is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from nkdaemon.core.errors import NkdError
from nkdaemon.core.keys import NaturalKey, TableSpec, key_references, row_references
from nkdaemon.core.log import ChangeEvent, Op, Row
from nkdaemon.core.table_diff import TableDiff, Unresolved, compare_rows, key_text

# A row or key with its references in entity form: ["@", entity number] (or ["@", key
# text] for a table outside the fold).
Form = dict[str, Any]
# A natural key or a row as given to the fold (fields to JSON values).
Values = Mapping[str, Any]


class ReplayError(NkdError):
    """The log cannot be applied: an event contradicts the state before it."""

    kind = "replay"


def _fast(value: Any) -> bytes:
    """Canonical bytes of a JSON value for keys and hashes (sorted keys; much faster)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class _Table:
    spec: TableSpec
    key_refs: dict[str, str]
    row_refs: dict[str, str]
    numbered: bool  # other rows refer to this table's: its rows get entity numbers
    # entity-form key text (a keyless table: row hash text) -> entity number, row hash or
    # count, and with keep_rows the (key, row) forms
    entity: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, tuple[Form, Form | None]] = field(default_factory=dict)


class LogFold:
    """Build from a snapshot (``load``, then ``finish_load``), then apply transactions in
    order (``apply_transaction``); compare, count or render the result."""

    def __init__(self, specs: Iterable[TableSpec], *, keep_rows: bool = False) -> None:
        specs = list(specs)
        targets = {
            t for s in specs for t in (*key_references(s).values(), *row_references(s).values())
        }
        self._tables: dict[str, _Table] = {
            spec.name: _Table(
                spec=spec,
                key_refs=key_references(spec),
                row_refs=row_references(spec),
                numbered=spec.referenced or spec.name in targets,
            )
            for spec in specs
        }
        self._keep = keep_rows
        self._next_entity = 1
        self._names: dict[int, tuple[str, Form]] = {}  # keep_rows: entity -> table, key form
        # rows whose references wait for the end of the transaction (or of the load)
        self._pending: list[tuple[str, str, Values, str]] = []
        self._pending_whole: list[tuple[str, Values, str]] = []
        self._deleted: dict[tuple[str, str], int] = {}

    def tables(self) -> list[str]:
        return list(self._tables)

    # --- entity form ---------------------------------------------------------------------

    def _key_form(self, table: str, key: Values) -> Form:
        refs = self._tables[table].key_refs if table in self._tables else {}
        return {
            part: ["@", self._entity_of(refs[part], value)]
            if part in refs and value is not None
            else value
            for part, value in key.items()
        }

    def entity_key(self, table: str, key: Values) -> str:
        """The entity-form text of a natural key (raises Unresolved if a part is unknown)."""
        return _fast(self._key_form(table, key)).decode()

    def _entity_of(self, table: str, key: Any) -> int | str:
        if table not in self._tables:
            return key_text(key)  # a table outside the fold: named by its key
        text = self.entity_key(table, key)
        found = self._tables[table].entity.get(text)
        if found is None:
            found = self._deleted.get((table, text))
        if found is None:
            raise Unresolved(f"{table} {key_text(key)}")
        return found

    def _row_form(self, table: str, row: Values) -> Form:
        refs = self._tables[table].row_refs
        return {
            name: ["@", self._entity_of(refs[name], value)]
            if name in refs and value is not None
            else value
            for name, value in row.items()
        }

    def _row_hash(self, table: str, row: Values) -> int:
        return hash(_fast(self._row_form(table, row)))

    # --- building ------------------------------------------------------------------------

    def load(self, table: str, key: Values, row: Values) -> None:
        """A snapshot row (tables in insert order; forward references wait for finish)."""
        self._insert(table, key, row, where=f"snapshot {table}: ")

    def finish_load(self) -> None:
        self._resolve_pending()

    def apply_transaction(self, events: Iterable[ChangeEvent], *, where: str = "") -> None:
        """Apply one transaction's events; references may point forward within it."""
        for event in events:
            self._apply(event, where)
        self._resolve_pending()
        self._deleted.clear()

    def _apply(self, event: ChangeEvent, where: str) -> None:
        table, op = event.table, event.op
        t = self._tables.get(table)
        if t is None:
            return
        if op == "T":
            t.rows.clear()
            t.entity.clear()
            t.kept.clear()
            return
        try:
            if t.spec.full_row_identity:
                self._apply_multiset(t, op, event.previous_key, event.row, where)
            elif op == "I":
                self._insert(table, _given(event.key), _given(event.row), where=where)
            elif op == "U":
                self._update(t, event, where)
            else:
                self._delete(t, _given(event.key), where)
        except Unresolved as missing:
            raise _missing(where, table, missing) from None

    def _update(self, t: _Table, event: ChangeEvent, where: str) -> None:
        table, key = t.spec.name, _given(event.key)
        old = self.entity_key(table, _given(event.previous_key))
        if old not in t.rows:
            raise ReplayError(
                f"{where}update of {table} {key_text(event.previous_key)}, which does not exist"
            )
        del t.rows[old]
        t.kept.pop(old, None)
        entity = t.entity.pop(old, None)
        form = self._key_form(table, key)
        new = _fast(form).decode()
        if new in t.rows:
            raise ReplayError(f"{where}update of {table} to {key_text(key)}, which exists")
        if entity is not None:
            t.entity[new] = entity
            if self._keep:
                self._names[entity] = (table, form)
        self._set_row(table, new, form, _given(event.row), where)

    def _delete(self, t: _Table, key: Values, where: str) -> None:
        table = t.spec.name
        text = self.entity_key(table, key)
        if t.rows.pop(text, None) is None:
            raise ReplayError(f"{where}delete of {table} {key_text(key)}, which does not exist")
        t.kept.pop(text, None)
        entity = t.entity.pop(text, None)
        if entity is not None:
            self._deleted[(table, text)] = entity

    def _insert(self, table: str, key: Values, row: Values, *, where: str) -> None:
        t = self._tables[table]
        if t.spec.full_row_identity:
            try:
                self._apply_multiset(t, "I", None, row, where)
            except Unresolved as missing:
                raise ReplayError(
                    f"{where}{table} refers to {missing}, which does not exist"
                ) from None
            return
        try:
            form = self._key_form(table, key)
        except Unresolved as missing:
            raise _missing(where, table, missing) from None
        text = _fast(form).decode()
        if text in t.rows:
            raise ReplayError(f"{where}insert of {table} {key_text(key)}, which exists")
        if t.numbered:
            t.entity[text] = self._next_entity
            if self._keep:
                self._names[self._next_entity] = (table, form)
            self._next_entity += 1
        self._set_row(table, text, form, row, where)

    def _set_row(self, table: str, text: str, key: Form, row: Values, where: str) -> None:
        t = self._tables[table]
        try:
            form = self._row_form(table, row)
        except Unresolved:  # a reference to a row later in the transaction
            t.rows[text] = 0
            if self._keep:
                t.kept[text] = (key, None)
            self._pending.append((table, text, dict(row), where))
            return
        t.rows[text] = hash(_fast(form))
        if self._keep:
            t.kept[text] = (key, form)

    def _resolve_pending(self) -> None:
        pending, self._pending = self._pending, []
        for table, text, row, where in pending:
            t = self._tables[table]
            if text not in t.rows:
                continue
            try:
                form = self._row_form(table, row)
            except Unresolved as missing:
                raise _missing(where, table, missing) from None
            t.rows[text] = hash(_fast(form))
            if self._keep:
                t.kept[text] = (t.kept[text][0], form)
        whole, self._pending_whole = self._pending_whole, []
        for table, row, where in whole:
            try:
                self._count_in(self._tables[table], self._row_form(table, row))
            except Unresolved as missing:
                raise _missing(where, table, missing) from None

    def _apply_multiset(
        self,
        t: _Table,
        op: Op,
        old: Values | None,
        row: Values | None,
        where: str,
    ) -> None:
        """A keyless table: rows are a multiset; a delete removes one equal row."""
        name = t.spec.name
        if op in ("U", "D"):
            text = str(self._row_hash(name, _given(old)))
            count = t.rows.get(text, 0)
            if count == 0:
                raise ReplayError(f"{where}{op} of a {name} row that does not exist")
            if count == 1:
                del t.rows[text]
                t.kept.pop(text, None)
            else:
                t.rows[text] = count - 1
        if op in ("I", "U"):
            try:
                form = self._row_form(name, _given(row))
            except Unresolved:  # a reference to a row later in the transaction
                self._pending_whole.append((name, _given(row), where))
                return
            self._count_in(t, form)

    def _count_in(self, t: _Table, form: Form) -> None:
        text = str(hash(_fast(form)))
        t.rows[text] = t.rows.get(text, 0) + 1
        if self._keep:
            t.kept[text] = (form, form)

    # --- comparing -----------------------------------------------------------------------

    def count(self, table: str) -> int:
        t = self._tables[table]
        return sum(t.rows.values()) if t.spec.full_row_identity else len(t.rows)

    def entity_for(self, table: str, key: Values) -> int | None:
        """The entity a (target) row with this natural key stands for, if expected."""
        try:
            return self._tables[table].entity.get(self.entity_key(table, key))
        except Unresolved:
            return None

    def row_digest(self, table: str, row: Values) -> int:
        """The hash of a row's entity form (raises Unresolved if a reference is unknown)."""
        return self._row_hash(table, row)

    def keyless(self, table: str) -> bool:
        return self._tables[table].spec.full_row_identity

    def expected(self, table: str) -> dict[str, int]:
        """A table's expected rows, live: entity-form key text -> row hash (a keyless
        table: row hash text -> count). A comparison of a keyed table consumes them."""
        return self._tables[table].rows

    def compare(self, table: str, actual: Iterable[tuple[Values, Values]]) -> TableDiff:
        """Compare (natural key, row) pairs read back from the target (refs as natural
        keys) with the table's expected rows, which it consumes (core/table_diff.py)."""
        return compare_rows(self, table, actual)

    # --- rendering (keep_rows) ---------------------------------------------------------------

    def rendered(self, table: str) -> Iterator[tuple[NaturalKey, Row, int]]:
        """(natural key, row, how many equal rows) of a table, references as current keys."""
        t = self._tables.get(table)
        if t is None:
            return
        self._require_rows()
        keyless = t.spec.full_row_identity  # its "key" is the row itself
        for text, (key, row) in t.kept.items():
            count = t.rows[text] if keyless else 1
            rendered_key = self._render(t.row_refs if keyless else t.key_refs, key)
            yield rendered_key, self._render(t.row_refs, row or {}), count

    def comparable(self) -> dict[str, dict[str, Any]]:
        """Tables with rows as {natural key text: row}, references rendered as current keys;
        ``{"row", "count"}`` for a row a keyless table holds more than once."""
        out: dict[str, dict[str, Any]] = {}
        for table in self._tables:
            rendered: dict[str, Any] = {}
            for key, row, count in self.rendered(table):
                rendered[key_text(key)] = row if count == 1 else {"row": row, "count": count}
            if rendered:
                out[table] = rendered
        return out

    def referenced_closure(
        self, tables: Collection[str]
    ) -> dict[str, list[tuple[NaturalKey, Row]]]:
        """The rows of other tables that the rows of ``tables`` refer to, directly or
        through each other, as (natural key, row) by table."""
        self._require_rows()
        out: dict[str, list[tuple[NaturalKey, Row]]] = {}
        seen: set[int] = set()
        todo = [
            (self._tables[name], key, row)
            for name in tables
            if name in self._tables
            for key, row in self._tables[name].kept.values()
        ]
        while todo:
            t, key, row = todo.pop()
            for entity in _entities(t, key, row):
                if entity in seen or entity not in self._names:
                    continue
                seen.add(entity)
                name, form = self._names[entity]
                target = self._tables[name]
                found = target.kept.get(_fast(form).decode())
                if name not in tables and found is not None:
                    rendered_row = self._render(target.row_refs, found[1] or {})
                    out.setdefault(name, []).append(
                        (self._render(target.key_refs, found[0]), rendered_row)
                    )
                    todo.append((target, *found))
        return out

    def copy(self) -> LogFold:
        """An independent fold in the same state (apply to it without changing this one)."""
        twin = LogFold([], keep_rows=self._keep)
        twin._tables = {
            name: _Table(
                spec=t.spec,
                key_refs=t.key_refs,
                row_refs=t.row_refs,
                numbered=t.numbered,
                entity=dict(t.entity),
                rows=dict(t.rows),
                kept=dict(t.kept),
            )
            for name, t in self._tables.items()
        }
        twin._next_entity = self._next_entity
        twin._names = dict(self._names)
        return twin

    def _require_rows(self) -> None:
        if not self._keep:
            raise TypeError("this fold keeps row hashes only: build it with keep_rows=True")

    def _render(self, refs: Mapping[str, str], form: Form) -> Row:
        return {
            name: self._render_ref(value) if name in refs and value is not None else value
            for name, value in form.items()
        }

    def _render_ref(self, value: list[Any]) -> Any:
        entity = value[1]
        if isinstance(entity, str):
            return json.loads(entity)  # a table outside the fold, named by its key
        table, form = self._names[entity]
        return self._render(self._tables[table].key_refs, form)


def _entities(t: _Table, key: Form, row: Form | None) -> Iterator[int]:
    """The entity numbers a row's key and fields refer to, in their order."""
    for refs, form in ((t.key_refs, key), (t.row_refs, row or {})):
        for name, value in form.items():
            if name in refs and value is not None and isinstance(value[1], int):
                yield value[1]


def _missing(where: str, table: str, missing: Unresolved) -> ReplayError:
    return ReplayError(f"{where}{table} refers to {missing}, which does not exist")


def _given(value: Values | None) -> Values:
    """A key or row the event's operation requires (the format guarantees it)."""
    if value is None:
        raise ReplayError("an event lacks the key or row its operation requires")
    return value
