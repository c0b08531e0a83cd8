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

import json
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.examples import edms
from nkdaemon.runtime.config import Settings
from nkdaemon.sources.registry import Registry
from tests import pg
from tests.helpers import (
    cli_process,
    do_drain,
    engine_for,
    run_cli,
    truth,
)
from tests.natural_content import (
    Content,
    differences,
    leave_millisecond,
    natural_content,
    reflected,
)
from tests.workloads.edms import (
    PER_WRITER,
    EdmsWriter,
    Gate,
    application_schema,
    edms_source,
    run_writer,
)

WRITERS = 4
INSTANTS = 12
SNAPSHOT_AFTER = (4, 8)  # instants after which a snapshot is taken while the writers run

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


def baseline_id(settings: Settings) -> str:
    folder = settings.repository.path / "snapshots"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[0]


# --- 1. exactness under load --------------------------------------------------------------


@pytest.mark.slow
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
