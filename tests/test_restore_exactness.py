"""Invariants 3, 4, 7 and 8 end to end: `restore --at T` gives exactly the state at T.

Real PostgreSQL and real SQLite, the EDMS schema, the command line. Four writers run a mixed
workload (inserts, updates, renames of natural keys, cascading deletes, re-inserts of
deleted keys, rolled-back transactions) while the log is drained and snapshots are taken;
at a dozen instants every writer is held outside any transaction and the source's content
is recorded. Each instant is then restored into a fresh database, read back by natural key
and compared with what was recorded: identical, every time, whichever snapshot the restore
started from. Smaller tests: a renamed user restored to before the rename keeps everything
attached; a snapshot plus the log equals the log alone; `--latest` equals the source; a key
renamed and then renamed again (or deleted) in one transaction restores; and the example
schema keeps its workflow/state cycle on SQLite, which the restore tests depend on.

A restored target is read back without capture installed: its schema is reflected into a
registry of its own and its rows go through the same natural-key fold as the source's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from nkdaemon.core.replay import natural_state
from nkdaemon.examples import edms
from nkdaemon.runtime.config import Settings
from nkdaemon.sources.factory import make_engine, open_source
from nkdaemon.sources.registry import Registry, reflect_registry
from tests import pg
from tests.helpers import (
    cli_process,
    do_drain,
    do_install,
    engine_for,
    run_cli,
    settings_for,
    truth,
)

WRITERS = 4
PER_WRITER = 55  # 220 writer transactions in the load test
INSTANTS = 12
SNAPSHOT_AFTER = (4, 8)  # instants after which a snapshot is taken while the writers run
SEED_USERS = ("alice", "bob", "chloé")
SEED_DOCS = ("DOC-0001", "DOC-0002")
KINDS = ("cites", "supersedes", "requires")
SOURCES = ("scanner", "upload", None)

Content = dict[str, dict[str, Any]]


# --- reading any database by natural key ------------------------------------------------


def natural_content(url: str, directory: Path, registry: Registry | None = None) -> Content:
    """A database's content by natural key, ids left out; needs no capture installed.

    ``registry``: the reflection of a database with the very same schema, to save time.
    """
    directory.mkdir(parents=True, exist_ok=True)
    registry = registry or reflected(url, directory)
    source = open_source(settings_for(directory, url).source)
    try:
        rows = {number: source.read_rows(spec) for number, spec in registry.tables.items()}
    finally:
        source.close()
    return natural_state(registry.tables, rows).comparable()


def reflected(url: str, directory: Path) -> Registry:
    directory.mkdir(parents=True, exist_ok=True)
    settings = settings_for(directory, url)
    engine = make_engine(settings.source)
    try:
        return reflect_registry(engine, settings)
    finally:
        engine.dispose()


def differences(actual: Content, expected: Content) -> list[str]:
    """Per table, which natural keys are missing, extra or different (for failure messages)."""
    out = []
    for table in sorted(set(actual) | set(expected)):
        got, want = actual.get(table, {}), expected.get(table, {})
        if got == want:
            continue
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        changed = [k for k in sorted(set(got) & set(want)) if got[k] != want[k]][:2]
        detail = [f"{table}: {len(got)} rows, expected {len(want)}"]
        detail += [f"  missing {k}" for k in missing] + [f"  extra {k}" for k in extra]
        detail += [f"  {k}: {got[k]} != {want[k]}" for k in changed]
        out.append("\n".join(detail))
    return out


# --- fresh restore targets --------------------------------------------------------------


@dataclass
class Targets:
    """Fresh, empty databases of the source's dialect to restore into."""

    dialect: str
    directory: Path
    server: str | None
    created: list[str] = field(default_factory=list)
    schemas: dict[str, str] = field(default_factory=dict)  # url -> who made its schema
    registries: dict[str, Registry] = field(default_factory=dict)  # by who made the schema

    def new(
        self, *, create_schema: bool = False, seed_reverse: bool = False
    ) -> tuple[str, list[str]]:
        """(URL, extra restore options): the EDMS schema made by the application, empty
        (or with its reference rows seeded in another order), or nothing and
        --create-schema (SQLite only)."""
        number = len(self.created)
        if self.dialect == "postgresql":
            assert self.server is not None
            url = pg.create_database(self.server)
        else:
            url = f"sqlite:///{self.directory / f'target-{number}.db'}"
        self.created.append(url)
        if create_schema and self.dialect == "sqlite":
            assert not seed_reverse
            self.schemas[url] = "nkdaemon"
            return url, ["--create-schema"]
        self.schemas[url] = "application"
        application_schema(url)
        engine = engine_for(url)
        try:
            if seed_reverse:
                with engine.begin() as conn:
                    edms.seed_reference(conn, reverse=True)
        finally:
            engine.dispose()
        return url, []

    def read(self, url: str) -> Content:
        """The target's content; its schema reflected once per way of making it."""
        directory = self.directory / f"read-{self.created.index(url)}"
        kind = self.schemas[url]
        if kind not in self.registries:
            self.registries[kind] = reflected(url, directory)
        return natural_content(url, directory, self.registries[kind])

    def drop_all(self) -> None:
        if self.server is not None:
            for url in self.created:
                pg.drop_database(self.server, url)


@pytest.fixture
def targets(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Targets]:
    dialect = sa.make_url(db_url).get_backend_name()
    server = str(request.getfixturevalue("pg_server")) if dialect == "postgresql" else None
    made = Targets(dialect=dialect, directory=tmp_path / "targets", server=server)
    made.directory.mkdir()
    yield made
    made.drop_all()


SNAPSHOT_LINE = re.compile(r"^  snapshot (\S+) \(", re.MULTILINE)


def restore(config: Path, target: tuple[str, list[str]], *when: str) -> str:
    """Run `nkdaemon restore`; the id of the snapshot it started from."""
    url, extra = target
    out = run_cli(config, "restore", "--target", url, *when, *extra)
    assert out.exit_code == 0, out.output
    assert "committed" in out.output and "exist only in the target" not in out.output, out.output
    found = SNAPSHOT_LINE.search(out.output)
    assert found, out.output
    return found.group(1)


def snapshot_now(config: Path) -> str:
    """`nkdaemon snapshot` in its own process (safe while writer threads run)."""
    done = cli_process(config, "snapshot", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    return str(json.loads(done.stdout)["id"])


def leave_millisecond(moment: datetime) -> None:
    """Return once the clock has left ``moment``'s millisecond.

    SQLite stamps a log transaction with its last change's time in milliseconds; once the
    clock is past T's millisecond, no change made later can carry a stamp at or before T
    (the documented resolution; see docs/FORMAT.md).
    """
    boundary = moment.replace(microsecond=moment.microsecond // 1000 * 1000) + timedelta(
        milliseconds=1
    )
    while datetime.now(UTC) < boundary:
        pass


def mark_instant(settings: Settings, *, sqlite: bool) -> tuple[datetime, Content]:
    """With no writer transaction open: the source's content and the time.

    On SQLite a drain pass closes the log transaction here, so the instant is a boundary in
    the log. The time is taken last, just before the writers go on, so that the next commit
    follows it closely and a restore that misplaces T by a little is caught.
    """
    content = truth(settings).comparable()
    if sqlite:
        do_drain(settings)
    moment = datetime.now(UTC)
    if sqlite:
        leave_millisecond(moment)
    return moment, content


def application_schema(url: str) -> None:
    """``edms.create_schema``, run as the application runs it: in a process of its own.

    In this process, an earlier ``create_schema`` on PostgreSQL has left the shared
    MetaData's use_alter foreign key (document_workflows -> document_states) switched off
    for inline DDL, so SQLite would silently get no cycle; see
    test_edms_create_schema_on_sqlite_keeps_the_cycle_after_postgresql below.
    """
    if sa.make_url(url).get_backend_name() != "sqlite":
        engine = engine_for(url)
        try:
            edms.create_schema(engine)
        finally:
            engine.dispose()
        return
    code = (
        "import sys; from nkdaemon.examples import edms; from tests.helpers import engine_for; "
        "edms.create_schema(engine_for(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, url],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --- the application: one writer's random but valid EDMS transactions -------------------


def writer_engine(url: str) -> sa.Engine:
    """The application's engine; on SQLite, write transactions take the lock at BEGIN, as
    multi-connection SQLite applications do (no lock upgrades, so no busy deadlocks)."""
    if sa.make_url(url).get_backend_name() != "sqlite":
        return engine_for(url)
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def transient(exc: DBAPIError) -> bool:
    """A PostgreSQL deadlock or serialization failure, or SQLite busy: worth trying again."""
    if isinstance(exc.orig, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return True
    return isinstance(exc.orig, sqlite3.OperationalError) and (
        "locked" in str(exc.orig) or "busy" in str(exc.orig)
    )


class EdmsWriter:
    """Random EDMS transactions that stay valid alongside other writers.

    A writer owns the users, documents, workflows and placeholders it names (prefix
    ``w{n}``), renames and deletes only those, and otherwise refers only to the seed rows,
    which nobody deletes or renames; so its transactions never conflict on keys and take
    row locks in no order that could deadlock. Every choice is made on the database's
    current rows, read inside the transaction, so a rolled-back transaction leaves nothing
    to undo here.
    """

    def __init__(self, number: int, seed: int, *, rename_standard: bool = False) -> None:
        self.number = number
        self.rng = random.Random(seed * 7919 + number)
        self.serial = 0
        self.graveyard: list[str] = []
        self.rename_standard = rename_standard
        self.committed: Counter[str] = Counter()
        self.rolled_back = 0
        self._pending: list[str] = []
        self._buried: list[str] = []

    # naming
    def _next(self) -> int:
        self.serial += 1
        return self.serial

    def user_name(self) -> str:
        return f"w{self.number}u{self._next()}"

    def doc_number(self) -> str:
        return f"W{self.number}-{self._next():04d}"

    # reading current rows (ordered, so choices are reproducible for one writer)
    def _own(self, conn: sa.Connection, column: sa.Column[Any], prefix: str) -> list[Any]:
        return list(
            conn.execute(sa.select(column).where(column.like(f"{prefix}%")).order_by(column))
            .scalars()
            .all()
        )

    def own_users(self, conn: sa.Connection) -> list[str]:
        return self._own(conn, edms.users.c.username, f"w{self.number}u")

    def own_docs(self, conn: sa.Connection) -> list[str]:
        return self._own(conn, edms.documents.c.document_number, f"W{self.number}-")

    def own_workflows(self, conn: sa.Connection) -> list[str]:
        return self._own(conn, edms.document_workflows.c.name, f"w{self.number}wf")

    def own_placeholders(self, conn: sa.Connection) -> list[str]:
        return self._own(conn, edms.placeholder_definitions.c.name, f"w{self.number}ph")

    def _id(self, conn: sa.Connection, table: sa.Table, column: str, value: Any) -> int:
        return int(conn.execute(sa.select(table.c.id).where(table.c[column] == value)).scalar_one())

    def doc_id(self, conn: sa.Connection, number: str) -> int:
        return self._id(conn, edms.documents, "document_number", number)

    def user_id(self, conn: sa.Connection, name: str) -> int:
        return self._id(conn, edms.users, "username", name)

    def an_author(self, conn: sa.Connection) -> str:
        return self.rng.choice([*self.own_users(conn), *SEED_USERS])

    def draft_state(self, conn: sa.Connection) -> int:
        return int(
            conn.execute(
                sa.select(edms.document_states.c.id)
                .join(
                    edms.document_workflows,
                    edms.document_states.c.workflow_id == edms.document_workflows.c.id,
                )
                .where(edms.document_states.c.code == "draft")
                .where(~edms.document_workflows.c.name.like("w%wf%"))
            ).scalar_one()
        )

    # values
    def fee(self) -> Decimal | None:
        choice = self.rng.random()
        if choice < 0.1:
            return None
        if choice < 0.2:
            return Decimal(self.rng.randint(0, 500))
        return Decimal(self.rng.randint(0, 10**9)) / Decimal(10**4)

    def tags(self) -> list[str]:
        pool = ["a", "b,c", 'quote"d', "ünï", "{brace}", "x y", "🧾"]
        return self.rng.sample(pool, self.rng.randint(0, 4))

    def text(self, what: str) -> str:
        return f"{what} {self.rng.randint(0, 10**6)} – naïve ✓"

    def when(self) -> datetime:
        return edms.T0 + timedelta(seconds=self.rng.randint(0, 10**7), microseconds=self._next())

    # operations; each returns its name, or None when it found nothing to work on
    def new_user(self, conn: sa.Connection) -> str:
        roles = tuple(self.rng.sample(edms.ROLES, self.rng.randint(1, 3)))
        edms.add_user(conn, self.user_name(), roles_=roles)
        return "insert user"

    def insert_document(self, conn: sa.Connection, number: str) -> int:
        author = self.an_author(conn)
        author_id = self.user_id(conn, author)
        parents = [*self.own_docs(conn), *SEED_DOCS]
        parent = self.rng.choice(parents) if self.rng.random() < 0.5 else None
        source = self.rng.choice(SOURCES)
        doc = conn.execute(
            edms.documents.insert()
            .values(
                document_number=number,
                title=self.text("Document"),
                type_id=self._id(
                    conn, edms.document_types, "code", self.rng.choice(edms.DOCUMENT_TYPES)[0]
                ),
                source_id=None
                if source is None
                else self._id(conn, edms.document_sources, "name", source),
                state_id=self.draft_state(conn) if self.rng.random() < 0.7 else None,
                author_id=author_id,
                parent_id=None if parent is None else self.doc_id(conn, parent),
                fee=self.fee(),
                tags=self.tags(),
                created_at=self.when(),
            )
            .returning(edms.documents.c.id)
        ).scalar_one()
        self.add_version(conn, number)
        self.add_comment(conn, number, author=author)
        return int(doc)

    def new_document(self, conn: sa.Connection) -> str:
        self.insert_document(conn, self.doc_number())
        return "insert document"

    def add_version(self, conn: sa.Connection, number: str | None = None) -> str | None:
        if number is None:
            docs = self.own_docs(conn)
            if not docs:
                return None
            number = self.rng.choice(docs)
        doc = self.doc_id(conn, number)
        version = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.max(edms.document_versions.c.version_number), 0)
            ).where(edms.document_versions.c.document_id == doc)
        ).scalar_one()
        content = self.rng.randbytes(self.rng.randint(0, 64)) + b"\x00\xff"
        conn.execute(
            edms.document_versions.insert().values(
                document_id=doc,
                version_number=int(version) + 1,
                created_by=self.user_id(conn, self.an_author(conn)),
                content=content,
                sha256=hashlib.sha256(content).hexdigest(),
                created_at=self.when(),
            )
        )
        return "insert version"

    def add_comment(
        self, conn: sa.Connection, number: str | None = None, *, author: str | None = None
    ) -> str | None:
        if number is None:
            docs = self.own_docs(conn)
            if not docs:
                return None
            number = self.rng.choice(docs)
        conn.execute(
            edms.document_comments.insert().values(
                uuid=uuid.UUID(int=self.rng.getrandbits(128)),
                document_id=self.doc_id(conn, number),
                author_id=self.user_id(conn, author or self.an_author(conn)),
                body=self.text("comment ✍"),
                created_at=self.when(),
            )
        )
        return "insert comment"

    def add_dependency(self, conn: sa.Connection) -> str | None:
        docs = self.own_docs(conn)
        if not docs:
            return None
        doc = self.doc_id(conn, self.rng.choice(docs))
        on = self.doc_id(conn, self.rng.choice([*docs, *SEED_DOCS]))
        kind = self.rng.choice(KINDS)
        deps = edms.document_dependencies
        exists = conn.execute(
            sa.select(deps.c.id).where(
                deps.c.document_id == doc, deps.c.depends_on_id == on, deps.c.kind == kind
            )
        ).first()
        if exists is not None:
            conn.execute(deps.delete().where(deps.c.id == exists[0]))
            return "delete dependency"
        conn.execute(deps.insert().values(document_id=doc, depends_on_id=on, kind=kind, note=None))
        return "insert dependency"

    def update_document(self, conn: sa.Connection) -> str | None:
        docs = edms.documents
        if self.rng.random() < 0.25:  # a seed document, shared with one other writer
            number = SEED_DOCS[self.number % 2]
            conn.execute(
                docs.update()
                .where(docs.c.document_number == number)
                .values(title=self.text("Seed"), fee=self.fee())
            )
            return "update seed document"
        own = self.own_docs(conn)
        if not own:
            return None
        number = self.rng.choice(own)
        values: dict[str, Any] = {"title": self.text("Retitled"), "fee": self.fee()}
        if self.rng.random() < 0.5:
            values["tags"] = self.tags()
        if self.rng.random() < 0.3:
            others = [d for d in [*own, *SEED_DOCS] if d != number]
            values["parent_id"] = self.doc_id(conn, self.rng.choice(others)) if others else None
        conn.execute(docs.update().where(docs.c.document_number == number).values(**values))
        return "update document"

    def placeholder(self, conn: sa.Connection) -> str:
        table = edms.placeholder_definitions
        own = self.own_placeholders(conn)
        value: Any = {
            "text": self.text("ACME"),
            "n": self.rng.randint(-1000, 1000),
            "list": [1, "x", None, True, {"deep": self.rng.random() < 0.5}],
        }
        if self.rng.random() < 0.15:
            value = None
        choice = self.rng.random()
        if not own or choice < 0.4:
            conn.execute(
                table.insert().values(name=f"w{self.number}ph{self._next()}", default_value=value)
            )
            return "insert placeholder"
        name = self.rng.choice(own)
        if choice < 0.8:
            conn.execute(table.update().where(table.c.name == name).values(default_value=value))
            return "update placeholder"
        conn.execute(table.delete().where(table.c.name == name))
        return "delete placeholder"

    def rename_user(self, conn: sa.Connection) -> str | None:
        own = self.own_users(conn)
        if not own:
            return None
        users = edms.users
        conn.execute(
            users.update()
            .where(users.c.username == self.rng.choice(own))
            .values(username=self.user_name(), email=f"{self._next()}@example.com")
        )
        return "rename user"

    def rename_document(self, conn: sa.Connection) -> str | None:
        own = self.own_docs(conn)
        if not own:
            return None
        docs = edms.documents
        conn.execute(
            docs.update()
            .where(docs.c.document_number == self.rng.choice(own))
            .values(document_number=self.doc_number())
        )
        return "rename document"

    def rename_seed_workflow(self, conn: sa.Connection) -> str:
        """The seed workflow, whose name is part of every document state's key (one writer)."""
        wfs = edms.document_workflows
        conn.execute(
            wfs.update().where(~wfs.c.name.like("w%wf%")).values(name=f"standard-{self._next()}")
        )
        return "rename seed workflow"

    def workflow(self, conn: sa.Connection) -> str | None:
        wfs, states = edms.document_workflows, edms.document_states
        own = self.own_workflows(conn)
        choice = self.rng.random()
        if not own or choice < 0.35:  # a new workflow: the two-table cycle
            wf = conn.execute(
                wfs.insert().values(name=f"w{self.number}wf{self._next()}").returning(wfs.c.id)
            ).scalar_one()
            ids = [
                conn.execute(
                    states.insert()
                    .values(workflow_id=wf, code=code, label=code.title())
                    .returning(states.c.id)
                ).scalar_one()
                for code in self.rng.sample(["draft", "review", "approved", "obsolete"], 3)
            ]
            conn.execute(wfs.update().where(wfs.c.id == wf).values(initial_state_id=ids[0]))
            return "insert workflow"
        name = self.rng.choice(own)
        wf = self._id(conn, wfs, "name", name)
        if choice < 0.65:
            conn.execute(
                wfs.update().where(wfs.c.id == wf).values(name=f"w{self.number}wf{self._next()}")
            )
            if self.rng.random() < 0.3:  # and again, in the same transaction
                conn.execute(
                    wfs.update()
                    .where(wfs.c.id == wf)
                    .values(name=f"w{self.number}wf{self._next()}")
                )
                return "rename workflow twice"
            return "rename workflow"
        if choice < 0.8:
            conn.execute(
                states.update().where(states.c.workflow_id == wf).values(label=self.text("Label"))
            )
            return "update states"
        conn.execute(wfs.delete().where(wfs.c.id == wf))  # states cascade
        return "delete workflow"

    def delete_document(self, conn: sa.Connection) -> str | None:
        own = self.own_docs(conn)
        if not own:
            return None
        number = self.rng.choice(own)
        docs = edms.documents
        # versions, comments, dependencies cascade; children's parent becomes NULL
        conn.execute(docs.delete().where(docs.c.document_number == number))
        self._buried.append(number)
        if self.rng.random() < 0.3:  # and the same key again, in the same transaction
            self.insert_document(conn, number)
            return "delete and re-insert document"
        return "delete document"

    def reinsert_document(self, conn: sa.Connection) -> str | None:
        gone = [n for n in self.graveyard if n not in self.own_docs(conn)]
        if not gone:
            return None
        self.insert_document(conn, self.rng.choice(gone))
        return "re-insert deleted document"

    def delete_user(self, conn: sa.Connection) -> str | None:
        own = self.own_users(conn)
        if not own:
            return None
        uid = self.user_id(conn, self.rng.choice(own))
        conn.execute(
            edms.document_comments.delete().where(edms.document_comments.c.author_id == uid)
        )
        conn.execute(
            edms.document_versions.delete().where(edms.document_versions.c.created_by == uid)
        )
        self._buried += conn.execute(
            sa.select(edms.documents.c.document_number).where(edms.documents.c.author_id == uid)
        ).scalars()
        conn.execute(edms.documents.delete().where(edms.documents.c.author_id == uid))
        conn.execute(edms.users.delete().where(edms.users.c.id == uid))  # user_roles cascade
        return "delete user"

    def toggle_role(self, conn: sa.Connection) -> str | None:
        own = self.own_users(conn)
        if not own:
            return None
        uid = self.user_id(conn, self.rng.choice(own))
        role = self._id(conn, edms.roles, "name", self.rng.choice(edms.ROLES))
        ur = edms.user_roles
        gone = conn.execute(ur.delete().where(ur.c.user_id == uid, ur.c.role_id == role))
        if gone.rowcount:
            return "revoke role"
        conn.execute(ur.insert().values(user_id=uid, role_id=role, granted_at=self.when()))
        return "grant role"

    def update_user(self, conn: sa.Connection) -> str | None:
        own = self.own_users(conn)
        if not own:
            return None
        conn.execute(
            edms.users.update()
            .where(edms.users.c.username == self.rng.choice(own))
            .values(full_name=self.text("Ünïcode name"), is_active=self.rng.random() < 0.7)
        )
        return "update user"

    OPERATIONS: tuple[tuple[str, int], ...] = (
        ("new_user", 6),
        ("new_document", 10),
        ("add_version", 5),
        ("add_comment", 5),
        ("add_dependency", 5),
        ("update_document", 8),
        ("placeholder", 4),
        ("rename_user", 4),
        ("rename_document", 4),
        ("workflow", 7),
        ("rename_seed_workflow", 6),  # only by the writer that may
        ("delete_document", 4),
        ("reinsert_document", 3),
        ("delete_user", 2),
        ("toggle_role", 3),
        ("update_user", 3),
    )

    def transaction(self, conn: sa.Connection) -> None:
        """One transaction of 1-3 operations; about one in eight is rolled back."""
        mine = [
            (name, weight)
            for name, weight in self.OPERATIONS
            if self.rename_standard or name != "rename_seed_workflow"
        ]
        names = [name for name, _ in mine]
        weights = [weight for _, weight in mine]
        commit = self.rng.random() > 0.12
        for _attempt in range(50):
            self._pending, self._buried = [], []
            state = self.rng.getstate()
            tx = conn.begin()
            try:
                for name in self.rng.choices(names, weights, k=self.rng.randint(1, 3)):
                    done = getattr(self, name)(conn)
                    if done is not None:
                        self._pending.append(done)
                if commit:
                    tx.commit()
                else:
                    tx.rollback()
            except DBAPIError as exc:
                tx.rollback()
                if not transient(exc):
                    raise
                self.rng.setstate(state)
                continue
            if commit:
                self.committed.update(self._pending)
                self.graveyard.extend(self._buried)
            else:
                self.rolled_back += 1
            return
        raise AssertionError(f"writer {self.number}: 50 attempts failed")

    def run(self, engine: sa.Engine, count: int) -> None:
        with engine.connect() as conn:
            for _ in range(count):
                self.transaction(conn)


# --- holding every writer outside a transaction ------------------------------------------


class Gate:
    """Paces the writers: transactions start only up to an allowance the test raises.

    When as many transactions have finished as were allowed, no writer is inside one, and
    the rest wait at the gate: an instant at which the source's state is well defined.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._allowed = 0
        self._started = 0
        self.finished = 0
        self.failed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._started < self._allowed)
            self._started += 1
        try:
            yield
        finally:
            with self._cond:
                self.finished += 1
                self._cond.notify_all()

    def allow(self, total: int) -> None:
        with self._cond:
            self._allowed = total
            self._cond.notify_all()

    def reach(self, total: int, timeout: float = 240) -> None:
        """Wait until ``total`` transactions have finished (then none is open)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.finished >= total or self.failed, timeout)
            assert ok and not self.failed, f"writers stopped at {self.finished} of {total}"
            assert self._started == self.finished == total

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()


def run_writer(
    writer: EdmsWriter, engine: sa.Engine, gate: Gate, errors: list[BaseException]
) -> None:
    try:
        with engine.connect() as conn:
            for _ in range(PER_WRITER):
                with gate.transaction():
                    writer.transaction(conn)
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)
        gate.fail()


# --- setup shared by the tests -----------------------------------------------------------


def edms_source(url: str, tmp_path: Path) -> tuple[sa.Engine, Settings, Path]:
    application_schema(url)
    engine = writer_engine(url)
    cycle = sa.inspect(engine).get_foreign_keys("document_workflows")
    assert [fk["referred_table"] for fk in cycle] == ["document_states"], "EDMS.md's cycle"
    with engine.begin() as conn:
        edms.seed_example(conn)
    settings = settings_for(tmp_path, url)
    do_install(settings)
    return engine, settings, tmp_path / "nkdaemon.toml"


def baseline_id(settings: Settings) -> str:
    folder = settings.repository.path / "snapshots"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[0]


# --- 1. exactness under load --------------------------------------------------------------


def test_restore_at_each_instant_of_a_concurrent_workload_is_exact(
    db_url: str, tmp_path: Path, targets: Targets
) -> None:
    sqlite = db_url.startswith("sqlite")
    engine, settings, config = edms_source(db_url, tmp_path)
    first_snapshot = baseline_id(settings)
    writers = [EdmsWriter(n, seed=20260101, rename_standard=n == 0) for n in range(WRITERS)]
    gate = Gate()
    errors: list[BaseException] = []
    stop = threading.Event()

    def drain_loop() -> None:
        try:
            while not stop.is_set():
                do_drain(settings)
                stop.wait(0.02)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def snapshot_loop() -> None:
        try:
            taken.append(snapshot_now(config))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(
            target=run_writer, args=(w, engine, gate, errors), name=f"writer-{w.number}"
        )
        for w in writers
    ]
    if not sqlite:  # PostgreSQL logs exact transactions: drain alongside the writers
        threads.append(threading.Thread(target=drain_loop, name="drain"))
    instants: list[tuple[datetime, Content]] = []
    taken: list[str] = []
    total = WRITERS * PER_WRITER
    step = total // (INSTANTS + 1)
    for thread in threads:
        thread.start()
    try:
        gate.allow(step)
        for k in range(1, INSTANTS + 1):
            gate.reach(k * step)
            instants.append(mark_instant(settings, sqlite=sqlite))  # no transaction is open
            snapshot = None
            if k in SNAPSHOT_AFTER:  # taken while the writers go on
                snapshot = threading.Thread(target=snapshot_loop, name="snapshot")
                snapshot.start()
            gate.allow((k + 1) * step if k < INSTANTS else total)
            if snapshot is not None:
                snapshot.join()
        gate.reach(total)
    finally:
        gate.allow(total)
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
    assert not errors, errors
    do_drain(settings)
    engine.dispose()

    committed = sum((w.committed for w in writers), Counter())
    assert sum(w.rolled_back for w in writers) >= 5, "some transactions are rolled back"
    for kind in (
        "rename user",
        "rename document",
        "rename workflow",
        "rename workflow twice",
        "rename seed workflow",
        "delete document",
        "delete and re-insert document",
        "re-insert deleted document",
        "delete user",
        "delete workflow",
        "update document",
        "update placeholder",
        "insert dependency",
    ):
        assert committed[kind] > 0, f"the workload never committed a {kind!r}: {committed}"
    assert len({json.dumps(c, sort_keys=True, default=str) for _, c in instants}) == INSTANTS

    used: list[str] = []
    failures: list[str] = []
    for number, (moment, expected) in enumerate(instants):
        target = targets.new(create_schema=number % 2 == 0)
        used.append(restore(config, target, "--at", moment.isoformat()))
        found = differences(targets.read(target[0]), expected)
        if found:
            failures.append(f"instant {number} ({moment.isoformat()}):\n" + "\n".join(found))
    assert not failures, "\n\n".join(failures)
    assert used[0] == first_snapshot
    assert set(taken) <= set(used), "later instants restore from the snapshots taken under load"


# --- 2. a renamed user, restored to before the rename -------------------------------------


def test_a_user_restored_to_before_a_rename_keeps_everything_attached(
    db_url: str, tmp_path: Path, targets: Targets
) -> None:
    sqlite = db_url.startswith("sqlite")
    engine, settings, config = edms_source(db_url, tmp_path)
    docs, users, comments = edms.documents, edms.users, edms.document_comments
    with engine.begin() as conn:
        alice = conn.execute(sa.select(users.c.id).where(users.c.username == "alice")).scalar_one()
        for role in ("author", "reviewer"):
            role_id = conn.execute(
                sa.select(edms.roles.c.id).where(edms.roles.c.name == role)
            ).scalar_one()
            conn.execute(
                edms.user_roles.insert().values(user_id=alice, role_id=role_id, granted_at=edms.T0)
            )
        edms.add_document(conn, "DOC-A1", author="alice", type_code="POL")
        edms.add_document(conn, "DOC-A2", author="alice", type_code="RPT")
        bobs = conn.execute(
            sa.select(docs.c.id).where(docs.c.document_number == "DOC-0002")
        ).scalar_one()
        conn.execute(
            comments.insert().values(
                uuid=uuid.UUID(int=42),
                document_id=bobs,
                author_id=alice,
                body="alice on bob's document",
                created_at=edms.T0,
            )
        )
    do_drain(settings)
    before, expected = mark_instant(settings, sqlite=sqlite)
    with engine.begin() as conn:
        conn.execute(users.update().where(users.c.username == "alice").values(username="alice2"))
    with engine.begin() as conn:
        edms.add_document(conn, "DOC-A3", author="alice2")
    do_drain(settings)
    engine.dispose()

    # the target's application seeded its reference rows in another order: other ids
    target = targets.new(seed_reverse=True)
    restore(config, target, "--at", before.isoformat())
    assert differences(targets.read(target[0]), expected) == []

    restored = engine_for(target[0])
    try:
        with restored.begin() as conn:
            names = set(conn.execute(sa.select(users.c.username)).scalars())
            assert "alice" in names and "alice2" not in names
            alice = conn.execute(
                sa.select(users.c.id).where(users.c.username == "alice")
            ).scalar_one()
            owned = dict(
                conn.execute(
                    sa.select(docs.c.document_number, edms.document_types.c.code)
                    .join(edms.document_types, docs.c.type_id == edms.document_types.c.id)
                    .where(docs.c.author_id == alice)
                ).all()
            )
            assert owned == {"DOC-0001": "SOP", "DOC-A1": "POL", "DOC-A2": "RPT"}
            roles = set(
                conn.execute(
                    sa.select(edms.roles.c.name)
                    .join(edms.user_roles, edms.user_roles.c.role_id == edms.roles.c.id)
                    .where(edms.user_roles.c.user_id == alice)
                ).scalars()
            )
            assert roles == {"reader", "author", "reviewer"}
            commented = set(
                conn.execute(
                    sa.select(docs.c.document_number, comments.c.body)
                    .join(docs, comments.c.document_id == docs.c.id)
                    .where(comments.c.author_id == alice)
                ).all()
            )
            assert ("DOC-0002", "alice on bob's document") in commented
            assert {n for n, _ in commented} == {"DOC-0001", "DOC-0002", "DOC-A1", "DOC-A2"}
            versions = set(
                conn.execute(
                    sa.select(docs.c.document_number)
                    .join(edms.document_versions, edms.document_versions.c.document_id == docs.c.id)
                    .where(edms.document_versions.c.created_by == alice)
                ).scalars()
            )
            assert versions == {"DOC-0001", "DOC-A1", "DOC-A2"}
            assert (
                conn.execute(
                    sa.select(sa.func.count()).where(docs.c.document_number == "DOC-A3")
                ).scalar_one()
                == 0
            )
            # sequences are ready for the application's next insert
            edms.add_user(conn, "after-restore", roles_=("admin",))
            edms.add_document(conn, "DOC-NEXT", author="after-restore")
    finally:
        restored.dispose()


# --- 3. snapshot + log equals log alone ---------------------------------------------------


def test_a_later_snapshot_and_the_log_give_what_the_log_alone_gives(
    db_url: str, tmp_path: Path, targets: Targets
) -> None:
    sqlite = db_url.startswith("sqlite")
    engine, settings, config = edms_source(db_url, tmp_path)
    first = baseline_id(settings)
    writers = [EdmsWriter(n, seed=303, rename_standard=n == 0) for n in range(2)]
    for writer in writers:
        writer.run(engine, 25)
    do_drain(settings)
    out = run_cli(config, "snapshot", "--json")
    assert out.exit_code == 0, out.output
    later = json.loads(out.stdout)["id"]
    for writer in writers:
        writer.run(engine, 25)
    do_drain(settings)
    moment, expected = mark_instant(settings, sqlite=sqlite)
    writers[0].run(engine, 5)  # after the instant: the log reaches past it
    do_drain(settings)
    engine.dispose()

    normal = targets.new(create_schema=True)
    assert restore(config, normal, "--at", moment.isoformat()) == later
    folder = settings.repository.path / "snapshots" / later
    aside = tmp_path / "aside" / later
    aside.parent.mkdir()
    shutil.move(folder, aside)
    try:
        from_baseline = targets.new()
        assert restore(config, from_baseline, "--at", moment.isoformat()) == first
    finally:
        shutil.move(aside, folder)

    via_snapshot = targets.read(normal[0])
    via_log = targets.read(from_baseline[0])
    assert differences(via_snapshot, via_log) == []
    assert differences(via_snapshot, expected) == []


# --- 4. --latest equals the source ---------------------------------------------------------


def test_restore_latest_equals_the_source(db_url: str, tmp_path: Path, targets: Targets) -> None:
    engine, settings, config = edms_source(db_url, tmp_path)
    writers = [EdmsWriter(n, seed=404, rename_standard=n == 0) for n in range(3)]
    for writer in writers:
        writer.run(engine, 15)
    do_drain(settings)
    assert run_cli(config, "snapshot").exit_code == 0
    for writer in writers:
        writer.run(engine, 15)
    do_drain(settings)
    engine.dispose()

    for create_schema in (False, True):
        target = targets.new(create_schema=create_schema)
        restore(config, target, "--latest")
        assert differences(targets.read(target[0]), truth(settings).comparable()) == []


# --- 5. a key changed twice within one transaction ----------------------------------------


@pytest.mark.parametrize("then", ["renamed again", "deleted"])
def test_a_key_renamed_then_changed_again_in_one_transaction_restores(
    db_url: str, tmp_path: Path, targets: Targets, then: str
) -> None:
    """A workflow's initial state is named by a key that holds the workflow's own name; one
    transaction renames the workflow and then renames it again, or deletes it. (On SQLite
    one log transaction can also hold several source transactions that do this.)"""
    engine, settings, config = edms_source(db_url, tmp_path)
    wfs, states = edms.document_workflows, edms.document_states
    with engine.begin() as conn:
        wf = conn.execute(wfs.insert().values(name="review").returning(wfs.c.id)).scalar_one()
        first = conn.execute(
            states.insert().values(workflow_id=wf, code="open", label="Open").returning(states.c.id)
        ).scalar_one()
        conn.execute(states.insert().values(workflow_id=wf, code="done", label="Done"))
        conn.execute(wfs.update().where(wfs.c.id == wf).values(initial_state_id=first))
    do_drain(settings)
    with engine.begin() as conn:
        conn.execute(wfs.update().where(wfs.c.name == "review").values(name="review-2"))
        if then == "renamed again":
            conn.execute(wfs.update().where(wfs.c.name == "review-2").values(name="review-3"))
        else:
            conn.execute(wfs.delete().where(wfs.c.name == "review-2"))  # its states cascade
    do_drain(settings)
    engine.dispose()

    target = targets.new()
    restore(config, target, "--latest")
    assert differences(targets.read(target[0]), truth(settings).comparable()) == []


# --- 6. the example schema's cycle on SQLite ----------------------------------------------


def test_edms_create_schema_on_sqlite_keeps_the_cycle_after_postgresql(
    pg_url: str, sqlite_url: str
) -> None:
    """EDMS.md: document_workflows.initial_state -> document_states on both dialects.

    Without that foreign key, SQLite captures initial_state_id as a bare surrogate id, and
    a restore into a database whose ids differ points workflows at the wrong state.
    """
    for url in (pg_url, sqlite_url):  # one process, as a test session (or a tool) does it
        engine = engine_for(url)
        try:
            edms.create_schema(engine)
            keys = sa.inspect(engine).get_foreign_keys("document_workflows")
        finally:
            engine.dispose()
        assert [fk["referred_table"] for fk in keys] == ["document_states"], url
