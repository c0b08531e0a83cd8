"""What core/overlay.py keeps per table, and the forms it works in (see that module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from nkdaemon.core.keys import TableSpec

Form = dict[str, Any]
Pair = tuple[dict[str, Any], dict[str, Any]]
SORTED = orjson.OPT_SORT_KEYS
# What a reference to a row the log deleted renders as: no target reads this back, so the
# row that holds it differs, as it should (its reference names nothing).
DANGLING = {"$deleted": True}


def form_bytes(value: Any) -> bytes:
    """``value`` as canonical JSON bytes, in a copy of its own size: the bytes orjson
    returns keep the whole 4 KiB buffer it wrote them in (measured with orjson 3.13:
    4,097 bytes held per 12-byte key; 1.56 GB for the 400,000 keys of a 200,000-event
    restore), and the overlay keeps these for every row the log touched."""
    return bytes(memoryview(orjson.dumps(value, option=SORTED)))


@dataclass(frozen=True)
class LaterRef:
    """A reference the log holds no row for yet, settled at the end of its transaction:
    the row the transaction inserts under that key by then (one INSERT of a child before
    its parent), else the snapshot row it named when it was made (``snapshot``; None when
    the snapshot cannot hold it)."""

    table: str
    ek: bytes
    snapshot: Form | None
    named: str  # "table {key}", for the messages


def waits(form: Form) -> bool:
    """True when a reference of ``form`` is settled only at the end of its transaction."""
    return any(isinstance(v, LaterRef) for v in form.values())


@dataclass
class OverlayTable:
    """One table's rows the log touched, and the claims it made about the snapshot."""

    spec: TableSpec
    key_refs: dict[str, str]
    row_refs: dict[str, str]
    live: dict[bytes, list[Any]] = field(default_factory=dict)  # entity-form key -> entity
    state: dict[bytes, tuple[Form, Form | None]] = field(default_factory=dict)  # by entity
    gone: set[bytes] = field(default_factory=set)  # entity-form keys the log took away
    replaced: set[bytes] = field(default_factory=set)  # snapshot keys the log changed
    present: dict[bytes, str] = field(default_factory=dict)  # claimed in the snapshot
    absent: dict[bytes, str] = field(default_factory=dict)  # claimed not in the snapshot
    moved: bool = False  # a snapshot row's key changed or it went: references re-render
    truncated: bool = False
    delta: dict[bytes, int] = field(default_factory=dict)  # keyless: row form -> change
    forms: dict[bytes, Form] = field(default_factory=dict)
    short: dict[bytes, str] = field(default_factory=dict)  # keyless: deleted from snapshot
