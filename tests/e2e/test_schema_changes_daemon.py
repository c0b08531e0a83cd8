"""Schema changes while `nkdaemon run` captures under a steady writer (issue 12).

Each step changes the schema the way an application's migration does, then writes; after
each step the source's content is recorded at an instant T. At the end every instant is
restored with --create-schema into an empty database, which must hold exactly what the
source held then, in the shape it had then. The oldest instant is also restored into
today's schema: refused while a column that held values is missing there, restored with
--ignore-missing-columns (the values left out listed). The daemon is SIGKILLed just after
one DDL commit and restarted: nothing is lost.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.runtime.config import load_settings
from tests import pg
from tests.daemon_harness import DaemonProcess, daemon_config, wait_caught_up
from tests.helpers import cli_status, do_install, engine_for, run_cli
from tests.natural_content import Content, differences, leave_millisecond, natural_content

pytestmark = pytest.mark.slow

PARENTS = 3


@dataclass
class Writer:
    """Inserts and updates items in small transactions until stopped; the lock pauses it."""

    engine: sa.Engine
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    count: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock, self.engine.begin() as conn:
                    n = next(self.count)
                    conn.exec_driver_sql(
                        "INSERT INTO items (sku, qty, parent_id) VALUES "
                        f"('w{n}', {n}, {n % PARENTS + 1})"
                    )
                    conn.exec_driver_sql(f"UPDATE items SET qty = qty + 1 WHERE sku = 'w{n // 2}'")
                time.sleep(0.005)
        except BaseException as exc:  # shown by the test, never swallowed
            self.errors.append(exc)


def _rebuild_items(conn: sa.Connection, columns: str, copy: str) -> None:
    """SQLite's recipe for what ALTER TABLE cannot do: new table, copy, drop, rename."""
    conn.exec_driver_sql(f"CREATE TABLE items_new ({columns})")
    conn.exec_driver_sql(f"INSERT INTO items_new SELECT {copy} FROM items")
    conn.exec_driver_sql("DROP TABLE items")
    conn.exec_driver_sql("ALTER TABLE items_new RENAME TO items")


def _step_add_column(conn: sa.Connection, dialect: str) -> None:
    conn.exec_driver_sql("ALTER TABLE items ADD COLUMN color TEXT DEFAULT 'none'")
    conn.exec_driver_sql("UPDATE items SET color = 'red' WHERE sku IN ('a1', 'w1')")
    conn.exec_driver_sql(
        "INSERT INTO items (sku, qty, parent_id, color) VALUES ('c1', 7, 1, 'blue')"
    )


def _step_rename_column(conn: sa.Connection, dialect: str) -> None:
    conn.exec_driver_sql("ALTER TABLE parents RENAME COLUMN label TO title")
    conn.exec_driver_sql("UPDATE parents SET title = 'renamed' WHERE code = 'p1'")


def _step_drop_column(conn: sa.Connection, dialect: str) -> None:
    if dialect == "postgresql":
        conn.exec_driver_sql("ALTER TABLE items DROP COLUMN note")
        return
    _rebuild_items(
        conn,
        "id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, qty INTEGER, "
        "parent_id INTEGER REFERENCES parents(id), color TEXT DEFAULT 'none'",
        "id, sku, qty, parent_id, color",
    )


def _step_change_type(conn: sa.Connection, dialect: str) -> None:
    if dialect == "postgresql":
        conn.exec_driver_sql("ALTER TABLE items ALTER COLUMN qty TYPE numeric(12, 2)")
    else:
        _rebuild_items(
            conn,
            "id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, qty REAL, "
            "parent_id INTEGER REFERENCES parents(id), color TEXT DEFAULT 'none'",
            "id, sku, CAST(qty AS REAL), parent_id, color",
        )
    conn.exec_driver_sql("UPDATE items SET qty = qty + 0.25 WHERE sku = 'a1'")


def _step_create_table(conn: sa.Connection, dialect: str) -> None:
    key = "id serial PRIMARY KEY" if dialect == "postgresql" else "id INTEGER PRIMARY KEY"
    conn.exec_driver_sql(
        f"CREATE TABLE tags ({key}, label TEXT NOT NULL UNIQUE, "
        "item_id INTEGER NOT NULL REFERENCES items(id))"
    )
    conn.exec_driver_sql(
        "INSERT INTO tags (label, item_id) "
        "SELECT 'tag-' || sku, id FROM items WHERE substr(sku, 1, 1) = 'a'"
    )


def _step_drop_table(conn: sa.Connection, dialect: str) -> None:
    conn.exec_driver_sql("DROP TABLE tags")


STEPS: list[tuple[str, Callable[[sa.Connection, str], None]]] = [
    ("add a column with a default", _step_add_column),
    ("rename a column", _step_rename_column),
    ("drop a column", _step_drop_column),
    ("change a column's type", _step_change_type),
    ("create a table that references another", _step_create_table),
    ("drop a table", _step_drop_table),
]


def _create_schema(engine: sa.Engine) -> None:
    dialect = engine.dialect.name
    key = "id serial PRIMARY KEY" if dialect == "postgresql" else "id INTEGER PRIMARY KEY"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE parents ({key}, code TEXT NOT NULL UNIQUE, label TEXT)")
        conn.exec_driver_sql(
            f"CREATE TABLE items ({key}, sku TEXT NOT NULL UNIQUE, qty INTEGER, "
            "parent_id INTEGER REFERENCES parents(id), note TEXT)"
        )
        for p in range(1, PARENTS + 1):
            conn.exec_driver_sql(f"INSERT INTO parents (code, label) VALUES ('p{p}', 'parent {p}')")
        for i in range(1, 6):
            conn.exec_driver_sql(
                f"INSERT INTO items (sku, qty, parent_id, note) VALUES ('a{i}', {i}, 1, 'note {i}')"
            )


@dataclass
class Target:
    """Fresh databases of the source's dialect to restore into."""

    dialect: str
    directory: Path
    server: str | None
    made: list[str] = field(default_factory=list)

    def new(self, name: str) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:///{self.directory / f'{name}.db'}"
        assert self.server is not None
        url = pg.create_database(self.server)
        self.made.append(url)
        return url

    def drop_all(self) -> None:
        for url in self.made:
            pg.drop_database(self.server or "", url)


@pytest.fixture(params=["postgresql", "sqlite"])
def source_and_targets(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Target]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}", Target("sqlite", tmp_path, None)
        return
    server: str = request.getfixturevalue("pg_server")
    target = Target("postgresql", tmp_path, server)
    yield str(request.getfixturevalue("pg_url")), target
    target.drop_all()


def _record(
    writer: Writer, url: str, tmp_path: Path, daemon: DaemonProcess, config: Path
) -> tuple[datetime, Content]:
    """The source's content at an instant T, with the writer paused and every change up to
    T drained (SQLite merges what one pass drains; T must fall between passes)."""
    with writer.lock:
        content = natural_content(url, tmp_path / "truth")
        moment = datetime.now(UTC)
        leave_millisecond(moment)
        wait_caught_up(daemon, config)
    return moment, content


def _restore(config: Path, target: str, moment: datetime, *extra: str) -> tuple[int, str]:
    result = run_cli(config, "restore", "--target", target, "--at", moment.isoformat(), *extra)
    return result.exit_code, result.output


def test_every_instant_restores_in_its_own_shape_across_schema_changes(
    source_and_targets: tuple[str, Target], tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    url, targets = source_and_targets
    dialect = targets.dialect
    engine = engine_for(url)
    _create_schema(engine)
    config = daemon_config(tmp_path, url)  # [capture] tables = "*": new tables too
    do_install(load_settings(config))
    daemon = daemons(config)
    daemon.wait_ready()
    writer = Writer(engine)
    thread = threading.Thread(target=writer.run)
    thread.start()
    instants: list[tuple[str, datetime, Content]] = []
    try:
        time.sleep(0.3)
        moment, content = _record(writer, url, tmp_path, daemon, config)
        instants.append(("before any change", moment, content))
        for number, (what, step) in enumerate(STEPS):
            with writer.lock, engine.begin() as conn:
                step(conn, dialect)
            if number == 2:  # killed just after a DDL commit: nothing may be lost
                daemon.sigkill()
                daemon = daemons(config, name="restarted")
                daemon.wait_ready()
            time.sleep(0.3)  # the writer goes on in the new shape
            moment, content = _record(writer, url, tmp_path, daemon, config)
            instants.append((what, moment, content))
    finally:
        writer.stop.set()
        thread.join()
    assert not writer.errors, writer.errors
    wait_caught_up(daemon, config)
    assert daemon.ready()[0] == 200, daemon.output()

    for index, (what, moment, expected) in enumerate(instants):
        target = targets.new(f"at{index}")
        code, output = _restore(config, target, moment, "--create-schema")
        assert code == 0, f"after '{what}': {output}"
        got = natural_content(target, tmp_path / f"got{index}")
        assert got == expected, f"after '{what}':\n" + "\n".join(differences(got, expected))

    # The oldest instant into today's schema (items no longer has `note`).
    today = targets.new("today")
    code, output = _restore(config, today, instants[-1][1], "--create-schema")
    assert code == 0, output
    with engine_for(today).begin() as conn:
        conn.exec_driver_sql("DELETE FROM items")
        conn.exec_driver_sql("DELETE FROM parents")
    oldest = instants[0][1]
    code, output = _restore(config, today, oldest)
    assert code != 0
    assert "note" in output and "--ignore-missing-columns" in output, output
    code, output = _restore(config, today, oldest, "--ignore-missing-columns")
    assert code == 0, output
    assert "note" in output, output  # the values left out are listed
    got = natural_content(today, tmp_path / "today")
    want = instants[0][2]
    assert set(got["items"]) == set(want["items"])
    for key, row in want["items"].items():
        # today's qty is numeric(12, 2) / REAL: the same number, written in today's type
        assert Decimal(str(got["items"][key]["qty"])) == Decimal(str(row["qty"])), key
        assert got["items"][key]["color"] == "none", key  # the target's default
    engine.dispose()


def test_a_lost_natural_key_stops_capture_loudly_and_a_declared_key_resumes_it(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """The key's column dropped (a SQLite table rebuilt without it): /readyz 503 and
    `status` exit 1 name the table, the changes stay queued; declaring another natural key
    in the configuration (the daemon reloads it and re-installs) lets draining go on."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, "
            "sku TEXT NOT NULL UNIQUE, qty INTEGER)"
        )
        conn.exec_driver_sql("INSERT INTO items (code, sku, qty) VALUES ('a', 's1', 1)")
    config = daemon_config(tmp_path, url)
    do_install(load_settings(config))
    daemon = daemons(config)
    daemon.wait_ready()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE n (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, qty INTEGER)"
        )
        conn.exec_driver_sql("INSERT INTO n SELECT id, sku, qty FROM items")
        conn.exec_driver_sql("DROP TABLE items")
        conn.exec_driver_sql("ALTER TABLE n RENAME TO items")
        conn.exec_driver_sql("UPDATE items SET qty = 2")
    _code, reasons = daemon.wait_for(
        "/readyz to say capture stopped", lambda: (r := daemon.ready())[0] == 503 and r
    )
    assert any("capture stopped" in r and "items" in r for r in reasons), reasons
    status = cli_status(config, exit_codes=(1,))
    assert status["queue_depth"] > 0
    config.write_text(config.read_text() + '\n[tables.items]\nnatural_key = ["sku"]\n')
    daemon.wait_for("/readyz 200 again", lambda: daemon.ready()[0] == 200, timeout=60)
    wait_caught_up(daemon, config)
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = run_cli(config, "restore", "--target", target, "--latest", "--create-schema")
    output = restored.output
    assert restored.exit_code == 0, output
    got = natural_content(target, tmp_path / "got")
    assert got == natural_content(url, tmp_path / "truth"), output
    engine.dispose()
