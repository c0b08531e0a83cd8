"""Capture overhead on pgbench: TPS with no triggers, with nkdaemon's triggers, with the
triggers and the daemon (`nkdaemon run`, draining as users run it) on the same machine,
and with a classic full-row audit trigger, measured side by side.

Protocol (issue 2): pgbench scale 10, `-n -c 4 -j 2 -T 20`, a fresh copy of the database
per run, configurations interleaved (rotated each round) over several rounds; medians and
ratios to the no-trigger median are printed.

pgbench_history has no key at all: nkdaemon captures it with whole-row identity
(`identity = "full"`), as logical replication's REPLICA IDENTITY FULL does.

    python benchmarks/capture_overhead.py [--rounds 3] [--seconds 20] [--scale 10]
        [--only none nkdaemon ...] [--min-pass-interval 200ms]

Bulk statements (issue 15), `--bulk [--rows 1000000]`: one `INSERT INTO items ... SELECT
... FROM generate_series(1, ROWS)`, then one `UPDATE` and one `DELETE` of every row, each
timed on its own (CHECKPOINT before each), with no trigger, a bare `to_jsonb` AFTER ROW
trigger, an AFTER STATEMENT trigger with a transition table writing the same JSON, and
nkdaemon's triggers; same protocol (fresh copy per run, configurations rotated per round).

    python benchmarks/capture_overhead.py --bulk [--rows 1000000] [--rounds 3]
        [--statements insert delete] [--compare-tree ../main]

--compare-tree DIR adds NAME@base beside each nkdaemon configuration, run with the nkdaemon
of that checkout: before and after a change, in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    admin,
    db_url,
    free_port,
    fresh_copy,
    median,
    nkdaemon,
    nkdaemon_config,
    pgbench,
    pgbench_init,
    run_sql,
    running_daemon,
)

TEMPLATE = "nkd_bench_pgbench"
MIN_PASS_INTERVAL: str | None = None  # the daemon's own default unless given
EXPLAIN = False  # --explain: bulk statements under EXPLAIN ANALYZE, trigger times printed
COMPARE_TREE = ""  # --compare-tree: a checkout whose nkdaemon the @base configurations run
RUN_DB = "nkd_bench_run"
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
CONFIG_EXTRA = """
[tables.pgbench_history]
identity = "full"
"""

# The classic 2ndQuadrant audit trigger (audit-trigger 91plus), as commonly deployed:
# hstore of the whole row, the changed fields on UPDATE, session and statement metadata.
AUDIT_SQL = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE SCHEMA audit;
CREATE TABLE audit.logged_actions (
    event_id bigserial PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    relid oid NOT NULL,
    session_user_name text,
    action_tstamp_tx timestamptz NOT NULL,
    action_tstamp_stm timestamptz NOT NULL,
    action_tstamp_clk timestamptz NOT NULL,
    transaction_id bigint,
    application_name text,
    client_addr inet,
    client_port integer,
    client_query text,
    action text NOT NULL,
    row_data hstore,
    changed_fields hstore,
    statement_only boolean NOT NULL
);
CREATE INDEX logged_actions_relid_idx ON audit.logged_actions (relid);
CREATE INDEX logged_actions_action_tstamp_tx_stm_idx ON audit.logged_actions (action_tstamp_stm);
CREATE INDEX logged_actions_action_idx ON audit.logged_actions (action);
CREATE FUNCTION audit.if_modified_func() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    audit_row audit.logged_actions;
BEGIN
    audit_row = ROW(
        nextval('audit.logged_actions_event_id_seq'), TG_TABLE_SCHEMA::text,
        TG_TABLE_NAME::text, TG_RELID, session_user::text, current_timestamp,
        statement_timestamp(), clock_timestamp(), txid_current(),
        current_setting('application_name'), inet_client_addr(), inet_client_port(),
        current_query(), substring(TG_OP, 1, 1), NULL, NULL, 'f');
    IF TG_OP = 'UPDATE' THEN
        audit_row.row_data = hstore(OLD.*);
        audit_row.changed_fields = (hstore(NEW.*) - audit_row.row_data);
        IF audit_row.changed_fields = hstore('') THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        audit_row.row_data = hstore(OLD.*);
    ELSIF TG_OP = 'INSERT' THEN
        audit_row.row_data = hstore(NEW.*);
    END IF;
    INSERT INTO audit.logged_actions VALUES (audit_row.*);
    RETURN NULL;
END
$$;
"""


# The reference point: a bare AFTER ROW trigger writing to_jsonb(OLD)/to_jsonb(NEW)
# to a queue, with no transaction bookkeeping (it cannot order or time commits).
BARE_SQL = """
CREATE SCHEMA bare;
CREATE TABLE bare.queue (id bigserial, tbl text, op text, old jsonb, new jsonb);
CREATE FUNCTION bare.capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bare.queue (tbl, op, old, new) VALUES (TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;
"""


def setup_bare() -> None:
    run_sql(RUN_DB, BARE_SQL)
    for table in TABLES:
        run_sql(
            RUN_DB,
            f"CREATE TRIGGER bare_capture AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION bare.capture()",
        )


def setup_audit() -> None:
    run_sql(RUN_DB, AUDIT_SQL)
    for table in TABLES:
        run_sql(
            RUN_DB,
            f"CREATE TRIGGER audit_trigger_row AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit.if_modified_func()",
        )


class QueueDepth:
    """Samples the source queue's depth every second while the block runs."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def __enter__(self) -> QueueDepth:
        self._sampler.start()
        return self

    def _sample(self) -> None:
        with psycopg.connect(db_url(RUN_DB), autocommit=True) as conn:
            while not self._stop.wait(1.0):
                row = conn.execute("SELECT count(*) FROM nkdaemon.queue").fetchone()
                self.depths.append(int(row[0]) if row else 0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()


@contextlib.contextmanager
def tree_of(name: str) -> Iterator[str]:
    """A configuration named NAME@base runs NAME with the nkdaemon of --compare-tree (its
    subprocesses import it through PYTHONPATH): before and after, in the same rounds."""
    if not name.endswith("@base"):
        yield name
        return
    saved, cwd = os.environ.get("PYTHONPATH"), Path.cwd()
    os.environ["PYTHONPATH"] = COMPARE_TREE
    # `python -m` looks in the working directory first: from a checkout it would import
    # that checkout's nkdaemon whatever PYTHONPATH says.
    os.chdir(COMPARE_TREE)
    try:
        yield name.removesuffix("@base")
    finally:
        os.chdir(cwd)
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def run_once(name: str, seconds: int) -> tuple[float, list[int]]:
    with tree_of(name) as configuration:
        return _run_once(configuration, seconds)


def _run_once(name: str, seconds: int) -> tuple[float, list[int]]:
    fresh_copy(TEMPLATE, RUN_DB)
    depths: list[int] = []
    args = ("-n", "-c", "4", "-j", "2", "-T", str(seconds))
    if name == "none":
        run_sql(RUN_DB, "CHECKPOINT")
        return pgbench(RUN_DB, *args), depths
    if name in ("audit", "bare"):
        setup_audit() if name == "audit" else setup_bare()
        run_sql(RUN_DB, "CHECKPOINT")
        return pgbench(RUN_DB, *args), depths
    port = free_port()
    extra = CONFIG_EXTRA + f'[health]\nlisten = "127.0.0.1:{port}"\n'
    if MIN_PASS_INTERVAL:
        extra += f'[capture]\nmin_pass_interval = "{MIN_PASS_INTERVAL}"\n'
    with nkdaemon_config(RUN_DB, extra) as config:
        nkdaemon(config, "install")
        run_sql(RUN_DB, "CHECKPOINT")
        if name == "nkdaemon":
            return pgbench(RUN_DB, *args), depths
        with running_daemon(config, port), QueueDepth() as queue:
            tps = pgbench(RUN_DB, *args)
            time.sleep(1.5)
        return tps, queue.depths


BULK_TEMPLATE = "nkd_bench_items"
BULK_DB = "nkd_bench_items_run"  # apart from RUN_DB: the pgbench case may run beside it
BULK_TABLE = """
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    qty integer NOT NULL,
    note text
)
"""
BULK_STATEMENTS = {
    "insert": "INSERT INTO items (sku, qty, note) "
    "SELECT 'sku-' || g, g % 100, 'note ' || g FROM generate_series(1, {rows}) g",
    "update": "UPDATE items SET qty = qty + 1",
    "delete": "DELETE FROM items",
}
# The reference points for a bulk statement: the bare row trigger above, and the
# same JSON written once per statement from transition tables (no bookkeeping either).
BARE_STATEMENT_SQL = """
CREATE SCHEMA bare;
CREATE TABLE bare.queue (id bigserial, tbl text, op text, old jsonb, new jsonb);
CREATE FUNCTION bare.capture_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bare.queue (tbl, op, new) SELECT TG_TABLE_NAME, TG_OP, to_jsonb(n) FROM nn n;
    RETURN NULL;
END
$$;
CREATE FUNCTION bare.capture_old() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bare.queue (tbl, op, old) SELECT TG_TABLE_NAME, TG_OP, to_jsonb(o) FROM oo o;
    RETURN NULL;
END
$$;
CREATE FUNCTION bare.capture_both() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bare.queue (tbl, op, old, new)
    SELECT TG_TABLE_NAME, TG_OP, to_jsonb(o), to_jsonb(n) FROM oo o JOIN nn n USING (id);
    RETURN NULL;
END
$$;
CREATE TRIGGER bare_i AFTER INSERT ON items REFERENCING NEW TABLE AS nn
    FOR EACH STATEMENT EXECUTE FUNCTION bare.capture_new();
CREATE TRIGGER bare_u AFTER UPDATE ON items REFERENCING OLD TABLE AS oo NEW TABLE AS nn
    FOR EACH STATEMENT EXECUTE FUNCTION bare.capture_both();
CREATE TRIGGER bare_d AFTER DELETE ON items REFERENCING OLD TABLE AS oo
    FOR EACH STATEMENT EXECUTE FUNCTION bare.capture_old();
"""
BULK_CONFIGS = ["none", "bare", "bare-statement", "nkdaemon"]


def bulk_template() -> None:
    admin(f'DROP DATABASE IF EXISTS "{BULK_TEMPLATE}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{BULK_TEMPLATE}"')
    run_sql(BULK_TEMPLATE, BULK_TABLE)


def timed(database: str, statement: str) -> float:
    """Seconds the statement takes; with --explain, run under EXPLAIN ANALYZE and print
    the time each trigger took (where the capture's cost goes)."""
    with psycopg.connect(db_url(database), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        if not EXPLAIN:
            conn.execute(statement)  # type: ignore[arg-type]
            return time.perf_counter() - started
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}").fetchone()  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
    assert row is not None
    plan = row[0][0]
    triggers = ", ".join(
        f"{t['Trigger Name']} {t['Time'] / 1000:.2f} s ({t['Calls']} calls)"
        for t in plan.get("Triggers", [])
    )
    print(f"    executor {plan['Execution Time'] / 1000:.2f} s; triggers: {triggers or 'none'}")
    return elapsed


def bulk_once(name: str, rows: int) -> dict[str, float]:
    with tree_of(name) as configuration:
        return _bulk_once(configuration, rows)


def _bulk_once(name: str, rows: int) -> dict[str, float]:
    fresh_copy(BULK_TEMPLATE, BULK_DB)
    if name == "bare":
        run_sql(BULK_DB, BARE_SQL)
        run_sql(
            BULK_DB,
            "CREATE TRIGGER bare_capture AFTER INSERT OR UPDATE OR DELETE ON items "
            "FOR EACH ROW EXECUTE FUNCTION bare.capture()",
        )
    elif name == "bare-statement":
        run_sql(BULK_DB, BARE_STATEMENT_SQL)
    if name != "nkdaemon":
        return {op: timed(BULK_DB, sql.format(rows=rows)) for op, sql in BULK_STATEMENTS.items()}
    with nkdaemon_config(BULK_DB) as config:
        nkdaemon(config, "install")
        return {op: timed(BULK_DB, sql.format(rows=rows)) for op, sql in BULK_STATEMENTS.items()}


def bulk_main(rounds: int, rows: int, configs: list[str]) -> None:
    print(f"bulk statements on items, {rows} rows, {rounds} rounds")
    bulk_template()
    times: dict[tuple[str, str], list[float]] = {}
    for round_number in range(rounds):
        order = configs[round_number % len(configs) :] + configs[: round_number % len(configs)]
        for name in order:
            for op, seconds in bulk_once(name, rows).items():
                times.setdefault((name, op), []).append(seconds)
                print(f"round {round_number + 1} {name:<15} {op:<7} {seconds:7.2f} s", flush=True)
    print()
    print(f"{'configuration':<16}{'statement':<10}{'median s':>10}{'ratio':>8}   runs")
    for op in BULK_STATEMENTS:
        base = median(times[("none", op)]) if "none" in configs else float("nan")
        for name in configs:
            m = median(times[(name, op)])
            runs = ", ".join(f"{v:.2f}" for v in times[(name, op)])
            print(f"{name:<16}{op:<10}{m:10.2f}{m / base:8.2f}   {runs}")
    print()
    print("target: nkdaemon <= 1.5x none for the bulk INSERT and DELETE (issue 15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bulk", action="store_true", help="bulk statements instead of pgbench")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the bulk statements")
    parser.add_argument(
        "--explain", action="store_true", help="bulk: print each trigger's time (EXPLAIN ANALYZE)"
    )
    parser.add_argument(
        "--statements",
        nargs="*",
        choices=list(BULK_STATEMENTS),
        help="only these bulk statements (insert always runs: the others need its rows)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument(
        "--min-pass-interval", help="the daemon's [capture] min_pass_interval (default: its own)"
    )
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument(
        "--compare-tree",
        help="a checkout of nkdaemon (e.g. main): adds NAME@base beside each nkdaemon "
        "configuration, run with that checkout's nkdaemon",
    )
    args = parser.parse_args()
    globals()["MIN_PASS_INTERVAL"] = args.min_pass_interval
    globals()["EXPLAIN"] = args.explain
    globals()["COMPARE_TREE"] = str(Path(args.compare_tree).resolve()) if args.compare_tree else ""
    configs = args.only or (
        BULK_CONFIGS if args.bulk else ["none", "bare", "nkdaemon", "nkdaemon+drain", "audit"]
    )
    if args.compare_tree:
        configs = configs + [f"{c}@base" for c in configs if c.startswith("nkdaemon")]
    if args.bulk:
        chosen = {"insert", *(args.statements or BULK_STATEMENTS)}
        for op in set(BULK_STATEMENTS) - chosen:
            del BULK_STATEMENTS[op]
        bulk_main(args.rounds, args.rows, configs)
        return
    print(f"pgbench -i -s {args.scale}; runs: -n -c 4 -j 2 -T {args.seconds}, {args.rounds} rounds")
    pgbench_init(TEMPLATE, args.scale)
    results: dict[str, list[float]] = {c: [] for c in configs}
    depth_report: list[str] = []
    for round_number in range(args.rounds):
        order = configs[round_number % len(configs) :] + configs[: round_number % len(configs)]
        for name in order:
            tps, depths = run_once(name, args.seconds)
            results[name].append(tps)
            line = f"round {round_number + 1} {name:<15} {tps:9.1f} TPS"
            if depths:
                line += f"  queue depth max {max(depths)}, last {depths[-1]}"
                depth_report.append(f"{max(depths)}/{depths[-1]}")
            print(line, flush=True)
    base = median(results["none"])
    print()
    print(f"{'configuration':<16}{'median TPS':>12}{'ratio':>8}   runs")
    for name in configs:
        m = median(results[name])
        runs = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"{name:<16}{m:12.1f}{m / base:8.2f}   {runs}")
    print()
    print("targets: nkdaemon >= 0.85, nkdaemon+drain >= 0.70 with the queue depth bounded")
    print(f"queue depth with the drain running (max/last per run): {', '.join(depth_report)}")


if __name__ == "__main__":
    main()
