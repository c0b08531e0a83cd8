"""Translate raw captured changes into natural-key events.

The translator walks one source transaction's changes in order, keeping the id -> key
index in step with them, so every reference is named by the key its row had at the moment
of the change (invariant 5). Deleted rows stay resolvable until the end of their
transaction (a cascade may delete a parent before its children), and a reference to a row
inserted later in the same transaction (deferred foreign keys) is resolved at its end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from nkdaemon.core.errors import CaptureError
from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, Ref, Sid, TableSpec
from nkdaemon.core.log import ChangeEvent
from nkdaemon.core.ports import KeyLookup as KeyLookup
from nkdaemon.core.ports import ShallowKey as ShallowKey

RESOLVED_CACHE = 50_000


def source_id(spec: TableSpec, row: Mapping[str, Any]) -> Sid:
    """The row's id in the source: its primary-key value (a list for composite keys)."""
    if len(spec.primary_key) == 1:
        return row.get(spec.primary_key[0])
    return [row.get(c) for c in spec.primary_key] if spec.primary_key else None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A reference not resolvable yet: its row is inserted later in the transaction."""

    ref: Ref


class Translator:
    """Stateful per transaction: ``translate`` each change, then ``finish``."""

    def __init__(self, tables: Mapping[int, TableSpec], index: KeyLookup) -> None:
        self._tables = dict(tables)
        self._numbers = {spec.name: number for number, spec in tables.items()}
        self._index = index
        self._skip: dict[int, frozenset[str]] = {}
        self._plans: dict[int, tuple[int, tuple[str, ...]]] = {}
        # Resolved nested keys of referenced rows, shared by the events that name them.
        # Dropped when a row whose key others' keys contain is renamed or deleted.
        self._resolved: dict[tuple[int, Any], NaturalKey] = {}
        self._nested = self._nested_tables()
        self._tombstones: dict[tuple[int, Sid], ShallowKey] = {}
        self._buffer: list[ChangeEvent | _Unfinished] = []
        self._pending_count = 0
        # Referenced tables whose baseline is being read: its rows by source id (held until
        # it is whole, since what it lacks must be deleted before anything else is written).
        self._baselines: dict[int, dict[Any, dict[str, Any]]] = {}
        # Tables whose baseline only seeds the index (the log has their rows already).
        self._seeding: set[int] = set()

    def _nested_tables(self) -> set[int]:
        return {
            self._numbers[p.foreign_key.ref_table]
            for spec in self._tables.values()
            for p in spec.key_parts
            if p.foreign_key is not None and not p.foreign_key.by_natural_key
        }

    def schema_changed(
        self, table: int, *, baseline: bool, spec: TableSpec | None = None, seed: bool = False
    ) -> None:
        """A table changed shape here (rows read with ``spec`` from now on); with
        ``baseline``, its every row follows as a "B" change. A referenced table (rows
        others' keys may name) keeps its rows' identity: updates of rows the index knows,
        inserts of others, deletes of known rows the baseline lacks. Any other (or one the
        index never held) is logged as a truncate and inserts. ``seed``: the baseline only
        gives the index rows the log has (a new table refers to this one); nothing logged."""
        self._close_baselines()
        previous = self._tables.get(table)
        if spec is not None and spec != previous:
            self._tables[table] = spec
            self._numbers[spec.name] = table
            self._skip.pop(table, None)
            self._nested = self._nested_tables()
        if not baseline:
            return
        spec = self._tables[table]
        keyed = spec.referenced and not spec.full_row_identity
        if seed and keyed:
            self._seeding.add(table)
        elif keyed and (previous is None or previous.referenced):
            self._baselines[table] = {}
        else:
            self._truncate(table, spec)

    def translate(self, change: RawChange) -> None:
        spec = self._tables[change.table]
        if (self._baselines or self._seeding) and (
            change.op != "B"
            or (change.table not in self._baselines and change.table not in self._seeding)
        ):
            self._close_baselines()
        if change.op == "B":
            assert change.new is not None
            self._rebase(change.table, spec, change.new)
        elif change.op == "T":
            self._truncate(change.table, spec)
        elif change.op == "I":
            assert change.new is not None
            self._insert(change.table, spec, change.new)
        elif change.op == "U":
            assert change.new is not None
            # Capture leaves the old row out when neither the key nor the id changed.
            old = change.old if change.old is not None else change.new
            self._update(change.table, spec, old, change.new)
        else:
            assert change.old is not None
            self._delete(change.table, spec, change.old)

    def ready(self) -> list[ChangeEvent]:
        """Events fully resolved so far, in order (up to the first one that waits)."""
        if self._pending_count:
            cut = next(i for i, e in enumerate(self._buffer) if isinstance(e, _Unfinished))
        else:
            cut = len(self._buffer)
        done = self._buffer[:cut]
        del self._buffer[:cut]
        return done  # type: ignore[return-value]

    def finish(self) -> list[ChangeEvent]:
        """End the transaction: resolve late references, forget deleted rows."""
        self._close_baselines()
        events = [self._complete(e) if isinstance(e, _Unfinished) else e for e in self._buffer]
        for table, sid in self._tombstones:  # a composite id is kept as a tuple here
            sid = list(sid) if isinstance(sid, tuple) else sid
            self._index.delete(table, sid)
        self._tombstones.clear()
        self._buffer.clear()
        self._pending_count = 0
        return events

    def reset(self) -> None:
        """Drop all per-transaction state (after an aborted batch)."""
        self._baselines.clear()
        self._tombstones.clear()
        self._buffer.clear()
        self._pending_count = 0

    # --- per operation ---------------------------------------------------------------

    def _insert(self, number: int, spec: TableSpec, new: dict[str, Any]) -> None:
        sid = source_id(spec, new)
        shallow = self.shallow_key(spec, new)
        if spec.referenced and shallow is not None:
            self._put(number, sid, shallow)
        self._emit(
            spec,
            op="I",
            key=self._key(spec, shallow, new),
            row=self._payload(spec, new),
            sid=sid,
        )

    def _update(
        self, number: int, spec: TableSpec, old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        old_sid, sid = source_id(spec, old), source_id(spec, new)
        old_shallow, shallow = self.shallow_key(spec, old), self.shallow_key(spec, new)
        old_key = self._key(spec, old_shallow, old) if old_shallow != shallow else None
        if spec.full_row_identity:
            old_key = self._key(spec, None, old)
        if spec.referenced and shallow is not None:
            if old_sid != sid:
                self._forget(number, old_sid, old_shallow)
            if old_sid != sid or old_shallow != shallow:
                self._put(number, sid, shallow)
        self._emit(
            spec,
            op="U",
            key=self._key(spec, shallow, new),
            old_key=old_key,
            row=self._payload(spec, new),
            sid=sid,
        )

    def _delete(self, number: int, spec: TableSpec, old: dict[str, Any]) -> None:
        sid = source_id(spec, old)
        shallow = self.shallow_key(spec, old)
        key = self._key(spec, shallow, old)
        if spec.referenced and shallow is not None:
            self._forget(number, sid, shallow)
        self._emit(spec, op="D", key=key, sid=sid)

    def _rebase(self, number: int, spec: TableSpec, new: dict[str, Any]) -> None:
        """One row of a baseline: as it is now."""
        if number in self._seeding:
            shallow = self.shallow_key(spec, new)
            if shallow is not None:
                self._put(number, source_id(spec, new), shallow)
            return
        rows = self._baselines.get(number)
        if rows is None:  # a table nothing refers to: truncated at the change, so insert
            self._insert(number, spec, new)
        else:
            rows[_hashable(source_id(spec, new))] = new

    def _close_baselines(self) -> None:
        """The baselines read so far are whole: bring the log's rows to them. Rows the
        index knows that a baseline lacks go first, then updates, then renames (each after
        the one that frees its new key), then inserts, so no key is ever held by two rows
        at once (a swap of keys between rows, which no order can show, is the exception:
        replaying it fails loudly)."""
        self._seeding.clear()
        baselines, self._baselines = self._baselines, {}
        for number, rows in baselines.items():
            spec = self._tables[number]
            known = {
                _hashable(sid): (sid, key)
                for sid, key in self._index.entries(number)
                if (number, _hashable(sid)) not in self._tombstones
            }
            for hashed, (sid, shallow) in known.items():
                if hashed not in rows:
                    self._forget(number, sid, shallow)
                    self._emit(spec, op="D", key=self._key(spec, shallow, {}), sid=sid)
            renamed: list[tuple[dict[str, Any], ShallowKey]] = []
            inserted: list[dict[str, Any]] = []
            for hashed, new in rows.items():
                before = known.get(hashed)
                if before is None:
                    inserted.append(new)
                elif self.shallow_key(spec, new) == before[1]:
                    self._rebased(number, spec, new, before[1])
                else:
                    renamed.append((new, before[1]))
            for new, old_shallow in _chain_order(renamed, partial(self.shallow_key, spec)):
                self._rebased(number, spec, new, old_shallow)
            for new in inserted:
                self._insert(number, spec, new)

    def _rebased(
        self, number: int, spec: TableSpec, new: dict[str, Any], known: ShallowKey
    ) -> None:
        """A baseline row the index knows: an update, a rename where its key changed."""
        sid = source_id(spec, new)
        shallow = self.shallow_key(spec, new)
        if shallow is not None and shallow != known:
            self._put(number, sid, shallow)
        self._emit(
            spec,
            op="U",
            key=self._key(spec, shallow, new),
            old_key=self._key(spec, known, new) if shallow != known else None,
            row=self._payload(spec, new),
            sid=sid,
        )

    def _truncate(self, number: int, spec: TableSpec) -> None:
        self._resolved.clear()
        self._tombstones = {k: v for k, v in self._tombstones.items() if k[0] != number}
        self._index.clear_table(number)
        self._emit(spec, op="T", key=None)

    # --- keys ------------------------------------------------------------------------

    def _put(self, number: int, sid: Sid, shallow: ShallowKey) -> None:
        self._tombstones.pop((number, _hashable(sid)), None)
        self._index.put(number, sid, shallow)
        self._invalidate(number, sid)

    def _forget(self, number: int, sid: Sid, shallow: ShallowKey | None) -> None:
        if shallow is not None:
            self._tombstones[(number, _hashable(sid))] = shallow
        self._invalidate(number, sid)

    def _invalidate(self, number: int, sid: Sid) -> None:
        """A row's key changed (or it went): forget resolved keys that may contain it."""
        if number in self._nested:
            self._resolved.clear()
        else:
            self._resolved.pop((number, _hashable(sid)), None)

    def shallow_key(self, spec: TableSpec, row: Mapping[str, Any]) -> ShallowKey | None:
        if spec.full_row_identity:
            return None
        return tuple(
            row[part.column] if part.column is not None else self._fk_value(part.foreign_key, row)  # type: ignore[arg-type]
            for part in spec.key_parts
        )

    def _fk_value(self, fk: ForeignKeySpec, row: Mapping[str, Any]) -> Any:
        plan = self._plans.get(id(fk))
        if plan is None:
            plan = self._plans[id(fk)] = self._plan(fk)
        number, columns = plan
        if len(columns) == 1:
            value = row.get(columns[0])
            if value is None:
                return None
            return {fk.ref_columns[0]: value} if number < 0 else Ref(number, value)
        values = [row.get(c) for c in columns]
        if any(v is None for v in values):
            return None
        if number < 0:
            return dict(zip(fk.ref_columns, values, strict=True))
        return Ref(number, values)

    def _plan(self, fk: ForeignKeySpec) -> tuple[int, tuple[str, ...]]:
        """(referenced table number, or -1 for a reference by natural key; our columns in the
        order of the referenced primary key)."""
        if fk.by_natural_key:
            return -1, fk.columns
        number = self._numbers[fk.ref_table]
        ours = dict(zip(fk.ref_columns, fk.columns, strict=True))
        return number, tuple(ours[c] for c in self._tables[number].primary_key)

    def _key(
        self, spec: TableSpec, shallow: ShallowKey | None, row: Mapping[str, Any]
    ) -> NaturalKey:
        if spec.full_row_identity:
            return self._payload(spec, row)
        assert shallow is not None
        return {
            part.name: self._resolve(value)
            for part, value in zip(spec.key_parts, shallow, strict=True)
        }

    def _resolve(self, value: Any) -> Any:
        if not isinstance(value, Ref):
            return value
        cache_key = (value.table, _hashable(value.sid))
        resolved = self._resolved.get(cache_key)
        if resolved is not None:
            return resolved
        shallow = self._tombstones.get((value.table, _hashable(value.sid)))
        cacheable = shallow is None  # a row deleted in this transaction is not kept
        if shallow is None:
            shallow = self._index.get(value.table, value.sid)
        if shallow is None:
            self._pending_count += 1
            return _Pending(value)
        spec = self._tables[value.table]
        resolved = {
            part.name: self._resolve(v) for part, v in zip(spec.key_parts, shallow, strict=True)
        }
        if cacheable and not _has_pending(resolved):
            if len(self._resolved) >= RESOLVED_CACHE:
                self._resolved.clear()
            self._resolved[cache_key] = resolved
        return resolved

    def _payload(self, spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
        skip = self._skip.get(spec.number)
        if skip is None:
            fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
            skip = self._skip[spec.number] = spec.surrogate_columns | fk_columns
        out = {name: value for name, value in row.items() if name not in skip}
        for fk in spec.foreign_keys:
            out[fk.part_name] = self._resolve(self._fk_value(fk, row))
        return out

    # --- buffering -------------------------------------------------------------------

    def _emit(self, spec: TableSpec, **fields: Any) -> None:
        event = ChangeEvent(table=spec.name, **fields)
        if self._pending_count and _has_pending(fields):
            self._buffer.append(_Unfinished(event))
        else:
            self._buffer.append(event)

    def _complete(self, unfinished: _Unfinished) -> ChangeEvent:
        event = unfinished.event
        return ChangeEvent(
            table=event.table,
            op=event.op,
            key=self._patch(event.key, event),
            old_key=self._patch(event.old_key, event),
            row=self._patch(event.row, event),
            sid=event.sid,
        )

    def _patch(self, value: Any, event: ChangeEvent) -> Any:
        if isinstance(value, _Pending):
            resolved = self._resolve(value.ref)
            if isinstance(resolved, _Pending) or _has_pending(resolved):
                raise CaptureError(
                    f"{event.table}: a change refers to row id {value.ref.sid!r} of "
                    f"{self._tables[value.ref.table].name}, which the log has never seen",
                    hint="capture must be installed before the referenced row was written; "
                    "re-run `nkdaemon install` to re-seed the key index",
                )
            return resolved
        if isinstance(value, dict):
            return {k: self._patch(v, event) for k, v in value.items()}
        return value


@dataclass(frozen=True, slots=True)
class _Unfinished:
    event: ChangeEvent


def _has_pending(value: Any) -> bool:
    if isinstance(value, _Pending):
        return True
    if isinstance(value, dict):
        return any(_has_pending(v) for v in value.values())
    return False


def _chain_order(
    renamed: list[tuple[dict[str, Any], ShallowKey]],
    key_of: Callable[[dict[str, Any]], ShallowKey | None],
) -> list[tuple[dict[str, Any], ShallowKey]]:
    """Renames ordered so that each comes after the rename that frees its new key."""
    pending = list(renamed)
    ordered: list[tuple[dict[str, Any], ShallowKey]] = []
    while pending:
        held = {old for _, old in pending}
        ready = [item for item in pending if key_of(item[0]) not in held]
        if not ready:  # a cycle (keys swapped): no order works; keep the rest as it is
            ready = pending
        ordered.extend(ready)
        chosen = {id(item) for item in ready}
        pending = [item for item in pending if id(item) not in chosen]
    return ordered


def _hashable(sid: Sid) -> Any:
    return tuple(sid) if isinstance(sid, list) else sid
