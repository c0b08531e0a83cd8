"""Source ids become natural keys (core/translate.py).

Every event names its row, and each row it refers to, by the key that row had at the
moment of the change: a rename earlier in the same transaction shows, a reference to a row
inserted later in the transaction waits for it, and a reference to a row the index never
saw is refused at the end of the transaction instead of being logged unresolved.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.errors import CaptureError
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
from nkdaemon.core.translate import ShallowKey, Translator, source_id


class DictIndex:
    """The key index as a dict; a composite id (a list) is stored as a tuple."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, Any], ShallowKey] = {}

    @staticmethod
    def _at(table: int, sid: Sid) -> tuple[int, Any]:
        return table, tuple(sid) if isinstance(sid, list) else sid

    def get(self, table: int, sid: Sid) -> ShallowKey | None:
        return self.rows.get(self._at(table, sid))

    def put(self, table: int, sid: Sid, key: ShallowKey) -> None:
        self.rows[self._at(table, sid)] = key

    def delete(self, table: int, sid: Sid) -> None:
        self.rows.pop(self._at(table, sid), None)

    def clear_table(self, table: int) -> None:
        self.rows = {k: v for k, v in self.rows.items() if k[0] != table}


def _columns(*names: str, nullable: tuple[str, ...] = ()) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(name=n, logical_type="text", nullable=n in nullable) for n in names)


def _fk(columns: tuple[str, ...], table: str, ref: tuple[str, ...] = ("id",)) -> ForeignKeySpec:
    return ForeignKeySpec(columns=columns, ref_table=table, ref_columns=ref)


TO_WORKFLOW = _fk(("workflow_id",), "workflows")
TO_STATE = _fk(("state_id",), "states")
TO_AUTHOR = _fk(("author_id",), "workflows")
# a composite reference whose columns are listed in another order than the referenced key
TO_FOLDER = _fk(("folder_no", "tenant"), "folders", ("no", "tenant"))
BY_NAME = ForeignKeySpec(
    columns=("workflow_name",), ref_table="workflows", ref_columns=("name",), by_natural_key=True
)


def _tables() -> dict[int, TableSpec]:
    """workflows(name) <- states(workflow, code) <- transitions(state, label): keys nest
    two deep; notes refer to a workflow outside their key (nullable); folders have a
    composite id; docs refer to them by it and to a workflow by its name; lines have no key."""
    specs = [
        dict(
            name="workflows",
            columns=_columns("id", "name"),
            primary_key=("id",),
            key_parts=(KeyPart(name="name", column="name"),),
            foreign_keys=(),
            referenced=True,
        ),
        dict(
            name="states",
            columns=_columns("id", "workflow_id", "code"),
            primary_key=("id",),
            key_parts=(
                KeyPart(name="workflow_id", foreign_key=TO_WORKFLOW),
                KeyPart(name="code", column="code"),
            ),
            foreign_keys=(TO_WORKFLOW,),
            referenced=True,
        ),
        dict(
            name="transitions",
            columns=_columns("id", "state_id", "label"),
            primary_key=("id",),
            key_parts=(
                KeyPart(name="state_id", foreign_key=TO_STATE),
                KeyPart(name="label", column="label"),
            ),
            foreign_keys=(TO_STATE,),
        ),
        dict(
            name="notes",
            columns=_columns("id", "title", "author_id", nullable=("author_id",)),
            primary_key=("id",),
            key_parts=(KeyPart(name="title", column="title"),),
            foreign_keys=(TO_AUTHOR,),
        ),
        dict(
            name="folders",
            columns=_columns("tenant", "no", "path"),
            primary_key=("tenant", "no"),
            key_parts=(
                KeyPart(name="tenant", column="tenant"),
                KeyPart(name="path", column="path"),
            ),
            foreign_keys=(),
            referenced=True,
        ),
        dict(
            name="docs",
            columns=_columns("id", "tenant", "folder_no", "workflow_name", "doc_no"),
            primary_key=("id",),
            key_parts=(KeyPart(name="doc_no", column="doc_no"),),
            foreign_keys=(TO_FOLDER, BY_NAME),
        ),
        dict(
            name="lines",
            columns=_columns("text", "n"),
            primary_key=(),
            key_parts=(),
            foreign_keys=(),
            full_row_identity=True,
        ),
    ]
    return {
        number: make_table_spec(number=number, schema=None, **fields)
        for number, fields in enumerate(specs, start=1)
    }


TABLES = _tables()
NUMBER = {spec.name: number for number, spec in TABLES.items()}


def ins(table: str, **new: Any) -> RawChange:
    return RawChange(table=NUMBER[table], op="I", old=None, new=new)


def upd(table: str, old: dict[str, Any] | None, **new: Any) -> RawChange:
    return RawChange(table=NUMBER[table], op="U", old=old, new=new)


def dele(table: str, **old: Any) -> RawChange:
    return RawChange(table=NUMBER[table], op="D", old=old, new=None)


def trunc(table: str) -> RawChange:
    return RawChange(table=NUMBER[table], op="T", old=None, new=None)


def run(translator: Translator, *changes: RawChange) -> list[ChangeEvent]:
    """One transaction, taking ready events as a drain does."""
    events: list[ChangeEvent] = []
    for change in changes:
        translator.translate(change)
        events.extend(translator.ready())
    return events + translator.finish()


def fresh() -> tuple[Translator, DictIndex]:
    index = DictIndex()
    return Translator(TABLES, index), index


def seeded() -> tuple[Translator, DictIndex]:
    """A workflow 'review' (id 1) with a state 'draft' (id 10), committed."""
    translator, index = fresh()
    run(
        translator,
        ins("workflows", id=1, name="review"),
        ins("states", id=10, workflow_id=1, code="draft"),
    )
    return translator, index


REVIEW, APPROVAL = {"name": "review"}, {"name": "approval"}


# --- source ids ------------------------------------------------------------------------


def test_a_source_id_is_the_primary_key_value_a_list_for_a_composite_none_without() -> None:
    assert source_id(TABLES[NUMBER["states"]], {"id": 10, "code": "x"}) == 10
    assert source_id(TABLES[NUMBER["folders"]], {"no": 3, "tenant": "t", "path": "/"}) == [
        "t",
        3,
    ]
    assert source_id(TABLES[NUMBER["lines"]], {"text": "x", "n": 1}) is None


# --- keys and rows ---------------------------------------------------------------------


def test_a_reference_in_a_key_is_named_by_the_referenced_row_s_own_key() -> None:
    translator, index = seeded()
    (event,) = run(translator, ins("transitions", id=100, state_id=10, label="submit"))
    draft = {"workflow_id": REVIEW, "code": "draft"}
    assert event == ChangeEvent(
        table="transitions",
        op="I",
        key={"state_id": draft, "label": "submit"},
        row={"state_id": draft, "label": "submit"},  # no surrogate id, no raw state_id
        sid=100,
    )
    assert index.rows == {(1, 1): ("review",), (2, 10): (Ref(1, 1), "draft")}


def test_only_rows_that_others_refer_to_are_indexed() -> None:
    translator, index = seeded()
    run(translator, ins("transitions", id=100, state_id=10, label="submit"))
    assert (3, 100) not in index.rows


def test_a_reference_outside_the_key_is_in_the_row_and_null_stays_null() -> None:
    translator, _ = seeded()
    with_author, without = run(
        translator,
        ins("notes", id=1, title="a", author_id=1),
        ins("notes", id=2, title="b", author_id=None),
    )
    assert with_author.key == {"title": "a"}
    assert with_author.row == {"title": "a", "author_id": REVIEW}
    assert without.row == {"title": "b", "author_id": None}


def test_a_composite_reference_is_resolved_whatever_the_order_of_its_columns() -> None:
    translator, index = fresh()
    events = run(
        translator,
        ins("folders", tenant="acme", no=3, path="/inbox"),
        ins("docs", id=5, tenant="acme", folder_no=3, workflow_name="review", doc_no="D-1"),
    )
    assert index.rows == {(5, ("acme", 3)): ("acme", "/inbox")}
    assert events[1].row == {
        "doc_no": "D-1",
        "folder_no,tenant": {"tenant": "acme", "path": "/inbox"},
        "workflow_name": {"name": "review"},  # by natural key: no index needed
    }


def test_a_table_without_key_is_named_by_its_whole_row_before_and_after() -> None:
    translator, index = fresh()
    inserted, updated, deleted = run(
        translator,
        ins("lines", text="hello", n=1),
        upd("lines", {"text": "hello", "n": 1}, text="hello", n=2),
        dele("lines", text="hello", n=2),
    )
    assert inserted.key == inserted.row == {"text": "hello", "n": 1}
    assert (updated.old_key, updated.key) == ({"text": "hello", "n": 1}, {"text": "hello", "n": 2})
    assert deleted.key == {"text": "hello", "n": 2} and deleted.row is None
    assert index.rows == {}


# --- renames ---------------------------------------------------------------------------


def test_a_rename_logs_the_old_key_and_an_update_that_keeps_the_key_does_not() -> None:
    translator, index = seeded()
    renamed, touched = run(
        translator,
        upd("workflows", {"id": 1, "name": "review"}, id=1, name="approval"),
        upd("workflows", None, id=1, name="approval"),
    )
    assert (renamed.old_key, renamed.key) == (REVIEW, APPROVAL)
    assert (touched.old_key, touched.key) == (None, APPROVAL)
    assert index.rows[(1, 1)] == ("approval",)


def test_a_rename_shows_in_the_keys_that_contain_it_from_that_change_on() -> None:
    """Two levels down, in the same transaction and the next: no stale cached key."""
    translator, _ = seeded()
    before, _rename, after = run(
        translator,
        ins("transitions", id=100, state_id=10, label="submit"),
        upd("workflows", {"id": 1, "name": "review"}, id=1, name="approval"),
        ins("transitions", id=101, state_id=10, label="reject"),
    )
    assert before.key == {"state_id": {"workflow_id": REVIEW, "code": "draft"}, "label": "submit"}
    assert after.key == {"state_id": {"workflow_id": APPROVAL, "code": "draft"}, "label": "reject"}
    (later,) = run(translator, upd("transitions", None, id=100, state_id=10, label="submit"))
    assert later.key["state_id"]["workflow_id"] == APPROVAL


def test_a_row_moved_to_another_parent_logs_its_old_key() -> None:
    translator, _ = seeded()
    run(translator, ins("workflows", id=2, name="approval"))
    (moved,) = run(
        translator,
        upd(
            "states",
            {"id": 10, "workflow_id": 1, "code": "draft"},
            id=10,
            workflow_id=2,
            code="draft",
        ),
    )
    assert moved.old_key == {"workflow_id": REVIEW, "code": "draft"}
    assert moved.key == {"workflow_id": APPROVAL, "code": "draft"}


def test_a_changed_id_is_known_under_the_new_one_and_forgotten_under_the_old() -> None:
    translator, index = seeded()
    run(translator, upd("workflows", {"id": 1, "name": "review"}, id=9, name="review"))
    assert (1, 1) not in index.rows and index.rows[(1, 9)] == ("review",)
    (event,) = run(translator, ins("notes", id=1, title="a", author_id=9))
    assert event.row is not None and event.row["author_id"] == REVIEW


# --- references not resolvable yet -----------------------------------------------------


def test_a_reference_to_a_row_inserted_later_waits_and_is_resolved_at_the_end() -> None:
    translator, _ = seeded()
    translator.translate(ins("notes", id=1, title="first", author_id=1))
    assert [e.key for e in translator.ready()] == [{"title": "first"}]
    translator.translate(ins("notes", id=2, title="early", author_id=2))
    translator.translate(ins("notes", id=3, title="after", author_id=1))
    assert translator.ready() == []  # held: it waits, and so does what follows it
    translator.translate(ins("workflows", id=2, name="approval"))
    events = translator.finish()
    assert [e.key for e in events] == [{"title": "early"}, {"title": "after"}, APPROVAL]
    assert events[0].row == {"title": "early", "author_id": APPROVAL}


def test_a_key_waiting_on_a_later_row_is_resolved_at_every_level() -> None:
    translator, _ = fresh()
    events = run(
        translator,
        ins("transitions", id=100, state_id=10, label="submit"),
        ins("states", id=10, workflow_id=1, code="draft"),
        ins("workflows", id=1, name="review"),
    )
    draft = {"workflow_id": REVIEW, "code": "draft"}
    assert events[0].key == {"state_id": draft, "label": "submit"}
    assert events[1].key == draft


def test_a_reference_to_a_row_never_seen_is_refused_naming_it_and_the_way_out() -> None:
    translator, _ = seeded()
    translator.translate(ins("notes", id=1, title="a", author_id=42))
    with pytest.raises(CaptureError) as caught:
        translator.finish()
    assert "notes" in caught.value.message and "42" in caught.value.message
    assert "workflows" in caught.value.message
    assert caught.value.hint is not None and "nkdaemon install" in caught.value.hint


def test_a_reset_drops_the_events_of_an_aborted_transaction() -> None:
    translator, _ = seeded()
    translator.translate(ins("notes", id=1, title="a", author_id=42))
    translator.reset()
    assert translator.finish() == []
    (event,) = run(translator, ins("notes", id=2, title="b", author_id=1))
    assert event.row == {"title": "b", "author_id": REVIEW}


# --- deletes and truncates -------------------------------------------------------------


def test_a_row_deleted_before_its_children_still_names_them_then_is_forgotten() -> None:
    translator, index = seeded()
    run(translator, ins("transitions", id=100, state_id=10, label="submit"))
    events = run(
        translator,
        dele("workflows", id=1, name="review"),
        dele("states", id=10, workflow_id=1, code="draft"),
        dele("transitions", id=100, state_id=10, label="submit"),
    )
    draft = {"workflow_id": REVIEW, "code": "draft"}
    assert [e.key for e in events] == [REVIEW, draft, {"state_id": draft, "label": "submit"}]
    assert all(e.op == "D" and e.row is None for e in events)
    assert index.rows == {}
    translator.translate(ins("notes", id=1, title="late", author_id=1))
    with pytest.raises(CaptureError):
        translator.finish()


def test_a_row_deleted_and_inserted_again_in_one_transaction_stays_known() -> None:
    translator, index = seeded()
    run(
        translator,
        dele("workflows", id=1, name="review"),
        ins("workflows", id=1, name="approval"),
    )
    assert index.rows[(1, 1)] == ("approval",)


def test_a_truncate_names_no_row_and_forgets_only_its_table() -> None:
    translator, index = seeded()
    (event,) = run(translator, trunc("states"))
    assert (event.op, event.key, event.row) == ("T", None, None)
    assert index.rows == {(1, 1): ("review",)}
    translator.translate(ins("transitions", id=100, state_id=10, label="submit"))
    with pytest.raises(CaptureError):
        translator.finish()


# --- generated: renames and moves against a model --------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("rename"), st.integers(1, 3)),
        st.tuples(st.just("move"), st.integers(10, 12), st.integers(1, 3)),
        st.tuples(st.just("touch"), st.integers(100, 102)),
        st.tuples(st.just("commit")),
    ),
    max_size=30,
)


@given(STEPS)
def test_every_event_names_the_rows_in_its_key_as_they_were_at_that_change(
    steps: list[tuple[Any, ...]],
) -> None:
    """Workflows 1-3 are renamed, states 10-12 move between them, transitions 100-102 (one
    per state) are touched, in transactions of any length; each event's key is checked
    against a model of the source."""
    translator, _ = fresh()
    names = {w: f"w{w}" for w in (1, 2, 3)}
    parent = {s: 1 for s in (10, 11, 12)}
    setup = [ins("workflows", id=w, name=n) for w, n in names.items()]
    setup += [ins("states", id=s, workflow_id=1, code=f"s{s}") for s in parent]
    setup += [ins("transitions", id=s * 10, state_id=s, label="go") for s in parent]
    run(translator, *setup)

    def state_key(s: int) -> dict[str, Any]:
        return {"workflow_id": {"name": names[parent[s]]}, "code": f"s{s}"}

    expected: list[tuple[Any, Any]] = []
    events: list[ChangeEvent] = []
    for step in steps:
        if step[0] == "rename":
            old = {"id": step[1], "name": names[step[1]]}
            names[step[1]] += "'"
            translator.translate(upd("workflows", old, id=step[1], name=names[step[1]]))
            expected.append(({"name": names[step[1]]}, {"name": old["name"]}))
        elif step[0] == "move":
            state, to = step[1], step[2]
            old_row = {"id": state, "workflow_id": parent[state], "code": f"s{state}"}
            old_key = state_key(state)
            parent[state] = to
            translator.translate(
                upd("states", old_row, id=state, workflow_id=to, code=old_row["code"])
            )
            expected.append((state_key(state), old_key if to != old_row["workflow_id"] else None))
        elif step[0] == "touch":
            state = step[1] // 10
            translator.translate(upd("transitions", None, id=step[1], state_id=state, label="go"))
            expected.append(({"state_id": state_key(state), "label": "go"}, None))
        else:
            events += translator.finish()
            continue
        events += translator.ready()
    events += translator.finish()
    assert [(e.key, e.old_key) for e in events] == expected
