"""Shared pieces of the benchmark scripts: PostgreSQL databases, pgbench, statistics."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

SERVER = os.environ.get("NKD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if candidate.exists():
            return str(candidate)
    raise SystemExit(f"{name} not found: install PostgreSQL's client programs")


def free_port() -> int:
    """A TCP port free on loopback now (for a daemon's health listener)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def db_url(name: str, driver: str = "postgresql") -> str:
    base = SERVER.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', driver + '://', 1)}/{name}"


def admin(sql: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def run_sql(database: str, sql: str) -> None:
    with psycopg.connect(db_url(database), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def fresh_copy(template: str, name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def pgbench_init(database: str, scale: int) -> None:
    admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{database}"')
    subprocess.run(
        [pg_bin("pgbench"), "-i", "-q", "-s", str(scale), db_url(database)],
        check=True,
        capture_output=True,
    )


def pgbench(database: str, *args: str) -> float:
    """Run pgbench and return the TPS it reports (without initial connection time)."""
    out = subprocess.run(
        [pg_bin("pgbench"), *args, db_url(database)], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(f"pgbench printed no TPS:\n{out}")


@contextmanager
def nkdaemon_config(database: str, extra: str = "") -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="nkd-bench-"))
    config = directory / "nkdaemon.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [source]
            url = "{db_url(database, "postgresql+psycopg")}"
            [repository]
            path = "{directory / "repo"}"
            [log]
            level = "warning"
            """
        )
        + textwrap.dedent(extra)
    )
    try:
        yield config
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def nkdaemon(config: Path, *args: str) -> None:
    """`nkdaemon --config CONFIG ARGS...` in its own process (install, drain, ...)."""
    subprocess.run(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), *args],
        check=True,
        capture_output=True,
    )


@contextmanager
def running_daemon(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`nkdaemon run` for the length of the block, entered once /readyz answers 200 on
    ``port`` (the configuration's [health] listen)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), "run"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).read()
                break
            except OSError:  # not listening yet, or 503 until the first pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("nkdaemon run did not become ready") from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)
