"""SQLite capture follows schema changes (issue 12): real database files, the real drain.

Each test makes the application's change with plain sqlite3 (as a migration tool would),
drains, and reads the log back: the definitions it records, the events, and the rows the
log replays to, which must equal the table's rows now.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nkdaemon.core.errors import CaptureError, NkdError, SourceError
from nkdaemon.core.key_rules import capture_selector
from nkdaemon.core.keys import replace_spec
from nkdaemon.core.log import ChangeEvent, Definition
from nkdaemon.core.ownership import CaptureClaim
from nkdaemon.core.replay import natural_state
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.drain import DrainResult
from nkdaemon.services.install import load_registry
from tests.helpers import ROOT, do_drain, do_install, logged, run_cli, settings_for, truth

ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, qty INTEGER)"


def _db(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "app.db"
    return f"sqlite:///{path}", path


def _run(path: Path, *statements: str) -> None:
    """Statements in one transaction of an application's own connection."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


Drain = Callable[[Settings], DrainResult]


@pytest.fixture
def drain() -> Iterator[Drain]:
    """Passes of one drainer per repository, kept open between calls as the daemon keeps
    it (it remembers the tables it has seen, so a table dropped since stays readable)."""
    sessions: dict[Path, tuple[Session, Any]] = {}

    def one_pass(settings: Settings) -> DrainResult:
        path = settings.repository.path
        if path not in sessions:
            session = Session(settings, writer=True)
            try:
                sessions[path] = (session, session.drainer())
            except BaseException:
                session.close()
                raise
        return sessions[path][1].drain_once()  # type: ignore[no-any-return]

    yield one_pass
    for session, _ in sessions.values():
        session.close()


def _captured(tmp_path: Path, *schema: str, extra: str = "") -> tuple[Settings, Path]:
    """Tables created empty, capture installed: every row reaches the log as an event."""
    url, path = _db(tmp_path)
    _run(path, *(schema or (ITEMS,)))
    settings = settings_for(tmp_path, url, extra)
    do_install(settings)
    return settings, path


def _replayed(settings: Settings) -> dict[str, dict[str, Any]]:
    """The whole log applied to empty tables of today's shapes (dropped tables left out)."""
    with Session(settings, writer=False) as s:
        specs = dict(load_registry(s.engine, settings, s.source).tables)
    fold = natural_state(specs, {n: [] for n in specs})
    for tx in logged(settings):
        fold.apply_transaction(tx.events, where=f"tx {tx.lsn}: ")
    return fold.comparable()


def _assert_log_matches_source(settings: Settings) -> None:
    assert _replayed(settings) == truth(settings).comparable()


def _definitions(settings: Settings, table: str) -> list[Definition]:
    return [d for tx in logged(settings) for d in tx.definitions if d.table == table]


def _events(settings: Settings, table: str) -> list[ChangeEvent]:
    return [e for tx in logged(settings) for e in tx.events if e.table == table]


def _columns(definition: Definition) -> list[str]:
    assert definition.definition is not None
    return [c["name"] for c in definition.definition["columns"]]


def _capture_objects(path: Path) -> list[tuple[str, str]]:
    return _query(
        path,
        "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_nkd\\_%' ESCAPE '\\' "
        "ORDER BY type, name",
    )


# --- columns ------------------------------------------------------------------------------


def test_an_added_column_with_a_default_reaches_the_log_with_its_values(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)")
    drain(settings)
    _run(path, "ALTER TABLE items ADD COLUMN color TEXT NOT NULL DEFAULT 'grey'")
    _run(path, "INSERT INTO items (code, qty, color) VALUES ('c', 3, 'red')")
    _run(path, "UPDATE items SET color = 'blue' WHERE code = 'b'")
    drain(settings)

    (altered,) = _definitions(settings, "items")[-1:]
    assert altered.change == "altered" and altered.command == "detected"
    assert _columns(altered) == ["id", "code", "qty", "color"]
    replayed = _replayed(settings)["items"]
    assert {k: v["color"] for k, v in replayed.items()} == {
        '{"code":"a"}': "grey",
        '{"code":"b"}': "blue",
        '{"code":"c"}': "red",
    }
    _assert_log_matches_source(settings)

    _run(path, "UPDATE items SET color = 'green' WHERE code = 'a'")  # captured from now on
    drain(settings)
    last = _events(settings, "items")[-1]
    assert (last.op, last.key, last.row["color"]) == ("U", {"code": "a"}, "green")
    # Drained: the layouts and schema changes that queued changes needed are gone.
    assert _query(path, "SELECT number, columns FROM _nkd_layouts") == [
        (1, '["id","code","qty","color"]')
    ]
    assert _query(path, "SELECT count(*) FROM _nkd_schema_changes") == [(0,)]


def test_a_write_in_the_transaction_of_the_alter_is_not_lost(tmp_path: Path, drain: Drain) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    _run(
        path,
        "ALTER TABLE items ADD COLUMN color TEXT",
        "INSERT INTO items (code, qty, color) VALUES ('b', 2, 'red')",
        "UPDATE items SET color = 'blue', qty = 5 WHERE code = 'a'",
    )
    drain(settings)
    replayed = _replayed(settings)["items"]
    assert replayed['{"code":"a"}']["color"] == "blue"
    assert replayed['{"code":"b"}']["color"] == "red"
    _assert_log_matches_source(settings)


def test_a_renamed_column_is_logged_as_a_drop_and_an_add_with_a_baseline(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    drain(settings)
    _run(path, "ALTER TABLE items RENAME COLUMN qty TO amount")
    _run(path, "UPDATE items SET amount = 7 WHERE code = 'a'")
    drain(settings)
    # The write before the pass went through the old triggers (SQLite renamed the column
    # in them): its value is logged under the name the column had.
    assert ("U", {"code": "a", "qty": 7}) in [(e.op, e.row) for e in _events(settings, "items")]
    altered = _definitions(settings, "items")[-1]
    assert _columns(altered) == ["id", "code", "amount"]
    assert altered.renamed == ()  # SQLite vouches for no rename
    assert _replayed(settings)["items"] == {'{"code":"a"}': {"code": "a", "amount": 7}}
    _assert_log_matches_source(settings)
    _run(path, "UPDATE items SET amount = 8 WHERE code = 'a'")
    drain(settings)
    assert _events(settings, "items")[-1].row == {"code": "a", "amount": 8}


def test_sqlites_own_drop_column_is_refused_while_capture_names_the_column(
    tmp_path: Path, drain: Drain
) -> None:
    """Documented: SQLite refuses ALTER TABLE DROP COLUMN on a column a trigger names; the
    data stays as it was. The rebuild recipe is the way (next test)."""
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    with pytest.raises(sqlite3.OperationalError, match=r"error in trigger _nkd_1_.*qty"):
        _run(path, "ALTER TABLE items DROP COLUMN qty")
    assert _query(path, "SELECT code, qty FROM items") == [("a", 1)]
    drain(settings)
    assert _definitions(settings, "items") == []
    _assert_log_matches_source(settings)


def _rebuild(path: Path, create: str, copy_columns: str, *also: str) -> None:
    """SQLite's recipe for a change ALTER TABLE cannot make: new table, copy, swap."""
    _run(
        path,
        create.replace("CREATE TABLE items", "CREATE TABLE items_new"),
        f"INSERT INTO items_new SELECT {copy_columns} FROM items",
        "DROP TABLE items",
        "ALTER TABLE items_new RENAME TO items",
        *also,
    )


def test_a_column_dropped_by_rebuilding_the_table_is_recaptured(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)")
    _run(path, "UPDATE items SET qty = 5 WHERE code = 'a'")  # queued under the old layout
    _rebuild(
        path,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE)",
        "id, code",
        "INSERT INTO items (code) VALUES ('c')",  # no trigger yet: the baseline has it
    )
    drain(settings)

    events = _events(settings, "items")
    assert any(e.op == "U" and e.row == {"code": "a", "qty": 5} for e in events)
    recaptured = _definitions(settings, "items")[-1]
    assert (recaptured.change, _columns(recaptured)) == ("recaptured", ["id", "code"])
    assert _replayed(settings)["items"] == {
        '{"code":"a"}': {"code": "a"},
        '{"code":"b"}': {"code": "b"},
        '{"code":"c"}': {"code": "c"},
    }
    _run(path, "INSERT INTO items (code) VALUES ('d')")
    drain(settings)
    assert _events(settings, "items")[-1].row == {"code": "d"}
    _assert_log_matches_source(settings)


def test_a_type_changed_by_rebuilding_is_logged_in_the_new_type(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    drain(settings)
    _rebuild(
        path,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, qty TEXT)",
        "id, code, printf('%03d', qty)",
    )
    _run(path, "INSERT INTO items (code, qty) VALUES ('b', '002')")
    drain(settings)
    recaptured = _definitions(settings, "items")[-1]
    assert recaptured.definition is not None
    qty = next(c for c in recaptured.definition["columns"] if c["name"] == "qty")
    assert qty["type"] == "text"
    assert _replayed(settings)["items"] == {
        '{"code":"a"}': {"code": "a", "qty": "001"},
        '{"code":"b"}': {"code": "b", "qty": "002"},
    }
    _assert_log_matches_source(settings)


def test_changes_queued_before_a_change_decode_with_the_columns_they_had(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    _run(path, "UPDATE items SET qty = 2 WHERE code = 'a'")
    _run(path, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'x'")
    with Session(settings, writer=True) as s:
        queued = s.source.follow_schema(capture_selector(("*",), ()))
        assert [(c.kind, c.columns) for c in queued] == [("altered", ("id", "code", "qty", "note"))]
    _run(path, "UPDATE items SET qty = 3, note = 'y' WHERE code = 'a'")
    _run(path, "ALTER TABLE items RENAME COLUMN qty TO amount")  # another layout on top
    drain(settings)
    rows = [(e.op, e.row) for e in _events(settings, "items")]
    assert rows[:2] == [("I", {"code": "a", "qty": 1}), ("U", {"code": "a", "qty": 2})]
    assert ("U", {"code": "a", "qty": 3, "note": "y"}) in rows
    _assert_log_matches_source(settings)


# --- tables -------------------------------------------------------------------------------


def test_a_new_table_referencing_a_captured_one_is_captured_with_its_rows(
    tmp_path: Path, drain: Drain
) -> None:
    # items is referenced already (by tags), so the drain's key index knows its rows.
    settings, path = _captured(
        tmp_path,
        ITEMS,
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items, "
        "tag TEXT NOT NULL, UNIQUE (item_id, tag))",
    )
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)")
    drain(settings)
    _run(
        path,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, no TEXT NOT NULL UNIQUE, "
        "item_id INTEGER NOT NULL REFERENCES items (id))",
        "INSERT INTO orders (no, item_id) VALUES ('o1', 1)",
    )
    drain(settings)
    (created,) = _definitions(settings, "orders")
    assert (created.change, _columns(created)) == ("created", ["id", "no", "item_id"])
    assert _events(settings, "orders")[-1].row == {"no": "o1", "item_id": {"code": "a"}}
    _run(path, "INSERT INTO orders (no, item_id) VALUES ('o2', 2)")
    drain(settings)
    assert _events(settings, "orders")[-1].row == {"no": "o2", "item_id": {"code": "b"}}
    _assert_log_matches_source(settings)
    history = run_cli(tmp_path / "nkdaemon.toml", "history", "orders", "no=o1")
    assert history.exit_code == 0, history.output
    assert 'insert   {"no": "o1", "item_id": {"code": "a"}}' in history.output


def test_a_new_table_referencing_an_unreferenced_captured_table(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    drain(settings)
    _run(
        path,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, no TEXT NOT NULL UNIQUE, "
        "item_id INTEGER NOT NULL REFERENCES items (id))",
        "INSERT INTO orders (no, item_id) VALUES ('o1', 1)",
    )
    drain(settings)
    assert _events(settings, "orders")[-1].row == {"no": "o1", "item_id": {"code": "a"}}
    _assert_log_matches_source(settings)


def test_a_dropped_table_is_logged_after_its_queued_changes(tmp_path: Path, drain: Drain) -> None:
    settings, path = _captured(
        tmp_path, ITEMS, "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE)"
    )
    number = dict(_query(path, "SELECT table_name, number FROM _nkd_tables"))["notes"]
    drain(settings)  # the daemon runs: it knows the table before it is dropped
    _run(path, "INSERT INTO notes (title) VALUES ('n1'), ('n2')")
    _run(path, "DELETE FROM notes WHERE title = 'n1'")
    _run(path, "DROP TABLE notes")
    drain(settings)
    assert [(e.op, e.key) for e in _events(settings, "notes")] == [
        ("I", {"title": "n1"}),
        ("I", {"title": "n2"}),
        ("D", {"title": "n1"}),
    ]
    (dropped,) = _definitions(settings, "notes")
    assert (dropped.change, dropped.definition) == ("dropped", None)
    # Drained: the retired table's shadow is gone, its number stays retired.
    assert ("table", f"_nkd_rows_{number}") not in _capture_objects(path)
    assert _query(path, "SELECT number, table_name FROM _nkd_retired") == [(number, "notes")]
    assert _query(path, "SELECT count(*) FROM _nkd_changes") == [(0,)]


def test_a_renamed_table_is_a_drop_and_a_new_table_under_a_new_number(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    drain(settings)  # the daemon runs: it knows the table before it is renamed
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    _run(path, "ALTER TABLE items RENAME TO goods")
    _run(path, "UPDATE goods SET qty = 2")  # the old triggers follow the rename
    drain(settings)
    assert [d.change for d in _definitions(settings, "items")] == ["dropped"]
    assert [d.change for d in _definitions(settings, "goods")] == ["created"]
    assert dict(_query(path, "SELECT table_name, number FROM _nkd_tables")) == {"goods": 2}
    triggers = [name for kind, name in _capture_objects(path) if kind == "trigger"]
    assert triggers == ["_nkd_2_D", "_nkd_2_I", "_nkd_2_U"]
    _run(path, "UPDATE goods SET qty = 3")
    drain(settings)
    assert _events(settings, "goods")[-1].row == {"code": "a", "qty": 3}
    _assert_log_matches_source(settings)


def test_table_numbers_are_never_given_twice(tmp_path: Path, drain: Drain) -> None:
    settings, path = _captured(tmp_path)
    numbers: list[int] = []
    for step in range(3):
        _run(path, "CREATE TABLE extra (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
        _run(path, f"INSERT INTO extra (k) VALUES ('{step}')")
        drain(settings)
        numbers.append(dict(_query(path, "SELECT table_name, number FROM _nkd_tables"))["extra"])
        _run(path, "DROP TABLE extra")
        drain(settings)
    assert numbers == [2, 3, 4]
    assert sorted(r[0] for r in _query(path, "SELECT number FROM _nkd_retired")) == [2, 3, 4]
    assert [d.change for d in _definitions(settings, "extra")] == ["created", "dropped"] * 3


def test_install_after_a_followed_table_was_dropped_gives_a_fresh_number(
    tmp_path: Path,
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "CREATE TABLE extra (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
    do_drain(settings)
    _run(path, "DROP TABLE extra", "CREATE TABLE other (id INTEGER PRIMARY KEY, k TEXT UNIQUE)")
    _run(path, "DROP TABLE other")
    do_drain(settings)
    _run(path, "CREATE TABLE later (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
    do_install(settings)
    assert dict(_query(path, "SELECT table_name, number FROM _nkd_tables"))["later"] > 2


def test_the_source_refuses_to_install_a_table_under_a_retired_number(
    tmp_path: Path,
) -> None:
    """A guard under install's own numbering: should a registry ever give a retired number
    again, the source refuses, changing nothing, rather than mix two tables' histories."""
    settings, path = _captured(tmp_path)
    _run(path, "CREATE TABLE extra (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
    do_drain(settings)
    _run(
        path,
        "DROP TABLE extra",
        "CREATE TABLE later (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)",
    )
    do_drain(settings)
    before = _query(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with Session(settings, writer=True) as s:
        items = load_registry(s.engine, settings, s.source).by_name("items")
        later = replace_spec(items, number=2, name="later")
        claim = CaptureClaim(repository="r", host="h", seen=s.source.installation_id(), new=False)
        with pytest.raises(SourceError, match=r"would be given again: later \(2\)"):
            s.source.install({1: items, 2: later}, lambda point, read: None, claim)
    assert _query(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == before


# --- what capture cannot follow, and what it leaves alone ------------------------------------


def test_a_dropped_natural_key_stops_the_drain_and_keeps_the_queue(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    drain(settings)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    queued = _query(path, "SELECT seq FROM _nkd_changes")
    _rebuild(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER)", "id, qty")
    for _ in range(2):  # every pass says so, none deletes anything
        with pytest.raises(CaptureError, match="items") as stopped:
            drain(settings)
        assert stopped.value.hint
        remaining = _query(path, "SELECT seq FROM _nkd_changes")
        assert set(queued) <= set(remaining)
        with Session(settings, writer=False) as s:  # what `status` reports, from the first pass
            assert "items" in (s.state.get_meta("capture_stopped") or "")
    assert _events(settings, "items") == []


def test_following_when_nothing_changed_returns_nothing_and_touches_nothing(
    tmp_path: Path,
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    before = _query(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    changes = _query(path, "SELECT seq, tbl, op FROM _nkd_changes")
    version = _query(path, "PRAGMA schema_version")
    selects = capture_selector(("*",), ())
    with Session(settings, writer=True) as s:
        assert s.source.follow_schema(selects) == []  # the first look compares everything
        started = time.perf_counter()
        for _ in range(1000):
            assert s.source.follow_schema(selects) == []
        per_call = (time.perf_counter() - started) / 1000
    print(f"follow_schema with nothing to follow: {per_call * 1e6:.1f} µs")
    assert per_call < 0.0005, f"{per_call * 1e6:.0f} µs a pass with nothing to follow"
    assert _query(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == before
    assert _query(path, "SELECT seq, tbl, op FROM _nkd_changes") == changes
    assert _query(path, "PRAGMA schema_version") == version


def test_a_table_capture_does_not_select_is_left_alone(tmp_path: Path, drain: Drain) -> None:
    settings, path = _captured(tmp_path, extra='[capture]\ntables = ["items"]\n')
    _run(path, "CREATE TABLE scratch (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
    _run(path, "INSERT INTO scratch (k) VALUES ('x')")
    drain(settings)
    assert dict(_query(path, "SELECT table_name, number FROM _nkd_tables")) == {"items": 1}
    assert _query(path, "SELECT count(*) FROM _nkd_changes") == [(0,)]


def test_uninstall_removes_what_following_added(tmp_path: Path) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "CREATE TABLE extra (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)")
    _run(path, "ALTER TABLE items ADD COLUMN note TEXT")
    do_drain(settings)
    _run(path, "DROP TABLE extra")
    do_drain(settings)
    with Session(settings, writer=True) as s:
        s.source.uninstall()
    assert _capture_objects(path) == []


# --- generated: any sequence of column changes and writes -----------------------------------

Step = tuple[str, Any]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["red", "blue", None])),
        st.tuples(st.just("add and write"), st.integers(0, 9)),
        st.tuples(st.just("rename"), st.integers(0, 5)),
        st.tuples(st.just("drop"), st.integers(0, 5)),
        st.tuples(st.just("insert"), st.integers(0, 9)),
        st.tuples(st.just("update"), st.integers(0, 99)),
        st.tuples(st.just("delete"), st.integers(0, 9)),
        st.tuples(st.just("drain"), st.none()),
    ),
    min_size=1,
    max_size=10,
)


def _apply(path: Path, step: Step, extra: list[str], serial: list[int]) -> None:
    kind, arg = step
    if kind == "add":
        serial[0] += 1
        name = f"c{serial[0]}"
        default = "NULL" if arg is None else f"'{arg}'"
        _run(path, f"ALTER TABLE items ADD COLUMN {name} TEXT DEFAULT {default}")
        extra.append(name)
    elif kind == "add and write":  # in the transaction of the ALTER
        serial[0] += 1
        name = f"c{serial[0]}"
        _run(
            path,
            f"ALTER TABLE items ADD COLUMN {name} TEXT",
            f"UPDATE items SET {name} = 'w{arg}', qty = {arg} WHERE code = 'k{arg}'",
            f"INSERT OR IGNORE INTO items (code, qty, {name}) VALUES ('k{arg}', 0, 'n{arg}')",
        )
        extra.append(name)
    elif kind == "rename" and extra:
        serial[0] += 1
        index = arg % len(extra)
        new_name = f"c{serial[0]}"
        _run(path, f"ALTER TABLE items RENAME COLUMN {extra[index]} TO {new_name}")
        extra[index] = new_name
    elif kind == "drop" and extra:
        gone = extra.pop(arg % len(extra))
        keep = ["id", "code", "qty", *extra]
        create = "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, qty INT"
        _rebuild(path, create + "".join(f", {c} TEXT" for c in extra) + ")", ", ".join(keep))
        assert gone not in keep
    elif kind == "insert":
        _run(path, f"INSERT OR IGNORE INTO items (code, qty) VALUES ('k{arg}', {arg})")
    elif kind == "update":
        sets = ", ".join([f"qty = {arg}", *(f"{c} = 'v{arg}'" for c in extra[-1:])])
        _run(path, f"UPDATE items SET {sets} WHERE code = 'k{arg % 10}'")
    elif kind == "delete":
        _run(path, f"DELETE FROM items WHERE code = 'k{arg}'")
    elif kind == "drain":
        settings = settings_for(path.parent, f"sqlite:///{path}")
        do_drain(settings)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps)
def test_any_sequence_of_column_changes_and_writes_logs_the_tables_rows(
    tmp_path_factory: pytest.TempPathFactory, sequence: list[Step]
) -> None:
    directory = tmp_path_factory.mktemp("follow")
    settings, path = _captured(directory)
    _run(path, "INSERT INTO items (code, qty) VALUES ('k0', 0), ('k1', 1)")
    extra: list[str] = []
    serial = [0]
    for step in sequence:
        _apply(path, step, extra, serial)
    do_drain(settings)
    _assert_log_matches_source(settings)


def test_a_drain_started_after_a_table_was_dropped_still_reads_its_changes(
    tmp_path: Path,
) -> None:
    settings, path = _captured(
        tmp_path, ITEMS, "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE)"
    )
    _run(path, "INSERT INTO notes (title) VALUES ('n1')")
    _run(path, "DROP TABLE notes")
    do_drain(settings)  # a new process: it never saw notes
    assert [(e.op, e.key) for e in _events(settings, "notes")] == [("I", {"title": "n1"})]


def test_capture_installed_before_following_existed_is_brought_up_to_date(
    tmp_path: Path, drain: Drain
) -> None:
    """A source installed with capture schema version 2: the first pass migrates it, and
    changes queued before decode with the columns capture recorded at install."""
    settings, path = _captured(tmp_path)
    _run(
        path,
        "DROP TABLE _nkd_layouts",
        "DROP TABLE _nkd_schema_changes",
        "DROP TABLE _nkd_retired",
        "ALTER TABLE _nkd_tables DROP COLUMN indexes",
        "DELETE FROM _nkd_schema_version WHERE version = 3",
    )
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    _run(path, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'n'")
    drain(settings)
    assert _query(path, "SELECT max(version) FROM _nkd_schema_version") == [(3,)]
    first = _events(settings, "items")[0]
    assert (first.op, first.row) == ("I", {"code": "a", "qty": 1})
    _assert_log_matches_source(settings)


def test_a_table_renamed_out_of_capture_loses_its_triggers(tmp_path: Path, drain: Drain) -> None:
    # (another table stays captured: with none left, the drain says capture is not installed)
    settings, path = _captured(
        tmp_path,
        ITEMS,
        "CREATE TABLE kept (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE)",
        extra='[capture]\ntables = ["item*", "kept"]\n',
    )
    drain(settings)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    _run(path, "ALTER TABLE items RENAME TO goods")
    drain(settings)
    assert [d.change for d in _definitions(settings, "items")] == ["dropped"]
    triggers = [name for kind, name in _capture_objects(path) if kind == "trigger"]
    assert triggers == ["_nkd_2_D", "_nkd_2_I", "_nkd_2_U"]  # kept's only
    _run(path, "UPDATE goods SET qty = 2")
    assert _query(path, "SELECT count(*) FROM _nkd_changes") == [(0,)]


def test_a_new_table_without_a_key_stops_the_drain_until_configured(tmp_path: Path) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "CREATE TABLE events (at TEXT, what TEXT)", "INSERT INTO events VALUES ('t', 'x')")
    with pytest.raises(NkdError, match="events") as stopped:
        do_drain(settings)
    assert "[tables.events]" in (stopped.value.hint or "") + str(stopped.value)
    configured = settings_for(tmp_path, f"sqlite:///{path}", '[tables.events]\nidentity = "full"\n')
    do_drain(configured)
    _run(path, "INSERT INTO events VALUES ('u', 'y')")
    do_drain(configured)
    assert [e.op for e in _events(configured, "events")] == ["T", "I", "I"]
    _assert_log_matches_source(configured)


def test_virtual_tables_and_their_shadow_tables_are_not_captured(tmp_path: Path) -> None:
    """No trigger can be made on a virtual table, and its shadow tables are derived data."""
    settings, path = _captured(tmp_path)
    _run(path, "CREATE VIRTUAL TABLE search USING fts5(body)")
    _run(path, "INSERT INTO search (body) VALUES ('hello')")
    with Session(settings, writer=True) as s:
        assert s.source.follow_schema(capture_selector(("*",), ())) == []
    assert dict(_query(path, "SELECT table_name, number FROM _nkd_tables")) == {"items": 1}


def test_an_index_made_or_dropped_is_logged_as_a_definition_without_a_baseline(
    tmp_path: Path, drain: Drain
) -> None:
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1)")
    drain(settings)
    _run(path, "CREATE UNIQUE INDEX items_qty ON items (qty)")
    drain(settings)
    (made,) = _definitions(settings, "items")
    assert made.change == "altered" and made.definition is not None
    assert {"name": "items_qty", "columns": ["qty"], "unique": True} in made.definition["indexes"]
    assert [e.op for e in _events(settings, "items")] == ["I"]  # no baseline: no value changed
    assert made.definition["key"] == [{"column": "code"}]  # rows keep the key they had
    _run(path, "DROP INDEX items_qty")
    drain(settings)
    dropped = _definitions(settings, "items")[-1]
    assert dropped.definition is not None
    assert all(i["name"] != "items_qty" for i in dropped.definition["indexes"])
    _assert_log_matches_source(settings)


def test_tables_and_columns_with_awkward_names_are_followed(tmp_path: Path, drain: Drain) -> None:
    settings, path = _captured(tmp_path)
    drain(settings)
    _run(
        path,
        'CREATE TABLE "odd ""name"" table" (id INTEGER PRIMARY KEY, '
        '"key; col" TEXT NOT NULL UNIQUE, "select" INTEGER)',
        'INSERT INTO "odd ""name"" table" ("key; col", "select") VALUES (\'a\', 1)',
    )
    drain(settings)
    _run(path, 'ALTER TABLE "odd ""name"" table" ADD COLUMN "it\'s" TEXT DEFAULT \'x\'')
    _run(path, 'UPDATE "odd ""name"" table" SET "select" = 2, "it\'s" = \'y\'')
    drain(settings)
    last = _events(settings, 'odd "name" table')[-1]
    assert last.row == {"key; col": "a", "select": 2, "it's": "y"}
    _assert_log_matches_source(settings)


@pytest.mark.parametrize("stage", ["log_synced", "state_committed", "queue_deleted"])
def test_a_drain_killed_after_a_schema_change_loses_and_doubles_nothing(
    tmp_path: Path, stage: str
) -> None:
    """SIGKILL at each step of the batch that carries a schema change and its baseline;
    the next drain makes the log whole, with the change logged once."""
    settings, path = _captured(tmp_path)
    _run(path, "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)")
    do_drain(settings)
    _run(
        path,
        "ALTER TABLE items ADD COLUMN color TEXT DEFAULT 'grey'",
        "UPDATE items SET color = 'red' WHERE code = 'a'",
    )
    _run(path, "INSERT INTO items (code, qty, color) VALUES ('c', 3, 'blue')")
    killed = subprocess.run(
        [sys.executable, "tests/crash_drain.py", str(tmp_path / "nkdaemon.toml"), stage, "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _run(path, "UPDATE items SET color = 'green' WHERE code = 'b'")
    do_drain(settings)
    assert [d.change for d in _definitions(settings, "items")] == ["altered"]
    _assert_log_matches_source(settings)
    assert _query(path, "SELECT count(*) FROM _nkd_changes") == [(0,)]
