"""Following one row through the log across renames (core/history.py).

`nkdaemon history` answers "what happened to this row?" for a key the user remembers,
which may be an old one: a row is followed by its source id within an epoch, by its
key across epochs, and a new row that takes a freed key is a different row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.history import HistoryTracker, RowHistory
from nkdaemon.core.log import ChangeEvent, Op

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Log:
    """Feeds a tracker one transaction per event, numbering them as the log would."""

    def __init__(self, table: str = "users") -> None:
        self.tracker = HistoryTracker(table)
        self.lsn = 0

    def add(
        self,
        op: Op,
        key: Any,
        *,
        old_key: Any = None,
        sid: Any = None,
        table: str = "users",
        row: Any = None,
    ) -> None:
        self.lsn += 1
        event = ChangeEvent(table=table, op=op, key=key, old_key=old_key, sid=sid, row=row)
        self.tracker.feed(self.lsn, T0 + timedelta(seconds=self.lsn), [event])

    def ops(self, selector: dict[str, str]) -> list[list[tuple[int, str]]]:
        return [[(e.lsn, e.op) for e in r.entries] for r in self.tracker.matching(selector)]


ALICE, ALICIA, BOB = {"username": "alice"}, {"username": "alicia"}, {"username": "bob"}


def test_a_row_is_found_by_its_old_key_and_its_new_key_with_its_whole_history() -> None:
    log = Log()
    log.add("I", ALICE, sid=1, row={"username": "alice", "age": 30})
    log.add("U", ALICIA, old_key=ALICE, sid=1, row={"username": "alicia", "age": 30})
    log.add("U", ALICIA, sid=1, row={"username": "alicia", "age": 31})
    whole = [[(1, "I"), (2, "U"), (3, "U")]]
    assert log.ops({"username": "alice"}) == whole
    assert log.ops({"username": "alicia"}) == whole
    (row,) = log.tracker.matching({"username": "alice"})
    assert row.keys() == [ALICE, ALICIA]
    assert row.entries[1].old_key == ALICE and row.entries[1].key == ALICIA
    assert row.entries[2].row == {"username": "alicia", "age": 31}
    assert row.entries[0].commit_time == T0 + timedelta(seconds=1)


def test_a_new_row_that_takes_a_freed_key_is_a_row_of_its_own() -> None:
    log = Log()
    log.add("I", ALICE, sid=1)
    log.add("U", ALICIA, old_key=ALICE, sid=1)
    log.add("I", ALICE, sid=2)
    log.add("U", ALICE, sid=2)
    assert log.ops({"username": "alice"}) == [[(1, "I"), (2, "U")], [(3, "I"), (4, "U")]]
    assert log.ops({"username": "alicia"}) == [[(1, "I"), (2, "U")]]


def test_a_key_inserted_again_after_a_delete_starts_a_new_row() -> None:
    log = Log()
    log.add("I", ALICE, sid=1)
    log.add("D", ALICE, sid=1)
    log.add("I", ALICE, sid=1)  # an id reused, as SQLite's rowid may be
    log.add("U", ALICE, sid=1)
    assert log.ops({"username": "alice"}) == [[(1, "I"), (2, "D")], [(3, "I"), (4, "U")]]


def test_a_row_whose_nested_key_changed_without_an_event_is_followed_by_its_id() -> None:
    """Renaming a workflow renames every state in it, with no event for the states."""
    log = Log("states")
    log.add("I", {"workflow_id": {"name": "review"}, "code": "draft"}, sid=7, table="states")
    log.add("U", {"name": "approval"}, old_key={"name": "review"}, sid=1, table="workflows")
    log.add("U", {"workflow_id": {"name": "approval"}, "code": "draft"}, sid=7, table="states")
    both = [[(1, "I"), (3, "U")]]
    assert log.ops({"workflow_id.name": "review", "code": "draft"}) == both
    assert log.ops({"workflow_id.name": "approval"}) == both


def test_across_epochs_a_row_is_followed_by_its_key_because_ids_start_over() -> None:
    log = Log()
    log.add("I", ALICE, sid=1)
    log.add("I", BOB, sid=2)
    log.tracker.new_epoch()
    log.add("U", ALICE, sid=2)  # the same row under a new id; id 2 was bob's
    assert log.ops({"username": "alice"}) == [[(1, "I"), (3, "U")]]
    assert log.ops({"username": "bob"}) == [[(2, "I")]]


def test_a_row_logged_without_id_is_followed_by_its_key() -> None:
    log = Log()
    log.add("I", ALICE)
    log.add("U", ALICIA, old_key=ALICE)
    log.add("D", ALICIA)
    assert log.ops({"username": "alice"}) == [[(1, "I"), (2, "U"), (3, "D")]]


def test_a_row_that_existed_before_capture_starts_with_its_first_change() -> None:
    log = Log()
    log.add("U", ALICE, sid=5)
    log.add("D", ALICE, sid=5)
    assert log.ops({"username": "alice"}) == [[(1, "U"), (2, "D")]]


def test_a_truncate_ends_the_history_of_every_live_row_and_only_those() -> None:
    log = Log()
    log.add("I", ALICE, sid=1)
    log.add("I", BOB, sid=2)
    log.add("D", BOB, sid=2)
    log.add("T", None)
    log.add("I", ALICE, sid=1)
    assert log.ops({"username": "alice"}) == [[(1, "I"), (4, "T")], [(5, "I")]]
    assert log.ops({"username": "bob"}) == [[(2, "I"), (3, "D")]]


def test_changes_of_other_tables_are_not_part_of_any_history() -> None:
    log = Log()
    log.add("I", ALICE, sid=1, table="groups")
    log.add("T", None, table="groups")
    assert log.ops({"username": "alice"}) == []


def test_a_selector_matches_values_as_text_and_parts_left_out_match_anything() -> None:
    log = Log("memberships")
    key = {"user_id": {"username": "alice"}, "since": 2026, "admin": True}
    log.add("I", key, sid=1, table="memberships")
    assert len(log.tracker.matching({"since": "2026", "admin": "true"})) == 1
    assert len(log.tracker.matching({"user_id.username": "alice"})) == 1
    assert log.tracker.matching({"user_id": "alice"}) == []  # a nested key is no value
    assert log.tracker.matching({"user_id.username": "bob"}) == []
    assert log.tracker.matching({"missing": "x"}) == []


def test_the_keys_of_a_row_are_each_listed_once_in_the_order_it_had_them() -> None:
    log = Log()
    log.add("I", ALICE, sid=1)
    log.add("U", ALICIA, old_key=ALICE, sid=1)
    log.add("U", ALICE, old_key=ALICIA, sid=1)
    (history,) = log.tracker.matching({"username": "alice"})
    assert history.keys() == [ALICE, ALICIA]
    assert RowHistory().keys() == []


def test_a_truncate_is_not_added_to_a_row_deleted_after_its_nested_key_changed() -> None:
    log = Log("states")
    log.add("I", {"workflow_id": {"name": "review"}, "code": "draft"}, sid=7, table="states")
    log.add("U", {"name": "approval"}, old_key={"name": "review"}, sid=1, table="workflows")
    log.add("D", {"workflow_id": {"name": "approval"}, "code": "draft"}, sid=7, table="states")
    log.add("T", None, table="states")
    assert log.ops({"code": "draft"}) == [[(1, "I"), (3, "D")]]


def test_in_a_new_epoch_a_row_is_never_continued_after_its_delete() -> None:
    log = Log("states")
    log.add("I", {"workflow_id": {"name": "review"}, "code": "draft"}, sid=7, table="states")
    log.add("U", {"name": "approval"}, old_key={"name": "review"}, sid=1, table="workflows")
    log.add("D", {"workflow_id": {"name": "approval"}, "code": "draft"}, sid=7, table="states")
    log.tracker.new_epoch()
    log.add("U", {"workflow_id": {"name": "review"}, "code": "draft"}, sid=3, table="states")
    assert log.ops({"code": "draft"}) == [[(1, "I"), (3, "D")], [(4, "U")]]


# --- generated: renames and deletes of a few rows, against a model --------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["insert", "rename", "update", "delete"]), st.integers(0, 3)),
    max_size=25,
)


@given(OPS, st.booleans())
def test_each_row_s_history_is_exactly_its_own_changes(
    steps: list[tuple[str, int]], with_ids: bool
) -> None:
    """Rows 0..3 under keys k0, k1, ...: each row's changes, whatever key it had, are one
    history, and the histories are in the order the rows first changed."""
    log = Log()
    live: dict[int, str] = {}  # row -> its key now
    incarnation: dict[int, int] = {}
    expected: dict[tuple[int, int], list[int]] = {}
    next_key = 0

    def add(op: Op, row: int, key: str, old_key: str | None = None) -> None:
        sid = (row, incarnation[row]) if with_ids else None
        log.add(op, {"k": key}, old_key=None if old_key is None else {"k": old_key}, sid=sid)
        expected.setdefault((row, incarnation[row]), []).append(log.lsn)

    for action, row in steps:
        if action == "insert" and row not in live:
            incarnation[row] = incarnation.get(row, -1) + 1
            live[row] = f"k{next_key}"
            next_key += 1
            add("I", row, live[row])
        elif action == "rename" and row in live:
            old, live[row] = live[row], f"k{next_key}"
            next_key += 1
            add("U", row, live[row], old)
        elif action == "update" and row in live:
            add("U", row, live[row])
        elif action == "delete" and row in live:
            add("D", row, live.pop(row))
    got = [[e.lsn for e in r.entries] for r in log.tracker.matching({})]
    assert got == sorted(expected.values())
