"""Natural-key states built with the fold (core/fold.py) that keep their rows.

``fold_state``: a snapshot's rows and the log after it (merge-mode restore, export).
``natural_state``: whole tables, as if all inserted at once (the demo's and the tests'
view of a source or a restored target); ``comparable()`` renders either back into natural
keys, so two states compare equal exactly when they hold the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from nkdaemon.core.events import RawChange
from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import NaturalKey, Sid, TableSpec, key_references
from nkdaemon.core.log import ChangeEvent, LoggedTransaction
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.core.table_diff import key_text
from nkdaemon.core.translate import ShallowKey, Translator, source_id


def fold_state(
    specs: Sequence[TableSpec],
    snapshot_rows: Iterable[tuple[str, NaturalKey, dict[str, Any]]],
    transactions: Iterable[LoggedTransaction],
) -> LogFold:
    """The natural-key state made by a snapshot's rows, (table, key, row), and the log
    after it."""
    rank = {name: i for i, name in enumerate(insert_order(specs).tables)}
    state = LogFold(specs, keep_rows=True)
    # a key names its parents' keys, so parents are loaded first
    by_table: dict[str, list[tuple[NaturalKey, dict[str, Any]]]] = {}
    for table, key, row in snapshot_rows:
        by_table.setdefault(table, []).append((key, row))
    for name in sorted(by_table, key=lambda n: rank.get(n, 0)):
        if name in rank:
            for key, row in by_table[name]:
                state.load(name, key, row)
    state.finish_load()
    for tx in transactions:
        state.apply_transaction(tx.events, where=f"log transaction {tx.lsn}: ")
    return state


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

    def entries(self, table: int) -> Iterator[tuple[Sid, ShallowKey]]:
        found = [(k[1], key) for k, key in self._keys.items() if k[0] == table]
        for sid, key in found:
            yield (list(sid) if isinstance(sid, tuple) else sid), key


def _hashable(sid: Sid) -> Any:
    return tuple(sid) if isinstance(sid, list) else sid


def natural_state(
    tables: Mapping[int, TableSpec], rows: Mapping[int, Iterable[Mapping[str, Any]]]
) -> LogFold:
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
    for number, table_rows in materialised.items():
        for row in table_rows:
            translator.translate(RawChange(table=number, op="I", old=None, new=dict(row)))
    state = LogFold(tables.values(), keep_rows=True)
    key_refs = {spec.name: key_references(spec) for spec in tables.values()}
    state.apply_transaction(_parents_first(translator.finish(), key_refs))
    return state


def _parents_first(
    events: list[ChangeEvent], key_refs: Mapping[str, Mapping[str, str]]
) -> list[ChangeEvent]:
    """Order inserts so that every row comes after the rows its key contains."""
    by_key = {(e.table, key_text(e.key)): e for e in events}
    done: set[tuple[str, str]] = set()
    ordered: list[ChangeEvent] = []

    def visit(event: ChangeEvent, depth: int) -> None:
        ident = (event.table, key_text(event.key))
        if ident in done or depth > 10_000:
            return
        done.add(ident)
        key = event.key or {}
        for name, ref_table in key_refs[event.table].items():
            value = key.get(name)
            if value is not None and (ref_table, key_text(value)) in by_key:
                visit(by_key[(ref_table, key_text(value))], depth + 1)
        ordered.append(event)

    for event in events:
        visit(event, 0)
    return ordered
