"""`nkdaemon demo`: the whole cycle on the EDMS example in SQLite, nothing to set up."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from nkdaemon.core.history import HistoryTracker
from nkdaemon.examples import edms
from nkdaemon.repository.reader import LoggedTransaction, LogMarker, read_log
from nkdaemon.runtime.config import load_settings, toml_string
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install

Say = Callable[[str], None]


def _engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[attr-defined]

    return engine


def run_demo(directory: Path | None, say: Say) -> Path:
    """Build the example, capture changes, drain them, show the log. Returns the folder."""
    root = directory or Path(tempfile.mkdtemp(prefix="nkdaemon-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    database = root / "edms.db"
    if database.exists():
        database.unlink()
    engine = _engine(database)
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    config = root / "nkdaemon.toml"
    config.write_text(
        f"[source]\nurl = {toml_string(f'sqlite:///{database}')}\n\n"
        f'[repository]\npath = {toml_string(str(root / "repo"))}\n\n[log]\nlevel = "warning"\n'
    )
    settings = load_settings(config)
    say(f"1. built the EDMS example (12 tables) in {database}")
    with Session(settings, writer=True) as session:
        result = install(
            settings,
            engine=session.engine,
            source=session.source,
            layout=session.layout,
            state=session.state,
            log_store=session.log_store,
        )
    say(f"2. installed capture on {len(result.tables)} tables; {result.seeded_rows} ids indexed")

    events = 0
    with Session(settings, writer=True) as session:
        drainer = session.drainer()

        def drain() -> None:  # as the daemon does after each commit
            nonlocal events
            events += drainer.drain_once().events

        _workload(engine, say, drain)
    say(f"4. drained {events} events into the log at {root / 'repo'}")

    with Session(settings, writer=False) as session:
        items = list(read_log(session.log_store))
    tracker = HistoryTracker("users")
    for item in items:
        if isinstance(item, LoggedTransaction):
            tracker.feed(item.lsn, item.commit_time, item.events)
    for row in tracker.matching({"username": "alice2"}):
        keys = " -> ".join(k["username"] for k in row.keys())  # noqa: SIM118 - a method
        say(f"5. history of users username=alice2: {keys} ({len(row.entries)} change)")
    document = next(
        e
        for item in items
        if isinstance(item, LoggedTransaction)
        for e in item.events
        if e["t"] == "documents" and e["k"] == {"document_number": "DOC-0100"}
    )
    say(
        "   DOC-0100 was written by alice before her rename; its event names "
        f"{document['r']['author_id']} (the key as it was)"
    )
    markers = sum(isinstance(i, LogMarker) for i in items)
    say(f"   the log holds {len(items) - markers} transactions; see one row's story with:")
    say(f"   nkdaemon --config {config} history users username=alice2")
    return root


def _workload(engine: sa.Engine, say: Say, after_commit: Callable[[], None]) -> None:
    users = edms.users
    with engine.begin() as conn:
        edms.add_user(conn, "dave", roles_=("author",))
        edms.add_document(conn, "DOC-0100", author="alice")
    after_commit()
    with engine.begin() as conn:
        conn.execute(users.update().where(users.c.username == "alice").values(username="alice2"))
    after_commit()
    with engine.begin() as conn:
        conn.execute(edms.documents.delete().where(edms.documents.c.document_number == "DOC-0002"))
    after_commit()
    say(
        "3. the application wrote: a user, a document by alice, renamed alice -> alice2, "
        "deleted DOC-0002 (cascading to its versions and comments)"
    )
