"""Shared test helpers: configuration files, running the pipeline, natural-key states."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Collection
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner, Result

from nkdaemon.cli import cli
from nkdaemon.core.fold import LogFold
from nkdaemon.core.log import LoggedTransaction, LogMarker
from nkdaemon.core.replay import natural_state
from nkdaemon.repository.reader import read_log
from nkdaemon.runtime.config import Settings, load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.drain import DrainResult
from nkdaemon.services.install import InstallResult, install, load_registry

ROOT = Path(__file__).resolve().parent.parent


def write_config(
    directory: Path, url: str, extra: str = "", *, name: str = "nkdaemon.toml"
) -> Path:
    path = directory / name
    path.write_text(
        textwrap.dedent(
            f"""
            [source]
            url = "{url}"

            [repository]
            path = "{directory / "repo"}"
            """
        )
        + textwrap.dedent(extra)
    )
    return path


def settings_for(directory: Path, url: str, extra: str = "") -> Settings:
    return load_settings(write_config(directory, url, extra))


def engine_for(url: str) -> sa.Engine:
    """An application's engine; SQLite with foreign keys enforced, as applications set it."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, poolclass=sa.pool.NullPool)
    engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    return engine


def do_install(settings: Settings) -> InstallResult:
    with Session(settings, writer=True) as s:
        return install(
            settings,
            engine=s.engine,
            source=s.source,
            layout=s.layout,
            state=s.state,
            log_store=s.log_store,
        )


def captured_notes(url: str, directory: Path) -> Settings:
    """A table of notes (keyless: captured as whole rows), capture installed."""
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
    engine.dispose()
    settings = settings_for(directory, url, '[tables.notes]\nidentity = "full"\n')
    do_install(settings)
    return settings


def do_drain(settings: Settings) -> DrainResult:
    with Session(settings, writer=True) as s:
        return s.drainer().drain_once()


def logged(settings: Settings) -> list[LoggedTransaction]:
    with Session(settings, writer=False) as s:
        return [t for t in read_log(s.log_store) if isinstance(t, LoggedTransaction)]


def markers(settings: Settings) -> list[LogMarker]:
    with Session(settings, writer=False) as s:
        return [t for t in read_log(s.log_store) if not isinstance(t, LoggedTransaction)]


def truth(settings: Settings) -> LogFold:
    """The source's current content by natural key."""
    with Session(settings, writer=False) as s:
        tables = dict(load_registry(s.engine, settings, s.source).tables)
        rows = {number: s.source.read_rows(spec) for number, spec in tables.items()}
    return natural_state(tables, rows)


def replayed(settings: Settings, baseline: LogFold, *, upto_lsn: int | None = None) -> LogFold:
    """The baseline with the log applied (a copy; the baseline is left as it was)."""
    state = baseline.copy()
    for tx in logged(settings):
        if upto_lsn is not None and tx.lsn > upto_lsn:
            break
        state.apply_transaction(tx.events, where=f"tx {tx.lsn}: ")
    return state


def run_cli(config: Path, *args: str, env: dict[str, Any] | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, ["--config", str(config), *args], env=env, catch_exceptions=False)


def cli_process(
    config: Path,
    *args: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """A real `python -m nkdaemon --config CONFIG ARGS...` process, run to its end, its
    stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_status(config: Path, *, exit_codes: Collection[int] = (0,)) -> dict[str, Any]:
    """`nkdaemon status --json` in its own process; ``exit_codes``: the codes accepted
    (it exits 1 when it reports a problem)."""
    done = cli_process(config, "status", "--json", timeout=60)
    assert done.returncode in exit_codes, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document
