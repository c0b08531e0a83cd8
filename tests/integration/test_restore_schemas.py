"""Restore on schema shapes users have: cycles with self-references, keyless tables,
pre-seeded self-references, --table closures, restoring twice, identity columns, uuid ids,
quoted names, and --create-schema that keeps what the application needs (issue 9).

Each test builds a small source, installs capture, writes, drains, and restores through
the real command into real databases, comparing by natural key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
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
    """The rows a query gives, sorted; numbers compared as text (SQLite keeps numeric
    values as text, to keep them exact)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(query).fetchall()
        finally:
            conn.close()
    else:
        with psycopg.connect(conninfo_from_url(url)) as pg_conn:
            rows = pg_conn.execute(query).fetchall()
    return sorted(
        (tuple(str(v) if isinstance(v, Decimal) else v for v in row) for row in rows), key=repr
    )


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
    employees = _spec(
        1, "employees", [("manager_id", "employees", True), ("team_id", "teams", False)]
    )
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


# --- defect 3: keyless tables captured as whole rows ---------------------------------------


@BOTH
def test_whole_row_tables_restore_after_updates_and_deletes_with_nulls(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(
        tmp_path,
        pg_url,
        [
            "CREATE TABLE events_c (note text, n int)",
            "CREATE TABLE events_b (id serial PRIMARY KEY, note text, n int)",
            "INSERT INTO events_c VALUES ('a', 1), (NULL, 2), ('c', NULL), ('a', 1)",
            "INSERT INTO events_b (note, n) VALUES ('a', 1), (NULL, 2), ('c', NULL), ('a', 1)",
        ],
        '[tables.events_c]\nidentity = "full"\n[tables.events_b]\nidentity = "full"\n',
    )
    for table in ("events_c", "events_b"):
        _execute(
            pg_url,
            f"UPDATE {table} SET n = 20 WHERE note IS NULL",
            f"DELETE FROM {table} WHERE n IS NULL",
            f"INSERT INTO {table} (note, n) VALUES ('d', NULL)",
            f"UPDATE {table} SET note = 'dd' WHERE note = 'd'",
        )
    _drain(config)
    _restore(config, target_db, "--latest", "--create-schema")
    for table in ("events_c", "events_b"):
        assert _rows(target_db, f"SELECT note, n FROM {table}") == _rows(
            pg_url, f"SELECT note, n FROM {table}"
        )


# --- defects 4 and 6: targets that already hold rows -----------------------------------------

SHOP = [
    "CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text)",
    "CREATE TABLE categories (id serial PRIMARY KEY, slug text NOT NULL UNIQUE, "
    "parent_id int REFERENCES categories(id))",
    "CREATE TABLE products (id serial PRIMARY KEY, sku text NOT NULL UNIQUE, "
    "category_id int NOT NULL REFERENCES categories(id), price numeric(10,2))",
    "CREATE TABLE orders (id serial PRIMARY KEY, number int NOT NULL UNIQUE, "
    "customer_id int NOT NULL REFERENCES customers(id), product_id int REFERENCES products(id))",
    "CREATE TABLE audit (at text, what text)",
]
SHOP_CONFIG = '[tables.audit]\nidentity = "full"\n'
SHOP_ROWS = [
    "INSERT INTO customers (email, name) VALUES ('ann@x', 'Ann'), ('bob@x', 'Bob')",
    "INSERT INTO categories (slug) VALUES ('root')",
    "INSERT INTO categories (slug, parent_id) SELECT 'tools', id FROM categories "
    "WHERE slug = 'root'",
    "INSERT INTO products (sku, category_id, price) SELECT 'hammer', id, 9.99 FROM categories "
    "WHERE slug = 'tools'",
    "INSERT INTO orders (number, customer_id, product_id) SELECT 1, c.id, p.id FROM customers c, "
    "products p WHERE c.email = 'ann@x'",
    "INSERT INTO audit VALUES ('t1', 'order 1'), ('t1', 'order 1'), (NULL, 'x')",
]
SHOP_QUERIES = {
    "customers": "SELECT email, name FROM customers",
    "categories": "SELECT c.slug, p.slug FROM categories c LEFT JOIN categories p "
    "ON p.id = c.parent_id",
    "products": "SELECT p.sku, c.slug, p.price FROM products p JOIN categories c "
    "ON c.id = p.category_id",
    "orders": "SELECT o.number, c.email, p.sku FROM orders o JOIN customers c ON c.id = "
    "o.customer_id LEFT JOIN products p ON p.id = o.product_id",
    "audit": "SELECT at, what FROM audit",
}


def _same_content(source: str, target: str) -> None:
    for table, query in SHOP_QUERIES.items():
        assert _rows(target, query) == _rows(source, query), table


@BOTH
def test_restoring_the_same_state_twice_succeeds_and_changes_nothing(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, SHOP, SHOP_CONFIG)
    _execute(pg_url, *SHOP_ROWS)
    _execute(pg_url, "UPDATE customers SET email = 'ann@y' WHERE email = 'ann@x'")
    _drain(config)
    _restore(config, target_db, "--latest", "--create-schema")
    _same_content(pg_url, target_db)
    ids = _rows(target_db, "SELECT id, email FROM customers")
    _restore(config, target_db, "--latest", "--create-schema")
    _same_content(pg_url, target_db)
    assert _rows(target_db, "SELECT id, email FROM customers") == ids


@BOTH
def test_pre_seeded_rows_of_a_self_referencing_table_keep_their_parent(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, SHOP + SHOP_ROWS, SHOP_CONFIG)  # in the snapshot
    # the target holds the same categories, seeded with other ids
    _restore(config, target_db, "--latest", "--create-schema", "--table", "categories")
    _execute(
        target_db,
        "DELETE FROM categories",
        "INSERT INTO categories VALUES (7, 'root', NULL)",
        "INSERT INTO categories VALUES (5, 'tools', 7)",
    )
    _restore(config, target_db, "--latest", "--create-schema")
    _same_content(pg_url, target_db)


# --- defect 5: --table when a referenced row was renamed after the snapshot -----------------


@BOTH
def test_one_table_restores_with_the_rows_it_refers_to_as_they_were(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, SHOP + SHOP_ROWS, SHOP_CONFIG)  # in the snapshot
    _execute(pg_url, "UPDATE customers SET email = 'ann@z' WHERE email = 'ann@x'")
    _drain(config)
    strict = ("--latest", "--table", "orders", "--create-schema", "--no-referenced-rows")
    refused = _restore(config, target_db, *strict, code=1)
    assert 'customers rows the target lacks: {"email": "ann@z"}' in refused
    output = _restore(config, target_db, "--latest", "--table", "orders", "--create-schema")
    assert "added 1 rows of customers" in output
    assert _rows(target_db, SHOP_QUERIES["orders"]) == _rows(pg_url, SHOP_QUERIES["orders"])
    assert _rows(target_db, "SELECT email FROM customers") == [("ann@z",)]  # only what is needed


# --- defect 9: identity ALWAYS, uuid ids, quoted names, keys of a foreign key and a column --

IDS = [
    "CREATE TABLE accounts (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "code text NOT NULL UNIQUE)",
    "CREATE TABLE orders (id uuid DEFAULT gen_random_uuid() PRIMARY KEY, "
    "number int NOT NULL UNIQUE, account_id int NOT NULL REFERENCES accounts)",
    'CREATE TABLE "Line Items" ("Id" bigserial PRIMARY KEY, order_id uuid NOT NULL '
    'REFERENCES orders, "line no" int NOT NULL, "Select" text, UNIQUE (order_id, "line no"))',
]
IDS_ROWS = [
    "INSERT INTO accounts (code) VALUES ('a1'), ('a2')",
    "INSERT INTO orders (number, account_id) SELECT 10 + id, id FROM accounts",
    'INSERT INTO "Line Items" (order_id, "line no", "Select") SELECT id, 1, \'x\' FROM orders',
]
IDS_QUERY = (
    'SELECT a.code, o.number, l."line no", l."Select" FROM "Line Items" l JOIN orders o '
    "ON o.id = l.order_id JOIN accounts a ON a.id = o.account_id"
)


@BOTH
def test_identity_always_uuid_ids_and_quoted_names_restore(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, IDS + IDS_ROWS)
    _execute(
        pg_url,
        "INSERT INTO accounts (code) VALUES ('a3')",
        "INSERT INTO orders (number, account_id) SELECT 99, id FROM accounts WHERE code = 'a3'",
        'INSERT INTO "Line Items" (order_id, "line no") SELECT id, 2 FROM orders',
        "UPDATE accounts SET code = 'a1x' WHERE code = 'a1'",
    )
    _drain(config)
    _restore(config, target_db, "--latest", "--create-schema")
    assert _rows(target_db, IDS_QUERY) == _rows(pg_url, IDS_QUERY)


def test_identity_always_and_uuid_ids_restore_into_the_applications_own_schema(
    tmp_path: Path, pg_url: str, pg_server: str
) -> None:
    config = _captured(tmp_path, pg_url, IDS + IDS_ROWS)
    _execute(pg_url, "UPDATE accounts SET code = 'a1x' WHERE code = 'a1'")
    _drain(config)
    target = pg.create_database(pg_server)
    try:
        _execute(target, *IDS, "INSERT INTO accounts (code) VALUES ('seeded')")
        _restore(config, target, "--latest")
        assert _rows(target, IDS_QUERY) == _rows(pg_url, IDS_QUERY)
        _execute(target, "INSERT INTO accounts (code) VALUES ('next')")  # ids still drawn
    finally:
        pg.drop_database(pg_server, target)


# --- defect 8: --create-schema makes a database the application can use --------------------

APP = [
    "CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, "
    "vip boolean NOT NULL DEFAULT false, created timestamptz NOT NULL DEFAULT now(), "
    "note text DEFAULT 'none'::text, score int CHECK (score >= 0), region text)",
    "CREATE INDEX customers_region ON customers (region)",
    "CREATE TABLE orders (id serial PRIMARY KEY, number int NOT NULL UNIQUE, "
    "customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE, qty int NOT NULL DEFAULT 1)",
    "INSERT INTO customers (email, score, region) VALUES ('ann@x', 3, 'north')",
    "INSERT INTO orders (number, customer_id) SELECT 1, id FROM customers",
]


def _refused_by_target(url: str, statement: str) -> bool:
    try:
        _execute(url, statement)
    except Exception:
        return True
    return False


@BOTH
def test_create_schema_keeps_defaults_checks_actions_and_indexes(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, APP)
    output = _restore(config, target_db, "--latest", "--create-schema")
    # the application's first inserts rely on the defaults
    _execute(target_db, "INSERT INTO customers (email) VALUES ('new@x')")
    _execute(
        target_db,
        "INSERT INTO orders (number, customer_id) SELECT 2, id FROM customers "
        "WHERE email = 'new@x'",
    )
    assert _rows(target_db, "SELECT email, vip, note FROM customers WHERE email = 'new@x'") in (
        [("new@x", False, "none")],
        [("new@x", 0, "none")],  # SQLite keeps booleans as integers
    )
    assert _rows(target_db, "SELECT count(*) FROM orders WHERE qty = 1") == [(2,)]
    # ON DELETE CASCADE, as the application expects
    _execute(target_db, "DELETE FROM customers WHERE email = 'ann@x'")
    assert _rows(target_db, "SELECT number FROM orders") == [(2,)]
    index_query = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'customers_region'"
        if target_db.startswith("sqlite")
        else "SELECT indexname FROM pg_indexes WHERE indexname = 'customers_region'"
    )
    assert _rows(target_db, index_query) == [("customers_region",)]
    if target_db.startswith("sqlite"):  # across dialects: what did not map is said
        assert "customers: check" in output and "not reproduced" in output
    else:
        assert "not reproduced" not in output
        assert _refused_by_target(
            target_db, "INSERT INTO customers (email, score) VALUES ('neg@x', -1)"
        )


# --- whole-row tables whose rows refer to others, into a target holding rows of its own ----

LEDGER = [
    "CREATE TABLE accounts (id serial PRIMARY KEY, code text NOT NULL UNIQUE)",
    "CREATE TABLE ledger (what text, amount int, account_id int REFERENCES accounts(id))",
    "INSERT INTO accounts (code) VALUES ('cash'), ('bank')",
    "INSERT INTO ledger SELECT 'opening', 10, id FROM accounts",
    "INSERT INTO ledger SELECT 'opening', 10, id FROM accounts WHERE code = 'cash'",
]
LEDGER_QUERY = (
    "SELECT l.what, l.amount, a.code FROM ledger l LEFT JOIN accounts a ON a.id = l.account_id"
)


@BOTH
def test_whole_rows_that_refer_to_others_restore_beside_the_targets_own_rows(
    tmp_path: Path, pg_url: str, target_db: str
) -> None:
    config = _captured(tmp_path, pg_url, LEDGER, '[tables.ledger]\nidentity = "full"\n')
    # a logged delete and update of whole rows that hold a reference (named by its key)
    _execute(
        pg_url,
        "DELETE FROM ledger WHERE ctid = (SELECT l.ctid FROM ledger l JOIN accounts a "
        "ON a.id = l.account_id WHERE a.code = 'cash' LIMIT 1)",
        "UPDATE ledger SET amount = 12 FROM accounts a WHERE a.id = ledger.account_id "
        "AND a.code = 'bank'",
    )
    _drain(config)
    _restore(config, target_db, "--latest", "--create-schema")
    assert _rows(target_db, LEDGER_QUERY) == _rows(pg_url, LEDGER_QUERY)
    # the target's application adds a row of its own: a restore leaves it, and says so
    _execute(target_db, "INSERT INTO ledger SELECT 'mine', 1, id FROM accounts WHERE code = 'cash'")
    output = _restore(config, target_db, "--latest")
    assert "1 rows of ledger exist only in the target; left alone" in output
    assert _rows(target_db, LEDGER_QUERY) == sorted(
        [*_rows(pg_url, LEDGER_QUERY), ("mine", 1, "cash")]
    )
    _restore(config, target_db, "--latest", "--prune-target")
    assert _rows(target_db, LEDGER_QUERY) == _rows(pg_url, LEDGER_QUERY)
