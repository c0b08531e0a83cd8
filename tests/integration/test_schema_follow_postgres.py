"""PostgreSQL capture follows schema changes (issue 12): every DDL on a captured table is
queued in the DDL's own transaction (event triggers) or noticed on the next drain pass
(no superuser), ordered exactly among the row changes, and drained into DEFINITION records
and the row changes that bring the log to the table's values (baselines).

Real PostgreSQL, the real drain, the log read back.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from nkdaemon.core.errors import CaptureError, SourceError
from nkdaemon.core.keys import replace_spec
from nkdaemon.core.log import ChangeEvent, Definition
from nkdaemon.core.ownership import CaptureClaim
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from nkdaemon.sources.postgres import conninfo_from_url
from tests import pg
from tests.helpers import do_drain, do_install, logged, settings_for


def _sql(url: str, *statements: str) -> None:
    """Run statements as the application would, in one transaction."""
    with psycopg.connect(conninfo_from_url(url)) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _one(url: str, query: str) -> Any:
    with psycopg.connect(conninfo_from_url(url), autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]


def _queued(url: str) -> int:
    return int(_one(url, "SELECT count(*) FROM nkdaemon.queue"))


ITEMS = (
    "CREATE TABLE items (id serial PRIMARY KEY, code text NOT NULL UNIQUE, qty integer)",
    "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)",
)


def _installed(url: str, tmp_path: Path, *setup: str, extra: str = "") -> Settings:
    _sql(url, *ITEMS, *setup)
    settings = settings_for(tmp_path, url, extra)
    do_install(settings)
    return settings


def _definitions(settings: Settings, table: str) -> list[Definition]:
    return [d for tx in logged(settings) for d in tx.definitions if d.table == table]


def _events(settings: Settings, table: str) -> list[ChangeEvent]:
    return [e for tx in logged(settings) for e in tx.events if e.table == table]


def _rows(
    events: list[ChangeEvent], key: str = "code", start: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The table as the events leave it, by natural key (a baseline of a table nothing
    refers to is a TRUNCATE and an insert of every row)."""
    rows: dict[str, dict[str, Any]] = dict(start or {})
    for event in events:
        if event.op == "T":
            rows.clear()
            continue
        if event.old_key is not None:
            rows.pop(str(event.old_key[key]), None)
        assert event.key is not None
        if event.op == "D":
            rows.pop(str(event.key[key]), None)
        else:
            assert event.row is not None
            rows[str(event.key[key])] = dict(event.row)
    return rows


def test_event_triggers_run_where_the_installer_is_a_superuser(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    with Session(settings, writer=False) as s:
        assert s.source.capture_mode() == "event trigger"
    assert _one(pg_url, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'nkdaemon%'") == 3


def test_a_column_added_with_a_default_reaches_old_rows_through_the_baseline(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "ALTER TABLE items ADD COLUMN color text NOT NULL DEFAULT 'grey'")
    _sql(pg_url, "UPDATE items SET color = 'blue' WHERE code = 'a'")
    _sql(pg_url, "INSERT INTO items (code, qty, color) VALUES ('c', 3, 'red')")
    do_drain(settings)

    [definition] = _definitions(settings, "items")
    assert definition.change == "altered" and definition.command == "ALTER TABLE"
    assert definition.columns == ("id", "code", "qty", "color")
    # the baseline gives both old rows the default; then the application's writes
    assert _rows(_events(settings, "items")) == {
        "a": {"code": "a", "qty": 1, "color": "blue"},
        "b": {"code": "b", "qty": 2, "color": "grey"},
        "c": {"code": "c", "qty": 3, "color": "red"},
    }
    assert [e.op for e in _events(settings, "items")][-2:] == ["U", "I"]
    assert _queued(pg_url) == 0


def test_a_write_before_the_ddl_in_its_transaction_lacks_the_column_and_one_after_has_it(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(
        pg_url,
        "UPDATE items SET qty = 10 WHERE code = 'a'",
        "ALTER TABLE items ADD COLUMN note text",
        "UPDATE items SET note = 'x' WHERE code = 'b'",
    )
    # one transaction, sealed once: the event trigger's entry joined it like a row change
    assert (
        _one(pg_url, "SELECT count(DISTINCT xid) || '/' || count(*) FROM nkdaemon.commits") == "1/1"
    )
    do_drain(settings)

    [tx] = [tx for tx in logged(settings) if tx.definitions]
    [definition] = tx.definitions
    assert definition.at_event == 1
    before, after = tx.events
    assert before.key == {"code": "a"} and before.row is not None and "note" not in before.row
    assert after.key == {"code": "b"} and after.row is not None and after.row["note"] == "x"


def test_a_renamed_column_is_logged_as_a_rename(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "ALTER TABLE items RENAME COLUMN qty TO quantity")
    _sql(pg_url, "UPDATE items SET quantity = 7 WHERE code = 'a'")
    do_drain(settings)

    [definition] = _definitions(settings, "items")
    assert definition.renamed == (("qty", "quantity"),)
    assert definition.columns == ("id", "code", "quantity")
    [event] = _events(settings, "items")
    assert event.row is not None and event.row["quantity"] == 7 and "qty" not in event.row


def test_a_renamed_key_column_keeps_the_application_writing(pg_url: str, tmp_path: Path) -> None:
    # The row trigger functions name the key columns; the event trigger rebuilds them in
    # the DDL's transaction, so the next UPDATE does not meet a column that is gone.
    settings = _installed(pg_url, tmp_path)
    _sql(
        pg_url,
        "ALTER TABLE items RENAME COLUMN code TO sku",
        "UPDATE items SET sku = 'a2' WHERE sku = 'a'",
    )
    assert _one(pg_url, "SELECT identity FROM nkdaemon.tables") == ["id", "sku"]
    # the old row was queued for the key change (the identity follows the rename)
    assert _one(pg_url, "SELECT count(*) FROM nkdaemon.queue WHERE op = 'U' AND old IS NOT NULL")
    del settings


def test_a_dropped_column_is_absent_from_later_events(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "UPDATE items SET qty = 5 WHERE code = 'a'")
    _sql(pg_url, "ALTER TABLE items DROP COLUMN qty")
    _sql(pg_url, "INSERT INTO items (code) VALUES ('c')")
    do_drain(settings)

    [definition] = _definitions(settings, "items")
    assert definition.columns == ("id", "code") and definition.renamed == ()
    first, last = _events(settings, "items")
    # logged before the drop, in the shape the table had then
    assert first.row is not None and first.row["qty"] == 5
    assert last.op == "I" and last.row is not None and "qty" not in last.row


def test_values_after_a_type_change_are_logged_in_the_new_type(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "ALTER TABLE items ALTER COLUMN qty TYPE text USING 'n' || qty::text")
    _sql(pg_url, "UPDATE items SET qty = 'many' WHERE code = 'b'")
    do_drain(settings)

    [definition] = _definitions(settings, "items")
    assert definition.definition is not None
    [qty] = [c for c in definition.definition["columns"] if c["name"] == "qty"]
    assert qty["type"] == "text"
    events = _events(settings, "items")
    assert _rows(events[:-1]) == {"a": {"code": "a", "qty": "n1"}, "b": {"code": "b", "qty": "n2"}}
    assert _rows(events)["b"] == {"code": "b", "qty": "many"}


def test_a_same_type_rewrite_is_baselined(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "ALTER TABLE items ALTER COLUMN qty TYPE integer USING qty * 100")
    do_drain(settings)
    assert _rows(_events(settings, "items")) == {
        "a": {"code": "a", "qty": 100},
        "b": {"code": "b", "qty": 200},
    }


OWNERS = (
    "CREATE TABLE stock (id serial PRIMARY KEY, "
    "item_id integer NOT NULL UNIQUE REFERENCES items (id))"
)


def test_a_new_table_that_references_a_captured_one_is_captured_with_its_rows(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path, OWNERS)  # items is referenced from the start
    before = _one(pg_url, "SELECT max(number) FROM nkdaemon.tables")
    _sql(
        pg_url,
        "CREATE TABLE parts (id serial PRIMARY KEY, "
        "item_id integer NOT NULL REFERENCES items (id), label text NOT NULL UNIQUE)",
        "INSERT INTO parts (item_id, label) SELECT id, 'p-' || code FROM items",
    )
    do_drain(settings)
    _sql(pg_url, "INSERT INTO parts (item_id, label) SELECT id, 'q' FROM items WHERE code = 'b'")
    do_drain(settings)

    [definition] = _definitions(settings, "parts")
    assert definition.change == "created" and definition.columns == ("id", "item_id", "label")
    events = _events(settings, "parts")
    assert events[0].op == "T"  # the baseline of a table nothing refers to
    rows = [(e.op, e.key, (e.row or {}).get("item_id")) for e in events[1:]]
    assert rows == [
        ("I", {"label": "p-a"}, {"code": "a"}),
        ("I", {"label": "p-b"}, {"code": "b"}),
        ("I", {"label": "q"}, {"code": "b"}),
    ]
    with Session(settings, writer=False) as s:
        assert s.source.installed_tables()["parts"] > before


def _each_pass(url: str) -> None:
    """As if no superuser had installed capture: the drain notices changes on its passes."""
    for name in ("nkdaemon_ddl", "nkdaemon_drop", "nkdaemon_rewrite"):
        _sql(url, f"ALTER EVENT TRIGGER {name} DISABLE")


@pytest.mark.parametrize("mode", ["event trigger", "each pass"])
def test_a_dropped_table_is_logged_after_its_last_changes(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(
        pg_url, tmp_path, "CREATE TABLE notes (id serial PRIMARY KEY, title text NOT NULL UNIQUE)"
    )
    if mode == "each pass":
        _each_pass(pg_url)
    with Session(settings, writer=True) as s:
        drainer = s.drainer()  # a running daemon's: it knew notes before the drop
        drainer.drain_once()
        _sql(pg_url, "INSERT INTO notes (title) VALUES ('kept')")
        _sql(pg_url, "DROP TABLE notes")
        drainer.drain_once()

    [event] = _events(settings, "notes")
    assert event.op == "I" and event.key == {"title": "kept"}
    [definition] = _definitions(settings, "notes")
    assert definition.change == "dropped" and definition.definition is None
    assert definition.command == ("DROP TABLE" if mode == "event trigger" else "detected")
    assert _queued(pg_url) == 0
    with Session(settings, writer=False) as s:
        assert "notes" not in s.source.installed_tables()
    assert _one(pg_url, "SELECT array_agg(table_name) FROM nkdaemon.retired") == ["notes"]


@pytest.mark.parametrize("mode", ["event trigger", "each pass"])
def test_a_renamed_table_leaves_capture_and_comes_back_under_its_new_name(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    if mode == "each pass":
        _each_pass(pg_url)
    with Session(settings, writer=True) as s:
        drainer = s.drainer()
        _sql(pg_url, "ALTER TABLE items RENAME TO goods", "UPDATE goods SET qty = 3")
        drainer.drain_once()
        # the renamed table's triggers are gone, with it out of capture until taken back
        assert _one(pg_url, "SELECT count(*) FROM nkdaemon.queue WHERE op = 'U'") == 0
        _sql(pg_url, "UPDATE goods SET qty = 4 WHERE code = 'a'")
        drainer.drain_once()
        numbers = s.source.installed_tables()
    assert [d.change for d in _definitions(settings, "items")] == ["dropped"]
    assert [d.change for d in _definitions(settings, "goods")] == ["created"]
    assert set(numbers) == {"goods"}
    assert _rows(_events(settings, "goods")) == {
        "a": {"code": "a", "qty": 4},
        "b": {"code": "b", "qty": 3},
    }


def test_dropping_the_natural_key_stops_the_drain_and_keeps_the_queue(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path, extra='[tables.items]\nnatural_key = ["code"]\n')
    with Session(settings, writer=True) as s:
        drainer = s.drainer()  # a running daemon's, which knew the key before the drop
        _sql(pg_url, "UPDATE items SET qty = 9 WHERE code = 'a'")
        _sql(pg_url, "ALTER TABLE items DROP COLUMN code")
        _sql(pg_url, "UPDATE items SET qty = 8")  # the application goes on writing
        queued = _queued(pg_url)
        with pytest.raises(CaptureError, match="code"):
            drainer.drain_once()
        assert s.state.get_meta("capture_stopped")
    assert _queued(pg_url) == queued > 0
    assert not _definitions(settings, "items")  # nothing of that transaction was logged
    # a drain started afresh stops too, queue kept
    with pytest.raises(CaptureError, match="code"):
        do_drain(settings)
    assert _queued(pg_url) == queued


def test_ddl_on_a_table_capture_does_not_follow_queues_nothing(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(
        pg_url,
        tmp_path,
        "CREATE TABLE scratch (id serial PRIMARY KEY, v text)",
        extra='[capture]\nexclude = ["scratch"]\n',
    )
    _sql(
        pg_url,
        "ALTER TABLE scratch ADD COLUMN w integer DEFAULT 1",
        "ALTER TABLE scratch ALTER COLUMN v TYPE varchar(20)",
        "CREATE INDEX ON scratch (w)",
        "ALTER TABLE scratch DROP COLUMN w",
    )
    _sql(pg_url, "DROP TABLE scratch")
    assert _queued(pg_url) == 0
    do_drain(settings)
    assert _definitions(settings, "scratch") == []


def test_table_numbers_are_never_reused(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    with Session(settings, writer=True) as s:
        drainer = s.drainer()
        _sql(pg_url, "CREATE TABLE t1 (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
        drainer.drain_once()
        first = s.source.installed_tables()["t1"]
        _sql(pg_url, "DROP TABLE t1")
        drainer.drain_once()
        _sql(pg_url, "CREATE TABLE t2 (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
        drainer.drain_once()
        numbers = s.source.installed_tables()
    assert "t1" not in numbers and numbers["t2"] > first
    assert [d.change for d in _definitions(settings, "t1")] == ["created", "dropped"]


def test_truncate_and_uninstall_still_work(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "TRUNCATE items")
    do_drain(settings)
    assert {e.op for e in _events(settings, "items")} <= {"D", "T"}
    assert _events(settings, "items")
    with Session(settings, writer=True) as s:
        s.source.uninstall()
    assert _one(pg_url, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'nkdaemon%'") == 0
    _sql(pg_url, "ALTER TABLE items ADD COLUMN later text")  # DDL works without capture


# --- roles ----------------------------------------------------------------------------------


@pytest.fixture
def app_url(pg_url: str) -> Iterator[str]:
    """The database as a role that may create schemas there and owns its tables, nothing
    more (no superuser: no event triggers)."""
    role = f"nkd_app_{uuid.uuid4().hex[:8]}"
    database = make_url(pg_url).database
    _sql(
        pg_url,
        f"CREATE ROLE {role} LOGIN",
        f'GRANT CREATE ON DATABASE "{database}" TO {role}',
        f"GRANT CREATE, USAGE ON SCHEMA public TO {role}",
    )
    yield str(make_url(pg_url).set(username=role).render_as_string(hide_password=False))
    _sql(pg_url, f"DROP OWNED BY {role} CASCADE")
    with psycopg.connect(conninfo_from_url(pg_url), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")  # type: ignore[arg-type]


def test_a_role_that_may_not_touch_capture_still_runs_its_ddl(
    pg_url: str, app_url: str, tmp_path: Path
) -> None:
    # The event triggers fire for every DDL of the database; they run as their owner, so
    # a role without any right on nkdaemon's schema is not refused its own DDL.
    _installed(pg_url, tmp_path)
    _sql(
        app_url,
        "CREATE TABLE own (id integer PRIMARY KEY)",
        "ALTER TABLE own ADD COLUMN v text DEFAULT 'x'",
        "DROP TABLE own",
    )
    assert _queued(pg_url) == 0


def test_without_a_superuser_changes_are_followed_on_the_next_pass(
    app_url: str, tmp_path: Path
) -> None:
    settings = _installed(app_url, tmp_path)
    with Session(settings, writer=False) as s:
        assert s.source.capture_mode() == "each pass"
    assert _one(app_url, "SELECT value FROM nkdaemon.meta WHERE name = 'schema_changes'") == (
        "each pass"
    )
    _sql(app_url, "UPDATE items SET qty = 5 WHERE code = 'a'")
    _sql(app_url, "ALTER TABLE items ADD COLUMN color text DEFAULT 'grey'")
    _sql(app_url, "ALTER TABLE items RENAME COLUMN qty TO quantity")
    assert _queued(app_url) == 1  # nothing queued the DDL
    do_drain(settings)
    _sql(app_url, "UPDATE items SET color = 'blue' WHERE code = 'b'")
    _sql(app_url, "CREATE TABLE parts (id serial PRIMARY KEY, label text NOT NULL UNIQUE)")
    _sql(app_url, "INSERT INTO parts (label) VALUES ('p')")
    do_drain(settings)

    [definition] = _definitions(settings, "items")
    assert definition.command == "detected"
    assert definition.renamed == (("qty", "quantity"),)
    assert definition.columns == ("id", "code", "quantity", "color")
    events = _events(settings, "items")
    # before the change was noticed: read in the shape it was queued in
    assert events[0].row == {"code": "a", "qty": 5}
    assert _rows(events[:-1]) == {
        "a": {"code": "a", "quantity": 5, "color": "grey"},
        "b": {"code": "b", "quantity": 2, "color": "grey"},
    }
    assert events[-1].row == {"code": "b", "quantity": 2, "color": "blue"}
    assert [d.change for d in _definitions(settings, "parts")] == ["created"]
    assert [(e.op, e.key) for e in _events(settings, "parts")] == [
        ("T", None),
        ("I", {"label": "p"}),
    ]


def test_a_new_table_may_reference_a_table_nothing_referred_to(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(
        pg_url,
        "CREATE TABLE parts (id serial PRIMARY KEY, "
        "item_id integer NOT NULL REFERENCES items (id), label text NOT NULL UNIQUE)",
        "INSERT INTO parts (item_id, label) SELECT id, 'p-' || code FROM items",
    )
    do_drain(settings)
    events = _events(settings, "parts")
    assert [(e.op, e.key, (e.row or {}).get("item_id")) for e in events] == [
        ("T", None, None),
        ("I", {"label": "p-a"}, {"code": "a"}),
        ("I", {"label": "p-b"}, {"code": "b"}),
    ]
    # items' rows only seeded the key index: nothing of it was logged again
    assert _events(settings, "items") == [] and _definitions(settings, "items") == []


@pytest.mark.xfail(
    strict=True,
    reason="each pass: the row trigger functions name the key (and json) columns, so until "
    "the next pass rebuilds them a write meets a column that is gone; only the event "
    "triggers rebuild them inside the DDL's transaction",
)
def test_without_a_superuser_a_renamed_key_column_keeps_the_application_writing(
    app_url: str, tmp_path: Path
) -> None:
    _installed(app_url, tmp_path)
    _sql(app_url, "ALTER TABLE items RENAME COLUMN code TO sku")
    _sql(app_url, "UPDATE items SET qty = 2")


# --- under a steady writer ----------------------------------------------------------------


class _Writer(threading.Thread):
    """The application: small transactions on items until told to stop, whatever the shape."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # the test fails on it, with the cause
            self.error = exc

    def _write(self) -> None:
        rng = random.Random(12)
        with psycopg.connect(conninfo_from_url(self.url), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            while not self.stop.is_set():
                code = f"w{rng.randrange(40)}"
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO items (code) VALUES (%s) ON CONFLICT (code) DO NOTHING",
                        (code,),
                    )
                    if rng.random() < 0.3:
                        conn.execute(
                            "DELETE FROM items WHERE code = %s", (f"w{rng.randrange(40)}",)
                        )
                    conn.execute(
                        "UPDATE items SET code = code WHERE code = %s", (f"w{rng.randrange(40)}",)
                    )
                self.commits += 1


def _wait_for_commits(writer: _Writer, count: int) -> None:
    target = writer.commits + count
    deadline = time.monotonic() + 30
    while writer.commits < target and writer.error is None:
        assert time.monotonic() < deadline, "the writer stalled"
        time.sleep(0.005)


def _shaped_rows(settings: Settings, table: str) -> dict[str, dict[str, Any]]:
    """The table as the log leaves it, its definitions applied where they stand (a rename
    moves the values, a dropped column leaves the rows)."""
    rows: dict[str, dict[str, Any]] = {}
    for tx in logged(settings):
        events = [e for e in tx.events]
        for i in range(len(events) + 1):
            for definition in (d for d in tx.definitions if d.at_event == i):
                if definition.table != table:
                    continue
                renamed = dict(definition.renamed)
                for code, row in rows.items():
                    moved = {renamed.get(k, k): v for k, v in row.items()}
                    rows[code] = {k: v for k, v in moved.items() if k in definition.columns}
            if i < len(events) and events[i].table == table:
                rows = _rows([events[i]], start=rows)
    return rows


def _source_rows(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(conninfo_from_url(url), autocommit=True) as conn:
        rows = conn.execute("SELECT row_to_json(i)::text FROM items i").fetchall()
    out = {}
    for (text,) in rows:
        row = orjson.loads(text)
        row.pop("id")
        out[str(row["code"])] = row
    return out


@pytest.mark.parametrize("mode", ["event trigger", "each pass"])
def test_schema_changes_under_a_steady_writer_lose_nothing(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    if mode == "each pass":
        _each_pass(pg_url)
    writer = _Writer(pg_url)
    steps = (
        "ALTER TABLE items ADD COLUMN color text NOT NULL DEFAULT 'grey'",
        "ALTER TABLE items RENAME COLUMN qty TO quantity",
        "ALTER TABLE items ALTER COLUMN quantity TYPE bigint USING coalesce(quantity, 0) + 1",
        "ALTER TABLE items DROP COLUMN color",
    )
    with Session(settings, writer=True) as s:
        drainer = s.drainer()
        assert s.source.capture_mode() == mode
        writer.start()
        try:
            for step in steps:
                _wait_for_commits(writer, 20)
                drainer.drain_once()
                _sql(pg_url, step)
                _wait_for_commits(writer, 20)
                drainer.drain_once()
        finally:
            writer.stop.set()
            writer.join()
        drainer.drain_once()
    assert writer.error is None
    assert [d.columns for d in _definitions(settings, "items")] == [
        ("id", "code", "qty", "color"),
        ("id", "code", "quantity", "color"),
        ("id", "code", "quantity", "color"),
        ("id", "code", "quantity"),
    ]
    assert _shaped_rows(settings, "items") == _source_rows(pg_url)


# --- column names as applications write them --------------------------------------------

_NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1,
    max_size=20,
).filter(lambda n: len(n.encode()) <= 63)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(added=_NAMES, renamed=_NAMES)
def test_any_column_name_is_followed_and_renamed(
    pg_server: str, tmp_path_factory: pytest.TempPathFactory, added: str, renamed: str
) -> None:
    assume(added != renamed and {added, renamed}.isdisjoint({"id", "code", "qty"}))
    url = pg.create_database(pg_server)
    try:
        settings = _installed(url, tmp_path_factory.mktemp("names"))
        old, new = (psycopg.sql.Identifier(n) for n in (added, renamed))
        with psycopg.connect(conninfo_from_url(url)) as conn:
            for statement in (
                "ALTER TABLE items ADD COLUMN {old} jsonb DEFAULT '{{}}'",
                "ALTER TABLE items RENAME COLUMN {old} TO {new}",
                "UPDATE items SET {new} = NULL WHERE code = 'a'",
            ):
                conn.execute(psycopg.sql.SQL(statement).format(old=old, new=new))
        do_drain(settings)
        first, second = _definitions(settings, "items")
        assert first.columns == ("id", "code", "qty", added)
        assert second.renamed == ((added, renamed),)
        rows = _shaped_rows(settings, "items")
        assert rows["a"][renamed] is None  # SQL NULL, not JSON null
        assert rows["b"][renamed] == "{}"
    finally:
        pg.drop_database(pg_server, url)


def test_a_running_drain_logs_a_type_change_in_the_new_type(pg_url: str, tmp_path: Path) -> None:
    settings = _installed(pg_url, tmp_path)
    with Session(settings, writer=True) as s:
        drainer = s.drainer()  # a running daemon's: it reflected qty as an integer
        drainer.drain_once()
        _sql(pg_url, "ALTER TABLE items ALTER COLUMN qty TYPE text USING 'n' || qty::text")
        drainer.drain_once()
    [definition] = _definitions(settings, "items")
    assert definition.definition is not None
    [qty] = [c for c in definition.definition["columns"] if c["name"] == "qty"]
    assert qty["type"] == "text"


def test_nullability_defaults_and_keys_are_logged_as_new_definitions(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    statements = (
        "ALTER TABLE items ALTER COLUMN qty SET NOT NULL",
        "ALTER TABLE items ALTER COLUMN qty SET DEFAULT 0",
        "CREATE UNIQUE INDEX items_qty ON items (qty)",
        "DROP INDEX items_qty",
        "ALTER TABLE items ADD CONSTRAINT qty_positive CHECK (qty > 0)",
        "COMMENT ON TABLE items IS 'no shape change'",
    )
    for statement in statements:
        _sql(pg_url, statement)
    entries = _one(pg_url, "SELECT count(*) FROM nkdaemon.queue WHERE op = 'S'")
    assert entries == len(statements) - 1
    assert _one(pg_url, "SELECT count(*) FROM nkdaemon.queue WHERE op <> 'S'") == 0  # no baseline
    do_drain(settings)
    logged_entries = _definitions(settings, "items")
    assert [d.change for d in logged_entries] == ["altered"] * entries
    assert _queued(pg_url) == 0


def test_the_source_refuses_to_install_a_table_under_a_retired_number(
    pg_url: str, tmp_path: Path
) -> None:
    """A guard under install's own numbering: should a registry ever give a retired number
    again, the source refuses, changing nothing, rather than mix two tables' histories."""
    settings = _installed(pg_url, tmp_path)
    _sql(pg_url, "CREATE TABLE extra (id serial PRIMARY KEY, k text NOT NULL UNIQUE)")
    do_drain(settings)
    with Session(settings, writer=True) as s:
        retired = s.source.installed_tables()["extra"]
    _sql(
        pg_url,
        "DROP TABLE extra",
        "CREATE TABLE later (id serial PRIMARY KEY, k text NOT NULL UNIQUE)",
    )
    assert _one(pg_url, "SELECT array_agg(number) FROM nkdaemon.retired") == [retired]
    with Session(settings, writer=True) as s:
        items = load_registry(s.engine, settings, s.source).by_name("items")
        later = replace_spec(items, number=retired, name="later")
        claim = CaptureClaim(repository="r", host="h", seen=s.source.installation_id(), new=False)
        with pytest.raises(SourceError, match=rf"would be given again: later \({retired}\)"):
            s.source.install({items.number: items, retired: later}, lambda p, r: None, claim)
    assert _one(pg_url, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'later'::regclass") == 0


def test_a_new_table_without_a_natural_key_stops_the_drain_until_configured(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    _sql(
        pg_url,
        "CREATE TABLE logs (id serial PRIMARY KEY, msg text)",
        "INSERT INTO logs (msg) VALUES ('one')",
    )
    with pytest.raises(CaptureError, match="logs"):
        do_drain(settings)
    # reflection refuses the table before capture takes it: nothing queued for it, and
    # rows written meanwhile reach the log through the baseline once it is configured
    _sql(pg_url, "INSERT INTO logs (msg) VALUES ('two')")
    with Session(settings, writer=False) as s:
        assert "logs" not in s.source.installed_tables()
    configured = settings_for(tmp_path, pg_url, '[tables.logs]\nidentity = "full"\n')
    do_drain(configured)
    assert sorted(
        str((e.row or {}).get("msg")) for e in _events(configured, "logs") if e.op == "I"
    ) == ["one", "two"]
    assert _queued(pg_url) == 0


@pytest.mark.parametrize("mode", ["event trigger", "each pass"])
def test_a_table_rebuilt_under_its_name_is_captured_again_with_its_rows(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    settings = _installed(pg_url, tmp_path)
    if mode == "each pass":
        _each_pass(pg_url)
    with Session(settings, writer=True) as s:
        drainer = s.drainer()
        before = s.source.installed_tables()["items"]
        _sql(
            pg_url,
            "CREATE TABLE items_new (id serial PRIMARY KEY, code text NOT NULL UNIQUE, "
            "qty integer, extra text DEFAULT 'x')",
            "INSERT INTO items_new (code, qty) SELECT code, qty FROM items",
            "DROP TABLE items",
            "ALTER TABLE items_new RENAME TO items",
        )
        drainer.drain_once()
        _sql(pg_url, "UPDATE items SET extra = 'y' WHERE code = 'b'")
        drainer.drain_once()
        after = s.source.installed_tables()["items"]
    assert after > before
    assert [d.change for d in _definitions(settings, "items")] == ["dropped", "created"]
    assert _shaped_rows(settings, "items") == {
        "a": {"code": "a", "qty": 1, "extra": "x"},
        "b": {"code": "b", "qty": 2, "extra": "y"},
    }


def test_a_foreign_key_added_to_a_table_nothing_referred_to_stops_then_install_resumes(
    pg_url: str, tmp_path: Path
) -> None:
    """The referenced table's rows were never in the drain's key index: the first row that
    uses the new reference stops the drain, loudly and keeping the queue, and `install`
    (as its hint says) indexes them so draining goes on with the row named by key."""
    settings = _installed(
        pg_url,
        tmp_path,
        "CREATE TABLE orders (id serial PRIMARY KEY, no text NOT NULL UNIQUE, item_id int)",
    )
    _sql(
        pg_url,
        "ALTER TABLE orders ADD FOREIGN KEY (item_id) REFERENCES items (id)",
        "INSERT INTO orders (no, item_id) SELECT 'o1', id FROM items WHERE code = 'a'",
    )
    with pytest.raises(CaptureError, match="never seen") as stopped:
        do_drain(settings)
    assert "nkdaemon install" in (stopped.value.hint or "")
    do_install(settings)
    do_drain(settings)
    [order] = [e for e in _events(settings, "orders") if e.op == "I"]
    assert order.row is not None and order.row["item_id"] == {"code": "a"}
