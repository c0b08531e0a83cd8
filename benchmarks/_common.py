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
from dataclasses import dataclass
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


def empty_pgbench_schema(database: str) -> None:
    """A fresh database with pgbench's tables and primary keys and no rows, as the
    application creates it: a restore target."""
    admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{database}"')
    subprocess.run(
        [pg_bin("pgbench"), "-i", "-q", "-I", "dtp", db_url(database)],
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
def nkdaemon_config(
    database: str, extra: str = "", *, source_url: str | None = None, log_level: str = "warning"
) -> Iterator[Path]:
    """A configuration in a temporary folder (its repository beside it), for the PostgreSQL
    ``database`` or any ``source_url``; JSON logs at ``log_level`` (so a benchmark can read
    the stage times a command logs)."""
    directory = Path(tempfile.mkdtemp(prefix="nkd-bench-"))
    config = directory / "nkdaemon.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [source]
            url = "{source_url or db_url(database, "postgresql+psycopg")}"
            [repository]
            path = "{directory / "repo"}"
            [log]
            level = "{log_level}"
            format = "json"
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


@dataclass(frozen=True, kw_only=True)
class Measured:
    """One process's wall time and peak memory (its own max RSS, from wait4), and output."""

    seconds: float
    max_rss_kb: int
    stdout: str
    stderr: str


def measured(command: list[str], *, stdin: Path | None = None) -> Measured:
    """Run ``command`` to its end; raise SystemExit with its stderr's tail if it fails.

    wait4 gives this child's own rusage: RUSAGE_CHILDREN would keep the largest of every
    child so far, so a small stage after a big one would report the big one's memory. Linux
    counts the forked parent's size in the child's peak, so below about this script's own
    size (40-45 MB) the figure says nothing (pg_dump, pg_restore, the sqlite3 shell)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(stdin or os.devnull, "rb") as source,
    ):
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=source, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Measured(
            seconds=seconds,
            max_rss_kb=usage.ru_maxrss,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
    if process.returncode:
        raise SystemExit(f"{' '.join(command[:6])} failed:\n{result.stderr[-3000:]}")
    return result


def nkdaemon_measured(config: Path, *args: str, profile: Path | None = None) -> Measured:
    """`nkdaemon --config CONFIG ARGS...` in its own process, timed and its memory taken;
    with ``profile``, under cProfile writing its statistics there (slower: for where the
    time goes, not for the figure)."""
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    return measured([*python, "-m", "nkdaemon", "--config", str(config), *args])


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
