"""Restore in the instant's shape, on real SQLite and PostgreSQL targets.

The repository is written directly (a snapshot, then a format-2 log with DEFINITION
records and baselines, as docs/FORMAT.md describes them), because the sources do not yet
follow every kind of schema change. After each logged step the truth is recorded by hand;
every instant is restored with --create-schema into an empty database and every value of
every column that existed then is compared. The oldest and a middle instant are restored
into today's schema, with and without --ignore-missing-columns.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from nkdaemon.cli import cli
from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.keys import (
    ColumnSpec,
    ForeignKeySpec,
    KeyPart,
    TableSpec,
    make_table_spec,
    replace_spec,
)
from nkdaemon.core.legacy import ModelMap
from nkdaemon.core.log import ChangeEvent, Commit, Definition
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotWriter
from nkdaemon.repository.state import Checkpoint
from nkdaemon.services.export import export_fixture
from nkdaemon.services.restore import (
    RestoreError,
    Restorer,
    RestoreReport,
    open_restore_target,
    plan_restore,
)
from tests import pg
from tests.helpers import engine_for, run_cli, write_config

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER_FK = ForeignKeySpec(columns=("owner_id",), ref_table="owners", ref_columns=("id",))
ITEM_FK = ForeignKeySpec(columns=("item_id",), ref_table="items", ref_columns=("id",))
KEYS = {"owners": "name", "items": "code", "tags": "label", "legacy": "code"}
REFS = {"owner_id": ("owners", "name"), "item_id": ("items", "code")}


def table(
    name: str,
    number: int,
    columns: list[str],
    *,
    fks: tuple[ForeignKeySpec, ...] = (),
    defaults: dict[str, str] | None = None,
    referenced: bool = False,
) -> TableSpec:
    """A table with a surrogate ``id``, a text natural key (KEYS) and text columns."""
    defaults = defaults or {}
    key = KEYS[name]
    specs = [ColumnSpec(name="id", logical_type="int", nullable=False)]
    for column in [key, *columns]:
        logical = "int" if column.endswith("_id") else "text"
        specs.append(
            ColumnSpec(
                name=column,
                logical_type=logical,
                nullable=column != key,
                default=defaults.get(column),
            )
        )
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(specs),
        primary_key=("id",),
        key_parts=(KeyPart(name=key, column=key),),
        foreign_keys=fks,
        referenced=referenced,
    )


OWNERS = table("owners", 1, [], referenced=True)
LEGACY = table("legacy", 4, ["what"])


def items(*columns: str, defaults: dict[str, str] | None = None) -> TableSpec:
    return table("items", 2, [*columns, "owner_id"], fks=(OWNER_FK,), defaults=defaults)


TAGS = table("tags", 3, ["item_id"], fks=(ITEM_FK,))
OLD = ("owners", "items")  # the tables today's schema still has (legacy went)


@dataclass
class Truth:
    """Every table's rows at an instant: key -> {column: value}, references by key."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def copy(self) -> Truth:
        return Truth({t: {k: dict(r) for k, r in rows.items()} for t, rows in self.tables.items()})


@dataclass
class Repo:
    root: Path
    instants: list[tuple[datetime, Truth]]  # after each logged transaction (and the snapshot)


def _row_event(op: str, name: str, key: str, row: dict[str, Any]) -> ChangeEvent:
    payload = {c: ({REFS[c][1]: v} if c in REFS and v is not None else v) for c, v in row.items()}
    k = {KEYS[name]: key}
    return ChangeEvent(table=name, op=op, key=k, row={**k, **payload})  # type: ignore[arg-type]


class Builder:
    """Writes the log transaction by transaction while keeping the truth."""

    def __init__(self, root: Path, truth: Truth) -> None:
        self.log = SegmentLog(root / "log")
        self.truth = truth
        self.instants: list[tuple[datetime, Truth]] = [(T0, truth.copy())]
        self.lsn = 0
        self.events: list[ChangeEvent] = []
        self.definitions: list[Definition] = []

    def define(self, spec: TableSpec | None, name: str, change: str, **kw: Any) -> None:
        body = None if spec is None else spec_to_json(spec)
        self.definitions.append(
            Definition(
                lsn=self.lsn + 1,
                table=name,
                definition=body,
                change=change,
                at_event=len(self.events),
                **kw,
            )
        )

    def write(self, op: str, name: str, key: str, **row: Any) -> None:
        self.events.append(_row_event(op, name, key, row))
        rows = self.truth.tables.setdefault(name, {})
        if op == "I":
            rows[key] = {KEYS[name]: key, **row}
        else:
            rows[key].update(row)

    def truncate(self, name: str) -> None:
        self.events.append(ChangeEvent(table=name, op="T", key=None))

    def commit(self) -> None:
        self.lsn += 1
        for definition in self.definitions:
            self.log.append_definition(definition)
        moment = T0 + timedelta(minutes=self.lsn)
        self.log.append_commit(
            Commit(
                lsn=self.lsn,
                position=self.lsn,
                txid=None,
                commit_time=moment,
                parts=0,
                count=len(self.events),
                events=tuple(self.events),
            )
        )
        segment, offset = self.log.sync()
        self.log.publish_end(  # the durable end, as a drain records it
            Checkpoint(
                lsn=self.lsn,
                position=self.lsn,
                segment=segment,
                offset=offset,
                commit_time=moment.isoformat(),
            )
        )
        self.events, self.definitions = [], []
        self.instants.append((moment, self.truth.copy()))


def build(root: Path) -> Repo:
    """The snapshot, then: a rename a->b; a column added with a default (and its baseline);
    inside one transaction a rename b->c between writes and the drop of color; a table
    created with a baseline; a column added and then dropped; a table dropped."""
    layout = RepositoryLayout(root)
    layout.ensure()
    start = {
        "owners": {"ann": {"name": "ann"}, "bob": {"name": "bob"}},
        "items": {
            "i1": {"code": "i1", "a": "a1", "owner_id": "ann"},
            "i2": {"code": "i2", "a": "a2", "owner_id": "bob"},
        },
        "legacy": {"l1": {"code": "l1", "what": "old"}},
    }
    writer = SnapshotWriter(layout.snapshots_dir, time=T0, position=0)
    for spec in (OWNERS, items("a"), LEGACY):
        rows = [_row_event("I", spec.name, k, r) for k, r in start[spec.name].items()]
        writer.write_table(spec.number, spec.name, iter({"k": e.key, "r": e.row} for e in rows))
    definitions = [spec_to_json(s) for s in (OWNERS, items("a"), LEGACY)]
    writer.commit(installation="test", log_lsn=0, dialect="sqlite", definitions=definitions)
    b = Builder(root, Truth(start).copy())
    b.write("I", "items", "i3", a="a3", owner_id="bob")  # 1: a row
    b.commit()
    b.define(items("b"), "items", "altered", renamed=(("a", "b"),), command="ALTER TABLE")
    _rename(b.truth, "items", "a", "b")
    b.write("U", "items", "i1", b="b1", owner_id="ann")  # 2: a rename, then a write
    b.commit()
    b.define(items("b", "color", defaults={"color": "'red'"}), "items", "altered")
    b.truncate("items")  # 3: a column with a default: its baseline, then a write
    for key, row in list(b.truth.tables["items"].items()):
        b.write("I", "items", key, **{**{c: v for c, v in row.items() if c != "code"}}, color="red")
    b.write("U", "items", "i2", b=b.truth.tables["items"]["i2"]["b"], color="blue", owner_id="bob")
    b.commit()
    b.write("I", "items", "i4", b="b4", color="green", owner_id="ann")  # 4: two changes in one
    b.define(items("c", "color"), "items", "altered", renamed=(("b", "c"),))
    _rename(b.truth, "items", "b", "c")
    b.write("I", "items", "i5", c="c5", color="grey", owner_id=None)
    b.define(items("c"), "items", "altered")
    _drop(b.truth, "items", "color")
    b.write("I", "items", "i6", c="c6", owner_id="bob")
    b.commit()
    b.define(TAGS, "tags", "created", command="CREATE TABLE")  # 5: a new table, its baseline
    b.write("I", "tags", "t1", item_id="i1")
    b.write("I", "tags", "t2", item_id="i5")
    b.commit()
    b.define(items("c", "tmp"), "items", "altered")  # 6: added without default, then set
    _add(b.truth, "items", "tmp")
    b.write("U", "items", "i3", c="a3", tmp="z", owner_id="bob")
    b.commit()
    b.define(items("c"), "items", "altered")  # 7: ... and dropped
    _drop(b.truth, "items", "tmp")
    b.write("U", "items", "i6", c="c6!", owner_id="bob")
    b.commit()
    b.define(None, "legacy", "dropped", command="DROP TABLE")  # 8: a table dropped
    del b.truth.tables["legacy"]
    b.write("I", "owners", "cy")
    b.commit()
    b.log.close()
    return Repo(root=root, instants=b.instants)


def _rename(truth: Truth, name: str, old: str, new: str) -> None:
    for row in truth.tables[name].values():
        row[new] = row.pop(old)


def _drop(truth: Truth, name: str, column: str) -> None:
    for row in truth.tables[name].values():
        row.pop(column, None)


def _add(truth: Truth, name: str, column: str) -> None:
    for row in truth.tables[name].values():
        row[column] = None


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build(tmp_path_factory.mktemp("shapes") / "repo")


def restore(
    repo: Repo,
    url: str,
    at: datetime,
    *,
    create_schema: bool = True,
    ignore_missing_columns: bool = False,
    tables: tuple[str, ...] = (),
) -> RestoreReport:
    layout = RepositoryLayout(repo.root)
    log = SegmentLog(layout.log_dir)
    plan = plan_restore(
        snapshots_dir=layout.snapshots_dir,
        log_store=log,
        at=at,
        last_logged=T0 + timedelta(days=1),
        tables=tables,
    )
    target = open_restore_target(url, plan.snapshot.dialect)
    restorer = Restorer(plan=plan, target=target, log_store=log)
    restorer.ignore_missing_columns = ignore_missing_columns
    return restorer.run(dry_run=False, create_schema=create_schema, prune_target=False)


def read_back(url: str) -> Truth:
    """Every table of the target, references as the referenced row's key, ids left out."""
    engine = engine_for(url)
    out = Truth()
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        keys = {
            (t, row[0]): row[1]
            for t in ("owners", "items")
            if t in names
            for row in conn.execute(sa.text(f"SELECT id, {KEYS[t]} FROM {t}"))
        }
        for name in names:
            rows = {}
            for row in conn.execute(sa.text(f"SELECT * FROM {name}")).mappings():
                value = {c: v for c, v in row.items() if c != "id"}
                for column, (ref, _key) in REFS.items():
                    if value.get(column) is not None:
                        value[column] = keys[(ref, value[column])]
                rows[value[KEYS[name]]] = value
            out.tables[name] = rows
    engine.dispose()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def targets(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty target databases of one dialect (dropped afterwards)."""
    made: list[str] = []
    server = str(request.getfixturevalue("pg_server")) if request.param == "postgresql" else ""

    def make() -> str:
        url = pg.create_database(server) if server else f"sqlite:///{tmp_path / f't{len(made)}.db'}"
        made.append(url)
        return url

    yield make
    for url in made if server else ():
        pg.drop_database(server, url)


def test_every_instant_restores_with_create_schema_in_its_own_shape(
    repo: Repo, targets: Callable[[], str]
) -> None:
    for at, truth in repo.instants:
        url = targets()
        report = restore(repo, url, at)
        assert report.committed
        assert read_back(url).tables == truth.tables, f"at {at.isoformat()}"
        assert not report.lacking_values and not report.unplaced_values
        assert not report.dropped_values and not report.skipped_columns
    _assert_created_as_defined(url)  # the last instant's tables: keys, nullability, references


def _assert_created_as_defined(url: str) -> None:
    engine = engine_for(url)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        columns = {c["name"]: c for c in inspector.get_columns("items")}
        assert [c["name"] for c in inspector.get_columns("items")] == [
            "id",
            "code",
            "c",
            "owner_id",
        ]
        assert not columns["code"]["nullable"] and columns["c"]["nullable"]
        references = {
            (tuple(fk["constrained_columns"]), fk["referred_table"])
            for fk in inspector.get_foreign_keys("tags")
        }
        assert references == {(("item_id",), "items")}
        unique = [tuple(u["column_names"]) for u in inspector.get_unique_constraints("tags")]
        assert ("label",) in unique
    engine.dispose()


def _today(url: str) -> None:
    target = open_restore_target(url, "sqlite")
    target.create(
        [OWNERS, items("c", defaults={"c": "'dflt'"}), TAGS]
    )  # the application's schema now
    target.commit()
    target.close()


def test_an_old_instant_into_todays_schema_is_refused_naming_the_column(
    repo: Repo, targets: Callable[[], str]
) -> None:
    for at, column in (
        (repo.instants[0][0], "items.a"),
        (repo.instants[3][0], "items.b, items.color"),
    ):
        url = targets()
        _today(url)
        with pytest.raises(RestoreError, match=f"lacks column\\(s\\) {column},") as refused:
            restore(repo, url, at, create_schema=False, tables=OLD)
        assert "--ignore-missing-columns" in str(refused.value)
        assert read_back(url).tables["items"] == {}


def test_ignore_missing_columns_counts_the_values_it_leaves_out(
    repo: Repo, targets: Callable[[], str]
) -> None:
    at, truth = repo.instants[3]  # items(code, b, color, owner_id); today: items(code, c, ...)
    url = targets()
    _today(url)
    report = restore(repo, url, at, create_schema=False, ignore_missing_columns=True, tables=OLD)
    assert report.committed
    assert report.skipped_columns == {"items": ["b", "color"]}
    assert report.dropped_values == {("items", "b"): 3, ("items", "color"): 3}
    assert report.target_only_columns == {"items": ["c"]}
    got = read_back(url).tables["items"]
    want = {
        k: {"code": k, "c": "dflt", "owner_id": r["owner_id"]}
        for k, r in truth.tables["items"].items()
    }
    assert got == want  # every column both sides have; c took its default
    assert read_back(url).tables["tags"] == {}  # the instant had no tags: left alone


def test_the_oldest_instant_into_todays_schema_with_no_change_between(
    repo: Repo, targets: Callable[[], str]
) -> None:
    at, truth = repo.instants[0]  # the snapshot itself: the fast path, narrowed
    url = targets()
    _today(url)
    report = restore(repo, url, at, create_schema=False, ignore_missing_columns=True, tables=OLD)
    assert report.dropped_values == {("items", "a"): 2}
    assert set(read_back(url).tables["items"]) == set(truth.tables["items"])


def test_a_table_the_instant_has_and_the_target_lacks_is_a_clear_error(
    repo: Repo, targets: Callable[[], str]
) -> None:
    url = targets()
    target = open_restore_target(url, "sqlite")
    target.create([OWNERS, items("c")])
    target.commit()
    target.close()
    with pytest.raises(RestoreError, match="no table tags") as refused:
        restore(repo, url, repo.instants[-1][0], create_schema=False)
    assert "--create-schema" in str(refused.value) and "--table" in str(refused.value)


def test_a_value_the_log_lacks_is_said_not_dropped_silently(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A column added with a default and no baseline: restore names the rows' missing
    values; a logged value of a column no definition has is named too."""
    root = tmp_path / "repo"
    RepositoryLayout(root).ensure()
    writer = SnapshotWriter(RepositoryLayout(root).snapshots_dir, time=T0, position=0)
    writer.write_table(1, "owners", iter([{"k": {"name": "ann"}, "r": {"name": "ann"}}]))
    writer.commit(installation="t", log_lsn=0, dialect="sqlite", definitions=[spec_to_json(OWNERS)])
    b = Builder(root, Truth())
    colored = table("owners", 1, ["color"], referenced=True, defaults={"color": "'red'"})
    b.define(colored, "owners", "altered")
    b.events.append(
        ChangeEvent(table="owners", op="I", key={"name": "bo"}, row={"name": "bo", "size": 3})
    )
    b.commit()
    b.log.close()
    report = restore(Repo(root=root, instants=[]), sqlite_url, b.instants[-1][0])
    assert report.lacking_values == {("owners", "color"): 2}
    assert report.unplaced_values == {("owners", "size"): 1}
    config = write_config(tmp_path, sqlite_url)
    out = run_cli(
        config,
        "restore",
        "--target",
        f"sqlite:///{tmp_path / 'cli.db'}",
        "--latest",
        "--create-schema",
    )
    assert out.exit_code == 0, out.output
    assert "the log holds no value of owners.color for 2 rows" in out.output
    assert "the log holds 1 values of owners.size" in out.output


def _exported(repo: Repo, at: datetime) -> dict[str, dict[str, Any]]:
    layout = RepositoryLayout(repo.root)
    log = SegmentLog(layout.log_dir)
    plan = plan_restore(
        snapshots_dir=layout.snapshots_dir, log_store=log, at=at, last_logged=T0 + timedelta(1)
    )
    out = io.BytesIO()
    labels = ModelMap(explicit={f"app.{name}": name for name in KEYS})
    export_fixture(plan=plan, log_store=log, model_map=labels, out=out)
    objects = orjson.loads(out.getvalue())
    return {o["fields"][KEYS[o["model"].split(".")[-1]]]: o["fields"] for o in objects}


def test_export_gives_the_rows_in_the_shape_at_the_time(repo: Repo) -> None:
    for at, truth in (repo.instants[3], repo.instants[6], repo.instants[-1]):
        fields = _exported(repo, at)
        for key, row in truth.tables["items"].items():
            want = {c: v for c, v in row.items() if c != "owner_id"}
            got = {c: v for c, v in fields[key].items() if c != "owner"}
            assert got == want, f"{key} at {at.isoformat()}"
        assert ("t1" in fields) == ("tags" in truth.tables)
        assert ("l1" in fields) == ("legacy" in truth.tables)


def test_the_cli_refuses_then_lists_the_left_out_values_by_table_and_column(
    repo: Repo, tmp_path: Path
) -> None:
    config = write_config(repo.root.parent, f"sqlite:///{tmp_path / 'source.db'}")
    url = f"sqlite:///{tmp_path / 'today.db'}"
    _today(url)
    at = repo.instants[3][0].isoformat()
    args = ["restore", "--target", url, "--at", at, "--table", "owners", "--table", "items"]
    refused = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert refused.exit_code == 1
    assert "lacks column(s) items.b, items.color," in refused.output
    assert "--ignore-missing-columns" in refused.output
    done = run_cli(config, *args, "--ignore-missing-columns")
    assert done.exit_code == 0, done.output
    assert "dropped 3 non-NULL values of items.b" in done.output
    assert "dropped 3 non-NULL values of items.color" in done.output
    assert "lacks column b, color; validation compared the other columns only" in done.output
    assert "items: column c is not in the restored instant" in done.output
    assert "schema changes on the way" in done.output


def test_values_logged_across_a_change_the_log_does_not_record_fail_the_restore_by_name(
    tmp_path: Path, sqlite_url: str
) -> None:
    """No DEFINITION record (a release that did not follow schema changes) yet rows carry
    a new column: the fast path's validation fails, and says which column's values."""
    root = tmp_path / "repo"
    RepositoryLayout(root).ensure()
    writer = SnapshotWriter(RepositoryLayout(root).snapshots_dir, time=T0, position=0)
    writer.write_table(1, "owners", iter([{"k": {"name": "ann"}, "r": {"name": "ann"}}]))
    writer.commit(installation="t", log_lsn=0, dialect="sqlite", definitions=[spec_to_json(OWNERS)])
    b = Builder(root, Truth())
    b.events.append(
        ChangeEvent(table="owners", op="I", key={"name": "bo"}, row={"name": "bo", "color": "red"})
    )
    b.commit()
    b.log.close()
    with pytest.raises(RestoreError, match=r"owners\.color: 1 values"):
        restore(Repo(root=root, instants=[]), sqlite_url, b.instants[-1][0])
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists() or not read_back(
        sqlite_url
    ).tables.get("owners")


def test_a_not_null_column_the_log_gave_no_value_is_refused_by_name(
    tmp_path: Path, sqlite_url: str
) -> None:
    root = tmp_path / "repo"
    RepositoryLayout(root).ensure()
    writer = SnapshotWriter(RepositoryLayout(root).snapshots_dir, time=T0, position=0)
    writer.write_table(1, "owners", iter([{"k": {"name": "ann"}, "r": {"name": "ann"}}]))
    writer.commit(installation="t", log_lsn=0, dialect="sqlite", definitions=[spec_to_json(OWNERS)])
    b = Builder(root, Truth())
    colored = table("owners", 1, ["color"], referenced=True, defaults={"color": "'red'"})
    required = ColumnSpec(name="color", logical_type="text", nullable=False, default="'red'")
    b.define(replace_spec(colored, columns=(*colored.columns[:2], required)), "owners", "altered")
    b.commit()
    b.log.close()
    with pytest.raises(RestoreError, match=r"owners\.color: 1 rows"):
        restore(Repo(root=root, instants=[]), sqlite_url, b.instants[-1][0])
