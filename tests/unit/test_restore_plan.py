"""The restore planner's pure decisions (core/restore_plan.py): which instant the user
meant, which snapshot restores it, and in which order the tables are written.

The snapshot choice is checked at its boundaries to the microsecond: a restore to the
instant of a snapshot uses it, one microsecond earlier uses the one before (or is refused),
and a time the repository does not cover is refused with a message that says what it does
cover.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.errors import UsageError
from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.restore_plan import (
    SnapshotChoice,
    choose_snapshot,
    insert_order,
    parse_time,
)

# --- parse_time ------------------------------------------------------------------------


def test_a_time_with_an_offset_is_converted_to_utc() -> None:
    when = parse_time("2026-11-26T09:30:00+01:00")
    assert when.moment == datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
    assert when.moment.utcoffset() == timedelta(0)
    assert when.assumed_utc is False


def test_a_time_with_z_means_utc_and_is_not_flagged_as_assumed() -> None:
    when = parse_time("2026-11-26T08:30:00Z")
    assert when.moment == datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
    assert when.assumed_utc is False


def test_a_time_without_zone_is_taken_as_utc_and_flagged_so_the_caller_warns() -> None:
    when = parse_time("2026-11-26T08:30:00")
    assert when.moment == datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
    assert when.assumed_utc is True


def test_a_space_between_date_and_time_and_surrounding_blanks_are_accepted() -> None:
    assert parse_time("  2026-11-26 08:30:00.000001+00:00\n").moment == datetime(
        2026, 11, 26, 8, 30, 0, 1, tzinfo=UTC
    )


def test_a_date_alone_means_its_midnight_utc() -> None:
    assert parse_time("2026-11-26") == parse_time("2026-11-26T00:00:00")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "yesterday", "2026-13-01T00:00:00", "2026-11-26T25:00", "26/11/2026 09:30"],
)
def test_text_that_is_no_iso_time_is_refused_with_the_text_and_an_example(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_time(text)
    assert repr(text) in caught.value.message
    assert caught.value.hint is not None and "2026-11-26T" in caught.value.hint


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_out_of_range_once_in_utc_is_refused_as_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text)


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
        ),
    ),
    st.sampled_from(["T", " "]),
)
def test_any_aware_iso_time_parses_to_the_same_instant_in_utc(
    moment: datetime, separator: str
) -> None:
    when = parse_time(moment.isoformat(sep=separator))
    assert when.moment == moment
    assert when.moment.tzinfo is UTC
    assert when.assumed_utc is False


@given(st.text(max_size=40))
def test_any_text_gives_an_aware_utc_time_or_a_usage_error(text: str) -> None:
    try:
        when = parse_time(text)
    except UsageError as error:
        assert repr(text) in error.message
    else:
        assert when.moment.utcoffset() == timedelta(0)


# --- choose_snapshot -------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


def _snap(name: str, hours: float, position: int = 0, imported: bool = False) -> SnapshotChoice:
    return SnapshotChoice(
        id=name,
        time=T0 + timedelta(hours=hours),
        position=position,
        installation="inst",
        imported=imported,
    )


A, B = _snap("a", 0, 10), _snap("b", 24, 20)
LAST_LOGGED = T0 + timedelta(hours=30)


def test_no_snapshot_at_all_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(UsageError) as caught:
        choose_snapshot([], T0, T0)
    assert "no snapshot" in caught.value.message
    assert caught.value.hint is not None and "nkdaemon snapshot" in caught.value.hint


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (A.time, "a"),  # exactly the first snapshot's instant
        (A.time + TICK, "a"),
        (B.time - TICK, "a"),  # just before the second: still the first
        (B.time, "b"),  # exactly the second
        (B.time + TICK, "b"),
        (LAST_LOGGED, "b"),  # the end of the log is still covered
    ],
)
def test_the_newest_snapshot_at_or_before_the_time_is_chosen(at: datetime, expected: str) -> None:
    assert choose_snapshot([B, A], at, LAST_LOGGED).id == expected


@pytest.mark.parametrize("at", [A.time - TICK, T0 - timedelta(days=365), LAST_LOGGED + TICK])
def test_a_time_outside_the_repository_is_refused_with_the_range_it_covers(at: datetime) -> None:
    with pytest.raises(UsageError) as caught:
        choose_snapshot([A, B], at, LAST_LOGGED)
    message = caught.value.message
    assert at.isoformat() in message
    assert A.time.isoformat() in message and LAST_LOGGED.isoformat() in message
    assert caught.value.hint is not None and "--latest" in caught.value.hint


def test_without_a_log_the_newest_snapshot_ends_what_is_covered() -> None:
    assert choose_snapshot([A, B], B.time, None).id == "b"
    with pytest.raises(UsageError):
        choose_snapshot([A, B], B.time + TICK, None)


def test_a_log_older_than_the_newest_snapshot_does_not_shrink_what_is_covered() -> None:
    assert choose_snapshot([A, B], B.time, A.time + TICK).id == "b"


def test_the_time_is_compared_as_an_instant_whatever_its_zone() -> None:
    at = (B.time - TICK).astimezone(timezone(timedelta(hours=-8)))
    assert choose_snapshot([A, B], at, LAST_LOGGED).id == "a"


def test_two_snapshots_at_the_same_instant_give_the_later_one_in_the_log() -> None:
    first, second = _snap("first", 24, 5), _snap("second", 24, 6)
    assert choose_snapshot([second, first, A], B.time, LAST_LOGGED).id == "second"


IMPORTED = _snap("imported", -48, 0, imported=True)


def test_an_imported_snapshot_restores_exactly_its_own_instant() -> None:
    assert choose_snapshot([IMPORTED, A, B], IMPORTED.time, LAST_LOGGED).id == "imported"


@pytest.mark.parametrize("at", [IMPORTED.time + TICK, A.time - TICK])
def test_a_time_between_an_import_and_captured_history_is_refused_naming_both(
    at: datetime,
) -> None:
    with pytest.raises(UsageError) as caught:
        choose_snapshot([IMPORTED, A, B], at, LAST_LOGGED)
    assert IMPORTED.time.isoformat() in caught.value.message
    assert A.time.isoformat() in caught.value.message
    assert caught.value.hint is not None
    assert f"exactly {IMPORTED.time.isoformat()}" in caught.value.hint


def test_captured_history_starts_at_the_first_captured_snapshot_after_an_import() -> None:
    assert choose_snapshot([IMPORTED, A, B], A.time, LAST_LOGGED).id == "a"


def test_only_an_import_and_a_later_time_is_refused_as_nothing_was_captured() -> None:
    with pytest.raises(UsageError) as caught:
        choose_snapshot([IMPORTED], IMPORTED.time + TICK, LAST_LOGGED)
    assert "no history was captured" in caught.value.message


def test_a_time_before_an_import_is_refused_as_outside_the_repository() -> None:
    with pytest.raises(UsageError) as caught:
        choose_snapshot([IMPORTED, A], IMPORTED.time - TICK, LAST_LOGGED)
    assert "covers" in caught.value.message


@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=6, unique=True),
    st.integers(-10, 1200),
)
def test_a_chosen_captured_snapshot_is_the_newest_at_or_before_the_time(
    minutes: list[int], at_minute: int
) -> None:
    snapshots = [_snap(f"s{m}", m / 60, m) for m in minutes]
    at, last = T0 + timedelta(minutes=at_minute), T0 + timedelta(minutes=1100)
    before = [m for m in minutes if m <= at_minute]
    if not before or at > last:
        with pytest.raises(UsageError):
            choose_snapshot(snapshots, at, last)
    else:
        assert choose_snapshot(snapshots, at, last).id == f"s{max(before)}"


# --- insert_order ----------------------------------------------------------------------


def _spec(name: str, refs: list[tuple[str, str, bool]], key_ref: str | None = None) -> TableSpec:
    """A table named by ``code`` (or by a reference to ``key_ref`` and ``code``), with one
    foreign key per (column, referenced table, nullable)."""
    columns = [
        ColumnSpec(name="id", logical_type="integer", nullable=False),
        ColumnSpec(name="code", logical_type="text", nullable=False),
    ]
    columns += [ColumnSpec(name=c, logical_type="integer", nullable=n) for c, _t, n in refs]
    fks = [ForeignKeySpec(columns=(c,), ref_table=t, ref_columns=("id",)) for c, t, _n in refs]
    parts = [KeyPart(name="code", column="code")]
    if key_ref is not None:
        key_fk = next(fk for fk in fks if fk.ref_table == key_ref)
        parts.insert(0, KeyPart(name=key_fk.part_name, foreign_key=key_fk))
    return make_table_spec(
        number=0,
        name=name,
        schema=None,
        columns=tuple(columns),
        primary_key=("id",),
        key_parts=tuple(parts),
        foreign_keys=tuple(fks),
    )


def _deferred_columns(specs: list[TableSpec]) -> dict[str, list[str]]:
    order = insert_order(specs)
    return {n: [fk.part_name for fk in fks] for n, fks in order.deferred.items()}


def test_parents_come_before_their_children_whatever_the_given_order() -> None:
    specs = [
        _spec("grandchild", [("child_id", "child", False)], key_ref="child"),
        _spec("child", [("parent_id", "parent", False)], key_ref="parent"),
        _spec("parent", []),
    ]
    order = insert_order(specs)
    assert order.tables == ("parent", "child", "grandchild")
    assert order.deferred == {}


def test_tables_that_do_not_depend_on_each_other_are_in_name_order() -> None:
    order = insert_order([_spec("b", []), _spec("c", [("a_id", "a", False)]), _spec("a", [])])
    assert order.tables == ("a", "b", "c")


def test_a_reference_to_a_table_not_restored_is_no_constraint() -> None:
    order = insert_order([_spec("child", [("other_id", "elsewhere", False)])])
    assert order.tables == ("child",)
    assert order.deferred == {}


def test_a_self_reference_is_deferred_and_puts_no_constraint_on_the_order() -> None:
    assert _deferred_columns([_spec("tree", [("parent_id", "tree", True)])]) == {
        "tree": ["parent_id"]
    }


def test_a_cycle_is_broken_at_its_nullable_reference_and_the_rest_points_backwards() -> None:
    specs = [
        _spec("author", [("best_book_id", "book", True)]),
        _spec("book", [("author_id", "author", False)]),
    ]
    order = insert_order(specs)
    assert order.tables == ("author", "book")
    assert _deferred_columns(specs) == {"author": ["best_book_id"]}


def test_the_nullable_reference_is_deferred_even_when_its_table_sorts_last() -> None:
    specs = [
        _spec("a", [("z_id", "z", False)]),
        _spec("z", [("a_id", "a", True)]),
    ]
    order = insert_order(specs)
    assert order.tables == ("z", "a")
    assert _deferred_columns(specs) == {"z": ["a_id"]}


def test_a_cycle_of_not_null_references_is_refused_naming_its_tables() -> None:
    specs = [
        _spec("x", [("y_id", "y", False)]),
        _spec("y", [("x_id", "x", False)]),
        _spec("free", []),
    ]
    with pytest.raises(UsageError) as caught:
        insert_order(specs)
    assert "x, y" in caught.value.message and "free" not in caught.value.message
    assert caught.value.hint is not None and "nullable" in caught.value.hint


def test_a_nullable_reference_in_a_natural_key_is_never_deferred() -> None:
    specs = [
        _spec("x", [("y_id", "y", True)], key_ref="y"),
        _spec("y", [("x_id", "x", False)]),
    ]
    with pytest.raises(UsageError):
        insert_order(specs)


@st.composite
def reference_graphs(draw: st.DrawFn) -> list[TableSpec]:
    names = [f"t{i}" for i in range(draw(st.integers(1, 6)))]
    specs = []
    for name in names:
        refs = draw(st.lists(st.tuples(st.sampled_from(names), st.booleans()), max_size=3))
        columns = [
            (f"r{i}_{target}", target, nullable) for i, (target, nullable) in enumerate(refs)
        ]
        key_ref = draw(st.sampled_from([None, *sorted({t for _c, t, _n in columns})]))
        specs.append(_spec(name, columns, key_ref=key_ref if key_ref != name else None))
    return specs


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return False


@settings(max_examples=60)
@given(reference_graphs())
def test_every_reference_not_deferred_points_to_a_table_written_before(
    specs: list[TableSpec],
) -> None:
    graph = {s.name: {fk.ref_table for fk in s.foreign_keys} for s in specs}
    try:
        order = insert_order(specs)
    except UsageError:
        # refused only when references that cannot be deferred form a cycle
        fixed = {
            s.name: {
                fk.ref_table
                for fk in s.foreign_keys
                if fk.ref_table != s.name
                and (
                    not all(s.column(c).nullable for c in fk.columns)
                    or fk.columns in {p.foreign_key.columns for p in s.key_parts if p.foreign_key}
                )
            }
            for s in specs
        }
        assert any(_reaches(fixed, t, s.name) for s in specs for t in fixed[s.name])
        return
    assert sorted(order.tables) == sorted(s.name for s in specs)
    placed = {n: i for i, n in enumerate(order.tables)}
    for spec in specs:
        deferred = order.deferred.get(spec.name, ())
        key_fks = [p.foreign_key for p in spec.key_parts if p.foreign_key is not None]
        for fk in spec.foreign_keys:
            if fk in deferred:
                assert fk not in key_fks
                assert fk.ref_table == spec.name or (
                    spec.column(fk.columns[0]).nullable and _reaches(graph, fk.ref_table, spec.name)
                )
            else:
                assert placed[fk.ref_table] < placed[spec.name], (spec.name, fk)
