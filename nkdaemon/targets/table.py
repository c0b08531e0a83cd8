"""What both restore targets share: a table as the target has it, row addresses, the
target's error, and the pure helpers over them (no driver here)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nkdaemon.core.errors import NkdError
from nkdaemon.core.keys import TableSpec

Address = tuple[Any, ...]
"""A row's place in the target: its primary-key values (or its ctid / rowid)."""

Params = Sequence[Any]
"""One row's parameters for the driver, in the order of the columns named with them."""

CanonicalRow = dict[str, Any]
"""A row as the log and snapshots hold it: column name -> canonical value."""

Converter = Callable[[Any], Any]
"""Turns a canonical value of one column into the parameter the target's driver sends."""

NewId = int | str | uuid.UUID
"""An id drawn for a new row: a sequence's next value, or a random UUID (as text or hex)."""


class RestoreTargetError(NkdError):
    """The target database refused something, or cannot be used."""

    kind = "target"


@dataclass
class TargetTable:
    """A table in the target and what the restore needs to know about it."""

    spec: TableSpec
    columns: list[str]
    primary_key: tuple[str, ...]
    types: dict[str, str] = field(default_factory=dict)
    copy_types: dict[str, int | str] = field(default_factory=dict)
    sequence: str | None = None
    generated: bool = False
    uuid_ids: bool = False  # ids are drawn here as random UUIDs (the key is a uuid or text)
    hex_ids: bool = False  # ... written as 32 hex digits (a text key)
    identity_always: bool = False  # inserting ids needs OVERRIDING SYSTEM VALUE
    rows_before: int = 0
    next_id: int | None = None
    sequence_checked: bool = False  # moved past the ids the table holds, before drawing


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (the SQLite target and the DDL build SQL as text)."""
    return '"' + name.replace('"', '""') + '"'


def same_value(value: Any) -> Any:
    """The converter of a column whose canonical values are already the parameter to send.

    Restore compares converters with ``is`` against this function to skip converting."""
    return value


def logical_type(table: TargetTable, column: str) -> str:
    """The logical type the backup gives ``column`` ("other" for one it does not know)."""
    found = table.spec.column_index.get(column)
    return found.logical_type if found else "other"


def draw_uuids(table: TargetTable) -> None:
    """A single uuid surrogate key: the restore draws new random ids itself (the source's
    are not in the log, and any fresh UUID serves as well as the database's default)."""
    if table.generated or len(table.primary_key) != 1:
        return
    column = table.spec.column_index.get(table.primary_key[0])
    if column is not None and column.logical_type in ("uuid", "text"):
        # a text surrogate (SQLite's lower(hex(randomblob(16))), say): 32 random hex digits
        table.generated = table.uuid_ids = True
        table.hex_ids = column.logical_type == "text"


def pseudo_address(table: TargetTable) -> str | None:
    """The system column addressing rows of a table without a primary key, if it is one."""
    if table.primary_key in (("ctid",), ("rowid",)) and table.primary_key[0] not in table.columns:
        return table.primary_key[0]
    return None
