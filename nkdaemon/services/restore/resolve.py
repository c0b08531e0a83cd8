"""Natural key -> target address: the rows a restore names, found in the target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic

import orjson
from cachetools import LRUCache

from nkdaemon.core.keys import ForeignKeySpec, NaturalKey
from nkdaemon.core.ports import Address, RestoreTarget, TableT
from nkdaemon.core.restore_runs import fk_values, key_columns


def canonical_text(key: object) -> str:
    """Canonical text of a natural key (cache and dictionary key).

    Decoded to str on purpose: orjson's bytes keep a 4 KiB allocation each, which made a
    200,000-entry cache cost 800 MB; the str is the key's own size."""
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


class Resolver(Generic[TableT]):
    """Natural key -> target address, through an LRU cache, in batches.

    Entries are per table generation: renaming or deleting rows of a table bumps its
    generation and that of every table whose keys contain its keys.

    A row deleted by the transaction in hand keeps its address until the transaction ends,
    for the keys of other rows that contain its key: a later event of the same transaction
    may still name it there (a PostgreSQL cascade logs the parent's delete before its
    children's). The row itself is not found any more (it may be inserted again).
    """

    def __init__(
        self, target: RestoreTarget[TableT], tables: Mapping[str, TableT], size: int = 200_000
    ) -> None:
        self._target = target
        self._tables = tables
        self._cache: LRUCache[tuple[str, int, str], Address] = LRUCache(maxsize=size)
        self._generation: dict[str, int] = dict.fromkeys(tables, 0)
        self._containers: dict[str, set[str]] = {name: set() for name in tables}
        self._gone: dict[tuple[str, str], Address] = {}
        for name, table in tables.items():
            for part in table.spec.key_parts:
                if part.foreign_key is not None and part.foreign_key.ref_table in self._containers:
                    self._containers[part.foreign_key.ref_table].add(name)

    @property
    def capacity(self) -> int:
        """How many addresses the cache keeps."""
        return int(self._cache.maxsize)

    def remember(self, table: str, key: NaturalKey, address: Address) -> None:
        self._cache[(table, self._generation[table], canonical_text(key))] = address

    def forget(self) -> None:
        """Drop every cached address (the target's rows were rolled back to an earlier state)."""
        self._gone.clear()
        for name in self._generation:
            self._generation[name] += 1

    def deleted(self, table: str, found: Mapping[str, Address | None]) -> None:
        """These rows (key text -> address) were just deleted in the transaction in hand."""
        for text, address in found.items():
            if address is not None:
                self._gone[(table, text)] = address
        self.changed(table)

    def end_transaction(self) -> None:
        self._gone.clear()

    def changed(self, table: str) -> None:
        seen: set[str] = set()
        todo = [table]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            self._generation[name] += 1
            todo.extend(self._containers.get(name, ()))

    def key_values(self, table: str, keys: Sequence[NaturalKey]) -> list[Address | None]:
        """Each key as the values of the table's key columns (references as addresses);
        None for a key that names a row the target does not hold."""
        spec = self._tables[table].spec
        nested: dict[str, dict[str, Address | None]] = {}
        for part in spec.key_parts:
            if part.foreign_key is not None and not part.foreign_key.by_natural_key:
                nested[part.name] = self.resolve(
                    part.foreign_key.ref_table, [k[part.name] for k in keys], deleted_too=True
                )
        natural = {
            part.name: self.natural_reference_values(part.foreign_key, [k[part.name] for k in keys])
            for part in spec.key_parts
            if part.foreign_key is not None and part.foreign_key.by_natural_key
        }
        out: list[Address | None] = []
        for i, key in enumerate(keys):
            values: list[object] = []
            for part in spec.key_parts:
                fk = part.foreign_key
                if fk is None:
                    assert part.column is not None
                    values.append(
                        self._target.param(self._tables[table], part.column, key[part.name])
                    )
                    continue
                if fk.by_natural_key:
                    held = natural[part.name][i]
                else:
                    address = nested[part.name].get(canonical_text(key[part.name]))
                    ref = self._tables[fk.ref_table]
                    held = None if address is None else fk_values(fk, ref.primary_key, address)
                if held is None:
                    values = []
                    break
                values.extend(held)
            out.append(tuple(values) if values else None)
        return out

    def natural_reference_values(
        self, fk: ForeignKeySpec, keys: Sequence[NaturalKey]
    ) -> list[list[object] | None]:
        """The column values of references by natural key: the referenced rows' key
        values, as the target holds them (a key part that is itself a reference becomes
        that row's address), or None where a part that is a reference is not found."""
        ref = self._tables[fk.ref_table]
        columns = key_columns(ref.spec)
        out: list[list[object] | None] = []
        for values in self.key_values(fk.ref_table, keys):
            if values is None:
                out.append(None)
                continue
            by_column = dict(zip(columns, values, strict=True))
            out.append([by_column[c] for c in fk.ref_columns])
        return out

    def reference_values(
        self, fk: ForeignKeySpec, keys: Sequence[NaturalKey], *, deleted_too: bool = False
    ) -> dict[str, list[object] | None]:
        """Key text -> the column values a reference to that key has in the target (the
        key's values for a reference by natural key, the row's address otherwise), None
        where the target has no such row; ``deleted_too`` as for :meth:`resolve`."""
        if fk.by_natural_key:
            values = self.natural_reference_values(fk, keys)
            return {canonical_text(k): v for k, v in zip(keys, values, strict=True)}
        primary_key = self._tables[fk.ref_table].primary_key
        found = self.resolve(fk.ref_table, keys, deleted_too=deleted_too)
        return {
            text: None if address is None else fk_values(fk, primary_key, address)
            for text, address in found.items()
        }

    def resolve(
        self, table: str, keys: Sequence[NaturalKey], *, deleted_too: bool = False
    ) -> dict[str, Address | None]:
        """key text -> address (None when the target has no such row); ``deleted_too``:
        or had it until the transaction in hand deleted it."""
        generation = self._generation[table]
        result: dict[str, Address | None] = {}
        missing: dict[str, NaturalKey] = {}
        for key in keys:
            text = canonical_text(key)
            address = self._cache.get((table, generation, text))
            if address is not None:
                result[text] = address
            elif text not in result:
                missing[text] = key
        if missing:
            self._look_up(table, generation, missing, result, deleted_too)
        return result

    def _look_up(
        self,
        table: str,
        generation: int,
        missing: Mapping[str, NaturalKey],
        result: dict[str, Address | None],
        deleted_too: bool,
    ) -> None:
        """Find the ``missing`` keys in the target, in one query, into ``result``."""
        texts = list(missing)
        values = self.key_values(table, [missing[t] for t in texts])
        columns = key_columns(self._tables[table].spec)
        lookup = [v for v in values if v is not None]
        found = self._target.find(self._tables[table], columns, lookup) if lookup else {}
        for text, value in zip(texts, values, strict=True):
            address = found.get(value) if value is not None else None
            if address is not None:
                self._cache[(table, generation, text)] = address
            elif deleted_too:  # the key as it was at this event
                address = self._gone.get((table, text))
            result[text] = address
