"""What a restore target must do, written once and run against every backend.

``TargetContract`` is the abstract case (pytest does not collect it: its name does not
start with Test); ``TestSqliteTarget`` and ``TestPostgresTarget`` each bind it to a real,
fresh database. Every test works the way restore does: tables made by ``create`` (as
--create-schema makes them), values turned into parameters by the target's own
``converter``/``param``, ids from ``allocate``, all in the target's one transaction, and
what the application sees checked from a second connection after commit or rollback.
"""

from __future__ import annotations

import base64
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import psycopg
import pytest
from sqlalchemy.engine import make_url

from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, make_table_spec
from nkdaemon.targets.factory import open_target
from nkdaemon.targets.postgres import PostgresTarget
from nkdaemon.targets.sqlite import SqliteTarget
from nkdaemon.targets.table import Address, RestoreTargetError, TargetTable

Target = PostgresTarget | SqliteTarget


def _column(name: str, logical_type: str, nullable: bool = True) -> ColumnSpec:
    return ColumnSpec(name=name, logical_type=logical_type, nullable=nullable)


PARENTS = make_table_spec(
    number=1,
    name="parents",
    schema=None,
    columns=(
        _column("id", "int", nullable=False),
        _column("name", "text", nullable=False),
        _column("qty", "int"),
        _column("flag", "bool"),
        _column("blob", "bytes"),
        _column("doc", "json"),
    ),
    primary_key=("id",),
    key_parts=(KeyPart(name="name", column="name"),),
    foreign_keys=(),
)
TO_PARENT = ForeignKeySpec(columns=("parent_id",), ref_table="parents", ref_columns=("id",))
CHILDREN = make_table_spec(
    number=2,
    name="children",
    schema=None,
    columns=(
        _column("id", "int", nullable=False),
        _column("parent_id", "int", nullable=False),
        _column("label", "text", nullable=False),
    ),
    primary_key=("id",),
    key_parts=(
        KeyPart(name="parent_id", foreign_key=TO_PARENT),
        KeyPart(name="label", column="label"),
    ),
    foreign_keys=(TO_PARENT,),
)
TOKENS = make_table_spec(  # a uuid surrogate key: ids are drawn by the restore
    number=3,
    name="tokens",
    schema=None,
    columns=(_column("id", "uuid", nullable=False), _column("name", "text", nullable=False)),
    primary_key=("id",),
    key_parts=(KeyPart(name="name", column="name"),),
    foreign_keys=(),
)
LOOSE = make_table_spec(  # no primary key: rows captured whole, duplicates allowed
    number=4,
    name="loose",
    schema=None,
    columns=(_column("word", "text"), _column("n", "int")),
    primary_key=(),
    key_parts=(),
    foreign_keys=(),
    full_row_identity=True,
)
SPECS = (PARENTS, CHILDREN, TOKENS, LOOSE)

BLOB = base64.b64encode(bytes([0, 1, 254, 255])).decode("ascii")  # canonical bytes: base64


def _parent(name: str, **values: Any) -> dict[str, Any]:
    """A canonical parents row without its id."""
    return {"name": name, "qty": None, "flag": None, "blob": None, "doc": None, **values}


class TargetContract:
    """The abstract case: what restore relies on from any target."""

    dialect: ClassVar[str]  # the target's, and the backup's source dialect here
    pseudo_address: ClassVar[str]  # the system column addressing rows of a keyless table

    def run_sql(self, url: str, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement as the application would, outside the target's transaction."""
        raise NotImplementedError

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def target(self, url: str) -> Iterator[Target]:
        target = open_target(url, source_dialect=self.dialect)
        yield target
        target.rollback()
        target.close()

    def make(self, target: Target) -> dict[str, TargetTable]:
        """Create the test tables and inspect them, as --create-schema does."""
        assert target.create(SPECS) == []
        tables = {spec.name: target.inspect(spec) for spec in SPECS}
        assert all(tables.values())
        return {name: table for name, table in tables.items() if table is not None}

    def write(
        self, target: Target, table: TargetTable, rows: Sequence[dict[str, Any]]
    ) -> list[Address]:
        """Insert canonical rows under fresh ids, as restore does; their addresses."""
        columns = [c for c in rows[0] if c != "id"]
        converters = [target.converter(table, c) for c in columns]
        ids = target.allocate(table, len(rows))
        values = [
            [f(row[c]) for c, f in zip(columns, converters, strict=True)] + [new_id]
            for row, new_id in zip(rows, ids, strict=True)
        ]
        target.insert(table, [*columns, "id"], values)
        return [(new_id,) for new_id in ids]

    def read(self, target: Target, table: TargetTable) -> list[dict[str, Any]]:
        """The rows of a table with a name column, in name order."""
        return sorted(target.read(table), key=lambda row: str(row["name"]))

    # --- definitions ---------------------------------------------------------------------

    def test_inspect_finds_no_table_the_target_lacks(self, target: Target) -> None:
        assert target.inspect(PARENTS) is None

    def test_create_makes_tables_that_inspect_describes(self, target: Target) -> None:
        tables = self.make(target)
        parents = tables["parents"]
        assert parents.columns == [c.name for c in PARENTS.columns]
        assert parents.primary_key == ("id",)
        assert parents.generated and not parents.uuid_ids
        assert parents.rows_before == 0
        assert tables["tokens"].generated and tables["tokens"].uuid_ids
        assert tables["loose"].primary_key == (self.pseudo_address,)

    def test_inspect_counts_the_rows_a_table_already_holds(self, target: Target, url: str) -> None:
        self.make(target)
        target.commit()
        self.run_sql(url, "INSERT INTO parents (name) VALUES ('app 1'), ('app 2')")
        again = open_target(url, source_dialect=self.dialect)
        try:
            table = again.inspect(PARENTS)
            assert table is not None and table.rows_before == 2
        finally:
            again.close()

    # --- ids -----------------------------------------------------------------------------

    def test_allocate_draws_ids_no_row_holds(self, target: Target, url: str) -> None:
        self.make(target)
        target.commit()
        self.run_sql(url, "INSERT INTO parents (name) VALUES ('app 1'), ('app 2')")
        held = {row[0] for row in self.run_sql(url, "SELECT id FROM parents")}
        again = open_target(url, source_dialect=self.dialect)
        try:
            table = again.inspect(PARENTS)
            assert table is not None
            first = again.allocate(table, 3)
            second = again.allocate(table, 2)
        finally:
            again.close()
        drawn = [*first, *second]
        assert len(set(drawn)) == 5 and not set(drawn) & held
        assert all(isinstance(i, int) for i in drawn)

    def test_allocate_draws_past_ids_the_application_set_itself(
        self, target: Target, url: str
    ) -> None:
        """Rows inserted with explicit ids leave a sequence behind (PostgreSQL's serial
        does not move); the ids drawn must still be free."""
        self.make(target)
        target.commit()
        self.run_sql(url, "INSERT INTO parents (id, name) VALUES (1, 'app 1'), (2, 'app 2')")
        again = open_target(url, source_dialect=self.dialect)
        try:
            table = again.inspect(PARENTS)
            assert table is not None
            drawn = again.allocate(table, 3)
        finally:
            again.close()
        assert not set(drawn) & {1, 2} and len(set(drawn)) == 3

    def test_allocate_draws_random_uuids_for_a_uuid_key(self, target: Target) -> None:
        tokens = self.make(target)["tokens"]
        self.write(target, tokens, [{"name": "a"}, {"name": "b"}])
        names = {row["name"]: row["id"] for row in target.read(tokens)}
        assert names.keys() == {"a", "b"}
        assert all(str(uuid.UUID(i)) == i for i in names.values())  # canonical uuid text

    def test_allocate_refuses_a_table_without_generated_ids(self, target: Target) -> None:
        loose = self.make(target)["loose"]
        with pytest.raises(RestoreTargetError, match="generates no ids"):
            target.allocate(loose, 1)

    def test_advance_readies_sequences_for_the_applications_next_insert(
        self, target: Target, url: str
    ) -> None:
        parents = self.make(target)["parents"]
        converters = [target.converter(parents, c) for c in ("id", "name")]
        rows = [[f(v) for f, v in zip(converters, (i, f"p{i}"), strict=True)] for i in (90, 91)]
        target.insert(parents, ["id", "name"], rows)  # ids from the backup, not the sequence
        target.advance(parents)
        target.commit()
        self.run_sql(url, "INSERT INTO parents (name) VALUES ('after')")
        assert self.run_sql(url, "SELECT id FROM parents WHERE name = 'after'") == [(92,)]

    # --- writing and reading rows --------------------------------------------------------

    def test_rows_read_back_as_the_canonical_values_written(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        rows = [
            _parent("all", qty=3, flag=True, blob=BLOB, doc='{"a":[1,2.5]}'),
            _parent("nulls"),
            _parent("json null", flag=False, doc="null"),  # JSON null, not SQL NULL
            _parent("unicode \u05e9\u05dc\u05d5\u05dd 🧾 ' \" \\", qty=-(2**62)),
        ]
        addresses = self.write(target, parents, rows)
        expected = [{**row, "id": a[0]} for row, a in zip(rows, addresses, strict=True)]
        assert self.read(target, parents) == sorted(expected, key=lambda row: str(row["name"]))

    def test_insert_takes_a_stream_of_rows(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        ids = target.allocate(parents, 3)
        stream = ((new_id, f"streamed {new_id}") for new_id in ids)
        target.insert(parents, ["id", "name"], stream)
        assert {row["name"] for row in target.read(parents)} == {f"streamed {i}" for i in ids}

    def test_insert_and_update_inside_a_batch(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        with target.batch():
            (address,) = self.write(target, parents, [_parent("batched", qty=1)])
            target.update(parents, ["qty"], [[2, *address]])
        assert [(r["name"], r["qty"]) for r in target.read(parents)] == [("batched", 2)]

    def test_find_gives_the_address_of_each_key_present(self, target: Target) -> None:
        tables = self.make(target)
        parents, children = tables["parents"], tables["children"]
        a, b = self.write(target, parents, [_parent("a"), _parent("b")])
        (child,) = self.write(target, children, [{"parent_id": a[0], "label": "x"}])
        found = target.find(parents, ["name"], [("a",), ("b",), ("missing",)])
        assert found == {("a",): a, ("b",): b}
        assert target.find(children, ["parent_id", "label"], [(a[0], "x"), (b[0], "x")]) == {
            (a[0], "x"): child
        }
        assert target.find(parents, ["name"], []) == {}

    def test_find_one_equal_matches_null_with_null(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        columns = ["qty", "doc"]
        json_null, sql_null = self.write(
            target, parents, [_parent("json", doc="null"), _parent("sql", doc=None)]
        )

        def equal(*values: Any) -> Address | None:
            params = [target.param(parents, c, v) for c, v in zip(columns, values, strict=True)]
            return target.find_one_equal(parents, columns, params)

        assert equal(None, None) == sql_null  # SQL NULL equals SQL NULL, not JSON null
        assert equal(None, "null") == json_null
        assert equal(1, None) is None

    def test_update_changes_the_row_at_an_address(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        a, _b = self.write(target, parents, [_parent("a", qty=1), _parent("b", qty=1)])
        target.update(parents, ["name", "qty"], [["a2", 5, *a]])
        assert {(r["name"], r["qty"]) for r in target.read(parents)} == {("a2", 5), ("b", 1)}
        target.update(parents, ["qty"], [])  # nothing to do is allowed

    def test_delete_and_addresses(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        a, b, c = self.write(target, parents, [_parent("a"), _parent("b"), _parent("c")])
        assert set(target.addresses(parents)) == {a, b, c}
        target.delete(parents, [a, c])
        target.delete(parents, [])
        assert list(target.addresses(parents)) == [b]
        target.delete_all(parents)
        assert list(target.addresses(parents)) == []

    def test_a_keyless_table_is_addressed_by_its_system_column(self, target: Target) -> None:
        loose = self.make(target)["loose"]
        converters = [target.converter(loose, c) for c in ("word", "n")]
        rows = [("w", 1), ("w", 1), ("v", None)]
        target.insert(
            loose, ["word", "n"], [[f(v) for f, v in zip(converters, r, strict=True)] for r in rows]
        )
        read = list(target.read(loose))
        assert sorted((r["word"], r["n"]) for r in read) == [("v", None), ("w", 1), ("w", 1)]
        assert len({r[self.pseudo_address] for r in read}) == 3  # every row its own address
        duplicate = target.find_one_equal(loose, ["word", "n"], ["w", 1])
        assert duplicate is not None
        target.delete(loose, [duplicate])  # one of two equal rows, not both
        assert sorted((r["word"], r["n"]) for r in target.read(loose)) == [("v", None), ("w", 1)]
        assert len(list(target.addresses(loose))) == 2

    # --- the one transaction -------------------------------------------------------------

    def test_rollback_leaves_nothing(self, target: Target, url: str) -> None:
        parents = self.make(target)["parents"]
        self.write(target, parents, [_parent("gone")])
        target.rollback()
        target.close()
        again = open_target(url, source_dialect=self.dialect)
        try:
            assert again.inspect(PARENTS) is None
        finally:
            again.close()

    def test_rollback_leaves_rows_already_there_as_they_were(
        self, target: Target, url: str
    ) -> None:
        self.make(target)
        target.commit()
        self.run_sql(url, "INSERT INTO parents (name, qty) VALUES ('kept', 1)")
        again = open_target(url, source_dialect=self.dialect)
        try:
            parents = again.inspect(PARENTS)
            assert parents is not None
            self.write(again, parents, [_parent("new")])
            again.update(parents, ["qty"], [[2, *next(again.addresses(parents))]])
            again.delete_all(parents)
            again.rollback()
        finally:
            again.close()
        assert self.run_sql(url, "SELECT name, qty FROM parents") == [("kept", 1)]

    def test_commit_makes_the_rows_visible(self, target: Target, url: str) -> None:
        parents = self.make(target)["parents"]
        self.write(target, parents, [_parent("a"), _parent("b")])
        target.check_constraints()
        target.commit()
        assert sorted(self.run_sql(url, "SELECT name FROM parents")) == [("a",), ("b",)]

    def test_a_child_may_arrive_before_its_parent(self, target: Target, url: str) -> None:
        tables = self.make(target)
        parents, children = tables["parents"], tables["children"]
        (parent_id,) = target.allocate(parents, 1)
        self.write(target, children, [{"parent_id": parent_id, "label": "early"}])
        target.insert(parents, ["id", "name"], [[parent_id, "late"]])
        target.check_constraints()
        target.commit()
        assert self.run_sql(url, "SELECT label FROM children") == [("early",)]

    def test_check_constraints_refuses_a_broken_reference(self, target: Target) -> None:
        children = self.make(target)["children"]
        self.write(target, children, [{"parent_id": -1, "label": "orphan"}])
        with pytest.raises(RestoreTargetError):
            target.check_constraints()

    def test_a_failed_attempt_is_undone_and_the_rest_kept(self, target: Target) -> None:
        parents = self.make(target)["parents"]
        (kept,) = self.write(target, parents, [_parent("kept")])
        with pytest.raises(RestoreTargetError), target.attempt():
            self.write(target, parents, [_parent("undone")])
            target.insert(parents, ["id", "name"], [[kept[0], "duplicate id"]])
        assert [r["name"] for r in target.read(parents)] == ["kept"]
        self.write(target, parents, [_parent("after")])  # the transaction goes on
        assert {r["name"] for r in target.read(parents)} == {"kept", "after"}


class TestSqliteTarget(TargetContract):
    dialect = "sqlite"
    pseudo_address = "rowid"

    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url

    def run_sql(self, url: str, statement: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(str(make_url(url).database), isolation_level=None)
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()

    def test_an_in_memory_database_is_refused(self) -> None:
        with pytest.raises(RestoreTargetError, match="in-memory"):
            open_target("sqlite://", source_dialect="sqlite")


class TestPostgresTarget(TargetContract):
    dialect = "postgresql"
    pseudo_address = "ctid"

    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url

    def run_sql(self, url: str, statement: str) -> list[tuple[Any, ...]]:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []


def test_open_target_refuses_a_database_it_cannot_restore_into() -> None:
    with pytest.raises(RestoreTargetError, match="not supported"):
        open_target("mysql://user@host/db", source_dialect="postgresql")
