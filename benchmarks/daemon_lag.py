"""Change-to-log lag of the running daemon at pgbench load.

Starts `nkdaemon run` on a pgbench database with capture installed, runs pgbench
(`-n -c 4 -j 2 -T 20`) and samples the source every 100 ms: the lag is the age of the
oldest committed transaction still waiting in the queue (its seal time; the drain deletes
it once logged), 0 when none waits. Measured at the source, not read from the daemon's
/metrics, whose gauge is only updated after each pass and so misses the wait between
passes. Prints the median, 95th percentile and maximum, and the TPS pgbench reached.

    python benchmarks/daemon_lag.py [--seconds 20] [--min-pass-interval 200ms]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    db_url,
    free_port,
    fresh_copy,
    nkdaemon,
    nkdaemon_config,
    pgbench,
    pgbench_init,
    running_daemon,
)

TEMPLATE = "nkd_bench_pgbench"
RUN_DB = "nkd_bench_lag"


def lag(conn: psycopg.Connection[tuple[object, ...]]) -> float:
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(commit_time)), 0) "
        "FROM nkdaemon.commits"
    ).fetchone()
    return float(str(row[0])) if row else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument(
        "--min-pass-interval", help='the daemon\'s [capture] min_pass_interval, e.g. "500ms"'
    )
    args = parser.parse_args()
    pgbench_init(TEMPLATE, args.scale)
    fresh_copy(TEMPLATE, RUN_DB)
    port = free_port()
    extra = f'[tables.pgbench_history]\nidentity = "full"\n[health]\nlisten = "127.0.0.1:{port}"\n'
    if args.min_pass_interval:
        extra += f'[capture]\nmin_pass_interval = "{args.min_pass_interval}"\n'
    with nkdaemon_config(RUN_DB, extra) as config:
        nkdaemon(config, "install")
        with running_daemon(config, port):
            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                with psycopg.connect(db_url(RUN_DB), autocommit=True) as conn:
                    while not done.is_set():
                        samples.append(lag(conn))
                        time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            tps = pgbench(RUN_DB, "-n", "-c", "4", "-j", "2", "-T", str(args.seconds))
            done.set()
            sampler.join()
    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(
        f"pgbench {tps:.0f} TPS with the daemon running; change-to-log lag over "
        f"{len(samples)} samples: median {statistics.median(samples):.2f} s, 95th percentile "
        f"{p95:.2f} s, max {samples[-1]:.2f} s (target: under 1 s)"
    )


if __name__ == "__main__":
    main()
