"""The translator names rows deleted in one transaction by their keys, in any event order.

A cascade deletes rows of several tables in one transaction, and the sources log them in
different orders: PostgreSQL holds the referencing table's triggers back to the end of the
statement (the parent's delete comes first), SQLite deletes the children first. Every
order of the deletes is swept: each event names its row, and the rows its key contains,
as they were at that event; the index forgets the rows when the transaction ends.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import (
    ColumnSpec,
    ForeignKeySpec,
    KeyPart,
    Ref,
    Sid,
    TableSpec,
    make_table_spec,
)
from nkdaemon.core.log import ChangeEvent
from nkdaemon.core.translate import ShallowKey, Translator


class DictIndex:
    """The key index as a dict (writes visible at once; no durability to model)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, Any], ShallowKey] = {}

    def get(self, table: int, sid: Sid) -> ShallowKey | None:
        return self.rows.get((table, sid))

    def put(self, table: int, sid: Sid, key: ShallowKey) -> None:
        self.rows[(table, sid)] = key

    def delete(self, table: int, sid: Sid) -> None:
        self.rows.pop((table, sid), None)

    def clear_table(self, table: int) -> None:
        self.rows = {k: v for k, v in self.rows.items() if k[0] != table}


def _column(name: str, kind: str = "integer") -> ColumnSpec:
    return ColumnSpec(name=name, logical_type=kind, nullable=False)


def _fk(column: str, table: str) -> ForeignKeySpec:
    return ForeignKeySpec(columns=(column,), ref_table=table, ref_columns=("id",))


def _tables() -> dict[int, TableSpec]:
    """parent(code), child(parent_id, n), grandchild(child_id, tag): keys nest two deep."""
    to_parent, to_child = _fk("parent_id", "parent"), _fk("child_id", "child")
    return {
        1: make_table_spec(
            number=1,
            name="parent",
            schema=None,
            columns=(_column("id"), _column("code", "text")),
            primary_key=("id",),
            key_parts=(KeyPart(name="code", column="code"),),
            foreign_keys=(),
            referenced=True,
        ),
        2: make_table_spec(
            number=2,
            name="child",
            schema=None,
            columns=(_column("id"), _column("parent_id"), _column("n")),
            primary_key=("id",),
            key_parts=(
                KeyPart(name="parent_id", foreign_key=to_parent),
                KeyPart(name="n", column="n"),
            ),
            foreign_keys=(to_parent,),
            referenced=True,
        ),
        3: make_table_spec(
            number=3,
            name="grandchild",
            schema=None,
            columns=(_column("id"), _column("child_id"), _column("tag", "text")),
            primary_key=("id",),
            key_parts=(
                KeyPart(name="child_id", foreign_key=to_child),
                KeyPart(name="tag", column="tag"),
            ),
            foreign_keys=(to_child,),
        ),
    }


P1 = {"code": "p1"}
ROWS: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    # name: (table, source row, its natural key)
    "p1": (1, {"id": 1, "code": "p1"}, P1),
    "c1": (2, {"id": 11, "parent_id": 1, "n": 1}, {"parent_id": P1, "n": 1}),
    "c2": (2, {"id": 12, "parent_id": 1, "n": 2}, {"parent_id": P1, "n": 2}),
    "g1": (
        3,
        {"id": 21, "child_id": 11, "tag": "a"},
        {"child_id": {"parent_id": P1, "n": 1}, "tag": "a"},
    ),
    "g2": (
        3,
        {"id": 22, "child_id": 12, "tag": "b"},
        {"child_id": {"parent_id": P1, "n": 2}, "tag": "b"},
    ),
}
SURVIVOR = (1, {"id": 2, "code": "p2"})


def _seeded() -> tuple[Translator, DictIndex]:
    """The rows as capture found them at install: the index knows every referenced one."""
    index = DictIndex()
    translator = Translator(_tables(), index)
    for table, row, _key in [*ROWS.values(), (*SURVIVOR, None)]:
        translator.translate(RawChange(table=table, op="I", old=None, new=row))
    translator.finish()
    return translator, index


def _run(translator: Translator, changes: list[RawChange]) -> list[ChangeEvent]:
    events: list[ChangeEvent] = []
    for change in changes:
        translator.translate(change)
        events.extend(translator.ready())
    return events + translator.finish()


@pytest.mark.parametrize("order", list(itertools.permutations(ROWS)), ids="-".join)
def test_every_delete_order_of_a_cascade_names_the_rows_as_they_were(
    order: tuple[str, ...],
) -> None:
    translator, index = _seeded()
    deletes = [RawChange(table=ROWS[n][0], op="D", old=ROWS[n][1], new=None) for n in order]
    events = _run(translator, deletes)
    assert [(e.op, e.key) for e in events] == [("D", ROWS[n][2]) for n in order]
    assert set(index.rows) == {(1, 2)}  # the deleted rows are forgotten at the end


def test_the_postgresql_order_then_the_same_key_again_names_the_new_row() -> None:
    """Parent first, then its children (a PostgreSQL cascade); then p1 comes back with a
    new id in the same transaction and a new child refers to it."""
    translator, index = _seeded()
    order = ["p1", "c1", "c2", "g1", "g2"]
    changes = [RawChange(table=ROWS[n][0], op="D", old=ROWS[n][1], new=None) for n in order]
    changes += [
        RawChange(table=1, op="I", old=None, new={"id": 9, "code": "p1"}),
        RawChange(table=2, op="I", old=None, new={"id": 19, "parent_id": 9, "n": 7}),
    ]
    events = _run(translator, changes)
    assert [e.key for e in events[:5]] == [ROWS[n][2] for n in order]
    assert events[-1].key == {"parent_id": P1, "n": 7}
    assert events[-1].row == {"n": 7, "parent_id": P1}
    assert index.rows == {(1, 2): ("p2",), (1, 9): ("p1",), (2, 19): (Ref(1, 9), 7)}
