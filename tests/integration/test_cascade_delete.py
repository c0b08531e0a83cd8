"""An ON DELETE CASCADE in the source: the log and every later restore stay right.

PostgreSQL runs a cascade's deletes with the referencing table's triggers held back to
the end of the statement, so the log of ``DELETE FROM parent`` holds the parent's delete
*before* its children's deletes; SQLite deletes the children first. Either way each child
delete must name its parent by the key it had at that moment, and a restore must apply
them to a target that has no CASCADE of its own (``--create-schema``, any dialect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nkdaemon.runtime.config import load_settings
from tests import pg
from tests.helpers import do_drain, do_install, engine_for, logged, run_cli, write_config

SCHEMA = {
    "postgresql": (
        "CREATE TABLE parent (id serial PRIMARY KEY, code text NOT NULL UNIQUE)",
        "CREATE TABLE child (id serial PRIMARY KEY, "
        "parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE, "
        "n int NOT NULL, UNIQUE (parent_id, n))",
        "CREATE TABLE grandchild (id serial PRIMARY KEY, "
        "child_id int NOT NULL REFERENCES child ON DELETE CASCADE, "
        "tag text NOT NULL, UNIQUE (child_id, tag))",
    ),
    "sqlite": (
        "CREATE TABLE parent (id integer PRIMARY KEY, code text NOT NULL UNIQUE)",
        "CREATE TABLE child (id integer PRIMARY KEY, "
        "parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE, "
        "n int NOT NULL, UNIQUE (parent_id, n))",
        "CREATE TABLE grandchild (id integer PRIMARY KEY, "
        "child_id int NOT NULL REFERENCES child ON DELETE CASCADE, "
        "tag text NOT NULL, UNIQUE (child_id, tag))",
    ),
}
CHILDREN_SQL = (
    "SELECT p.code, c.n FROM child c LEFT JOIN parent p ON p.id = c.parent_id ORDER BY 1, 2"
)
GRANDCHILDREN_SQL = (
    "SELECT p.code, c.n, g.tag FROM grandchild g LEFT JOIN child c ON c.id = g.child_id "
    "LEFT JOIN parent p ON p.id = c.parent_id ORDER BY 1, 2, 3"
)


def _execute(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(sql)]
    engine.dispose()
    return rows


@pytest.fixture
def cascaded(db_url: str, tmp_path: Path) -> Path:
    """Two parents, three children, a grandchild each; capture installed; parent p1
    deleted (its two children and their grandchildren cascade); drained. Returns the
    configuration file."""
    dialect = sa.make_url(db_url).get_backend_name()
    _execute(
        db_url,
        *SCHEMA[dialect],
        "INSERT INTO parent (code) VALUES ('p1'), ('p2')",
        "INSERT INTO child (parent_id, n) VALUES (1, 1), (1, 2), (2, 1)",
        "INSERT INTO grandchild (child_id, tag) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    config = write_config(tmp_path, db_url)
    do_install(load_settings(config))
    _execute(db_url, "DELETE FROM parent WHERE code = 'p1'")
    do_drain(load_settings(config))
    return config


def test_cascaded_child_deletes_name_their_parent_by_key(cascaded: Path) -> None:
    (tx,) = logged(load_settings(cascaded))
    deleted = [(e.table, e.key) for e in tx.events]
    assert sorted(deleted, key=str) == sorted(
        [
            ("parent", {"code": "p1"}),
            ("child", {"parent_id": {"code": "p1"}, "n": 1}),
            ("child", {"parent_id": {"code": "p1"}, "n": 2}),
            ("grandchild", {"child_id": {"parent_id": {"code": "p1"}, "n": 1}, "tag": "a"}),
            ("grandchild", {"child_id": {"parent_id": {"code": "p1"}, "n": 2}, "tag": "b"}),
        ],
        key=str,
    )


def test_a_restore_after_a_cascaded_delete_holds_only_the_surviving_rows(
    cascaded: Path, tmp_path: Path, pg_server: str
) -> None:
    """Into an empty SQLite file and an empty PostgreSQL database (--create-schema: no
    CASCADE there), and into a PostgreSQL database with the application's schema, whose
    CASCADE deletes the children before the log does."""
    empty_pg, with_cascade = pg.create_database(pg_server), pg.create_database(pg_server)
    try:
        _execute(with_cascade, *SCHEMA["postgresql"])
        for target in (f"sqlite:///{tmp_path / 'restored.db'}", empty_pg, with_cascade):
            result = run_cli(cascaded, "restore", "--target", target, "--latest", "--create-schema")
            assert result.exit_code == 0, f"{target}: {result.output}"
            assert _rows(target, "SELECT code FROM parent") == [("p2",)]
            assert _rows(target, CHILDREN_SQL) == [("p2", 1)]
            assert _rows(target, GRANDCHILDREN_SQL) == [("p2", 1, "c")]
    finally:
        pg.drop_database(pg_server, empty_pg)
        pg.drop_database(pg_server, with_cascade)
