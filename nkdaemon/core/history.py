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
from nkdaemon.core.log import ChangeEvent


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    lsn: int
    commit_time: datetime
    op: str
    key: Any
    old_key: Any = None
    row: Any = None


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

    def new_epoch(self) -> None:
        self._by_sid.clear()

    def feed(self, lsn: int, commit_time: datetime, events: Iterable[ChangeEvent]) -> None:
        for event in events:
            if event.table == self.table:
                self._apply(lsn, commit_time, event)

    def _apply(self, lsn: int, commit_time: datetime, event: ChangeEvent) -> None:
        op = event.op
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
