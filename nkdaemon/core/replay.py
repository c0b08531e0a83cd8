"""The replay fold: apply logged events to a natural-key model of the database.

Rows are entities; a foreign key holds the referenced *entity*, as a database holds the
referenced id. So renaming a user renames it for every document that points at it, and a
key that contains another row's key (a state's workflow) follows that row's renames, just
as a restore into a real database does. ``comparable()`` renders the model back into
natural keys, so two states compare equal exactly when they hold the same rows by meaning.

The fold is strict: inserting a key that exists, or updating or deleting one that does
not, is a ReplayError, because it means the log's order or content is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nkdaemon.core.errors import NkdError
from nkdaemon.core.events import RawChange, event_to_dict
from nkdaemon.core.keys import Sid, TableSpec, key_references, row_references
from nkdaemon.core.translate import ShallowKey, Translator, source_id


class ReplayError(NkdError):
    """Applying the log does not work: an event contradicts the state before it."""

    kind = "replay"


def key_text(key: Any) -> str:
    """The canonical text of a natural key (stable: sorted object keys)."""
    return json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class TableShape:
    """What the fold needs of a table: which key parts and row fields are references."""

    name: str
    key_refs: Mapping[str, str]
    row_refs: Mapping[str, str]
    multiset: bool = False

    @classmethod
    def of(cls, spec: TableSpec, names: Mapping[int, str] | None = None) -> TableShape:
        return cls(
            name=spec.name,
            key_refs=key_references(spec),
            row_refs=row_references(spec),
            multiset=spec.full_row_identity,
        )


@dataclass(eq=False)
class _Entity:
    table: str
    key: dict[str, Any]
    row: dict[str, Any] | None
    count: int = 1


@dataclass(frozen=True)
class _Ref:
    entity: _Entity


@dataclass
class NaturalState:
    """Entities by shallow key (references are entities, not key values)."""

    shapes: Mapping[str, TableShape]
    tables: dict[str, dict[str, _Entity]] = field(default_factory=dict)
    _pending: list[tuple[dict[str, Any], str, str, Any, str]] = field(default_factory=list)
    # Rows deleted in the transaction being applied stay resolvable until its end: a
    # cascade deletes the parent's row before its children's, in the source and the log.
    _deleted: dict[tuple[str, str], _Entity] = field(default_factory=dict)

    def rows(self, table: str) -> dict[str, _Entity]:
        return self.tables.setdefault(table, {})

    # --- resolving natural keys to entities ---------------------------------------------

    def _lookup(self, table: str, key: Any, where: str) -> _Entity:
        text = self._shallow_text(table, key, where)
        entity = self.rows(table).get(text) or self._deleted.get((table, text))
        if entity is None:
            raise ReplayError(f"{where}{table} {key_text(key)} is referenced but does not exist")
        return entity

    def _shallow(self, table: str, key: Mapping[str, Any], where: str) -> dict[str, Any]:
        shape = self.shapes.get(table)
        refs = shape.key_refs if shape else {}
        return {
            part: _Ref(self._lookup(refs[part], value, where))
            if part in refs and value is not None
            else value
            for part, value in key.items()
        }

    def _shallow_text(self, table: str, key: Mapping[str, Any], where: str) -> str:
        return _text(self._shallow(table, key, where))

    def _row(self, table: str, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A row with its references as entities; ones not there yet wait for the tx end."""
        shape = self.shapes.get(table)
        refs = shape.row_refs if shape else {}
        out: dict[str, Any] = {}
        for name, value in row.items():
            if name not in refs or value is None:
                out[name] = value
                continue
            text = self._try_shallow_text(refs[name], value)
            entity = self.rows(refs[name]).get(text or "") or self._deleted.get(
                (refs[name], text or "")
            )
            if entity is None:
                self._pending.append((out, name, refs[name], value, where))
            out[name] = None if entity is None else _Ref(entity)
        return out

    def _try_shallow_text(self, table: str, key: Mapping[str, Any]) -> str | None:
        try:
            return self._shallow_text(table, key, "")
        except ReplayError:
            return None

    def _resolve_pending(self) -> None:
        pending, self._pending = self._pending, []
        for row, name, ref_table, value, where in pending:
            row[name] = _Ref(self._lookup(ref_table, value, where))

    # --- applying events ------------------------------------------------------------------

    def apply(self, event: Mapping[str, Any], *, where: str = "") -> None:
        table, op = event["t"], event["o"]
        rows = self.rows(table)
        shape = self.shapes.get(table)
        if op == "T":
            rows.clear()
            return
        if shape is not None and shape.multiset:
            self._apply_multiset(rows, table, event, where)
            return
        key = self._shallow(table, event["k"], where)
        text = _text(key)
        if op == "I":
            if text in rows:
                raise ReplayError(f"{where}insert of {table} {key_text(event['k'])}, which exists")
            rows[text] = _Entity(table, key, self._row(table, event["r"], where))
        elif op == "U":
            old = self._shallow_text(table, event["ok"], where) if event.get("ok") else text
            entity = rows.pop(old, None)
            if entity is None:
                raise ReplayError(
                    f"{where}update of {table} {key_text(event.get('ok') or event['k'])}, "
                    "which does not exist"
                )
            if text in rows:
                raise ReplayError(
                    f"{where}update of {table} to {key_text(event['k'])}, which exists"
                )
            entity.key, entity.row = key, self._row(table, event["r"], where)
            rows[text] = entity
        else:
            entity = rows.pop(text, None)
            if entity is None:
                raise ReplayError(
                    f"{where}delete of {table} {key_text(event['k'])}, which does not exist"
                )
            self._deleted[(table, text)] = entity

    def _apply_multiset(
        self, rows: dict[str, _Entity], table: str, event: Mapping[str, Any], where: str
    ) -> None:
        op = event["o"]
        if op in ("U", "D"):
            old = self._row(
                table, event["ok"] if event.get("ok") is not None else event["k"], where
            )
            entity = rows.get(_text(old))
            if entity is None:
                raise ReplayError(f"{where}{op} of a {table} row that does not exist")
            entity.count -= 1
            if entity.count == 0:
                del rows[_text(old)]
        if op in ("I", "U"):
            new = self._row(table, event["r"], where)
            existing = rows.get(_text(new))
            if existing is None:
                rows[_text(new)] = _Entity(table, new, new)
            else:
                existing.count += 1

    def apply_transaction(self, events: Iterable[Mapping[str, Any]], *, where: str = "") -> None:
        """Apply one transaction's events; references may point forward within it."""
        for event in events:
            self.apply(event, where=where)
        self._resolve_pending()
        self._deleted.clear()

    # --- rendering ------------------------------------------------------------------------

    def comparable(self) -> dict[str, dict[str, Any]]:
        """Tables with rows as {natural key text: row}, references rendered as current keys."""
        out: dict[str, dict[str, Any]] = {}
        for table, rows in self.tables.items():
            if not rows:
                continue
            rendered: dict[str, Any] = {}
            for entity in rows.values():
                row = _render(entity.row)
                if entity.count > 1:
                    row = {"row": row, "count": entity.count}
                rendered[key_text(_render(entity.key))] = row
            out[table] = rendered
        return out

    def rendered(self, table: str) -> Iterator[tuple[Any, dict[str, Any], int]]:
        """(natural key, row, how many equal rows) of a table, references as keys."""
        for entity in self.rows(table).values():
            yield _render(entity.key), _render(entity.row), entity.count

    def referenced_closure(self, tables: Collection[str]) -> dict[str, list[tuple[Any, Any]]]:
        """The rows of other tables that the rows of ``tables`` refer to, directly or
        through each other, as (natural key, row) by table."""
        out: dict[str, list[tuple[Any, Any]]] = {}
        seen: set[int] = set()
        todo = [entity for table in tables for entity in self.rows(table).values()]
        while todo:
            entity = todo.pop()
            for value in [*entity.key.values(), *(entity.row or {}).values()]:
                if not isinstance(value, _Ref) or id(value.entity) in seen:
                    continue
                seen.add(id(value.entity))
                if value.entity.table not in tables:
                    target = value.entity
                    out.setdefault(target.table, []).append(
                        (_render(target.key), _render(target.row))
                    )
                    todo.append(target)
        return out

    def copy(self) -> NaturalState:
        return NaturalState(shapes=self.shapes, tables={t: dict(r) for t, r in self.tables.items()})


def _render(value: Any) -> Any:
    if isinstance(value, _Ref):
        return _render(value.entity.key)
    if isinstance(value, dict):
        return {k: _render(v) for k, v in value.items()}
    return value


def _text(shallow: Mapping[str, Any]) -> str:
    return json.dumps(
        {k: (f"@{id(v.entity)}" if isinstance(v, _Ref) else v) for k, v in shallow.items()},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )


def shapes_of(tables: Iterable[TableSpec]) -> dict[str, TableShape]:
    return {spec.name: TableShape.of(spec) for spec in tables}


class MemoryKeyIndex:
    """An in-memory KeyLookup, for building natural-key views of whole tables."""

    def __init__(self) -> None:
        self._keys: dict[tuple[int, Any], ShallowKey] = {}

    def get(self, table: int, sid: Sid) -> ShallowKey | None:
        return self._keys.get((table, _hashable(sid)))

    def put(self, table: int, sid: Sid, key: ShallowKey) -> None:
        self._keys[(table, _hashable(sid))] = key

    def delete(self, table: int, sid: Sid) -> None:
        self._keys.pop((table, _hashable(sid)), None)

    def clear_table(self, table: int) -> None:
        for k in [k for k in self._keys if k[0] == table]:
            del self._keys[k]


def _hashable(sid: Sid) -> Any:
    return tuple(sid) if isinstance(sid, list) else sid


def natural_state(
    tables: Mapping[int, TableSpec], rows: Mapping[int, Iterable[Mapping[str, Any]]]
) -> NaturalState:
    """The natural-key state of whole tables given as canonical rows by table number."""
    materialised = {number: list(table_rows) for number, table_rows in rows.items()}
    index = MemoryKeyIndex()
    translator = Translator(tables, index)
    for number, table_rows in materialised.items():
        spec = tables[number]
        for row in table_rows:
            shallow = translator.shallow_key(spec, row)
            if shallow is not None:
                index.put(number, source_id(spec, row), shallow)
    events = []
    for number, table_rows in materialised.items():
        for row in table_rows:
            translator.translate(RawChange(table=number, op="I", old=None, new=dict(row)))
    events = [event_to_dict(e) for e in translator.finish()]
    state = NaturalState(shapes=shapes_of(tables.values()))
    state.apply_transaction(_parents_first(events, state.shapes))
    return state


def _parents_first(
    events: list[dict[str, Any]], shapes: Mapping[str, TableShape]
) -> list[dict[str, Any]]:
    """Order inserts so that every row comes after the rows its key contains."""
    by_key = {(e["t"], key_text(e["k"])): e for e in events}
    done: set[tuple[str, str]] = set()
    ordered: list[dict[str, Any]] = []

    def visit(event: dict[str, Any], depth: int) -> None:
        ident = (event["t"], key_text(event["k"]))
        if ident in done or depth > 10_000:
            return
        done.add(ident)
        shape = shapes[event["t"]]
        for name, ref_table in shape.key_refs.items():
            value = event["k"].get(name)
            if value is not None and (ref_table, key_text(value)) in by_key:
                visit(by_key[(ref_table, key_text(value))], depth + 1)
        ordered.append(event)

    for event in events:
        visit(event, 0)
    return ordered
