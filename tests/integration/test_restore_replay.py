"""Replay of the log into a target: runs of insert/update transactions are applied as their
net change (each row's last version, parents first), and fall back to log order exactly
when the target refuses that shortcut.

The hazard: a target's unique constraint on a column that is not the natural key. Two rows
swapping a value across three transactions (A: 1 -> 99, B: 2 -> 1, A: 99 -> 2) are fine in
log order, but the net change applied row by row collides on the way. The restore must
still give the source's state at every instant, and references inside the run (a parent
inserted after its child refers to it, a cycle within one table) must come out right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nkdaemon.runtime.config import load_settings
from tests import pg
from tests.helpers import do_drain, do_install, engine_for, run_cli, write_config

CONFIG = """
[capture]
tables = ["owners", "items", "codes"]
[tables.items]
natural_key = ["code"]
"""

STATE_SQL = (
    "SELECT i.code, i.slot, i.note, o.name, p.code FROM items i "
    "LEFT JOIN owners o ON o.id = i.owner_id LEFT JOIN items p ON p.id = i.parent_id "
    "ORDER BY i.code"
)


def _ddl(dialect: str) -> list[str]:
    pk = "serial PRIMARY KEY" if dialect == "postgresql" else "integer PRIMARY KEY"
    return [
        "CREATE TABLE codes (code text PRIMARY KEY, label text, weight integer)",
        f"CREATE TABLE owners (id {pk}, name text NOT NULL UNIQUE)",
        f"CREATE TABLE items (id {pk}, code text NOT NULL UNIQUE, slot integer NOT NULL UNIQUE,"
        " note text, owner_id integer REFERENCES owners (id),"
        " parent_id integer REFERENCES items (id))",
    ]


def _run(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _state(url: str) -> list[tuple[Any, ...]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(STATE_SQL)]
    engine.dispose()
    return rows


@dataclass
class Databases:
    dialect: str
    source: str
    make_target: Callable[[], str]  # a new empty database with the application's schema


@pytest.fixture(params=["postgresql", "sqlite"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    dialect = str(request.param)
    created: list[str] = []
    numbers = iter(range(1000))
    server = str(request.getfixturevalue("pg_server")) if dialect == "postgresql" else ""

    def make() -> str:
        if dialect == "sqlite":
            url = f"sqlite:///{tmp_path / f'db{next(numbers)}.db'}"
        else:
            url = pg.create_database(server)
        created.append(url)
        return url

    source = make()
    created.clear()

    def make_target() -> str:
        url = make()
        _run(url, *_ddl(dialect))
        return url

    try:
        yield Databases(dialect, source, make_target)
    finally:
        if dialect == "postgresql":
            for url in [source, *created]:
                pg.drop_database(server, url)


def _instant() -> datetime:
    time.sleep(0.02)
    moment = datetime.now(UTC)
    time.sleep(0.02)
    return moment


def test_a_unique_value_swapped_across_transactions_restores_exactly_at_every_instant(
    databases: Databases, tmp_path: Path
) -> None:
    source = databases.source
    _run(
        source,
        *_ddl(databases.dialect),
        "INSERT INTO owners (name) VALUES ('ann')",
        "INSERT INTO items (code, slot, owner_id) VALUES ('A', 1, 1), ('B', 2, 1)",
    )
    config = write_config(tmp_path, source, CONFIG)
    settings = load_settings(config)
    do_install(settings)
    instants: list[tuple[datetime, list[tuple[Any, ...]]]] = []

    def commit(*statements: str) -> None:
        _run(source, *statements)
        do_drain(settings)  # SQLite knows one commit time per drain pass, not per transaction
        instants.append((_instant(), _state(source)))

    # one run of insert/update transactions, no rename and no delete: folded on replay
    commit("UPDATE items SET slot = 99 WHERE code = 'A'")
    commit("UPDATE items SET slot = 1, note = 'took 1' WHERE code = 'B'")
    commit("UPDATE items SET slot = 2, note = 'took 2' WHERE code = 'A'")
    commit(
        "INSERT INTO owners (name) VALUES ('bo')",
        "INSERT INTO items (code, slot, owner_id) SELECT 'C', 3, id FROM owners WHERE name = 'bo'",
    )
    commit(
        "INSERT INTO items (code, slot, parent_id) SELECT 'D', 4, id FROM items WHERE code = 'C'"
    )
    commit(  # a cycle inside one table, closed by an update
        "UPDATE items SET parent_id = (SELECT id FROM items WHERE code = 'D'), note = 'loop' "
        "WHERE code = 'C'"
    )
    commit(
        "UPDATE items SET slot = 50 WHERE code = 'D'",
        "UPDATE items SET slot = 4 WHERE code = 'C'",
    )
    assert instants[-1][1] == [
        ("A", 2, "took 2", "ann", None),
        ("B", 1, "took 1", "ann", None),
        ("C", 4, "loop", "bo", "D"),
        ("D", 50, None, None, "C"),
    ]

    target = databases.make_target()
    result = run_cli(config, "restore", "--target", target, "--latest")
    assert result.exit_code == 0, result.output
    assert _state(target) == instants[-1][1]

    # every earlier instant (the last one is after the last logged commit: --latest above)
    for number, (moment, expected) in enumerate(instants[:-1]):
        target = databases.make_target()
        result = run_cli(config, "restore", "--target", target, "--at", moment.isoformat())
        assert result.exit_code == 0, f"instant {number}: {result.output}"
        assert _state(target) == expected, f"instant {number}"


BULK = 25_000
CODES = [
    ("plain", "a label", 1),
    ("tab\tnewline\nreturn\rback\\slash", "\\N is not null", None),
    ("ünïcödé 🧾", None, -2147483648),
    ("quote'double\"", "", 2147483647),
]


def test_a_table_keyed_by_its_own_columns_loads_from_the_snapshot_exactly(
    databases: Databases, tmp_path: Path
) -> None:
    """Such a table (no id to draw, no reference to resolve) is streamed into the target
    in one COPY; every awkward character must survive it."""
    source = databases.source
    _run(source, *_ddl(databases.dialect))
    engine = engine_for(source)
    with engine.begin() as conn:
        for row in CODES:
            conn.exec_driver_sql(
                "INSERT INTO codes VALUES (?, ?, ?)".replace("?", _mark(source)), row
            )
        conn.exec_driver_sql(  # more rows than one reader block (1 MB of text) holds
            "INSERT INTO codes VALUES (?, ?, ?)".replace("?", _mark(source)),
            [(f"bulk-{n}", f"label {n}", n) for n in range(BULK)],
        )
    engine.dispose()
    config = write_config(tmp_path, source, CONFIG)
    do_install(load_settings(config))

    target = databases.make_target()
    result = run_cli(config, "restore", "--target", target, "--latest")
    assert result.exit_code == 0, result.output
    assert _codes(target) == _codes(source)
    assert len(_codes(target)) == len(CODES) + BULK


def _mark(url: str) -> str:
    return "%s" if url.startswith("postgresql") else "?"


def _codes(url: str) -> list[tuple[Any, ...]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM codes ORDER BY code")]
    engine.dispose()
    return rows
