"""Drain throughput: events per second from the PostgreSQL queue to the durable log.

Fills the queue by running pgbench with capture installed and no drain (small
transactions of four events: three updates and an insert), then an EDMS-like workload
whose rows reference each other (every event resolves foreign keys through the key
index), and times one drain pass over each backlog on this machine. The pass includes
reading, translating ids to natural keys, writing, fsync, the checkpoint and deleting
the queue rows.

    python benchmarks/drain_throughput.py [--seconds 15] [--documents 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    admin,
    db_url,
    fresh_copy,
    nkdaemon_config,
    pgbench,
    pgbench_init,
)

from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install

TEMPLATE = "nkd_bench_pgbench"
RUN_DB = "nkd_bench_drain"


def queue_depth(database: str) -> int:
    with psycopg.connect(db_url(database)) as conn:
        row = conn.execute("SELECT count(*) FROM nkdaemon.queue").fetchone()
        return int(row[0]) if row else 0


def do_install(config: Path) -> None:
    settings = load_settings(config)
    with Session(settings, writer=True) as s:
        install(
            settings,
            engine=s.engine,
            source=s.source,
            layout=s.layout,
            state=s.state,
            log_store=s.log_store,
        )


def timed_drain(config: Path) -> tuple[int, int, float, int, tuple[int, int]]:
    settings = load_settings(config)
    with Session(settings, writer=True) as session:
        drainer = session.drainer()
        drainer.open()
        start = time.perf_counter()
        result = drainer.drain_once()
        elapsed = time.perf_counter() - start
        stats = session.state.stats
        return (
            result.transactions,
            result.events,
            elapsed,
            session.log_store.size_bytes(),
            (stats.hits, stats.misses),
        )


def report(
    name: str, transactions: int, events: int, seconds: float, size: int, cache: tuple[int, int]
) -> None:
    print(
        f"{name:<10} {transactions:>8} transactions {events:>9} events in {seconds:7.2f} s = "
        f"{events / seconds:10.0f} events/s   log {size / 1e6:7.1f} MB   "
        f"key cache hits {cache[0]}, misses {cache[1]}   (target 20000 events/s)",
        flush=True,
    )


def pgbench_backlog(seconds: int, scale: int) -> None:
    pgbench_init(TEMPLATE, scale)
    fresh_copy(TEMPLATE, RUN_DB)
    with nkdaemon_config(RUN_DB, '[tables.pgbench_history]\nidentity = "full"\n') as config:
        do_install(config)
        pgbench(RUN_DB, "-n", "-c", "4", "-j", "2", "-T", str(seconds))
        print(f"pgbench: {queue_depth(RUN_DB)} changes queued", flush=True)
        report("pgbench", *timed_drain(config))


EDMS_FILL = """
INSERT INTO users (username, email, full_name, is_active, created_at)
SELECT 'user' || g, 'u' || g || '@example.com', 'User ' || g, true, now()
FROM generate_series(1, {users}) g;
"""

EDMS_TX = """
INSERT INTO documents
    (document_number, title, type_id, author_id, state_id, created_at, fee, tags)
VALUES (%(n)s::text, 'title ' || %(n)s::text,
        (SELECT id FROM document_types ORDER BY random() LIMIT 1),
        %(author)s, (SELECT id FROM document_states LIMIT 1), now(), 12.5, ARRAY['x', 'y']);
INSERT INTO document_versions
    (document_id, version_number, created_by, content, sha256, created_at)
SELECT id, 1, %(author)s, '\\x00ff'::bytea, 'abc', now()
FROM documents WHERE document_number = %(n)s::text;
INSERT INTO document_comments (uuid, document_id, author_id, body, created_at)
SELECT gen_random_uuid(), id, %(author)s, 'comment', now()
FROM documents WHERE document_number = %(n)s::text;
UPDATE users SET full_name = full_name || '.' WHERE id = %(author)s;
"""


def edms_backlog(documents: int) -> None:
    import sqlalchemy as sa

    from nkdaemon.examples import edms

    admin(f'DROP DATABASE IF EXISTS "{RUN_DB}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{RUN_DB}"')
    engine = sa.create_engine(db_url(RUN_DB, "postgresql+psycopg"))
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    engine.dispose()
    users = 5000
    with psycopg.connect(db_url(RUN_DB), autocommit=True) as conn:
        conn.execute(EDMS_FILL.format(users=users))  # type: ignore[arg-type]
    with nkdaemon_config(RUN_DB, "[capture]\nkey_cache_size = 2000\n") as config:
        do_install(config)
        with psycopg.connect(db_url(RUN_DB)) as conn:
            statements = [s for s in EDMS_TX.split(";") if s.strip()]
            for i in range(documents):
                params = {"n": f"B-{i:07d}", "author": 4 + (i * 7919) % users}
                for statement in statements:
                    conn.execute(statement, params)  # type: ignore[arg-type]
                conn.commit()
        print(
            f"edms: {queue_depth(RUN_DB)} changes queued (key cache 2000 entries, "
            f"{users} users, so lookups miss too)",
            flush=True,
        )
        report("edms", *timed_drain(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="pgbench run filling the queue")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--documents", type=int, default=15000, help="EDMS transactions")
    args = parser.parse_args()
    pgbench_backlog(args.seconds, args.scale)
    edms_backlog(args.documents)


if __name__ == "__main__":
    main()
