"""Change-to-log lag of the running daemon at pgbench load.

Starts `nkdaemon run` on a pgbench database with capture installed, runs pgbench
(`-n -c 4 -j 2 -T 20`) and samples the daemon's /metrics every 200 ms: the lag figure is
the age of the oldest committed change not yet in the log. Prints the median, 95th
percentile and maximum, and the TPS pgbench reached meanwhile.

    python benchmarks/daemon_lag.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_copy, nkdaemon_config, pgbench, pgbench_init

TEMPLATE = "nkd_bench_pgbench"
RUN_DB = "nkd_bench_lag"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lag(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("nkdaemon_lag_seconds "):
            return float(line.split()[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    args = parser.parse_args()
    pgbench_init(TEMPLATE, args.scale)
    fresh_copy(TEMPLATE, RUN_DB)
    port = free_port()
    extra = f'[tables.pgbench_history]\nidentity = "full"\n[health]\nlisten = "127.0.0.1:{port}"\n'
    with nkdaemon_config(RUN_DB, extra) as config:
        subprocess.run(
            [sys.executable, "-m", "nkdaemon", "--config", str(config), "install"],
            check=True,
            capture_output=True,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "nkdaemon", "--config", str(config), "run"],
            stderr=subprocess.DEVNULL,
        )
        try:
            while lag(port) is None:
                time.sleep(0.1)
            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    value = lag(port)
                    if value is not None:
                        samples.append(value)
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample)
            sampler.start()
            tps = pgbench(RUN_DB, "-n", "-c", "4", "-j", "2", "-T", str(args.seconds))
            done.set()
            sampler.join()
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(
        f"pgbench {tps:.0f} TPS with the daemon running; change-to-log lag over "
        f"{len(samples)} samples: median {statistics.median(samples):.2f} s, 95th percentile "
        f"{p95:.2f} s, max {samples[-1]:.2f} s (target: under 1 s)"
    )


if __name__ == "__main__":
    main()
