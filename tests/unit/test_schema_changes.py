"""Schema changes in the core: DEFINITION records, a spec restricted to the columns a table
had, and baselines (every row of a table as it is after a change) turned into events.

A baseline must bring the log's rows to exactly the table's rows, keeping the identity of
rows others refer to (updates, not delete + insert), and a spec must never claim columns
or constraints the table did not have at that instant.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.definitions import (
    restricted_spec,
    spec_after_change,
    spec_from_json,
    spec_to_json,
)
from nkdaemon.core.errors import CaptureError
from nkdaemon.core.events import RawChange
from nkdaemon.core.fold import LogFold, ReplayError
from nkdaemon.core.history import HistoryTracker, describe_change
from nkdaemon.core.keys import (
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    KeyPart,
    TableSpec,
    make_table_spec,
    replace_spec,
)
from nkdaemon.core.log import (
    KIND_DEFINITION,
    ChangeEvent,
    Commit,
    Definition,
    LoggedTransaction,
    decode,
    encode,
    is_partial,
)
from nkdaemon.core.replay import MemoryKeyIndex
from nkdaemon.core.translate import Translator

TO_PARENT = ForeignKeySpec(columns=("parent_id",), ref_table="parents", ref_columns=("id",))


def _columns(*names: str) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(name=n, logical_type="text", nullable=True) for n in names)


PARENTS = make_table_spec(
    number=1,
    name="parents",
    schema=None,
    columns=_columns("id", "code", "colour"),
    primary_key=("id",),
    key_parts=(KeyPart(name="code", column="code"),),
    foreign_keys=(),
    full_row_identity=False,
    referenced=True,
    indexes=(IndexSpec(name="parents_colour", columns=("colour",), unique=False),),
    checks=(),
)
CHILDREN = make_table_spec(
    number=2,
    name="children",
    schema=None,
    columns=_columns("id", "parent_id", "label", "note"),
    primary_key=("id",),
    key_parts=(KeyPart(name="label", column="label"),),
    foreign_keys=(TO_PARENT,),
    full_row_identity=False,
    referenced=False,
    indexes=(),
    checks=(),
)
TABLES = {1: PARENTS, 2: CHILDREN}


# --- DEFINITION records ---------------------------------------------------------------


def test_a_definition_record_round_trips_and_belongs_to_an_open_transaction() -> None:
    record = Definition(
        lsn=7,
        table="parents",
        definition=spec_to_json(PARENTS),
        change="altered",
        at_event=3,
        renamed=(("color", "colour"),),
        command="ALTER TABLE",
    )
    kind, payload = encode(record)
    assert kind == KIND_DEFINITION
    back = decode(kind, payload)
    assert back == record
    assert isinstance(back, Definition) and back.columns == ("id", "code", "colour")
    assert is_partial(back)
    dropped = Definition(lsn=8, table="parents", definition=None, change="dropped")
    assert decode(*encode(dropped)) == dropped and dropped.columns == ()


def test_a_transaction_carries_its_definitions() -> None:
    commit = Commit(
        lsn=7,
        position=70,
        txid=None,
        commit_time=datetime(2026, 1, 1, tzinfo=UTC),
        parts=0,
        count=1,
        events=(ChangeEvent(table="parents", op="D", key={"code": "a"}),),
    )
    record = Definition(lsn=7, table="parents", definition=None, change="dropped", at_event=1)
    tx = LoggedTransaction.joined(commit, (), [record])
    assert tx.definitions == (record,) and len(tx.events) == 1
    assert LoggedTransaction.joined(commit).definitions == ()


# --- a spec as the table was ------------------------------------------------------------


def test_a_restricted_spec_drops_what_names_a_missing_column() -> None:
    spec = restricted_spec(PARENTS, ["id", "code"])
    assert [c.name for c in spec.columns] == ["id", "code"]
    assert spec.indexes == ()  # the index on colour went with it
    assert spec_from_json(spec_to_json(spec)) == spec
    child = restricted_spec(CHILDREN, ["id", "label", "note"])
    assert child.foreign_keys == () and child.column_index.keys() == {"id", "label", "note"}
    assert restricted_spec(PARENTS, ["id", "code", "colour"]) is PARENTS


def test_a_restricted_spec_keeps_the_order_the_table_had() -> None:
    spec = restricted_spec(PARENTS, ["colour", "id", "code"])
    assert [c.name for c in spec.columns] == ["colour", "id", "code"]


@pytest.mark.parametrize("columns", [["id", "colour"], ["code", "colour"]])
def test_losing_a_key_column_stops_capture_with_what_to_do(columns: list[str]) -> None:
    with pytest.raises(CaptureError) as raised:
        restricted_spec(PARENTS, columns)
    assert "parents" in str(raised.value) and "natural_key" in (raised.value.hint or "")


# --- baselines ---------------------------------------------------------------------------


def _events(translator: Translator, changes: list[RawChange]) -> list[ChangeEvent]:
    for change in changes:
        translator.translate(change)
    return translator.finish()


def _parent(pid: int, code: str, colour: str | None) -> dict[str, Any]:
    return {"id": pid, "code": code, "colour": colour}


def _child(cid: int, parent: int | None, label: str) -> dict[str, Any]:
    return {"id": cid, "parent_id": parent, "label": label, "note": None}


def test_a_baseline_of_a_referenced_table_updates_inserts_and_deletes() -> None:
    index = MemoryKeyIndex()
    before = [_parent(1, "a", None), _parent(2, "b", None), _parent(3, "c", None)]
    _events(
        Translator(TABLES, index),
        [
            RawChange(
                table=1,
                op="I",
                old=None,
                new=r,
            )
            for r in before
        ],
    )
    translator = Translator(TABLES, index)
    translator.schema_changed(1, baseline=True)
    now = [_parent(1, "a", "red"), _parent(3, "c2", None), _parent(4, "d", "blue")]
    events = _events(
        translator,
        [RawChange(table=1, op="B", old=None, new=r) for r in now]
        + [RawChange(table=2, op="I", old=None, new=_child(9, 4, "x"))],
    )
    shapes = [(e.table, e.op, e.key, e.old_key) for e in events]
    assert shapes == [
        ("parents", "D", {"code": "b"}, None),  # what the baseline lacks goes first
        ("parents", "U", {"code": "a"}, None),
        ("parents", "U", {"code": "c2"}, {"code": "c"}),  # renamed where nobody saw it
        ("parents", "I", {"code": "d"}, None),  # inserts last: a rename may free their key
        ("children", "I", {"label": "x"}, None),  # the baseline closed before it
    ]
    assert events[-1].row is not None and events[-1].row["parent_id"] == {"code": "d"}
    assert sorted(sid for (table, sid), _ in index._keys.items() if table == 1) == [1, 3, 4]


def test_a_baseline_of_a_table_nothing_refers_to_is_a_truncate_and_inserts() -> None:
    translator = Translator(TABLES, MemoryKeyIndex())
    translator.schema_changed(2, baseline=True)
    events = _events(
        translator, [RawChange(table=2, op="B", old=None, new=_child(5, None, "only"))]
    )
    assert [e.op for e in events][:1] == ["T"] and [e.op for e in events][1:] == ["I"]


def test_a_change_without_baseline_emits_nothing() -> None:
    translator = Translator(TABLES, MemoryKeyIndex())
    translator.schema_changed(1, baseline=False)
    assert translator.finish() == []


rows_of = st.dictionaries(
    st.integers(1, 12),
    st.tuples(st.sampled_from("abcdefghijkl"), st.sampled_from([None, "r", "g"])),
)


@given(before=rows_of, after=rows_of)
def test_after_a_baseline_the_log_holds_exactly_the_baseline(
    before: dict[int, tuple[str, str | None]], after: dict[int, tuple[str, str | None]]
) -> None:
    def unique(rows: dict[int, tuple[str, str | None]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out = []
        for pid, (code, colour) in sorted(rows.items()):
            code = f"{code}{pid}" if code in seen else code
            seen.add(code)
            out.append(_parent(pid, code, colour))
        return out

    old_rows, new_rows = unique(before), unique(after)
    index = MemoryKeyIndex()
    fold = LogFold([PARENTS], keep_rows=True)
    inserts = [RawChange(table=1, op="I", old=None, new=r) for r in old_rows]
    fold.apply_transaction(_events(Translator(TABLES, index), inserts))
    translator = Translator(TABLES, index)
    translator.schema_changed(1, baseline=True)
    baseline = [RawChange(table=1, op="B", old=None, new=r) for r in new_rows]
    events = _events(translator, baseline)
    if _keys_swapped(old_rows, new_rows):
        # No order of single-row steps shows keys passed round between rows: replaying it
        # must fail loudly rather than end with other rows than the table's.
        with pytest.raises(ReplayError):
            fold.apply_transaction(events)
        return
    fold.apply_transaction(events)
    expected = {r["code"]: {"code": r["code"], "colour": r["colour"]} for r in new_rows}
    rendered = {key["code"]: row for key, row, _ in fold.rendered("parents")}
    assert rendered == expected


def _keys_swapped(old_rows: list[dict[str, Any]], new_rows: list[dict[str, Any]]) -> bool:
    """True when renames among rows kept by the baseline form a cycle of keys."""
    old = {r["id"]: r["code"] for r in old_rows}
    moves = {
        old[r["id"]]: r["code"] for r in new_rows if r["id"] in old and old[r["id"]] != r["code"]
    }
    for start in moves:
        key, steps = moves[start], 0
        while key in moves and steps <= len(moves):
            if key == start:
                return True
            key, steps = moves[key], steps + 1
    return False


# --- history shows schema changes inline -------------------------------------------------


def _definition(lsn: int, columns: list[str] | None, **fields: Any) -> Definition:
    spec = None if columns is None else spec_to_json(restricted_spec(WIDE, columns))
    return Definition(lsn=lsn, table="parents", definition=spec, **fields)


WIDE = make_table_spec(
    number=1,
    name="parents",
    schema=None,
    columns=_columns("id", "code", "qty", "color", "colour"),
    primary_key=("id",),
    key_parts=(KeyPart(name="code", column="code"),),
    foreign_keys=(),
    full_row_identity=False,
    referenced=False,
    indexes=(),
    checks=(),
)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_history_shows_each_schema_change_and_continues_the_row_through_its_baseline() -> None:
    tracker = HistoryTracker("parents")
    insert = ChangeEvent(table="parents", op="I", key={"code": "a"}, row={"code": "a", "qty": 1})
    tracker.feed(1, T0, [insert], [_definition(1, ["id", "code", "qty"], change="created")])
    added = _definition(2, ["id", "code", "qty", "color"], change="altered")
    baseline = [
        ChangeEvent(table="parents", op="T", key=None),
        ChangeEvent(
            table="parents", op="I", key={"code": "a"}, row={"code": "a", "qty": 1, "color": "red"}
        ),
    ]
    tracker.feed(2, T0, baseline, [added])
    renamed = _definition(
        3, ["id", "code", "qty", "colour"], change="altered", renamed=(("color", "colour"),)
    )
    tracker.feed(3, T0, [], [renamed])
    tracker.feed(4, T0, [ChangeEvent(table="parents", op="D", key={"code": "a"})])
    [row] = tracker.matching({"code": "a"})
    assert [(e.lsn, e.op) for e in row.entries] == [
        (1, "I"),
        (2, "S"),
        (2, "B"),
        (3, "S"),
        (4, "D"),
    ]
    assert row.entries[1].change == "table altered: added color"
    assert row.entries[2].row == {"code": "a", "qty": 1, "color": "red"}
    assert row.entries[3].change == "table altered: column color renamed to colour"


def test_a_row_the_baseline_lacks_ends_at_the_change() -> None:
    tracker = HistoryTracker("parents")
    for lsn, code in enumerate(("a", "b"), start=1):
        tracker.feed(lsn, T0, [ChangeEvent(table="parents", op="I", key={"code": code}, row={})])
    baseline = [
        ChangeEvent(table="parents", op="T", key=None),
        ChangeEvent(table="parents", op="I", key={"code": "a"}, row={"code": "a"}),
    ]
    tracker.feed(3, T0, baseline, [_definition(3, ["id", "code"], change="recaptured")])
    [gone] = tracker.matching({"code": "b"})
    assert [e.op for e in gone.entries] == ["I", "S", "T"]
    [kept] = tracker.matching({"code": "a"})
    assert [e.op for e in kept.entries] == ["I", "S", "B"]


def test_describe_change_names_drops_and_table_drops() -> None:
    dropped = _definition(5, ["id", "code"], change="altered")
    assert describe_change(("id", "code", "qty"), dropped) == "table altered: dropped qty"
    assert (
        describe_change(("id", "code"), _definition(6, None, change="dropped")) == "table dropped"
    )


# --- the spec a table is read with after a change ---------------------------------------


def _typed(spec: TableSpec, **types: str) -> TableSpec:
    return replace_spec(
        spec,
        columns=tuple(
            dataclasses.replace(c, logical_type=types.get(c.name, c.logical_type))
            for c in spec.columns
        ),
    )


def test_a_renamed_key_column_keeps_naming_rows_the_same_way() -> None:
    """Rows queued before the rename carry `code`, rows after it `ref`: both name the row
    by the key part `code`, so the log's keys do not change at the rename."""
    today = replace_spec(
        PARENTS,
        columns=_columns("id", "ref", "colour"),
        key_parts=(KeyPart(name="ref", column="ref"),),
        indexes=(),
    )
    after = spec_after_change(PARENTS, today, ("id", "ref", "colour"), (("code", "ref"),))
    assert [c.name for c in after.columns] == ["id", "ref", "colour"]
    assert after.key_parts == (KeyPart(name="code", column="ref"),)
    translator = Translator({1: after}, MemoryKeyIndex())
    assert translator.shallow_key(after, {"id": 1, "ref": "a", "colour": None}) == ("a",)


def test_a_type_change_reads_later_rows_in_the_new_type_and_keeps_earlier_ones() -> None:
    today = _typed(PARENTS, colour="integer")
    after = spec_after_change(PARENTS, today, ("id", "code", "colour"))
    assert after.column("colour").logical_type == "integer"
    assert PARENTS.column("colour").logical_type == "text"


def test_a_dropped_key_column_stops_capture_loudly() -> None:
    with pytest.raises(CaptureError, match="lost column"):
        spec_after_change(PARENTS, replace_spec(PARENTS, indexes=()), ("id", "colour"))


def test_a_new_table_takes_its_reflected_spec_and_unknown_columns_are_other() -> None:
    assert spec_after_change(None, CHILDREN, [c.name for c in CHILDREN.columns]) == CHILDREN
    after = spec_after_change(PARENTS, None, ("id", "code", "colour", "extra"))
    assert after.column("extra").logical_type == "other"
    assert after.key_parts == PARENTS.key_parts


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4),
    st.sampled_from([(), (("colour", "hue"),), (("code", "sku"),)]),
)
def test_the_spec_after_a_change_has_exactly_its_columns(
    extra: list[str], renamed: tuple[tuple[str, str], ...]
) -> None:
    rename = dict(renamed)
    columns = [rename.get(c, c) for c in ("id", "code", "colour")] + extra
    after = spec_after_change(PARENTS, None, columns, renamed)
    assert [c.name for c in after.columns] == columns
    assert set(after.key_column_names) <= set(columns)
    assert [p.name for p in after.key_parts] == ["code"]


def test_a_key_part_that_kept_its_name_round_trips_through_a_definition() -> None:
    today = replace_spec(PARENTS, columns=_columns("id", "ref", "colour"), indexes=())
    after = spec_after_change(PARENTS, today, ("id", "ref", "colour"), (("code", "ref"),))
    assert spec_from_json(spec_to_json(after)) == after
    assert spec_to_json(PARENTS)["key"] == [{"column": "code"}]  # as format 1 wrote it
