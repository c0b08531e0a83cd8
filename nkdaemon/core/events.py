"""Change events and logged transactions: the values the log is made of."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from nkdaemon.core.keys import NaturalKey, Sid

Op = Literal["I", "U", "D", "T"]

OP_NAMES: dict[str, str] = {"I": "insert", "U": "update", "D": "delete", "T": "truncate"}


@dataclass(frozen=True, kw_only=True, slots=True)
class RawChange:
    """One captured row change, its values already in canonical form, ids not yet translated."""

    table: int
    op: Op
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChangeEvent:
    """One row change named by natural keys.

    ``key`` is the row's key after the change (before it, for a delete); ``old_key`` is
    set only when an update changed the key. ``row`` holds the row after an insert or
    update: every column but surrogate ids, foreign keys replaced by the referenced row's
    natural key. ``sid`` is the source's own id, kept for diagnosis and never used to
    restore.
    """

    table: str
    op: Op
    key: NaturalKey | None
    old_key: NaturalKey | None = None
    row: dict[str, Any] | None = None
    sid: Sid = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TxInfo:
    """The identity of one source transaction in the log."""

    lsn: int
    source_position: int
    source_txid: str | None
    commit_time: datetime
    event_count: int = 0


def event_to_dict(event: ChangeEvent) -> dict[str, Any]:
    """The compact JSON form of an event (see docs/FORMAT.md)."""
    out: dict[str, Any] = {"t": event.table, "o": event.op}
    if event.key is not None:
        out["k"] = event.key
    if event.old_key is not None:
        out["ok"] = event.old_key
    if event.row is not None:
        out["r"] = event.row
    if event.sid is not None:
        out["s"] = event.sid
    return out


def event_from_dict(data: dict[str, Any]) -> ChangeEvent:
    return ChangeEvent(
        table=data["t"],
        op=data["o"],
        key=data.get("k"),
        old_key=data.get("ok"),
        row=data.get("r"),
        sid=data.get("s"),
    )
