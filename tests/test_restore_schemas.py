"""Restore on schema shapes users have: cycles with self-references, keyless tables,
pre-seeded self-references, --table closures, restoring twice, identity columns, uuid ids,
quoted names, and --create-schema that keeps what the application needs (issue 9).

Each test builds a small source, installs capture, writes, drains, and restores through
the real command into real databases, comparing by natural key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, make_table_spec
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.sources.postgres import conninfo_from_url
from tests import pg
from tests.helpers import engine_for, run_cli, write_config


def _execute(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return sorted(conn.execute(query).fetchall(), key=repr)
        finally:
            conn.close()
    with psycopg.connect(conninfo_from_url(url)) as conn:
        return sorted(conn.execute(query).fetchall(), key=repr)


def _captured(tmp_path: Path, url: str, ddl: list[str], extra: str = "") -> Path:
    _execute(url, *ddl)
    config = write_config(tmp_path, url, extra)
    result = run_cli(config, "install")
    assert result.exit_code == 0, result.output
    return config


def _drain(config: Path) -> None:
    result = run_cli(config, "drain")
    assert result.exit_code == 0, result.output


def _restore(config: Path, target: str, *args: str, code: int = 0) -> str:
    result = run_cli(config, "restore", "--target", target, *args)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def target_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty target database of the dialect the test is parametrised with."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'target.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = pg.create_database(server)
    yield url
    pg.drop_database(server, url)


BOTH = pytest.mark.parametrize("target_db", ["sqlite", "postgresql"], indirect=True)


# --- defect 2: a self-reference inside a cycle ----------------------------------------------


def _spec(number: int, name: str, fks: list[tuple[str, str, bool]]) -> Any:
    columns = [ColumnSpec(name="id", logical_type="int", nullable=False)]
    columns.append(ColumnSpec(name="code", logical_type="text", nullable=False))
    columns += [ColumnSpec(name=c, logical_type="int", nullable=n) for c, _r, n in fks]
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(columns),
        primary_key=("id",),
        key_parts=(KeyPart(name="code", column="code"),),
        foreign_keys=tuple(
            ForeignKeySpec(columns=(c,), ref_table=r, ref_columns=("id",)) for c, r, _n in fks
        ),
    )


def test_insert_order_with_a_self_reference_inside_a_cycle_terminates() -> None:
    employees = _spec(1, "employees", [("manager_id", "employees", True), ("team_id", "teams", False)])
    teams = _spec(2, "teams", [("captain_id", "employees", True)])
    order = insert_order([employees, teams])
    assert order.tables == ("teams", "employees")
    assert [fk.columns for fk in order.deferred["employees"]] == [("manager_id",)]
    assert [fk.columns for fk in order.deferred["teams"]] == [("captain_id",)]


EMPLOYEES = [
    "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, captain_id INTEGER "
    "REFERENCES employees(id))",
    "CREATE TABLE employees (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
    "manager_id INTEGER REFERENCES employees(id), team_id INTEGER NOT NULL REFERENCES teams(id))",
]


@BOTH
def test_a_self_reference_inside_a_cycle_restores(tmp_path: Path, target_db: str) -> None:
    source = f"sqlite:///{tmp_path / 'app.db'}"
    config = _captured(tmp_path, source, EMPLOYEES)
    _execute(
        source,
        "INSERT INTO teams (id, name) VALUES (1, 'core')",
        "INSERT INTO employees VALUES (1, 'ann@x', NULL, 1), (2, 'bob@x', 1, 1)",
        "UPDATE teams SET captain_id = 2",
    )
    _drain(config)
    _restore(config, target_db, "--latest", "--create-schema")
    assert _rows(
        target_db,
        "SELECT e.email, m.email, t.name, c.email FROM employees e LEFT JOIN employees m "
        "ON m.id = e.manager_id JOIN teams t ON t.id = e.team_id LEFT JOIN employees c "
        "ON c.id = t.captain_id",
    ) == [("ann@x", None, "core", "bob@x"), ("bob@x", "ann@x", "core", "bob@x")]
