"""core/shapes.py: a table's shape at every point of the log, and the log's rows in the
shape of one instant, checked against a plain model of a table that migrates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.log import ChangeEvent, Definition, LoggedTransaction
from nkdaemon.core.shapes import ShapeError, ShapeHistory, fold_in_shape, missing_values


def spec(
    name: str,
    columns: list[str],
    *,
    key: tuple[str, ...] = ("code",),
    defaults: dict[str, str] | None = None,
    fks: tuple[ForeignKeySpec, ...] = (),
    number: int = 1,
) -> TableSpec:
    defaults = defaults or {}
    parts = []
    for column in key:
        fk = next((f for f in fks if f.columns == (column,)), None)
        parts.append(
            KeyPart(name=column, foreign_key=fk) if fk else KeyPart(name=column, column=column)
        )
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(
            ColumnSpec(
                name=c,
                logical_type="integer" if c == "id" else "text",
                nullable=c not in key,
                default=defaults.get(c),
            )
            for c in ["id", *columns]
        ),
        primary_key=("id",),
        key_parts=tuple(parts),
        foreign_keys=fks,
    )


def definition(lsn: int, table: TableSpec | None, name: str = "items", **kw: Any) -> Definition:
    body = None if table is None else spec_to_json(table)
    change = "dropped" if table is None else "altered"
    return Definition(lsn=lsn, table=name, definition=body, change=change, **kw)


def tx(
    lsn: int, events: list[ChangeEvent], definitions: list[Definition] = ()
) -> LoggedTransaction:  # type: ignore[assignment]
    return LoggedTransaction(
        lsn=lsn,
        position=lsn,
        txid=None,
        commit_time=datetime(2026, 1, 1, tzinfo=UTC),
        events=tuple(events),
        definitions=tuple(definitions),
    )


def ins(code: str, table: str = "items", **row: Any) -> ChangeEvent:
    return ChangeEvent(table=table, op="I", key={"code": code}, row={"code": code, **row})


def upd(code: str, table: str = "items", **row: Any) -> ChangeEvent:
    return ChangeEvent(table=table, op="U", key={"code": code}, row={"code": code, **row})


def state_of(
    start: list[TableSpec],
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]],
    transactions: list[LoggedTransaction],
    **kw: Any,
) -> tuple[dict[str, dict[str, Any]], ShapeHistory, Any]:
    history = ShapeHistory(start)
    for t in transactions:
        for d in t.definitions:
            history.add(d)
    state, walk = fold_in_shape(history, rows, transactions, **kw)
    out = {
        name: {k["code"]: r for k, r, _n in state.rendered(name)}
        for name in (s.name for s in history.specs_at_end())
    }
    return out, history, (state, walk)


def test_a_rename_chain_puts_every_value_under_the_name_at_the_end() -> None:
    start = spec("items", ["code", "a"])
    b = spec("items", ["code", "b"])
    c = spec("items", ["code", "c"])
    log = [
        tx(1, [ins("x", a="1")]),
        tx(2, [ins("y", b="2")], [definition(2, b, renamed=(("a", "b"),))]),
        tx(3, [upd("y", c="3")], [definition(3, c, renamed=(("b", "c"),))]),
    ]
    rows, history, _ = state_of([start], [("items", {"code": "s"}, {"code": "s", "a": "0"})], log)
    assert rows["items"] == {
        "s": {"code": "s", "c": "0"},
        "x": {"code": "x", "c": "1"},
        "y": {"code": "y", "c": "3"},
    }
    assert [c.name for c in history.final["items"].spec.columns] == ["id", "code", "c"]


def test_a_column_dropped_and_added_again_does_not_bring_back_the_old_values() -> None:
    start = spec("items", ["code", "note"])
    without = spec("items", ["code"])
    log = [
        tx(1, [ins("x", note="old")]),
        tx(2, [], [definition(2, without)]),
        tx(3, [ins("y", note="new")], [definition(3, start)]),
    ]
    rows, _h, (state, _walk) = state_of([start], [], log)
    # x was written before the drop: the new note was added without a default, so NULL
    assert rows["items"] == {"x": {"code": "x", "note": None}, "y": {"code": "y", "note": "new"}}
    lacking, _held = missing_values(state, [start], {})
    assert not lacking


def test_a_column_added_with_a_default_and_no_baseline_is_lacking_not_invented() -> None:
    start = spec("items", ["code"])
    later = spec("items", ["code", "color"], defaults={"color": "'red'"})
    log = [tx(1, [ins("x")]), tx(2, [ins("y", color="blue")], [definition(2, later)])]
    rows, _h, (state, _walk) = state_of([start], [], log)
    assert rows["items"] == {"x": {"code": "x"}, "y": {"code": "y", "color": "blue"}}
    lacking, _held = missing_values(state, [later], {})
    assert lacking == {("items", "color"): 1}
    filled, *_ = state_of([start], [], log, fill_lacking=True)
    assert filled["items"]["x"] == {"code": "x", "color": None}


def test_a_baseline_after_an_added_column_gives_every_row_its_value() -> None:
    start = spec("items", ["code"])
    later = spec("items", ["code", "color"], defaults={"color": "'red'"})
    baseline = [
        ChangeEvent(table="items", op="T", key=None),
        ins("x", color="red"),
        ins("y", color="red"),
    ]
    log = [tx(1, [ins("x"), ins("y")]), tx(2, baseline, [definition(2, later)])]
    rows, _h, (state, _walk) = state_of([start], [], log)
    assert {k: r["color"] for k, r in rows["items"].items()} == {"x": "red", "y": "red"}
    assert not missing_values(state, [later], {})[0]


def test_between_two_changes_inside_one_transaction_each_event_is_read_in_its_shape() -> None:
    start = spec("items", ["code", "a"])
    renamed = spec("items", ["code", "b"])
    dropped = spec("items", ["code"])
    events = [ins("x", a="1"), ins("y", b="2"), ins("z")]
    defs = [
        definition(1, renamed, at_event=1, renamed=(("a", "b"),)),
        definition(1, dropped, at_event=2),
    ]
    rows, *_ = state_of([start], [], [tx(1, events, defs)])
    assert rows["items"] == {"x": {"code": "x"}, "y": {"code": "y"}, "z": {"code": "z"}}
    # and only the first change made: the value logged under "a" is under "b"
    rows, *_ = state_of([start], [], [tx(1, events[:2], defs[:1])])
    assert rows["items"] == {"x": {"code": "x", "b": "1"}, "y": {"code": "y", "b": "2"}}


def test_a_dropped_table_is_gone_and_one_created_again_starts_empty() -> None:
    start = spec("items", ["code"])
    created = Definition(lsn=3, table="items", definition=spec_to_json(start), change="created")
    log = [
        tx(1, [ins("x")]),
        tx(2, [ins("y")], [definition(2, None)]),
        tx(3, [ins("z")], [created]),
    ]
    rows, history, _ = state_of([start], [("items", {"code": "s"}, {"code": "s"})], log[:2])
    assert rows == {} and history.final == {}
    rows, *_ = state_of([start], [("items", {"code": "s"}, {"code": "s"})], log)
    assert rows == {"items": {"z": {"code": "z"}}}


def test_values_a_definition_does_not_have_are_counted_not_dropped_silently() -> None:
    start = spec("items", ["code"])
    later = spec("items", ["code", "size"])
    log = [tx(1, [ins("x", color="red")], [definition(1, later)])]
    _rows, _h, (_state, walk) = state_of([start], [], log)
    assert walk.unplaced == {("items", "color"): 1}


def test_a_renamed_key_column_renames_the_keys_that_refer_to_it() -> None:
    users = spec("users", ["name"], key=("name",), number=2)
    renamed_users = spec("users", ["login"], key=("login",), number=2)
    fk = ForeignKeySpec(columns=("owner_id",), ref_table="users", ref_columns=("id",))
    docs = spec("docs", ["code", "owner_id"], fks=(fk,))
    start_rows = [
        ("users", {"name": "bob"}, {"name": "bob"}),
        ("docs", {"code": "d1"}, {"code": "d1", "owner_id": {"name": "bob"}}),
    ]
    log = [
        tx(
            1,
            [
                ChangeEvent(
                    table="docs",
                    op="I",
                    key={"code": "d2"},
                    row={"code": "d2", "owner_id": {"name": "bob"}},
                )
            ],
        ),
        tx(2, [], [definition(2, renamed_users, name="users", renamed=(("name", "login"),))]),
    ]
    history = ShapeHistory([users, docs])
    for t in log:
        for d in t.definitions:
            history.add(d)
    state, _walk = fold_in_shape(history, start_rows, log)
    docs_rows = {k["code"]: r for k, r, _n in state.rendered("docs")}
    assert docs_rows["d1"]["owner_id"] == {"login": "bob"}
    assert docs_rows["d2"]["owner_id"] == {"login": "bob"}


def test_a_natural_key_that_changed_is_refused_with_the_way_out() -> None:
    start = spec("items", ["code", "alt"])
    rekeyed = spec("items", ["code", "alt"], key=("alt",))
    log = [tx(1, [ins("x", alt="1")]), tx(2, [], [definition(2, rekeyed)])]
    with pytest.raises(ShapeError, match="natural key of items changed"):
        state_of([start], [], log)


# --- generated: a table that migrates, against a plain model ---------------------------------

NAMES = ["a", "b", "c", "d"]


@dataclass
class Model:
    columns: list[str] = field(default_factory=lambda: ["code"])
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)


step = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("drop"), st.sampled_from(NAMES), st.just(False)),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("write"), st.sampled_from(["k1", "k2", "k3"]), st.integers(0, 99)),
    st.tuples(st.just("delete"), st.sampled_from(["k1", "k2", "k3"]), st.just(0)),
)


def _apply(model: Model, lsn: int, op: tuple[Any, Any, Any]) -> LoggedTransaction | None:
    """One step on the model, and the transaction the log would hold for it."""
    kind, a, b = op
    cols = model.columns
    if kind == "add" and a not in cols:
        cols.append(a)
        default = f"'{a}{lsn}'" if b else None
        table = spec("items", list(cols), defaults={a: default} if b else {})
        events = []
        for code, row in model.rows.items():  # a default: the baseline gives each row it
            row[a] = f"{a}{lsn}" if b else None
            if b:
                events.append(upd(code, **{c: row[c] for c in cols[1:]}))
        return tx(lsn, events, [definition(lsn, table)])
    if kind == "drop" and a in cols:
        cols.remove(a)
        for row in model.rows.values():
            row.pop(a, None)
        return tx(lsn, [], [definition(lsn, spec("items", list(cols)))])
    if kind == "rename" and a in cols and b not in cols:
        cols[cols.index(a)] = b
        for row in model.rows.values():
            row[b] = row.pop(a)
        return tx(lsn, [], [definition(lsn, spec("items", list(cols)), renamed=((a, b),))])
    if kind == "write":
        values = {c: f"{c}{lsn}.{b}" for c in cols[1:]}
        event = upd(a, **values) if a in model.rows else ins(a, **values)
        model.rows[a] = {"code": a, **values}
        return tx(lsn, [event])
    if kind == "delete" and a in model.rows:
        del model.rows[a]
        return tx(lsn, [ChangeEvent(table="items", op="D", key={"code": a})])
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=25))
def test_the_folded_rows_at_every_instant_are_the_models(steps: list[tuple[Any, Any, Any]]) -> None:
    model = Model()
    start = spec("items", ["code"])
    log: list[LoggedTransaction] = []
    for op in steps:
        made = _apply(model, len(log) + 1, op)
        if made is None:
            continue
        log.append(made)
        rows, history, _ = state_of([start], [], log)
        assert [c.name for c in history.final["items"].spec.columns] == ["id", *model.columns]
        assert rows["items"] == model.rows


# --- generated: references to a table whose key column is renamed ----------------------------

FK = ForeignKeySpec(columns=("owner_id",), ref_table="users", ref_columns=("id",))
DOCS = spec("docs", ["code", "owner_id"], fks=(FK,))

ref_step = st.one_of(
    st.tuples(st.just("rename_key"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("user"), st.sampled_from(["ann", "bob", "cy"])),
    st.tuples(st.just("rename_user"), st.sampled_from(["ann", "bob", "cy", "dee"])),
    st.tuples(st.just("doc"), st.sampled_from(["d1", "d2"])),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(ref_step, max_size=20), st.randoms(use_true_random=False))
def test_references_follow_renamed_rows_and_renamed_key_columns(
    steps: list[tuple[str, str]], rnd: Any
) -> None:
    column = "n1"
    users: list[str] = []
    docs: dict[str, str] = {}
    log: list[LoggedTransaction] = []

    def users_spec() -> TableSpec:
        return spec("users", [column], key=(column,), number=2)

    start = [users_spec(), DOCS]
    for kind, value in steps:
        lsn = len(log) + 1
        if kind == "rename_key" and value != column:
            old, column = column, value
            log.append(
                tx(lsn, [], [definition(lsn, users_spec(), "users", renamed=((old, value),))])
            )
        elif kind == "user" and value not in users:
            users.append(value)
            event = ChangeEvent(table="users", op="I", key={column: value}, row={column: value})
            log.append(tx(lsn, [event]))
        elif kind == "rename_user" and users and value not in users:
            old = rnd.choice(users)
            users[users.index(old)] = value
            docs = {d: (value if o == old else o) for d, o in docs.items()}
            event = ChangeEvent(
                table="users",
                op="U",
                key={column: value},
                old_key={column: old},
                row={column: value},
            )
            log.append(tx(lsn, [event]))
        elif kind == "doc" and users:
            owner = rnd.choice(users)
            op = "U" if value in docs else "I"
            docs[value] = owner
            event = ChangeEvent(
                table="docs",
                op=op,
                key={"code": value},
                row={"code": value, "owner_id": {column: owner}},
            )
            log.append(tx(lsn, [event]))
    history = ShapeHistory(start)
    for t in log:
        for d in t.definitions:
            history.add(d)
    state, _walk = fold_in_shape(history, [], log)
    rendered = {k["code"]: r["owner_id"] for k, r, _n in state.rendered("docs")}
    assert rendered == {d: {column: o} for d, o in docs.items()}
    assert sorted(k[column] for k, _r, _n in state.rendered("users")) == sorted(users)


def test_a_key_part_that_kept_its_old_name_across_a_rename_is_read_by_its_place() -> None:
    """The drain names a row by the same key part before and after its key column was
    renamed; the definition names the column anew. The restore follows either."""
    start = spec("items", ["code", "x"])
    renamed = spec("items", ["ref", "x"], key=("ref",))
    log = [
        tx(1, [ins("a", x="1")]),
        tx(
            2,
            [ChangeEvent(table="items", op="U", key={"code": "a"}, row={"ref": "a", "x": "2"})],
            [definition(2, renamed, renamed=(("code", "ref"),))],
        ),
        tx(3, [ChangeEvent(table="items", op="I", key={"code": "b"}, row={"ref": "b", "x": "3"})]),
    ]
    history = ShapeHistory([start])
    for t in log:
        for d in t.definitions:
            history.add(d)
    state, _walk = fold_in_shape(history, [], log)
    assert sorted((k["ref"], r["x"]) for k, r, _n in state.rendered("items")) == [
        ("a", "2"),
        ("b", "3"),
    ]
