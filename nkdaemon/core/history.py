"""Following one row through the log across renames of its natural key.

A row is followed by its source id within a capture epoch (so a rename of a row it refers
to, which changes its nested key without an event of its own, does not lose it), and by
its natural key where there is no id (rows that existed before capture, a new epoch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nkdaemon.core.keys import key_matches
from nkdaemon.core.log import ChangeEvent, Definition


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    lsn: int
    commit_time: datetime
    op: str
    key: Any
    old_key: Any = None
    row: Any = None
    change: str | None = None  # a schema change of the table (op "S"), in words


@dataclass(kw_only=True)
class RowHistory:
    """Every change of one row, oldest first."""

    entries: list[HistoryEntry] = field(default_factory=list)

    def keys(self) -> list[Any]:
        out: list[Any] = []
        for entry in self.entries:
            for key in (entry.old_key, entry.key):
                if key is not None and key not in out:
                    out.append(key)
        return out


def _frozen(key: Any) -> str:
    return json.dumps(key, sort_keys=True)


class HistoryTracker:
    """Feed it the log in order; ask it for the rows that ever matched a selector."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._rows: list[RowHistory] = []
        self._by_sid: dict[str, RowHistory] = {}
        self._by_key: dict[str, RowHistory] = {}
        # Every key a row is filed under, by the row's identity: a row whose key changed
        # with no event of its own (a row its key refers to was renamed) is still filed
        # under the key it had, and that stale entry must go when the row is next seen.
        self._filed: dict[int, set[str]] = {}
        self._columns: tuple[str, ...] | None = None
        # Rows tracked when a schema change's baseline truncated the table: its inserts
        # continue them (op "B"); those it lacks were gone by the change.
        self._rebasing: dict[str, RowHistory] | None = None
        self._changed_shape = False  # the table's last event was a schema change

    def new_epoch(self) -> None:
        self._by_sid.clear()

    def feed(
        self,
        lsn: int,
        commit_time: datetime,
        events: Iterable[ChangeEvent],
        definitions: Iterable[Definition] = (),
    ) -> None:
        changes = sorted((d for d in definitions if d.table == self.table), key=_at_event)
        position = 0
        for position, event in enumerate(events):
            while changes and changes[0].at_event <= position:
                self._schema(lsn, commit_time, changes.pop(0))
            if event.table == self.table:
                self._apply(lsn, commit_time, event)
        for definition in changes:
            self._schema(lsn, commit_time, definition)
        self._end_rebase(lsn, commit_time)

    def _schema(self, lsn: int, commit_time: datetime, definition: Definition) -> None:
        """A change of the table's shape: shown on every row it has then."""
        self._end_rebase(lsn, commit_time)
        described = describe_change(self._columns, definition)
        self._columns = definition.columns if definition.definition is not None else None
        for tracked in {id(r): r for r in self._by_key.values()}.values():
            tracked.entries.append(
                HistoryEntry(lsn=lsn, commit_time=commit_time, op="S", key=None, change=described)
            )
        self._changed_shape = True

    def _end_rebase(self, lsn: int, commit_time: datetime) -> None:
        rebasing, self._rebasing = self._rebasing, None
        for tracked in {id(r): r for r in (rebasing or {}).values()}.values():
            tracked.entries.append(HistoryEntry(lsn=lsn, commit_time=commit_time, op="T", key=None))

    def _apply(self, lsn: int, commit_time: datetime, event: ChangeEvent) -> None:
        op = event.op
        changed_shape, self._changed_shape = self._changed_shape, False
        if op == "T" and changed_shape:
            self._rebasing = dict(self._by_key)  # a baseline follows: rows continue in it
            self._by_key.clear()
            self._by_sid.clear()
            self._filed.clear()
            return
        if op == "I" and self._rebasing:
            continued = self._rebasing.pop(_frozen(event.key), None)
            if continued is not None:
                continued.entries.append(
                    HistoryEntry(
                        lsn=lsn, commit_time=commit_time, op="B", key=event.key, row=event.row
                    )
                )
                self._by_key[_frozen(event.key)] = continued
                self._filed.setdefault(id(continued), set()).add(_frozen(event.key))
                if event.sid is not None:
                    self._by_sid[_frozen(event.sid)] = continued
                return
        if self._rebasing is not None and op != "I":
            self._end_rebase(lsn, commit_time)
        if op == "T":
            for tracked in {id(r): r for r in self._by_key.values()}.values():
                tracked.entries.append(
                    HistoryEntry(lsn=lsn, commit_time=commit_time, op="T", key=None)
                )
            self._by_key.clear()
            self._by_sid.clear()
            self._filed.clear()
            return
        key, old_key, sid = event.key, event.old_key, event.sid
        sid_key = None if sid is None else _frozen(sid)
        previous_key = old_key if old_key is not None else key
        row = None
        if op != "I":
            row = self._by_sid.get(sid_key) if sid_key is not None else None
            row = row or self._by_key.get(_frozen(previous_key))
        if row is None:
            row = RowHistory()
            self._rows.append(row)
        row.entries.append(
            HistoryEntry(
                lsn=lsn,
                commit_time=commit_time,
                op=op,
                key=key,
                old_key=old_key,
                row=event.row,
            )
        )
        self._by_key.pop(_frozen(previous_key), None)
        self._unfile(row)
        if op == "D":
            if sid_key is not None:
                self._by_sid.pop(sid_key, None)
            return
        self._by_key[_frozen(key)] = row
        self._filed.setdefault(id(row), set()).add(_frozen(key))
        if sid_key is not None:
            self._by_sid[sid_key] = row

    def _unfile(self, row: RowHistory) -> None:
        for filed in self._filed.pop(id(row), set()):
            if self._by_key.get(filed) is row:
                del self._by_key[filed]

    def matching(self, selector: Mapping[str, str]) -> list[RowHistory]:
        return [
            r
            for r in self._rows
            if any(
                key_matches(k, selector)
                for k in r.keys()  # noqa: SIM118 - RowHistory.keys() is a method, not dict.keys()
            )
        ]


def _at_event(definition: Definition) -> int:
    return definition.at_event


def describe_change(before: tuple[str, ...] | None, definition: Definition) -> str:
    """A schema change in words: what happened to the table and its columns."""
    if definition.definition is None:
        return "table dropped"
    after = definition.columns
    if before is None or definition.change == "created":
        return f"table {definition.change}: columns {', '.join(after)}"
    renamed = dict(definition.renamed)
    parts = [f"column {old} renamed to {new}" for old, new in definition.renamed]
    added = [c for c in after if c not in before and c not in renamed.values()]
    dropped = [c for c in before if c not in after and c not in renamed]
    if added:
        parts.append("added " + ", ".join(added))
    if dropped:
        parts.append("dropped " + ", ".join(dropped))
    if not parts:
        parts.append("definition changed (types, defaults or constraints)")
    return f"table {definition.change}: " + "; ".join(parts)
