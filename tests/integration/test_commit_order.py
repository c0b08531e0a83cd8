"""Invariants 1 and 2 under concurrency: every committed change once, whole, in commit order.

Several writer threads run interleaving transactions (some rolled back) while drain passes
run alongside; one transaction starts first, writes, waits while the others commit, writes
again and commits last. The log must replay exactly to the source's final state, hold each
committed transaction once and whole, and nothing rolled back. A drain that orders by the
queue id alone (the classic mistake) must fail the same check.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from nkdaemon.core.events import RawChange
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ports import QueuedChange
from nkdaemon.dialects.postgres_rows import RowDecoder
from nkdaemon.runtime.config import Settings
from nkdaemon.runtime.session import Session
from nkdaemon.sources.postgres import PostgresSource
from tests.helpers import do_install, engine_for, logged, replayed, settings_for, truth
from tests.workloads import banking
from tests.workloads.banking import problems

WRITERS = 4
PER_WRITER = 60


class QueueIdOrderSource(PostgresSource):
    """The mistake: read what is visible by queue id, remember the highest id seen."""

    def fence(self) -> int:
        row = (
            self._connection().execute("SELECT coalesce(max(id), 0) FROM nkdaemon.queue").fetchone()
        )
        return int(row[0]) if row else 0

    def read(
        self,
        tables: dict[int, TableSpec],
        after: int,
        upto: int,
        cuts: Sequence[int] = (),
    ) -> Iterator[QueuedChange]:
        rows = (
            self._connection()
            .execute(
                "SELECT id, xid::text, now(), tbl, op, old::text, new::text FROM nkdaemon.queue "
                "WHERE id > %s AND id <= %s ORDER BY id",
                (after, upto),
            )
            .fetchall()
        )
        runs: list[list[Any]] = []
        for row in rows:  # consecutive rows of one xid form a "transaction"
            if runs and runs[-1][-1][1] == row[1]:
                runs[-1].append(row)
            else:
                runs.append([row])
        for run in runs:
            position = run[-1][0]
            for _id, xid, when, tbl, op, old, new in run:
                spec = tables[tbl]
                decoder = RowDecoder(spec)
                yield QueuedChange(
                    position=position,
                    txid=xid,
                    commit_time=when,
                    change=RawChange(
                        table=tbl,
                        op=op,
                        old=None if old is None else decoder.decode(old),
                        new=None if new is None else decoder.decode(new),
                    ),
                )

    def delete_through(self, upto: int) -> None:
        self._connection().execute("DELETE FROM nkdaemon.queue WHERE id <= %s", (upto,))


def _drain(settings: Settings, naive: bool) -> None:
    with Session(settings, writer=True) as session:
        if naive:
            session.__dict__["source"] = QueueIdOrderSource(settings.source.url)
        session.drainer(batch_transactions=7).drain_once()


def _early_transaction(
    engine: sa.Engine,
    started: threading.Event,
    release: threading.Event,
    tally: banking.Tally,
    wait: float,
) -> None:
    accounts = banking.accounts
    with engine.connect() as conn, conn.begin():
        conn.execute(
            accounts.update()
            .where(accounts.c.name == "A")
            .values(balance=accounts.c.balance + 1000)
        )
        started.set()
        release.wait(timeout=wait)
        conn.execute(accounts.update().where(accounts.c.name == "acct-00").values(balance=-1))
        conn.execute(banking.ledger.insert().values(note="early", account_id=None, amount=7))
    tally.add("early", True)


def run_scenario(url: str, tmp_path: Path, *, naive: bool) -> tuple[Settings, Any, banking.Tally]:
    engine = engine_for(url)
    banking.create(engine)
    settings = settings_for(tmp_path, url)
    do_install(settings)
    baseline = truth(settings)
    tally = banking.Tally()
    started, release, stop = threading.Event(), threading.Event(), threading.Event()
    sqlite = url.startswith("sqlite")
    early = threading.Thread(
        target=_early_transaction, args=(engine, started, release, tally, 0.2 if sqlite else 60)
    )
    early.start()
    assert started.wait(30)
    writers = [
        threading.Thread(target=banking.writer, args=(engine, n, PER_WRITER, tally, 7))
        for n in range(WRITERS)
    ]
    drain_errors: list[BaseException] = []

    def drain_loop() -> None:
        try:
            while not stop.is_set():
                _drain(settings, naive)
        except BaseException as exc:  # anything at all: surfaced by the test below
            drain_errors.append(exc)

    drainer = threading.Thread(target=drain_loop)
    for thread in (*writers, drainer):
        thread.start()
    for thread in writers:
        thread.join()
    release.set()  # the early transaction commits last
    early.join()
    stop.set()
    drainer.join()
    assert not drain_errors, drain_errors
    _drain(settings, naive)
    return settings, baseline, tally


def test_concurrent_writers_are_logged_once_whole_and_in_commit_order(
    db_url: str, tmp_path: Path
) -> None:
    settings, baseline, tally = run_scenario(db_url, tmp_path, naive=False)
    assert len(tally.committed) > WRITERS * PER_WRITER // 2 and tally.rolled_back
    assert problems(settings, baseline, tally, merged=db_url.startswith("sqlite")) == []
    if not db_url.startswith("sqlite"):
        last = logged(settings)[-1]
        assert any(e.table == "ledger" and e.row["note"] == "early" for e in last.events), (
            "the transaction that committed last is last in the log"
        )


def test_a_drain_ordering_by_queue_id_alone_fails_the_same_check(
    pg_url: str, tmp_path: Path
) -> None:
    settings, baseline, tally = run_scenario(pg_url, tmp_path, naive=True)
    assert problems(settings, baseline, tally, merged=False) != []


def test_commit_order_survives_set_constraints_all_immediate(pg_url: str, tmp_path: Path) -> None:
    """A seal fired early (SET CONSTRAINTS ALL IMMEDIATE) is redone for later writes."""
    engine = engine_for(pg_url)
    banking.create(engine)
    settings = settings_for(tmp_path, pg_url)
    do_install(settings)
    baseline = truth(settings)
    conninfo = (
        sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    first = psycopg.connect(conninfo)
    second = psycopg.connect(conninfo, autocommit=True)
    try:
        first.execute("UPDATE accounts SET balance = 1 WHERE name = 'A'")
        first.execute("SET CONSTRAINTS ALL IMMEDIATE")  # seals now, with an early number
        second.execute("UPDATE accounts SET balance = 2 WHERE name = 'B'")  # commits in between
        first.execute("UPDATE accounts SET balance = balance + 10 WHERE name = 'B'")
        first.commit()  # must be ordered after the second transaction
    finally:
        first.close()
        second.close()
    _drain(settings, naive=False)
    state = replayed(settings, baseline)
    assert state.comparable() == truth(settings).comparable()
    assert [len(tx.events) for tx in logged(settings)] == [1, 2]


@pytest.mark.parametrize("rows", [3])
def test_deferred_foreign_key_child_before_parent(pg_url: str, tmp_path: Path, rows: int) -> None:
    """A child inserted before its parent in one transaction (deferred FK) names the parent."""
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE parent (id serial PRIMARY KEY, code text NOT NULL UNIQUE);"
            "CREATE TABLE child (id serial PRIMARY KEY, name text NOT NULL UNIQUE, "
            "parent_id int REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    settings = settings_for(tmp_path, pg_url)
    do_install(settings)
    with engine.begin() as conn:
        for i in range(rows):
            conn.exec_driver_sql(f"INSERT INTO child (name, parent_id) VALUES ('c{i}', {100 + i})")
            conn.exec_driver_sql(f"INSERT INTO parent (id, code) VALUES ({100 + i}, 'p{i}')")
        conn.exec_driver_sql("UPDATE parent SET code = code || '-renamed'")
    _drain(settings, naive=False)
    children = [e for tx in logged(settings) for e in tx.events if e.table == "child"]
    assert [c.row["parent_id"] for c in children] == [
        {"code": f"p{i}-renamed"} for i in range(rows)
    ]
