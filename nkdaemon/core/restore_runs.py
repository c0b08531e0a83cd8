"""Pure parts of a restore: how logged events group into runs, which transactions fold into
their net change, which columns a row fills, which tables ``--table`` pulls in.

Nothing here touches a file or a database; services/restore drives these over a target.
Events are read in the log's compact form (docs/FORMAT.md): ``t`` table, ``o`` operation,
``k`` key, ``ok`` key before a rename, ``r`` row.
"""

from __future__ import annotations

import contextlib
import json
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, TableSpec

LogEvent = Mapping[str, Any]
"""One logged event as the log holds it (see the module docstring)."""

Row = dict[str, Any]
"""A row in canonical form: every column but surrogate ids, references as natural keys."""

Keyed = tuple[NaturalKey, Row]
"""A row and its natural key (for a row captured whole, the row is its own key)."""

T = TypeVar("T")


def show_key(key: object) -> str:
    """A natural key as a person reads it in an error message."""
    return json.dumps(key, sort_keys=True, ensure_ascii=False)


def runs(events: Iterable[LogEvent]) -> Iterator[tuple[tuple[str, str], list[LogEvent]]]:
    """Consecutive events of the same table and operation, in order."""
    current: tuple[str, str] | None = None
    batch: list[LogEvent] = []
    for event in events:
        marker = (event["t"], event["o"])
        if marker != current and batch:
            assert current is not None
            yield current, batch
            batch = []
        current = marker
        batch.append(event)
    if batch and current is not None:
        yield current, batch


def foldable_runs(
    window: Sequence[T], foldable: Callable[[T], bool]
) -> Iterator[tuple[list[T], bool]]:
    """Consecutive transactions split into runs that are all foldable or all not."""
    run: list[T] = []
    kind = False
    for tx in window:
        this = foldable(tx)
        if run and this != kind:
            yield run, kind
            run = []
        kind = this
        run.append(tx)
    if run:
        yield run, kind


def is_foldable(
    events: Iterable[LogEvent], selected: Collection[str], whole: Collection[str]
) -> bool:
    """True when a transaction's events (of the ``selected`` tables) only insert rows and
    update rows without renaming them, and no row of a ``whole`` table (captured whole)
    is updated: such transactions commute table by table, so a run of them can be applied
    as its net change (each row's last version), parents before children."""
    for event in events:
        name = event["t"]
        if name not in selected:
            continue
        op = event["o"]
        if op == "I":
            continue
        if op != "U" or event.get("ok") is not None:
            return False
        if name in whole:
            return False
    return True


@dataclass(kw_only=True)
class NetChange:
    """What a run of foldable transactions leaves, table by table.

    ``inserts``: rows the run inserted, each at its last version (key text -> key, row);
    ``updates``: rows that existed before the run, at their last version; ``whole``: rows of
    tables captured whole, every insert and update in order; ``events``: how many events of
    the selected tables the run holds."""

    inserts: dict[str, dict[str, Keyed]] = field(default_factory=dict)
    updates: dict[str, dict[str, Keyed]] = field(default_factory=dict)
    whole: dict[str, list[Row]] = field(default_factory=dict)
    events: int = 0


def net_change(
    transactions: Iterable[Iterable[LogEvent]],
    *,
    selected: Collection[str],
    whole: Collection[str],
    text: Callable[[NaturalKey], str],
) -> NetChange:
    """The net change of a run of foldable transactions (see is_foldable); ``text`` is the
    canonical text that tells keys apart."""
    change = NetChange()
    for events in transactions:
        for event in events:
            name = event["t"]
            if name not in selected:
                continue
            change.events += 1
            if name in whole:
                change.whole.setdefault(name, []).append(event["r"])
                continue
            key_text = text(event["k"])
            inserted = change.inserts.setdefault(name, {})
            if event["o"] == "I" or key_text in inserted:
                inserted[key_text] = (event["k"], event["r"])
            else:
                change.updates.setdefault(name, {})[key_text] = (event["k"], event["r"])
    return change


def prefetch_keys(
    events: Iterable[LogEvent], specs: Mapping[str, TableSpec], selected: Collection[str]
) -> dict[str, list[NaturalKey]]:
    """The keys a run of events will look up in the target, by table: the rows it updates
    and deletes (by their key before a rename), and the rows its rows refer to."""
    wanted: dict[str, list[NaturalKey]] = {}
    for event in events:
        name = event["t"]
        if name not in selected:
            continue
        spec = specs[name]
        if spec.full_row_identity:
            continue
        if event["o"] in ("U", "D"):
            wanted.setdefault(name, []).append(event.get("ok") or event["k"])
        row = event.get("r") or {}
        for fk in spec.foreign_keys:
            value = row.get(fk.part_name)
            if value is not None and not fk.by_natural_key:
                wanted.setdefault(fk.ref_table, []).append(value)
    return wanted


def value_columns(spec: TableSpec) -> tuple[list[str], list[str]]:
    """(plain, references): the columns a payload fills as they are, and the foreign-key
    columns filled from resolved references, each in definition order."""
    references = [c for fk in spec.foreign_keys for c in fk.columns]
    taken = set(references)
    plain = [
        c.name for c in spec.columns if c.name not in spec.surrogate_columns and c.name not in taken
    ]
    return plain, references


def key_columns(spec: TableSpec) -> list[str]:
    """The target columns that hold a table's natural key, in key-part order."""
    columns: list[str] = []
    for part in spec.key_parts:
        if part.column is not None:
            columns.append(part.column)
        elif part.foreign_key is not None:
            columns.extend(part.foreign_key.columns)
    return columns


def fk_values(
    fk: ForeignKeySpec, primary_key: Sequence[str], address: Sequence[object]
) -> list[object]:
    """Our foreign-key column values for a referenced row's address (its primary key,
    named by ``primary_key``)."""
    by_column = dict(zip(primary_key, address, strict=True))
    return [by_column[c] for c in fk.ref_columns]


def in_column_order(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str]
) -> list[tuple[object, ...]]:
    """Each row's values in column order, None where a row lacks a column (an older
    snapshot); taken in C when every row has them all."""
    if len(columns) > 1:  # itemgetter of one column gives the value, not a tuple
        take = operator.itemgetter(*columns)
        with contextlib.suppress(KeyError):
            return [take(row) for row in rows]
    return [tuple(row.get(c) for c in columns) for row in rows]


def referenced_tables(specs: Sequence[TableSpec], selected: Collection[str]) -> set[str]:
    """The tables that the ``selected`` ones refer to, directly or not, outside them."""
    by_name = {s.name: s for s in specs}
    found: set[str] = set()
    todo = [n for n in selected if n in by_name]
    while todo:
        for fk in by_name[todo.pop()].foreign_keys:
            ref = fk.ref_table
            if (
                ref in by_name
                and ref not in selected
                and ref not in found
                and not fk.by_natural_key
            ):
                found.add(ref)
                todo.append(ref)
    return found
