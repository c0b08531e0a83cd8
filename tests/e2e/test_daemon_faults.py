"""`nkdaemon run` under faults: a real subprocess, real HTTP on loopback, real signals.

- PostgreSQL restarted under the daemon (pg_ctl stop -m fast, then start), and its
  connections killed with pg_terminate_backend, while writers work: /readyz says the
  source is down, the daemon recovers by itself and the log is exact.
- A full repository disk (RLIMIT_FSIZE on the daemon): /readyz and /status report the
  repository, the changes wait in the source queue; once the limit is lifted the daemon
  resumes by itself and every committed change is logged once.
- systemd notifications over a real $NOTIFY_SOCKET: READY (with STATUS), WATCHDOG pings,
  STOPPING on SIGTERM, exit 0.
- The systemd unit passes `systemd-analyze verify` and has its hardening and timeouts.
- A failing scheduled snapshot is reported (/readyz, /metrics) and does not stop draining;
  once the cause is gone the next snapshot succeeds and the error clears.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from nkdaemon.runtime.config import Settings, load_settings
from nkdaemon.runtime.daemon import GRACE_SECONDS
from nkdaemon.sources.postgres import conninfo_from_url
from tests import pg
from tests.daemon_harness import (
    DaemonProcess,
    daemon_config,
    limit_file_size,
    wait_caught_up,
    wait_repository_unready,
)
from tests.helpers import (
    cli_process,
    cli_status,
    do_drain,
    do_install,
    engine_for,
    logged,
    truth,
    write_config,
)
from tests.workloads import banking
from tests.workloads.banking import problems

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "nkdaemon.service"
START_TIMEOUT = 30.0


# --- 1. PostgreSQL restarted under the daemon ---------------------------------------------

WRITERS = 4


def _resilient_writer(
    engine: sa.Engine,
    number: int,
    tally: banking.Tally,
    stop: threading.Event,
    failures: list[str],
) -> None:
    """Workload transactions until ``stop``, riding out a server that goes away.

    A transaction counts as committed when commit() returned. When commit() itself failed
    (the connection died during COMMIT) the outcome is unknown: the writer looks for the
    transaction's unique ledger note once it is connected again, and counts it committed
    only if it is there; otherwise it retries the same tag.
    """
    rng = random.Random(31_000 + number)
    mine: list[str] = []
    conn: sa.Connection | None = None
    in_doubt: list[str] | None = None  # `mine` as it is if the doubtful commit happened
    i = 0
    while not stop.is_set():
        tag = f"w{number}-{i}"
        before = list(mine)
        try:
            if conn is None:
                conn = engine.connect()
            if in_doubt is not None:
                landed = (
                    conn.execute(
                        sa.select(banking.ledger.c.id).where(banking.ledger.c.note == tag)
                    ).first()
                    is not None
                )
                conn.rollback()
                after_doubt, in_doubt = in_doubt, None
                if landed:
                    mine[:] = after_doubt
                    tally.add(tag, True)
                    i += 1
                    continue
            tx = conn.begin()
            if not banking.one_transaction(conn, rng, tag, mine):
                tx.rollback()
                mine[:] = before
                tally.add(tag, False)
                i += 1
                continue
            after = list(mine)
            try:
                tx.commit()
            except DBAPIError:
                in_doubt = after
                raise
            tally.add(tag, True)
            i += 1
        except DBAPIError as exc:  # server down, connection killed, shutting down
            mine[:] = before
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            if len(failures) < 1000:
                failures.append(type(exc.orig).__name__)
            stop.wait(0.05)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _terminate_daemon_connections(server_url: str) -> int:
    with psycopg.connect(conninfo_from_url(server_url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'nkdaemon%' AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def test_postgres_restarted_and_connections_killed_under_the_daemon(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    with pg.Cluster.temporary() as cluster:
        url = pg.create_database(cluster.url)
        engine = engine_for(url)
        banking.create(engine)
        config = daemon_config(tmp_path, url)
        settings = load_settings(config)
        do_install(settings)
        baseline = truth(settings)
        daemon = daemons(config)
        tally = banking.Tally()
        stop = threading.Event()
        failures: list[str] = []
        writers = [
            threading.Thread(
                target=_resilient_writer, args=(engine, n, tally, stop, failures), daemon=True
            )
            for n in range(WRITERS)
        ]
        try:
            daemon.wait_ready()
            for thread in writers:
                thread.start()

            def committed_at_least(count: int) -> Callable[[], bool]:
                return lambda: len(tally.committed) >= count

            daemon.wait_for("writers to commit", committed_at_least(40))

            # The daemon's own connections killed in the middle of the banking.
            lsn_before_kill = daemon.status()["last_lsn"]
            killed = daemon.wait_for(
                "a daemon connection (application_name nkdaemon%) to terminate",
                lambda: _terminate_daemon_connections(cluster.url),
            )
            assert killed >= 1
            daemon.wait_for(
                "the daemon to log again after its connection was killed",
                lambda: daemon.status()["last_lsn"] > lsn_before_kill,
            )
            killed += _terminate_daemon_connections(cluster.url)  # once more, mid-drain

            # The server stopped in the middle of the workload (fast mode).
            daemon.wait_for("more commits", committed_at_least(len(tally.committed) + 30))
            cluster.stop("fast")
            code, reasons = daemon.wait_for(
                "/readyz 503 naming the source while PostgreSQL is down",
                lambda: (lambda r: r if r[0] == 503 and any("source" in x for x in r[1]) else None)(
                    daemon.ready()
                ),
            )
            assert code == 503
            assert any(reason.startswith("source unavailable") for reason in reasons), reasons
            down_status = daemon.status()
            assert down_status["source_error"], down_status
            assert daemon.metric("nkdaemon_errors_total", kind="source") >= 1
            assert daemon.get("/healthz")[0] == 200, "the process is alive while the source is down"
            committed_while_down = len(tally.committed)
            cluster.start()

            daemon.wait_ready(timeout=60)
            daemon.wait_for(
                "writers to commit after the restart",
                committed_at_least(committed_while_down + 40),
                timeout=60,
            )
        finally:
            stop.set()
            for thread in writers:
                thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in writers), "a writer hung"
        assert failures, "the writers never saw the outage"
        assert len(tally.committed) >= committed_while_down + 40 and tally.rolled_back

        wait_caught_up(daemon, config)
        daemon.wait_ready()
        code = daemon.stop()
        assert code == 0, daemon.output()
        assert problems(settings, baseline, tally, merged=False) == []


# --- 2. A full repository disk ------------------------------------------------------------

pad_metadata = sa.MetaData()
pad = sa.Table(
    "pad",
    pad_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(40), nullable=False, unique=True),
    sa.Column("body", sa.Text, nullable=False),
)
PAD_ROWS = 48
PAD_BYTES = 12_000  # random bytes per row (base64: hardly compressible)
HEADROOM = 1024  # bytes the log may still grow under the file size limit


def _grow_log(engine: sa.Engine, settings: Settings, tally: banking.Tally) -> None:
    """Make the log big before the daemon starts (every transaction carries a ledger row).

    The limit is set just above the log segment; the other files the daemon writes (the
    state database and its WAL, and on SQLite the source database) must stay below it.
    """
    rng = random.Random(5)
    with engine.begin() as conn:
        conn.execute(
            pad.insert(),
            [
                {"name": f"pad-{i}", "body": base64.b64encode(rng.randbytes(PAD_BYTES)).decode()}
                for i in range(PAD_ROWS)
            ],
        )
        conn.execute(banking.ledger.insert().values(note="pad-in", account_id=None, amount=0))
    tally.add("pad-in", True)
    with engine.begin() as conn:
        conn.execute(pad.delete())
        conn.execute(banking.ledger.insert().values(note="pad-out", account_id=None, amount=0))
    tally.add("pad-out", True)
    do_drain(settings)


def _reference_then_rename(engine: sa.Engine, tally: banking.Tally) -> None:
    accounts, ledger = banking.accounts, banking.ledger
    with engine.begin() as conn:
        target = conn.execute(sa.select(accounts.c.id).where(accounts.c.name == "acct-00")).scalar()
        conn.execute(ledger.insert().values(note="probe-ref", account_id=target, amount=5))
    tally.add("probe-ref", True)
    with engine.begin() as conn:
        conn.execute(
            accounts.update().where(accounts.c.name == "acct-00").values(name="acct-00-renamed")
        )
        conn.execute(ledger.insert().values(note="probe-rename", account_id=None, amount=6))
    tally.add("probe-rename", True)


def test_full_repository_disk_keeps_changes_queued_and_resumes_by_itself(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    sqlite = db_url.startswith("sqlite")
    engine = engine_for(db_url)
    banking.create(engine)
    pad_metadata.create_all(engine)
    config = daemon_config(tmp_path, db_url)
    settings = load_settings(config)
    do_install(settings)
    baseline = truth(settings)
    tally = banking.Tally()
    _grow_log(engine, settings, tally)
    if sqlite:  # the daemon writes the source too (queue deletes): keep it small
        database = sa.make_url(db_url).database
        assert database
        with contextlib.closing(sqlite3.connect(database)) as conn:
            conn.execute("VACUUM")

    repo = settings.repository.path
    segment = max((repo / "log").glob("*.nkdlog"))
    limit = segment.stat().st_size + HEADROOM
    others = {p.name: p.stat().st_size for p in repo.iterdir() if p.is_file()}
    if sqlite:
        source = Path(str(sa.make_url(db_url).database))
        others[source.name] = source.stat().st_size
    assert max(others.values()) < limit // 3, (
        f"files the daemon writes must stay below the limit {limit}: {others}"
    )

    daemon = daemons(config, preexec_fn=limit_file_size(limit))
    daemon.wait_ready()
    writers = [
        threading.Thread(target=banking.writer, args=(engine, n, 60, tally, 23)) for n in range(2)
    ]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()

    wait_repository_unready(daemon)
    status = daemon.status()
    assert status["repository_error"], status
    assert daemon.metric("nkdaemon_errors_total", kind="repository") >= 1
    queued = cli_status(config, exit_codes=(0, 1))
    assert queued["queue_depth"] > 0, queued
    assert segment.stat().st_size <= limit
    assert daemon.get("/healthz")[0] == 200, "the process is alive while the disk is full"
    assert daemon.process.poll() is None

    # While it is stuck: a reference to a row whose key is renamed in a later transaction.
    # Failed passes translate both; the retry must still name the key as it was (inv. 5).
    failed_passes = daemon.metric("nkdaemon_errors_total", kind="repository")
    _reference_then_rename(engine, tally)
    daemon.wait_for(
        "a failed drain attempt that read the rename",
        lambda: daemon.metric("nkdaemon_errors_total", kind="repository") > failed_passes,
    )

    # More room: the running daemon resumes by itself.
    resource.prlimit(
        daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    )
    wait_caught_up(daemon, config)
    daemon.wait_ready(timeout=60)
    assert daemon.status()["repository_error"] is None
    code = daemon.stop()
    assert code == 0, daemon.output()
    assert len(tally.committed) > 60 and tally.rolled_back
    assert problems(settings, baseline, tally, merged=sqlite) == []
    referenced = [
        e.row["account_id"]
        for tx in logged(settings)
        for e in tx.events
        if e.table == "ledger" and e.op == "I" and e.row["note"] == "probe-ref"
    ]
    assert referenced == [{"name": "acct-00"}], "the key as it was when the row was written"


# --- 3. systemd notifications ---------------------------------------------------------------


def _prepared_sqlite(directory: Path, extra: str = "") -> tuple[Path, Settings, sa.Engine]:
    url = f"sqlite:///{directory / 'app.db'}"
    engine = engine_for(url)
    banking.create(engine)
    config = daemon_config(directory, url, extra)
    settings = load_settings(config)
    do_install(settings)
    return config, settings, engine


def _receive(sock: socket.socket, until: Callable[[str], bool], timeout: float) -> list[str]:
    """Datagrams until one satisfies ``until`` (included), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no expected notification within {timeout} s; got {seen}")
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if until(message):
            return seen


def test_systemd_ready_watchdog_and_stopping_over_a_real_notify_socket(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    config, _settings, _engine = _prepared_sqlite(tmp_path)
    socket_dir = tmp_path
    if len(str(tmp_path / "notify.sock")) > 100:  # sun_path holds 108 bytes
        socket_dir = Path(tempfile.mkdtemp(prefix="nkd-notify-"))
    path = socket_dir / "notify.sock"
    env = dict(os.environ)
    env.pop("WATCHDOG_PID", None)
    env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        try:
            daemon = daemons(config, env=env)
            seen = _receive(sock, lambda m: "READY=1" in m.splitlines(), START_TIMEOUT)
            ready = seen[-1].splitlines()
            assert any(line.startswith("STATUS=") and len(line) > 7 for line in ready), ready
            assert daemon.get("/healthz")[0] == 200

            started = time.monotonic()
            pings: list[float] = []

            def second_ping(message: str) -> bool:
                if "WATCHDOG=1" in message.splitlines():
                    pings.append(time.monotonic() - started)
                return len(pings) >= 2

            _receive(sock, second_ping, 3.0)
            assert len(pings) >= 2 and pings[-1] <= 3.0, pings
            assert daemon.process.poll() is None

            daemon.process.send_signal(signal.SIGTERM)
            _receive(sock, lambda m: "STOPPING=1" in m.splitlines(), GRACE_SECONDS)
            assert daemon.process.wait(timeout=GRACE_SECONDS + 15) == 0, daemon.output()
        finally:
            if socket_dir != tmp_path:
                shutil.rmtree(socket_dir, ignore_errors=True)


# --- 4. the systemd unit ----------------------------------------------------------------------


def _unit_settings(text: str) -> dict[str, list[str]]:
    """KEY -> values, over the unit's sections (continuation lines are not used here)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


_SPAN_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}


def _seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s") in seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", span):
        return float(span)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(n) * _SPAN_UNITS[u] for n, u in parts)


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """The unit `nkdaemon systemd-unit` writes, as written: it runs this installation
    (wherever pip put it), reads the configuration given, may write its repository, keeps
    the template's hardening, and passes `systemd-analyze verify` unchanged."""
    template = _unit_settings(UNIT.read_text())
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'app.db'}")
    written = tmp_path / "nkdaemon.service"
    done = cli_process(config, "systemd-unit", "--user", "backup", "-o", str(written))
    assert done.returncode == 0, done.stderr
    text = written.read_text()
    unit = _unit_settings(text)
    assert unit["Type"] == ["notify"]
    assert _seconds(unit["WatchdogSec"][-1]) > 0
    assert unit["Restart"] == ["on-failure"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["true"]
    assert unit["PrivateTmp"] == ["true"]
    assert _seconds(unit["TimeoutStopSec"][-1]) > GRACE_SECONDS, (
        "systemd must wait longer than the daemon's grace period before SIGKILL"
    )
    filled = {"ExecStart", "Environment", "ReadWritePaths", "User", "Group"}
    assert {k: v for k, v in unit.items() if k not in filled} == {
        k: v for k, v in template.items() if k not in filled
    }
    assert unit["User"] == unit["Group"] == ["backup"]
    assert unit["Environment"] == [f"NKDAEMON_CONFIG={config.resolve()}"]
    assert unit["ReadWritePaths"] == [str((tmp_path / "repo").resolve())]
    *run, last = unit["ExecStart"][-1].split()
    assert last == "run" and Path(run[0]).is_absolute()
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "nkdaemon" in version.stdout, version.stderr
    if config.resolve().is_relative_to("/tmp"):  # hidden by PrivateTmp: said, not silent
        assert f"warning: {config.resolve()} is under /tmp, which PrivateTmp" in done.stderr

    analyze = Path("/usr/bin/systemd-analyze")
    if not analyze.exists():
        pytest.skip("systemd-analyze is not installed (/usr/bin/systemd-analyze): not verified")
    done = subprocess.run(
        [str(analyze), "verify", str(written)], capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    complaints = [line for line in output.splitlines() if "nkdaemon.service" in line]
    assert complaints == [], output


# --- 5. a failing scheduled job -----------------------------------------------------------------


def test_a_failing_snapshot_job_is_reported_and_draining_goes_on(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    config, settings, engine = _prepared_sqlite(tmp_path, '[snapshots]\nschedule = "1s"\n')
    with engine.begin() as conn:  # a change since the baseline: the next snapshot is taken
        conn.execute(banking.ledger.insert().values(note="first", account_id=None, amount=1))
    snapshots = settings.repository.path / "snapshots"
    aside = settings.repository.path / "snapshots.aside"
    daemon = daemons(config)
    daemon.wait_ready()
    daemon.wait_for("a scheduled snapshot", lambda: daemon.metric("nkdaemon_snapshots_total") >= 1)

    # Root ignores permissions: a regular file where the folder was makes snapshots fail.
    snapshots.rename(aside)
    snapshots.write_text("not a folder\n")
    reasons = daemon.wait_for(
        "/readyz to report the failed snapshot job",
        lambda: (lambda r: r[1] if r[0] == 503 and any("job snapshot" in x for x in r[1]) else 0)(
            daemon.ready()
        ),
    )
    assert any(reason.startswith("job snapshot failed: ") for reason in reasons), reasons
    assert daemon.status()["job_errors"].get("snapshot"), daemon.status()
    assert daemon.metric("nkdaemon_errors_total", kind="snapshot") >= 1
    taken_while_failing = daemon.metric("nkdaemon_snapshots_total")

    # Draining goes on while the job fails.
    with engine.begin() as conn:
        conn.execute(
            banking.ledger.insert().values(note="while-failing", account_id=None, amount=3)
        )

    def logged_notes() -> set[str]:
        return {
            e.row["note"]
            for tx in logged(settings)
            for e in tx.events
            if e.table == "ledger" and e.op == "I"
        }

    try:  # the outcome is asserted at the end, after the repair has been checked as well
        daemon.wait_for("the new change in the log", lambda: "while-failing" in logged_notes(), 15)
        drained_while_failing = ""
    except AssertionError as exc:
        drained_while_failing = str(exc).splitlines()[0]
    status_while_failing = daemon.status()
    assert daemon.metric("nkdaemon_snapshots_total") == taken_while_failing

    # The cause gone, the next snapshot succeeds and the error clears.
    snapshots.unlink()
    aside.rename(snapshots)
    daemon.wait_for(
        "a snapshot after the repair",
        lambda: daemon.metric("nkdaemon_snapshots_total") > taken_while_failing,
    )
    daemon.wait_for("the job error to clear", lambda: not daemon.status()["job_errors"])
    daemon.wait_ready(timeout=60)
    with engine.begin() as conn:
        conn.execute(banking.ledger.insert().values(note="after-repair", account_id=None, amount=4))
    daemon.wait_for("the next change in the log", lambda: "after-repair" in logged_notes(), 15)
    assert daemon.stop() == 0, daemon.output()

    assert status_while_failing["repository_error"] is None, (
        "a failing snapshot job stopped the drain: " + str(status_while_failing["repository_error"])
    )
    assert status_while_failing["source_error"] is None, status_while_failing
    assert not drained_while_failing, (
        "draining stopped while the snapshot job failed: " + drained_while_failing
    )
