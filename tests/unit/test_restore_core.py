"""The pure parts of a restore (core/restore_runs.py): no database, no file."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.log import decode_event
from nkdaemon.core.restore_runs import (
    LogEvent,
    fk_values,
    foldable_runs,
    in_column_order,
    is_foldable,
    key_columns,
    net_change,
    prefetch_keys,
    referenced_tables,
    runs,
    show_key,
    value_columns,
)
from nkdaemon.core.table_diff import key_text


def _spec(
    name: str,
    *,
    columns: tuple[str, ...] = (),
    primary_key: tuple[str, ...] = ("id",),
    key: tuple[str, ...] = (),
    foreign_keys: tuple[ForeignKeySpec, ...] = (),
    key_fks: tuple[ForeignKeySpec, ...] = (),
    whole: bool = False,
    number: int = 1,
) -> TableSpec:
    parts = [KeyPart(name=c, column=c) for c in key]
    parts += [KeyPart(name=fk.part_name, foreign_key=fk) for fk in key_fks]
    names = list(
        dict.fromkeys([*primary_key, *columns, *(c for fk in foreign_keys for c in fk.columns)])
    )
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(ColumnSpec(name=c, logical_type="text", nullable=True) for c in names),
        primary_key=primary_key,
        key_parts=tuple(parts),
        foreign_keys=foreign_keys,
        full_row_identity=whole,
    )


def _fk(
    columns: tuple[str, ...],
    ref: str,
    ref_columns: tuple[str, ...] = ("id",),
    *,
    natural: bool = False,
) -> ForeignKeySpec:
    return ForeignKeySpec(
        columns=columns, ref_table=ref, ref_columns=ref_columns, by_natural_key=natural
    )


# --- runs of events ------------------------------------------------------------------------

events_strategy = st.lists(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["a", "b", "c"]), "o": st.sampled_from(["I", "U", "D", "T"])},
        optional={"k": st.fixed_dictionaries({"n": st.integers(0, 5)})},
    ).map(decode_event),
    max_size=40,
)


@given(events_strategy)
def test_runs_split_events_into_maximal_runs_of_one_table_and_operation(
    events: list[LogEvent],
) -> None:
    found = list(runs(events))
    assert [e for _marker, batch in found for e in batch] == events  # in order, none lost
    for marker, batch in found:
        assert batch and all((e.table, e.op) == marker for e in batch)
    markers = [marker for marker, _batch in found]
    assert all(a != b for a, b in itertools.pairwise(markers))  # maximal


def test_runs_keep_each_event_object() -> None:
    first = decode_event({"t": "a", "o": "I", "k": {"n": 1}})
    second = decode_event({"t": "a", "o": "I", "k": {"n": 1}})
    ((_marker, batch),) = list(runs([first, second]))
    assert batch[0] is first and batch[1] is second


@given(st.lists(st.integers(0, 9), max_size=40))
def test_foldable_runs_alternate_and_cover_the_window(window: list[int]) -> None:
    def even(n: int) -> bool:
        return n % 2 == 0

    found = list(foldable_runs(window, even))
    assert [n for run, _kind in found for n in run] == window
    for run, kind in found:
        assert run and all(even(n) == kind for n in run)
    kinds = [kind for _run, kind in found]
    assert all(a != b for a, b in itertools.pairwise(kinds))


def test_foldable_runs_ask_once_per_transaction() -> None:
    asked: list[int] = []

    def foldable(n: int) -> bool:
        asked.append(n)
        return n > 1

    assert list(foldable_runs([1, 2, 3, 1], foldable)) == [
        ([1], False),
        ([2, 3], True),
        ([1], False),
    ]
    assert asked == [1, 2, 3, 1]


# --- which transactions fold ---------------------------------------------------------------


def test_inserts_and_in_place_updates_fold() -> None:
    events = [
        decode_event({"t": "a", "o": "I", "k": {"n": 1}}),
        decode_event({"t": "a", "o": "U", "k": {"n": 1}}),
    ]
    assert is_foldable(events, {"a"}, set())


def test_a_rename_a_delete_or_a_truncate_does_not_fold() -> None:
    rename = decode_event({"t": "a", "o": "U", "k": {"n": 2}, "ok": {"n": 1}})
    for event in (
        rename,
        decode_event({"t": "a", "o": "D", "k": {"n": 1}}),
        decode_event({"t": "a", "o": "T"}),
    ):
        assert not is_foldable([event], {"a"}, set())


def test_only_selected_tables_decide_whether_a_transaction_folds() -> None:
    assert is_foldable([decode_event({"t": "other", "o": "D", "k": {"n": 1}})], {"a"}, set())


def test_an_update_of_a_row_captured_whole_does_not_fold_an_insert_does() -> None:
    assert not is_foldable([decode_event({"t": "w", "o": "U", "k": {"x": 1}})], {"w"}, {"w"})
    assert is_foldable([decode_event({"t": "w", "o": "I", "k": {"x": 1}})], {"w"}, {"w"})


# --- the net change of a run ---------------------------------------------------------------


@st.composite
def foldable_history(draw: st.DrawFn) -> tuple[dict[int, int], list[list[LogEvent]]]:
    """Rows there before the run (key -> version), and a run of transactions that insert
    new keys and update existing ones in place."""
    before = {n: 0 for n in draw(st.sets(st.integers(0, 6), max_size=4))}
    present = set(before)
    transactions: list[list[LogEvent]] = []
    version = 0
    for _ in range(draw(st.integers(1, 5))):
        tx: list[LogEvent] = []
        for _ in range(draw(st.integers(0, 5))):
            version += 1
            n = draw(st.integers(0, 9))
            op = "U" if n in present else "I"
            present.add(n)
            tx.append(decode_event({"t": "a", "o": op, "k": {"n": n}, "r": {"n": n, "v": version}}))
        transactions.append(tx)
    return before, transactions


@given(foldable_history())
def test_the_net_change_leaves_what_applying_the_run_in_order_leaves(
    history: tuple[dict[int, int], list[list[LogEvent]]],
) -> None:
    before, transactions = history
    in_order = dict(before)
    for tx in transactions:
        for event in tx:
            in_order[event.key["n"]] = event.row["v"]
    change = net_change(transactions, selected={"a"}, whole=set(), text=key_text)
    folded = dict(before)
    inserted = change.inserts.get("a", {})
    updated = change.updates.get("a", {})
    assert not {k["n"] for k, _r in inserted.values()} & set(before)  # new rows only
    assert {k["n"] for k, _r in updated.values()} <= set(before)  # rows there before only
    for key, row in [*inserted.values(), *updated.values()]:
        folded[key["n"]] = row["v"]
    assert folded == in_order
    assert change.events == sum(len(tx) for tx in transactions)


def test_the_net_change_keeps_rows_captured_whole_in_order_and_skips_other_tables() -> None:
    run = [
        [
            decode_event({"t": "w", "o": "I", "r": {"x": 1}}),
            decode_event({"t": "skip", "o": "I", "k": {"n": 1}}),
        ],
        [
            decode_event({"t": "w", "o": "I", "r": {"x": 1}}),
            decode_event({"t": "w", "o": "I", "r": {"x": 0}}),
        ],
    ]
    change = net_change(run, selected={"w"}, whole={"w"}, text=key_text)
    assert change.whole == {"w": [{"x": 1}, {"x": 1}, {"x": 0}]}
    assert change.events == 3 and not change.inserts and not change.updates


# --- the keys a window looks up ------------------------------------------------------------


def test_prefetch_asks_for_updated_deleted_and_referenced_rows() -> None:
    owner = _fk(("owner_id",), "users")
    code = _fk(("kind",), "kinds", ("code",), natural=True)
    docs = _spec("docs", columns=("no",), key=("no",), foreign_keys=(owner, code))
    whole = _spec("log", columns=("line",), whole=True)
    events: list[LogEvent] = [
        decode_event(
            {"t": "docs", "o": "I", "k": {"no": 1}, "r": {"owner_id": {"u": "a"}, "kind": "x"}}
        ),
        decode_event(
            {"t": "docs", "o": "U", "k": {"no": 3}, "ok": {"no": 2}, "r": {"owner_id": None}}
        ),
        decode_event({"t": "docs", "o": "D", "k": {"no": 4}}),
        decode_event({"t": "log", "o": "D", "k": {"line": "z"}}),
        decode_event({"t": "elsewhere", "o": "D", "k": {"no": 9}}),
    ]
    wanted = prefetch_keys(events, {"docs": docs, "log": whole}, {"docs", "log"})
    assert wanted == {"users": [{"u": "a"}], "docs": [{"no": 2}, {"no": 4}]}


# --- columns and addresses -----------------------------------------------------------------


def test_value_columns_leave_out_surrogate_ids_and_put_references_last() -> None:
    parent = _fk(("parent_id",), "nodes")
    other = _fk(("a", "b"), "pairs", ("x", "y"))
    spec = _spec("nodes", columns=("name", "note"), key=("name",), foreign_keys=(parent, other))
    assert value_columns(spec) == (["name", "note"], ["parent_id", "a", "b"])


def test_key_columns_follow_the_key_parts() -> None:
    wf = _fk(("workflow_id",), "workflows")
    spec = _spec("states", columns=("code",), key=("code",), foreign_keys=(wf,), key_fks=(wf,))
    assert key_columns(spec) == ["code", "workflow_id"]


def test_fk_values_pick_the_referenced_columns_from_the_address() -> None:
    fk = _fk(("b", "a"), "pairs", ("y", "x"))
    assert fk_values(fk, ("x", "y"), (1, 2)) == [2, 1]


rows_strategy = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers() | st.none(), max_size=3),
    max_size=10,
)


@given(rows_strategy, st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
def test_in_column_order_is_each_rows_values_none_where_missing(
    rows: list[dict[str, int | None]], columns: list[str]
) -> None:
    assert in_column_order(rows, columns) == [tuple(r.get(c) for c in columns) for r in rows]


# --- the tables --table pulls in -----------------------------------------------------------


def test_referenced_tables_follow_references_transitively_not_natural_ones() -> None:
    specs = [
        _spec(
            "docs", foreign_keys=(_fk(("user_id",), "users"), _fk(("k",), "kinds", natural=True))
        ),
        _spec("users", foreign_keys=(_fk(("dept_id",), "depts"),)),
        _spec("depts", foreign_keys=(_fk(("head_id",), "users"),)),  # a cycle
        _spec("kinds"),
    ]
    assert referenced_tables(specs, {"docs"}) == {"users", "depts"}
    assert referenced_tables(specs, {"docs", "users"}) == {"depts"}
    assert referenced_tables(specs, {"kinds", "unknown"}) == set()


@st.composite
def schemas(draw: st.DrawFn) -> list[TableSpec]:
    names = [f"t{i}" for i in range(draw(st.integers(1, 6)))]
    specs = []
    for name in names:
        refs = draw(st.lists(st.tuples(st.sampled_from(names), st.booleans()), max_size=3))
        fks = tuple(_fk((f"c{i}",), ref, natural=natural) for i, (ref, natural) in enumerate(refs))
        specs.append(_spec(name, foreign_keys=fks))
    return specs


@given(schemas(), st.data())
def test_referenced_tables_are_the_closure_outside_the_selection(
    specs: list[TableSpec], data: st.DataObject
) -> None:
    selected = data.draw(st.sets(st.sampled_from([s.name for s in specs]), min_size=1))
    found = referenced_tables(specs, selected)
    assert not found & selected
    edges = {
        s.name: {fk.ref_table for fk in s.foreign_keys if not fk.by_natural_key} for s in specs
    }
    reach = set(selected)
    while True:  # everything reachable by references, by a fixed point
        more = reach | {ref for name in reach for ref in edges[name]}
        if more == reach:
            break
        reach = more
    assert found == reach - selected


def test_show_key_is_sorted_and_keeps_non_ascii() -> None:
    assert show_key({"b": 1, "a": "Zoë"}) == '{"a": "Zoë", "b": 1}'
