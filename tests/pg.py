"""Finding a PostgreSQL server for the tests: $NKD_TEST_PG_URL, the local one, or our own.

A test that needs PostgreSQL skips only when none answers *and* none can be started, and
says so; CI has one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from nkdaemon.sources.postgres import conninfo_from_url

LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    try:
        conninfo = conninfo_from_url(url)
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster owned by a test (can be stopped and started)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.bin = pg_bin()
        assert self.bin is not None, "PostgreSQL binaries are not installed"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        assert self.bin is not None
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.directory / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        )

    def start(self) -> None:
        assert self.bin is not None
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -k {self.directory}"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        assert self.bin is not None
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "stop"
        )

    @classmethod
    @contextlib.contextmanager
    def temporary(cls) -> Iterator[Cluster]:
        directory = Path(tempfile.mkdtemp(prefix="nkd-pg-"))
        os.chmod(directory, 0o755)
        cluster = cls(directory, free_port())
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
            shutil.rmtree(directory, ignore_errors=True)


def server_url() -> tuple[str | None, str]:
    """(URL of a server to use, or None; how it was found, or why there is none)."""
    explicit = os.environ.get("NKD_TEST_PG_URL")
    if explicit:
        return (
            (explicit, "NKD_TEST_PG_URL")
            if _answers(explicit)
            else (None, f"NKD_TEST_PG_URL={make_url(explicit).render_as_string()} does not answer")
        )
    if _answers(LOCAL_URL):
        return LOCAL_URL, "local server at 127.0.0.1:5432"
    return None, "no PostgreSQL answers at 127.0.0.1:5432"


def create_database(server: str) -> str:
    name = f"nkd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo_from_url(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return str(make_url(server).set(database=name).render_as_string(hide_password=False))


def drop_database(server: str, url: str) -> None:
    name = make_url(url).database
    for _ in range(3):
        try:
            with psycopg.connect(conninfo_from_url(server), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
            return
        except psycopg.Error:
            time.sleep(0.5)
