"""PostgreSQL capture bookkeeping that the drain's exactness rests on, checked directly.

* The fence: a transaction that seals (commits) while a drain pass holds the fence lock
  waits for it and is numbered after what that pass read, so the pass can never later find
  an earlier-numbered transaction it did not see (migration 0004 tries the lock first and
  must still wait).
* The queue keeps its size where autovacuum is off: drained rows are dead space that only
  VACUUM returns, and the drain scans the whole queue on every pass.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from nkdaemon.sources.postgres import FENCE_LOCK, VACUUM_AFTER_ROWS, conninfo_from_url
from tests.helpers import captured_notes, do_drain, logged


def _commit_sequence(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM nkdaemon.commit_seq"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_a_commit_during_the_fence_waits_for_it_and_is_numbered_after_it(
    pg_url: str, tmp_path: Path
) -> None:
    settings = captured_notes(pg_url, tmp_path)
    conninfo = conninfo_from_url(pg_url)
    committed = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(conninfo) as app:
                app.execute("INSERT INTO notes (body) VALUES ('during the fence')")
                app.commit()
            committed.set()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    with psycopg.connect(conninfo, autocommit=True) as drain:
        with drain.transaction():
            drain.execute("SELECT pg_advisory_xact_lock(%s, %s)", FENCE_LOCK)
            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(1.0)
            assert not committed.is_set(), "the commit must wait while the fence is held"
            fenced = _commit_sequence(drain)
        writer.join(timeout=30)
        assert not failures, failures
        assert committed.is_set()
        row = drain.execute(
            "SELECT max(seq) FROM nkdaemon.commits c JOIN nkdaemon.queue q USING (xid) "
            "WHERE q.new->>'body' = 'during the fence'"
        ).fetchone()
        assert row is not None and row[0] is not None
        assert int(str(row[0])) > fenced

    do_drain(settings)
    assert [e.row["body"] for tx in logged(settings) for e in tx.events] == ["during the fence"]


def test_the_queue_keeps_its_size_where_autovacuum_is_off(pg_url: str, tmp_path: Path) -> None:
    settings = captured_notes(pg_url, tmp_path)
    conninfo = conninfo_from_url(pg_url)
    rows_per_round = VACUUM_AFTER_ROWS + 1000
    sizes: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ALTER TABLE nkdaemon.queue SET (autovacuum_enabled = false)")
        conn.execute("ALTER TABLE nkdaemon.commits SET (autovacuum_enabled = false)")
        for round_number in range(5):
            conn.execute(
                "INSERT INTO notes (body) SELECT %s || '-' || g || repeat('x', 200) "
                "FROM generate_series(1, %s) g",
                (str(round_number), rows_per_round),
            )
            do_drain(settings)
            row = conn.execute(
                "SELECT pg_relation_size('nkdaemon.queue'), (SELECT count(*) FROM nkdaemon.queue)"
            ).fetchone()
            assert row is not None
            size, depth = (int(str(v)) for v in row)
            assert depth == 0
            sizes.append(size)
    # Without the drain's VACUUM every round appends its rows' pages: five rounds, 5x.
    assert sizes[-1] <= sizes[0] * 1.5, f"queue size by round: {sizes}"
    logged_rows = sum(len(tx.events) for tx in logged(settings))
    assert logged_rows == 5 * rows_per_round
