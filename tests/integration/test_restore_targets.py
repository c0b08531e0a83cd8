"""`nkdaemon restore` into real target databases: identity by meaning, all or nothing.

Invariant 4 (a target whose ids differ gets every reference by natural key, and its
sequences are ready for the next insert) and invariant 7 (a restore validates in stages in
one target transaction; any failure leaves the target exactly as it was), plus the
command's contract: --dry-run, --at validation, --table, --prune-target, --create-schema.

One source history per dialect is built once for the module (EDMS seeded, capture
installed, two drained transactions around an extra snapshot); every test restores it
into fresh target databases of its own. The repository is only ever read.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import Result
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from nkdaemon.examples import edms
from nkdaemon.runtime.config import Settings, load_settings
from nkdaemon.sources.postgres import conninfo_from_url
from tests import pg
from tests.helpers import do_drain, do_install, engine_for, logged, run_cli, write_config

NATURAL_KEYS = {
    "roles": ("name",),
    "users": ("username",),
    "user_roles": ("user_id", "role_id"),
    "document_types": ("code",),
    "document_sources": ("name",),
    "document_workflows": ("name",),
    "document_states": ("workflow_id", "code"),
    "documents": ("document_number",),
    "document_versions": ("document_id", "version_number"),
    "document_dependencies": ("document_id", "depends_on_id", "kind"),
    "document_comments": ("uuid",),
    "placeholder_definitions": ("name",),
}
REFERENCES = {
    table.name: {fk.parent.name: fk.column.table.name for fk in table.foreign_keys}
    for table in edms.metadata.sorted_tables
}

EVERY_BYTE = bytes(range(256))
UNICODE = "zero-width\u200b, RTL \u05e9\u05dc\u05d5\u05dd, emoji 🧾, e\u0301, ‘q’ \\ \" ' ✓"
EXACT_FEE = "1234567890.0100"
TAGS = ["plain", None, "with,comma", 'quo"te', "{braces}", ""]
KOLKATA = timezone(timedelta(hours=5, minutes=30))
HAZARD_TIME = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=KOLKATA)
COMMENT_UUID = uuid.UUID("6f9619ff-8b86-d011-b42d-00cf4fc964ff")
EXACT_JSON = '{"n": 1.10, "big": 123456789012345678901234567890.5, "s": "ü", "z": null}'


# --- the source history, once per dialect ----------------------------------------------------


@dataclass
class History:
    dialect: str
    source_url: str
    config: Path
    settings: Settings
    server: str | None
    baseline_time: datetime
    first_commit: datetime
    second_commit: datetime


def _build_history(dialect: str, url: str, directory: Path, server: str | None) -> History:
    engine = engine_for(url)
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    config = write_config(directory, url)
    settings = load_settings(config)
    do_install(settings)
    time.sleep(0.05)
    with engine.begin() as conn:  # transaction A: users with roles, documents of every kind
        edms.add_user(conn, "dave", roles_=("author", "reviewer", "admin"))
        edms.add_user(conn, "zoë", roles_=("approver", "auditor"))
        first = conn.execute(
            sa.select(edms.documents.c.id).where(edms.documents.c.document_number == "DOC-0001")
        ).scalar_one()
        d100 = edms.add_document(conn, "DOC-0100", author="dave", type_code="POL")
        d101 = edms.add_document(conn, "DOC-0101", author="zoë", type_code="RPT", parent=first)
        d102 = edms.add_document(
            conn, "DOC-0102", author="dave", type_code="WI", content=EVERY_BYTE
        )
        conn.execute(
            edms.document_dependencies.insert().values(
                document_id=d101, depends_on_id=d100, kind="cites", note="see §2"
            )
        )
        conn.execute(
            edms.documents.update()
            .where(edms.documents.c.id == d102)
            .values(fee=Decimal(EXACT_FEE), title=UNICODE, tags=TAGS, created_at=HAZARD_TIME)
        )
        zoe = conn.execute(
            sa.select(edms.users.c.id).where(edms.users.c.username == "zoë")
        ).scalar_one()
        conn.execute(
            edms.document_comments.insert().values(
                uuid=COMMENT_UUID,
                document_id=d102,
                author_id=zoe,
                body=UNICODE,
                created_at=HAZARD_TIME,
            )
        )
        value = "CAST(:v AS jsonb)" if dialect == "postgresql" else ":v"
        conn.execute(
            sa.text(
                "INSERT INTO placeholder_definitions (name, default_value) "
                f"VALUES ('exact', {value})"
            ),
            {"v": EXACT_JSON},
        )
    do_drain(settings)
    time.sleep(0.05)
    snap = run_cli(config, "snapshot")
    assert snap.exit_code == 0, snap.output
    time.sleep(0.05)
    with engine.begin() as conn:  # transaction B, after the second snapshot
        edms.add_user(conn, "erin", roles_=("archivist",))
        edms.add_document(conn, "DOC-0200", author="erin", type_code="FRM")
        conn.execute(
            edms.users.update().where(edms.users.c.username == "bob").values(full_name="Robert B.")
        )
    do_drain(settings)
    engine.dispose()

    commits = [tx.commit_time for tx in logged(settings)]
    assert len(commits) == 2, commits
    status = run_cli(config, "status", "--json")
    assert status.exit_code == 0, status.output
    snapshots = json.loads(status.stdout)["snapshots"]
    assert len(snapshots) == 2, snapshots
    return History(
        dialect=dialect,
        source_url=url,
        config=config,
        settings=settings,
        server=server,
        baseline_time=datetime.fromisoformat(snapshots[0]["time"]),
        first_commit=commits[0],
        second_commit=commits[1],
    )


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[History]:
    directory = tmp_path_factory.mktemp(f"history-{request.param}")
    if request.param == "postgresql":
        server = str(request.getfixturevalue("pg_server"))
        url = pg.create_database(server)
        try:
            yield _build_history("postgresql", url, directory, server)
        finally:
            pg.drop_database(server, url)
    else:
        yield _build_history("sqlite", f"sqlite:///{directory / 'source.db'}", directory, None)


@pytest.fixture(scope="module")
def pg_history(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    directory = tmp_path_factory.mktemp("history-pg-only")
    url = pg.create_database(pg_server)
    try:
        yield _build_history("postgresql", url, directory, pg_server)
    finally:
        pg.drop_database(pg_server, url)


@pytest.fixture
def new_target(history: History, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty target databases of the history's dialect (dropped afterwards)."""
    created: list[str] = []
    counter = iter(range(1000))

    def make() -> str:
        if history.dialect == "postgresql":
            assert history.server is not None
            url = pg.create_database(history.server)
            created.append(url)
            return url
        return f"sqlite:///{tmp_path / f'target{next(counter)}.db'}"

    yield make
    if history.server is not None:
        for url in created:
            pg.drop_database(history.server, url)
    created.clear()


# --- helpers ---------------------------------------------------------------------------------


def _schema(mutate: Callable[[sa.MetaData], None] | None = None) -> sa.MetaData:
    """A copy of the EDMS definition, optionally changed (the target's own schema)."""
    metadata = sa.MetaData()
    for table in edms.metadata.sorted_tables:
        table.to_metadata(metadata)
    if mutate is not None:
        mutate(metadata)
    return metadata


def app_target(url: str, metadata: sa.MetaData | None = None, *, seed: bool = True) -> None:
    """A freshly initialised application: its schema, reference data seeded in REVERSE."""
    engine = engine_for(url)
    (metadata or edms.metadata).create_all(engine)
    if seed:
        with engine.begin() as conn:
            edms.seed_reference(conn, reverse=True)
    engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(statement)]
    engine.dispose()
    return rows


def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the database, in primary-key order (exact comparison)."""
    engine = engine_for(url)
    names = sorted(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        out = {
            name: [tuple(r) for r in conn.exec_driver_sql(f'SELECT * FROM "{name}" ORDER BY 1')]
            for name in names
        }
    engine.dispose()
    return out


def _exact_json(data: str | bytes) -> Any:
    return json.loads(data, parse_float=str, parse_int=str)


def read_raw(url: str) -> dict[str, list[dict[str, Any]]]:
    """The EDMS tables as the driver returns them (numeric as exact text, json numbers as text)."""
    out: dict[str, list[dict[str, Any]]] = {}
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        with psycopg.connect(conninfo_from_url(url), row_factory=dict_row) as conn:
            set_json_loads(_exact_json, conn)
            for table in NATURAL_KEYS:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()  # type: ignore[arg-type]
                out[table] = [
                    {c: str(v) if isinstance(v, Decimal) else v for c, v in row.items()}
                    for row in rows
                ]
        return out
    conn = sqlite3.connect(str(parsed.database))
    conn.row_factory = sqlite3.Row
    try:
        for table in NATURAL_KEYS:
            out[table] = [dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')]
    finally:
        conn.close()
    return out


def natural(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[Any, dict[str, Any]]]:
    """Rows by natural key; every id (own or referenced) replaced by the natural key it means."""
    by_id = {table: {row["id"]: row for row in rows} for table, rows in raw.items()}

    def key(table: str, ident: Any) -> tuple[Any, ...]:
        row = by_id[table][ident]
        refs = REFERENCES[table]
        return tuple(
            key(refs[c], row[c]) if c in refs and row[c] is not None else row[c]
            for c in NATURAL_KEYS[table]
        )

    out: dict[str, dict[Any, dict[str, Any]]] = {}
    for table, rows in raw.items():
        refs = REFERENCES[table]
        out[table] = {}
        for row in rows:
            payload = {
                c: key(refs[c], v) if c in refs and v is not None else v
                for c, v in row.items()
                if c != "id"
            }
            out[table][key(table, row["id"])] = payload
        assert len(out[table]) == len(rows), f"{table}: a natural key appears twice"
    return out


def restore(history: History, target: str, *args: str) -> Result:
    return run_cli(history.config, "restore", "--target", target, *args)


def _refused(result: Result, *words: str) -> None:
    assert result.exit_code != 0, result.output
    text = result.output.lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in:\n{result.output}"


DOCUMENT_TYPES_SQL = (
    "SELECT d.document_number, t.code FROM documents d "
    "JOIN document_types t ON t.id = d.type_id ORDER BY 1"
)
USER_ROLES_SQL = (
    "SELECT u.username, r.name FROM user_roles ur JOIN users u ON u.id = ur.user_id "
    "JOIN roles r ON r.id = ur.role_id ORDER BY 1, 2"
)
DOCUMENT_AUTHORS_SQL = (
    "SELECT d.document_number, u.username FROM documents d "
    "JOIN users u ON u.id = d.author_id ORDER BY 1"
)


def insert_one_row_everywhere(url: str) -> dict[str, int]:
    """What the application does next: one new row per table, ids left to the database."""
    engine = engine_for(url)
    pg_dialect = engine.dialect.name == "postgresql"
    before = {
        t: int(n or 0)
        for t, n in ((t, query(url, f"SELECT max(id) FROM {t}")[0][0]) for t in NATURAL_KEYS)
    }
    statements = [
        ("roles", "INSERT INTO roles (name, description) VALUES ('new-role', 'n')", {}),
        (
            "users",
            "INSERT INTO users (username, is_active, created_at) VALUES ('newbie', :a, :ts)",
            {"a": True},
        ),
        (
            "user_roles",
            "INSERT INTO user_roles (user_id, role_id, granted_at) SELECT u.id, r.id, :ts "
            "FROM users u, roles r WHERE u.username = 'newbie' AND r.name = 'new-role'",
            {},
        ),
        ("document_types", "INSERT INTO document_types (code, label) VALUES ('NEW', 'n')", {}),
        ("document_sources", "INSERT INTO document_sources (name) VALUES ('new-src')", {}),
        ("document_workflows", "INSERT INTO document_workflows (name) VALUES ('wf-new')", {}),
        (
            "document_states",
            "INSERT INTO document_states (workflow_id, code, label) "
            "SELECT id, 'new', 'New' FROM document_workflows WHERE name = 'wf-new'",
            {},
        ),
        (
            "documents",
            "INSERT INTO documents (document_number, title, type_id, author_id, created_at) "
            "SELECT 'DOC-NEW', 'new', t.id, u.id, :ts FROM document_types t, users u "
            "WHERE t.code = 'NEW' AND u.username = 'newbie'",
            {},
        ),
        (
            "document_versions",
            "INSERT INTO document_versions "
            "(document_id, version_number, created_by, content, sha256, created_at) "
            "SELECT id, 1, author_id, :blob, 'x', :ts FROM documents "
            "WHERE document_number = 'DOC-NEW'",
            {"blob": b"\x00new"},
        ),
        (
            "document_dependencies",
            "INSERT INTO document_dependencies (document_id, depends_on_id, kind) "
            "SELECT a.id, b.id, 'cites' FROM documents a, documents b "
            "WHERE a.document_number = 'DOC-NEW' AND b.document_number = 'DOC-0001'",
            {},
        ),
        (
            "document_comments",
            "INSERT INTO document_comments (uuid, document_id, author_id, body, created_at) "
            "SELECT :u, id, author_id, 'new', :ts FROM documents WHERE document_number = 'DOC-NEW'",
            {"u": uuid.uuid4().hex},
        ),
        (
            "placeholder_definitions",
            "INSERT INTO placeholder_definitions (name) VALUES ('new')",
            {},
        ),
    ]
    new_ids: dict[str, int] = {}
    with engine.begin() as conn:
        for table, statement, params in statements:
            try:
                if pg_dialect:
                    statement = statement.replace(":ts", "CAST(:ts AS timestamptz)")
                    statement = statement.replace(":u,", "CAST(:u AS uuid),")
                conn.execute(sa.text(statement), {"ts": "2026-05-05T00:00:00+00:00", **params})
            except sa.exc.IntegrityError as exc:  # a key collision: ids not ready
                pytest.fail(f"the application's next insert into {table} failed: {exc.orig}")
            new_ids[table] = int(conn.exec_driver_sql(f"SELECT max(id) FROM {table}").scalar_one())
    engine.dispose()
    for table, new in new_ids.items():
        assert new > before[table], f"{table}: new id {new} not after {before[table]}"
    return new_ids


# --- 1. identity by meaning ------------------------------------------------------------------


def test_restore_into_a_reseeded_system_connects_every_reference_by_meaning(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    source_ids = dict(query(history.source_url, "SELECT code, id FROM document_types"))
    target_ids = dict(query(target, "SELECT code, id FROM document_types"))
    assert source_ids != target_ids, "the reverse seeding must give the target other ids"

    result = restore(history, target, "--latest")
    assert result.exit_code == 0, result.output
    assert "committed" in result.output

    assert query(target, DOCUMENT_TYPES_SQL) == query(history.source_url, DOCUMENT_TYPES_SQL)
    assert ("DOC-0102", "WI") in query(target, DOCUMENT_TYPES_SQL)
    assert query(target, USER_ROLES_SQL) == query(history.source_url, USER_ROLES_SQL)
    assert ("dave", "admin") in query(target, USER_ROLES_SQL)
    assert query(target, DOCUMENT_AUTHORS_SQL) == query(history.source_url, DOCUMENT_AUTHORS_SQL)
    for table in NATURAL_KEYS:  # reference rows matched, not duplicated
        count = f"SELECT count(*) FROM {table}"
        assert query(target, count) == query(history.source_url, count), table
    # the seeded reference rows kept their ids: they were matched, not replaced
    assert dict(query(target, "SELECT code, id FROM document_types")) == target_ids
    assert natural(read_raw(target)) == natural(read_raw(history.source_url))

    insert_one_row_everywhere(target)


def test_restore_into_an_empty_database_with_create_schema_is_ready_for_the_application(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    result = restore(history, target, "--latest", "--create-schema")
    assert result.exit_code == 0, result.output
    assert query(target, DOCUMENT_TYPES_SQL) == query(history.source_url, DOCUMENT_TYPES_SQL)
    assert query(target, USER_ROLES_SQL) == query(history.source_url, USER_ROLES_SQL)
    assert natural(read_raw(target)) == natural(read_raw(history.source_url))
    insert_one_row_everywhere(target)


# --- 2. all or nothing -----------------------------------------------------------------------


def _unique_sha(metadata: sa.MetaData) -> None:
    sa.Index("uq_sha_only_once", metadata.tables["document_versions"].c.sha256, unique=True)


def _check_fee(metadata: sa.MetaData) -> None:
    metadata.tables["documents"].append_constraint(
        sa.CheckConstraint("fee IS NULL OR fee < 1000", name="ck_fee_small")
    )


def _not_null_column(metadata: sa.MetaData) -> None:
    metadata.tables["users"].append_column(sa.Column("department", sa.Text, nullable=False))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        pytest.param(_unique_sha, ("document_versions",), id="unique-index"),
        pytest.param(_check_fee, ("documents", "ck_fee_small"), id="check-constraint"),
        pytest.param(_not_null_column, ("users", "department"), id="not-null-column"),
    ],
)
def test_a_row_the_target_refuses_rolls_everything_back(
    history: History,
    new_target: Callable[[], str],
    mutate: Callable[[sa.MetaData], None],
    words: tuple[str, ...],
) -> None:
    target = new_target()
    app_target(target, _schema(mutate))
    before = contents(target)
    assert before["roles"] and before["document_types"], "seeded rows must be there to keep"

    result = restore(history, target, "--latest")
    _refused(result, "refused", *words)
    assert result.exit_code == 1, result.output
    assert contents(target) == before


def _mismatch_trigger(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.full_name := NEW.full_name || ' (tampered)'; RETURN NEW; END $$",
            "CREATE TRIGGER tamper BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION tamper()",
        ]
    return [
        "CREATE TRIGGER tamper AFTER INSERT ON users BEGIN "
        "UPDATE users SET full_name = full_name || ' (tampered)' WHERE id = NEW.id; END"
    ]


def test_content_that_differs_from_the_backup_is_caught_by_validation_and_rolled_back(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    execute(target, *_mismatch_trigger(history.dialect))
    before = contents(target)

    result = restore(history, target, "--latest")
    _refused(result, "does not match", "users")
    assert result.exit_code == 1, result.output
    assert "committed" not in result.output
    assert contents(target) == before


# --- 3. --dry-run ----------------------------------------------------------------------------


def test_dry_run_plans_loads_and_checks_then_leaves_the_target_alone(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    before = contents(target)

    result = restore(history, target, "--latest", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "restore the latest logged state" in result.output  # plan
    assert re.search(r"[1-9]\d* snapshot rows and [1-9]\d* logged changes", result.output)
    assert "counts and checksums match" in result.output
    assert "rolled back (--dry-run)" in result.output
    assert contents(target) == before

    # the checks really run: a dry run over a tampering target fails the same way
    execute(target, *_mismatch_trigger(history.dialect))
    before = contents(target)
    tampered = restore(history, target, "--latest", "--dry-run")
    _refused(tampered, "does not match", "users")
    assert contents(target) == before


def test_dry_run_does_not_report_success_for_a_restore_the_commit_would_refuse(
    pg_history: History, pg_server: str
) -> None:
    """PostgreSQL: a DEFERRABLE constraint is only checked at commit; a dry run that says
    'counts and checksums match' must not hide that the real restore cannot commit."""
    target = pg.create_database(pg_server)
    try:
        app_target(target)
        execute(
            target,
            "ALTER TABLE document_versions ADD CONSTRAINT uq_sha_deferred UNIQUE (sha256) "
            "DEFERRABLE INITIALLY DEFERRED",
        )
        before = contents(target)
        real = restore(pg_history, target, "--latest")
        _refused(real, "uq_sha_deferred")
        assert contents(target) == before
        dry = restore(pg_history, target, "--latest", "--dry-run")
        assert dry.exit_code != 0, (
            "--dry-run reported success for a restore the real run refuses:\n" + dry.output
        )
        assert contents(target) == before
    finally:
        pg.drop_database(pg_server, target)


def test_dry_run_checks_the_deferred_constraints_the_commit_would_check(
    history: History, new_target: Callable[[], str]
) -> None:
    """Foreign keys checked only at commit (Django makes them DEFERRABLE INITIALLY DEFERRED on
    PostgreSQL; the SQLite target defers them itself): pruning a target-only user whom a
    target-only document still names cannot commit, so a dry run must not report success."""
    target = new_target()
    app_target(target)
    statements = [
        "INSERT INTO users (username, is_active, created_at) "
        "VALUES ('ghost', TRUE, CURRENT_TIMESTAMP)",
        "INSERT INTO documents (document_number, title, type_id, author_id, created_at) "
        "SELECT 'GHOST-1', 'only here', t.id, u.id, CURRENT_TIMESTAMP "
        "FROM document_types t, users u WHERE t.code = 'SOP' AND u.username = 'ghost'",
    ]
    if history.dialect == "postgresql":
        statements.insert(
            0,
            "ALTER TABLE documents ALTER CONSTRAINT documents_author_id_fkey "
            "DEFERRABLE INITIALLY DEFERRED",
        )
    execute(target, *statements)
    before = contents(target)

    real = restore(history, target, "--latest", "--table", "users", "--prune-target")
    _refused(real, "refused")
    assert contents(target) == before
    dry = restore(history, target, "--latest", "--table", "users", "--prune-target", "--dry-run")
    assert dry.exit_code != 0, (
        "--dry-run reported success for a restore the real run refuses:\n" + dry.output
    )
    assert contents(target) == before


# --- 4. time validation ----------------------------------------------------------------------


def _range_in(message: str) -> tuple[datetime, datetime]:
    found = re.search(r"covers (\S+) to (\S+)", message)
    assert found, message
    return datetime.fromisoformat(found.group(1)), datetime.fromisoformat(found.group(2))


def test_restore_times_outside_the_repository_or_malformed_are_refused(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    before = contents(target)

    # the log is complete through the last drain pass, which came after the last commit
    status = run_cli(history.config, "status", "--json")
    complete = datetime.fromisoformat(json.loads(status.stdout)["complete_through"])
    assert complete > history.second_commit

    too_early = (history.baseline_time - timedelta(hours=1)).isoformat()
    early = restore(history, target, "--at", too_early)
    assert early.exit_code == 2, early.output
    assert _range_in(early.output) == (history.baseline_time, complete)

    too_late = (complete + timedelta(hours=1)).isoformat()
    late = restore(history, target, "--at", too_late)
    assert late.exit_code == 2, late.output
    assert _range_in(late.output) == (history.baseline_time, complete)

    both = restore(history, target, "--at", history.second_commit.isoformat(), "--latest")
    assert both.exit_code == 2, both.output
    assert "exactly one" in both.output
    neither = restore(history, target)
    assert neither.exit_code == 2, neither.output
    assert "exactly one" in neither.output

    garbage = restore(history, target, "--at", "last tuesday at noon")
    assert garbage.exit_code == 2, garbage.output
    assert "ISO 8601" in garbage.output
    assert contents(target) == before


def test_a_time_without_zone_is_taken_as_utc_with_a_warning(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    between = history.first_commit + (history.second_commit - history.first_commit) / 2
    naive = between.astimezone(UTC).replace(tzinfo=None).isoformat()

    result = restore(history, target, "--at", naive)
    assert result.exit_code == 0, result.output
    assert "no time zone; taken as UTC" in result.stderr
    numbers = [r[0] for r in query(target, "SELECT document_number FROM documents")]
    assert "DOC-0102" in numbers  # transaction A, committed before
    assert "DOC-0200" not in numbers  # transaction B, committed after
    assert query(target, "SELECT full_name FROM users WHERE username = 'bob'") == [("Bob",)]


# --- 5. cross-dialect ------------------------------------------------------------------------


def _decode_sqlite(table: str, column: str, value: Any) -> Any:
    """A value PostgreSQL -> SQLite wrote, back in the form psycopg gives (numeric as text)."""
    if value is None:
        return None
    kind = edms.metadata.tables[table].c[column].type
    if isinstance(kind, sa.Boolean):
        return bool(value)
    if isinstance(kind, sa.DateTime):
        return datetime.fromisoformat(value)
    if isinstance(kind, sa.Uuid):
        return uuid.UUID(value)
    if isinstance(kind, sa.JSON):
        return _exact_json(value)
    return value  # text, integers, blobs, and numeric (asserted to be exact text below)


def test_a_postgresql_history_restores_exactly_into_an_empty_sqlite_file(
    pg_history: History, tmp_path: Path
) -> None:
    target = f"sqlite:///{tmp_path / 'from-postgres.db'}"
    result = restore(pg_history, target, "--latest", "--create-schema")
    assert result.exit_code == 0, result.output

    raw = read_raw(target)
    decoded = {
        table: [{c: _decode_sqlite(table, c, v) for c, v in row.items()} for row in rows]
        for table, rows in raw.items()
    }
    expected = natural(read_raw(pg_history.source_url))
    assert natural(decoded) == expected

    # the hazards, value by value in what SQLite holds
    doc = next(r for r in raw["documents"] if r["document_number"] == "DOC-0102")
    assert doc["fee"] == EXACT_FEE and Decimal(doc["fee"]).as_tuple().exponent == -4
    assert {r["document_number"]: r["fee"] for r in raw["documents"]}["DOC-0001"] == "12.3400"
    assert datetime.fromisoformat(doc["created_at"]) == HAZARD_TIME
    assert datetime.fromisoformat(doc["created_at"]).microsecond == 891011
    assert doc["title"] == UNICODE
    assert json.loads(doc["tags"]) == TAGS
    version = next(r for r in decoded["document_versions"] if r["document_id"] == doc["id"])
    assert isinstance(version["content"], bytes) and version["content"] == EVERY_BYTE
    comment = next(r for r in raw["document_comments"] if r["body"] == UNICODE)
    assert uuid.UUID(comment["uuid"]) == COMMENT_UUID
    assert comment["document_id"] == doc["id"]
    placeholder = next(r for r in raw["placeholder_definitions"] if r["name"] == "exact")
    assert _exact_json(placeholder["default_value"]) == {
        "n": "1.10",
        "big": "123456789012345678901234567890.5",
        "s": "ü",
        "z": None,
    }
    insert_one_row_everywhere(target)


# --- 6. --table ------------------------------------------------------------------------------


def test_one_table_needs_its_references_in_the_target(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target)
    first = restore(
        history, target, "--latest", "--table", "document_workflows", "--table", "document_states"
    )
    assert first.exit_code == 0, first.output
    before = contents(target)
    assert not before["users"]

    refused = restore(history, target, "--latest", "--table", "documents", "--no-referenced-rows")
    _refused(refused, "refer to", "users rows the target lacks", '{"username":')
    assert refused.exit_code == 1, refused.output
    assert contents(target) == before

    # by default the users the documents name are added, as they were then, and said so
    documents = restore(history, target, "--latest", "--table", "documents")
    assert documents.exit_code == 0, documents.output
    assert re.search(r"added \d+ rows of users that the restored rows refer to", documents.output)
    assert query(target, "SELECT count(*) FROM document_versions") == [(0,)]  # not selected
    users = restore(history, target, "--latest", "--table", "users")
    assert users.exit_code == 0, users.output
    again = restore(history, target, "--latest", "--table", "documents")
    assert again.exit_code == 0, again.output
    assert "rows of users that the restored rows refer to" not in again.output
    assert query(target, DOCUMENT_AUTHORS_SQL) == query(history.source_url, DOCUMENT_AUTHORS_SQL)
    assert query(target, DOCUMENT_TYPES_SQL) == query(history.source_url, DOCUMENT_TYPES_SQL)
    parents = (
        "SELECT d.document_number, p.document_number FROM documents d "
        "JOIN documents p ON p.id = d.parent_id ORDER BY 1"
    )
    assert query(target, parents) == query(history.source_url, parents)
    assert query(target, "SELECT count(*) FROM document_versions") == [(0,)]  # not selected


# --- 7. --prune-target -----------------------------------------------------------------------


def _with_extras(url: str) -> None:
    app_target(url)
    execute(
        url,
        "INSERT INTO roles (name, description) VALUES ('intruder', 'only here')",
        "INSERT INTO document_types (code, label) VALUES ('XTRA', 'only here')",
    )


def test_rows_only_the_target_holds_are_reported_and_kept_or_pruned_on_request(
    history: History, new_target: Callable[[], str]
) -> None:
    kept = new_target()
    _with_extras(kept)
    result = restore(history, kept, "--latest")
    assert result.exit_code == 0, result.output
    assert "note: 1 rows of roles exist only in the target; left alone" in result.output
    assert "note: 1 rows of document_types exist only in the target" in result.output
    assert query(kept, "SELECT name FROM roles WHERE name = 'intruder'") == [("intruder",)]
    assert query(kept, "SELECT code FROM document_types WHERE code = 'XTRA'") == [("XTRA",)]
    restored = natural(read_raw(kept))
    del restored["roles"][("intruder",)]
    del restored["document_types"][("XTRA",)]
    assert restored == natural(read_raw(history.source_url))

    pruned = new_target()
    _with_extras(pruned)
    result = restore(history, pruned, "--latest", "--prune-target")
    assert result.exit_code == 0, result.output
    assert "pruned 1 rows of roles" in result.output
    assert "pruned 1 rows of document_types" in result.output
    assert query(pruned, "SELECT count(*) FROM roles WHERE name = 'intruder'") == [(0,)]
    assert natural(read_raw(pruned)) == natural(read_raw(history.source_url))


# --- 8. a target schema that lacks what the backup has ----------------------------------------


def test_a_missing_table_is_refused_before_any_work_and_create_schema_makes_it(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target, _schema(lambda md: md.remove(md.tables["placeholder_definitions"])))
    before = contents(target)
    assert "placeholder_definitions" not in before

    result = restore(history, target, "--latest")
    _refused(result, "placeholder_definitions", "--create-schema")
    assert result.exit_code == 1, result.output
    assert "snapshot rows and" not in result.output
    assert contents(target) == before

    created = restore(history, target, "--latest", "--create-schema")
    assert created.exit_code == 0, created.output
    restored = natural(read_raw(target))
    assert restored == natural(read_raw(history.source_url))


def test_a_missing_column_is_refused_before_any_work(
    history: History, new_target: Callable[[], str]
) -> None:
    target = new_target()
    app_target(target, seed=False)
    execute(
        target,
        "ALTER TABLE roles DROP COLUMN description",
        "INSERT INTO roles (name) VALUES ('reader')",
    )
    before = contents(target)

    result = restore(history, target, "--latest")
    _refused(result, "roles", "description")
    assert result.exit_code == 1, result.output
    assert "snapshot rows and" not in result.output
    assert contents(target) == before
