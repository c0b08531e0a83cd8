"""Restore speed: snapshot load beside pg_restore, log replay rate, and peak memory.

1,000,000 pgbench_accounts rows (scale 10). The snapshot taken at `nkdaemon install` is
loaded into an empty PostgreSQL target and timed beside `pg_restore` of a `pg_dump -Fc` of
the same table into another empty database, in the same run. Then a pgbench run is
captured and drained, and `restore --latest` replays it: events per second of the replay
stage. Each restore runs in its own process, whose peak memory (max RSS) is printed.

    python benchmarks/restore_throughput.py [--scale 10] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    admin,
    db_url,
    empty_pgbench_schema,
    nkdaemon,
    nkdaemon_config,
    pg_bin,
    pgbench,
    pgbench_init,
)

SOURCE = "nkd_bench_restore_src"
PG_RESTORE_DB = "nkd_bench_restore_pg"
TARGET = "nkd_bench_restore_nk"
CONFIG = """
[capture]
tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
[tables.pgbench_history]
identity = "full"
"""

RESTORE_SCRIPT = """
import json, resource, sys, time
from datetime import datetime
from pathlib import Path
from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.restore import Restorer, open_restore_target, plan_restore
settings = load_settings(Path(sys.argv[1]))
with Session(settings, writer=False) as s:
    at = None
    plan = plan_restore(snapshots_dir=s.layout.snapshots_dir, log_store=s.log_store, at=at,
                        last_logged=None, tables=sys.argv[3].split(",") if sys.argv[3] else ())
    target = open_restore_target(sys.argv[2], plan.snapshot.dialect)
    report = Restorer(plan=plan, target=target, log_store=s.log_store).run(
        dry_run=False, create_schema=False, prune_target=False)
print(json.dumps({"rows": report.rows_loaded, "events": report.events_applied,
                  "stages": report.stages, "seconds": report.seconds,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def nk_restore(config: Path, target: str, tables: str = "") -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RESTORE_SCRIPT,
            str(config),
            db_url(target, "postgresql+psycopg"),
            tables,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"restore failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20, help="captured pgbench run to replay")
    parser.add_argument("--rounds", type=int, default=3, help="pg_restore / load pairs")
    args = parser.parse_args()
    pgbench_init(SOURCE, args.scale)
    rows = args.scale * 100_000

    with nkdaemon_config(SOURCE, CONFIG) as config, tempfile.TemporaryDirectory() as tmp:
        # the dump first: the table as the application has it, without capture triggers
        dump = Path(tmp) / "accounts.dump"
        subprocess.run(
            [pg_bin("pg_dump"), "-Fc", "-t", "pgbench_accounts", "-f", str(dump), db_url(SOURCE)],
            check=True,
        )
        start = time.perf_counter()
        nkdaemon(config, "install")
        print(f"install with the baseline snapshot: {time.perf_counter() - start:.1f} s")
        pg_times: list[float] = []
        nk_times: list[float] = []
        for round_ in range(1, args.rounds + 1):  # interleaved: the machine's drift hits both
            admin(f'DROP DATABASE IF EXISTS "{PG_RESTORE_DB}" WITH (FORCE)')
            admin(f'CREATE DATABASE "{PG_RESTORE_DB}"')
            start = time.perf_counter()
            subprocess.run(
                [pg_bin("pg_restore"), "-d", db_url(PG_RESTORE_DB), str(dump)], check=True
            )
            pg_times.append(time.perf_counter() - start)
            empty_pgbench_schema(TARGET)  # as the application creates it: primary keys in place
            result = nk_restore(config, TARGET, "pgbench_accounts")
            nk_times.append(result["stages"]["load"])
            print(
                f"round {round_}: pg_restore {pg_times[-1]:.2f} s, nkdaemon load "
                f"{nk_times[-1]:.2f} s ({nk_times[-1] / pg_times[-1]:.2f}x); whole restore "
                f"{result['seconds']:.1f} s, validation {result['stages']['validate']:.1f} s, "
                f"peak memory {result['max_rss_kb'] / 1024:.0f} MB"
            )
        pg_seconds, load = statistics.median(pg_times), statistics.median(nk_times)
        print(f"pg_restore of pgbench_accounts ({rows} rows), median: {pg_seconds:.2f} s", end=" ")
        print(f"= {rows / pg_seconds:,.0f} rows/s")
        print(f"nkdaemon snapshot load, median: {load:.2f} s = {rows / load:,.0f} rows/s,", end=" ")
        print(f"{load / pg_seconds:.2f}x pg_restore (target: 3x; ratio of medians)")

        pgbench(SOURCE, "-n", "-c", "4", "-j", "2", "-T", str(args.seconds))
        nkdaemon(config, "drain")
        empty_pgbench_schema(TARGET)
        result = nk_restore(config, TARGET)
        stages, events = result["stages"], result["events"]
        replay = stages["replay"]
        print(f"replay of {events} logged events: {replay:.2f} s", end=" ")
        print(f"= {events / replay:,.0f} events/s (target >= 20,000, aim 50,000);")
        print(f"  snapshot load {stages['load']:.1f} s, validation {stages['validate']:.1f} s,")
        print(f"  peak memory {result['max_rss_kb'] / 1024:.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
