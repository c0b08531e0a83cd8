"""The EDMS application under concurrent writers: its schema in a source, and a writer
that renames, re-parents, deletes and references documents, tagging each instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from nkdaemon.examples import edms
from nkdaemon.runtime.config import Settings
from tests.helpers import (
    do_install,
    engine_for,
    settings_for,
)

PER_WRITER = 55  # 220 writer transactions in the load test
SEED_USERS = ("alice", "bob", "chloé")
SEED_DOCS = ("DOC-0001", "DOC-0002")
KINDS = ("cites", "supersedes", "requires")
SOURCES = ("scanner", "upload", None)


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
