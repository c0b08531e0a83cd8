"""Restore validation in memory that does not grow with the table (issue 15): the log after
a snapshot folded over the rows it touched (core/overlay.py) must give exactly the state a
model of the application holds, renames followed by the rows that refer to them; and the
partitioned comparison (core/partition_diff.py) must name exactly the row a damaged target
got wrong, whether every partition is read again (1 partition) or only the one that
differs, whatever the number of rows it may hold at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.digest import DigestFold, digest_of
from nkdaemon.core.fold import ReplayError
from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.log import ChangeEvent
from nkdaemon.core.overlay import LogOverlay
from nkdaemon.core.partition_diff import compare_partitioned
from nkdaemon.core.table_diff import key_text

_USER_FK = ForeignKeySpec(columns=("user",), ref_table="users", ref_columns=("id",))


def _spec(name: str, number: int, columns: tuple[str, ...], **fields: Any) -> TableSpec:
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(
            ColumnSpec(name=c, logical_type="text", nullable=True) for c in ("id", *columns)
        ),
        primary_key=("id",),
        **fields,
    )


USERS = _spec(
    "users",
    1,
    ("name", "age"),
    key_parts=(KeyPart(name="name", column="name"),),
    foreign_keys=(),
    referenced=True,
)
# a key that holds a reference: renaming the user renames every tag of theirs
TAGS = _spec(
    "tags",
    2,
    ("label", "user", "n"),
    key_parts=(KeyPart(name="label", column="label"), KeyPart(name="user", foreign_key=_USER_FK)),
    foreign_keys=(_USER_FK,),
)
NOTES = _spec(
    "notes", 3, ("user", "body"), key_parts=(), foreign_keys=(_USER_FK,), full_row_identity=True
)
SPECS = (USERS, TAGS, NOTES)


@dataclass
class App:
    """The application's rows by surrogate id; renders them as the log names them."""

    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    tags: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[tuple[int | None, str]] = field(default_factory=list)
    next_id: int = 1

    def user_key(self, uid: int | None) -> dict[str, Any] | None:
        return None if uid is None else {"name": self.users[uid]["name"]}

    def tag(self, tid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        t = self.tags[tid]
        user = self.user_key(t["uid"])
        return {"label": t["label"], "user": user}, {"label": t["label"], "user": user, "n": t["n"]}

    def note(self, note: tuple[int | None, str]) -> dict[str, Any]:
        return {"user": self.user_key(note[0]), "body": note[1]}

    def state(self) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
        return {
            "users": [({"name": u["name"]}, dict(u)) for u in self.users.values()],
            "tags": [self.tag(t) for t in self.tags],
            "notes": [(self.note(n), self.note(n)) for n in self.notes],
        }


NAMES = [f"u{n}" for n in range(6)]


def _step(app: App, data: st.DataObject) -> ChangeEvent | None:
    """One change the application makes, as the log records it (None: nothing to do)."""
    kind = data.draw(st.sampled_from(["user+", "user~", "user-", "tag+", "tag~", "tag-", "note"]))
    free = [n for n in NAMES if n not in {u["name"] for u in app.users.values()}]
    if kind == "user+" and free:
        uid, app.next_id = app.next_id, app.next_id + 1
        app.users[uid] = {"name": data.draw(st.sampled_from(free)), "age": 0}
        return ChangeEvent(table="users", op="I", key=app.user_key(uid), row=dict(app.users[uid]))
    if not app.users:
        return None
    uid = data.draw(st.sampled_from(sorted(app.users)))
    if kind == "user~":
        old = app.user_key(uid)
        if free and data.draw(st.booleans()):
            app.users[uid]["name"] = data.draw(st.sampled_from(free))
        app.users[uid]["age"] += 1
        new = app.user_key(uid)
        return ChangeEvent(
            table="users",
            op="U",
            key=new,
            old_key=old if old != new else None,
            row=dict(app.users[uid]),
        )
    referenced = {t["uid"] for t in app.tags.values()} | {n[0] for n in app.notes}
    if kind == "user-" and uid not in referenced:
        key = app.user_key(uid)
        del app.users[uid]
        return ChangeEvent(table="users", op="D", key=key)
    labels = {(t["uid"], t["label"]) for t in app.tags.values()}
    label = data.draw(st.sampled_from(["a", "b", "c"]))
    if kind == "tag+" and (uid, label) not in labels:
        tid, app.next_id = app.next_id, app.next_id + 1
        app.tags[tid] = {"uid": uid, "label": label, "n": 0}
        key, row = app.tag(tid)
        return ChangeEvent(table="tags", op="I", key=key, row=row)
    if kind in ("tag~", "tag-") and app.tags:
        tid = data.draw(st.sampled_from(sorted(app.tags)))
        old, _row = app.tag(tid)
        if kind == "tag-":
            del app.tags[tid]
            return ChangeEvent(table="tags", op="D", key=old)
        if (uid, label) not in labels:  # moved to another user, or relabelled
            app.tags[tid] |= {"uid": uid, "label": label}
        app.tags[tid]["n"] += 1
        key, row = app.tag(tid)
        return ChangeEvent(
            table="tags", op="U", key=key, old_key=old if old != key else None, row=row
        )
    if kind == "note":
        if app.notes and data.draw(st.booleans()):
            gone = app.notes.pop(data.draw(st.integers(0, len(app.notes) - 1)))
            return ChangeEvent(table="notes", op="D", key=app.note(gone))
        note = (data.draw(st.sampled_from([uid, None])), data.draw(st.sampled_from("xy")))
        app.notes.append(note)
        return ChangeEvent(table="notes", op="I", key=app.note(note), row=app.note(note))
    return None


def _canonical(pairs: Any) -> list[str]:
    return sorted(key_text([k, r]) for k, r in pairs)


@given(data=st.data())
def test_the_overlay_over_a_snapshot_gives_the_applications_state(data: st.DataObject) -> None:
    app = App()
    for _ in range(data.draw(st.integers(0, 20))):
        _step(app, data)
    snapshot = app.state()
    overlay = LogOverlay(SPECS)
    for lsn in range(data.draw(st.integers(0, 6))):
        events = [_step(app, data) for _ in range(data.draw(st.integers(1, 5)))]
        overlay.apply_transaction([e for e in events if e is not None], where=f"tx {lsn}: ")
    truth = app.state()
    for spec in SPECS:
        got = overlay.expected_rows(spec.name, iter(snapshot[spec.name]))
        assert _canonical(got) == _canonical(truth[spec.name]), spec.name


def test_a_rename_reaches_the_untouched_snapshot_rows_that_refer_to_it() -> None:
    ann, bea = {"name": "ann"}, {"name": "bea"}
    snapshot_tags = [({"label": "a", "user": ann}, {"label": "a", "user": ann, "n": 1})]
    overlay = LogOverlay(SPECS)
    overlay.apply_transaction(
        [ChangeEvent(table="users", op="U", key=bea, old_key=ann, row={"name": "bea", "age": 1})]
    )
    rows = list(overlay.expected_rows("tags", iter(snapshot_tags)))
    assert rows == [({"label": "a", "user": bea}, {"label": "a", "user": bea, "n": 1})]
    assert overlay.touched("tags") == 0  # the tag is not held: it is rendered as it passes


@pytest.mark.parametrize(
    ("event", "snapshot", "message"),
    [
        (
            ChangeEvent(table="users", op="U", key={"name": "x"}, row={"name": "x", "age": 1}),
            [],
            'tx 7: update of users {"name":"x"}, which does not exist',
        ),
        (
            ChangeEvent(table="users", op="D", key={"name": "x"}),
            [({"name": "y"}, {"name": "y", "age": 0})],
            'tx 7: delete of users {"name":"x"}, which does not exist',
        ),
        (
            ChangeEvent(table="users", op="I", key={"name": "x"}, row={"name": "x", "age": 1}),
            [({"name": "x"}, {"name": "x", "age": 0})],
            'tx 7: insert of users {"name":"x"}, which exists',
        ),
    ],
)
def test_a_log_that_contradicts_the_snapshot_is_refused_when_the_snapshot_passes(
    event: ChangeEvent, snapshot: list[Any], message: str
) -> None:
    overlay = LogOverlay(SPECS)
    overlay.apply_transaction([event], where="tx 7: ")
    with pytest.raises(ReplayError, match=message.replace("{", r"\{").replace("}", r"\}")):
        list(overlay.expected_rows("users", iter(snapshot)))


# --- the partitioned comparison: damage one row, expect exactly that row named ---------------


def _table(data: st.DataObject, keyless: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    ids = data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True))
    rows = []
    for i in ids:
        row = {"id": i, "v": data.draw(st.text(max_size=3)), "ref": {"name": f"u{i % 3}"}}
        rows.append((row if keyless else {"id": i}, row))
    if keyless and data.draw(st.booleans()):  # a multiset: the same row twice
        rows.append(rows[0])
    return rows


@given(
    data=st.data(),
    keyless=st.booleans(),
    partitions=st.sampled_from([1, 2, 4096]),
    held_rows=st.sampled_from([1, 1_000_000]),
    damage=st.sampled_from(["value", "missing", "extra", "reference"]),
)
def test_the_partitioned_comparison_names_exactly_the_damaged_row(
    data: st.DataObject, keyless: bool, partitions: int, held_rows: int, damage: str
) -> None:
    expected = _table(data, keyless)
    actual = list(expected)
    victim = data.draw(st.integers(0, len(actual) - 1))
    key, row = actual[victim]
    if damage == "missing":
        del actual[victim]
    elif damage == "extra":
        row = {"id": -1, "v": "", "ref": None}
        key = row if keyless else {"id": -1}
        actual.insert(data.draw(st.integers(0, len(actual))), (key, row))
    else:
        row = dict(row) | (
            {"v": row["v"] + "!"} if damage == "value" else {"ref": {"name": "elsewhere"}}
        )
        actual[victim] = (row if keyless else key, row)
    witness = DigestFold()
    diff = compare_partitioned(
        "t",
        keyless=keyless,
        expected=lambda: iter(expected),
        actual=lambda: iter(actual),
        partitions=partitions,
        held_rows=held_rows,
        witness=witness,
    )
    assert witness.result() == digest_of(actual)
    assert (diff.expected, diff.actual) == (len(expected), len(actual))
    named = {
        "missing": diff.missing,
        "unexpected": diff.unexpected,
        "differing": diff.differing,
    }
    if damage == "missing":
        wanted = {"missing": [key_text(expected[victim][0])]}
    elif damage == "extra":
        wanted = {"unexpected": [key_text(key)]}
    elif keyless:  # a changed whole row is another row: one missing, one unexpected
        wanted = {"missing": [key_text(expected[victim][1])], "unexpected": [key_text(row)]}
    else:
        wanted = {"differing": [key_text(key)]}
    assert {k: v for k, v in named.items() if v} == wanted
    assert not diff.ok


@given(data=st.data(), keyless=st.booleans(), partitions=st.sampled_from([1, 7, 4096]))
def test_equal_tables_in_any_order_pass_in_one_read_of_each_side(
    data: st.DataObject, keyless: bool, partitions: int
) -> None:
    expected = _table(data, keyless)
    actual = data.draw(st.permutations(expected))
    reads = {"expected": 0, "actual": 0}

    def read(side: str, rows: list[Any]) -> Any:
        reads[side] += 1
        return iter(rows)

    diff = compare_partitioned(
        "t",
        keyless=keyless,
        expected=lambda: read("expected", expected),
        actual=lambda: read("actual", list(actual)),
        partitions=partitions,
    )
    assert diff.ok, diff.summary()
    assert reads == {"expected": 1, "actual": 1}


def test_a_reference_to_a_row_the_target_lacks_is_named_as_such() -> None:
    expected = [({"id": 1}, {"id": 1, "ref": {"name": "ann"}})]
    actual = [({"id": 1}, {"id": 1, "ref": {"$missing": [9]}})]
    diff = compare_partitioned(
        "t", keyless=False, expected=lambda: iter(expected), actual=lambda: iter(actual)
    )
    assert diff.differing == ['{"id":1} (refers to a row that does not exist: {"$missing":[9]})']


ITEMS = _spec(
    "items",
    4,
    ("sku", "user"),
    key_parts=(KeyPart(name="sku", column="sku"),),
    foreign_keys=(_USER_FK,),
)


@pytest.mark.parametrize("table", ["items", "notes"])
def test_a_reference_to_a_row_inserted_later_in_the_transaction_is_that_row(table: str) -> None:
    """One INSERT of a child before its parent (PostgreSQL checks the foreign key at the
    end of the statement; statement capture logs the rows in that order): the reference
    names the row the transaction inserts, not a snapshot row that must exist."""
    zed = {"name": "zed"}
    child = (
        ChangeEvent(table="items", op="I", key={"sku": "a"}, row={"sku": "a", "user": zed})
        if table == "items"
        else ChangeEvent(
            table="notes", op="I", key={"user": zed, "body": "hi"}, row={"user": zed, "body": "hi"}
        )
    )
    parent = ChangeEvent(table="users", op="I", key=zed, row={"name": "zed", "age": 3})
    overlay = LogOverlay((*SPECS, ITEMS))
    overlay.apply_transaction([child, parent], where="tx 2: ")
    assert list(overlay.expected_rows("users", iter([]))) == [(zed, {"name": "zed", "age": 3})]
    assert [row for _key, row in overlay.expected_rows(table, iter([]))] == [child.row]


def test_a_later_change_of_the_row_in_the_transaction_is_what_stays() -> None:
    """A row first written with a reference settled only at the end of the transaction,
    then changed again in it: the end of the transaction keeps the last change."""
    ann, zed = {"name": "ann"}, {"name": "zed"}
    overlay = LogOverlay((*SPECS, ITEMS))
    overlay.apply_transaction(
        [
            ChangeEvent(table="items", op="I", key={"sku": "a"}, row={"sku": "a", "user": zed}),
            ChangeEvent(table="items", op="U", key={"sku": "a"}, row={"sku": "a", "user": ann}),
            ChangeEvent(table="users", op="I", key=zed, row={"name": "zed", "age": 3}),
        ],
        where="tx 2: ",
    )
    snapshot_users = [(ann, {"name": "ann", "age": 1})]
    assert len(list(overlay.expected_rows("users", iter(snapshot_users)))) == 2
    assert list(overlay.expected_rows("items", iter([]))) == [
        ({"sku": "a"}, {"sku": "a", "user": ann})
    ]


def test_the_overlay_holds_about_the_size_of_the_rows_it_touched() -> None:
    """Memory per touched row stays small: orjson's bytes keep the 4 KiB buffer they were
    written in, so the overlay's keys must be copies (1.56 GB for 400,000 keys before)."""
    import tracemalloc

    rows = 20_000
    overlay = LogOverlay(SPECS)
    events = [
        ChangeEvent(table="users", op="U", key={"name": f"u{i}"}, row={"name": f"u{i}", "age": i})
        for i in range(rows)
    ]
    tracemalloc.start()
    try:
        overlay.apply_transaction(events)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < rows * 1_500, f"{held / rows:.0f} bytes per touched row"


def test_a_reference_to_a_snapshot_row_renamed_later_follows_it_not_its_old_name() -> None:
    """The reference was made while the snapshot row had the name; the same transaction
    then renamed it and gave the name to a new row: the reference stays with the first."""
    ann, bea = {"name": "ann"}, {"name": "bea"}
    overlay = LogOverlay((*SPECS, ITEMS))
    overlay.apply_transaction(
        [
            ChangeEvent(table="items", op="I", key={"sku": "a"}, row={"sku": "a", "user": ann}),
            ChangeEvent(table="users", op="U", key=bea, old_key=ann, row={"name": "bea", "age": 1}),
            ChangeEvent(table="users", op="I", key=ann, row={"name": "ann", "age": 9}),
        ],
        where="tx 2: ",
    )
    assert len(list(overlay.expected_rows("users", iter([(ann, {"name": "ann", "age": 0})])))) == 2
    assert list(overlay.expected_rows("items", iter([]))) == [
        ({"sku": "a"}, {"sku": "a", "user": bea})
    ]
