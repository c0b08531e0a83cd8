"""`nkdaemon run` end to end: a real subprocess, real HTTP on loopback, real signals.

- A committed change is in the log within one second; /healthz and /readyz answer; /metrics
  is Prometheus text whose figures move while writers work.
- SIGKILL under load, then a restart: nothing lost, nothing doubled.
- SIGTERM exits 0 with the queue drained to the last committed change.
- A configuration edit that adds a table is applied without a restart; a broken edit is
  refused, the daemon keeps running on the old configuration and /status says why.
- A second daemon on the same repository exits non-zero naming the first one's PID.
- SIGHUP reloads the configuration too.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.runtime.config import load_settings
from tests.daemon_harness import (
    DaemonProcess,
    add_ledger_row,
    free_port,
    health_section,
    keep_writing,
    logged_notes,
    logged_rows,
    prepare,
    start_writers,
    wait_all_committed_logged,
    wait_for,
)
from tests.helpers import (
    cli_process,
    cli_status,
    logged,
    truth,
    write_config,
)
from tests.workloads import banking
from tests.workloads.banking import problems

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
KILLS = 4

branches_metadata = sa.MetaData()
branches = sa.Table(
    "branches",
    branches_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("code", sa.String(20), nullable=False, unique=True),
    sa.Column("city", sa.String(40), nullable=True),
)


# --- freshness, health, metrics -------------------------------------------------------------


def test_writes_are_logged_within_a_second_and_health_and_metrics_report_it(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    engine, config, settings = prepare(db_url, tmp_path)
    daemon = daemons(config)
    daemon.wait_ready()

    assert daemon.get("/healthz")[0] == 200
    code, body = daemon.get("/readyz")
    assert code == 200 and json.loads(body) == {"ready": True, "reasons": []}
    status = daemon.status()
    assert status["state"] == "running" and status["pid"] == daemon.pid
    # a quiet source: the log is known complete up to the last pass, not the last commit
    wait_for(lambda: daemon.status().get("complete_through"), timeout=10, what="complete_through")

    # Writes after idle gaps of different lengths meet the daemon at every phase of its
    # loop (asleep, just woken, polling): each must be in the log within one second.
    delays = []
    for i, gap in enumerate((0.0, 0.15, 0.4, 0.75, 1.1, 1.6)):
        time.sleep(gap)  # pacing on purpose: the idle time before the write is the variable
        note = f"fresh-{i}"
        add_ledger_row(engine, note)
        committed = time.monotonic()
        wait_for(lambda note=note: note in logged_notes(settings), timeout=10, what=note)
        delays.append(time.monotonic() - committed)
    assert all(delay < 1.0 for delay in delays), f"seconds from commit to log: {delays}"

    # /metrics under a busy workload: the lag figure and the counters move.
    before = daemon.scrape()
    tally = banking.Tally()
    writers = start_writers(engine, tally, writers=3, each=80, seed=5)
    scrapes = []
    while any(t.is_alive() for t in writers):
        scrapes.append(daemon.scrape())
        time.sleep(0.03)  # sampling interval
    for thread in writers:
        thread.join()
    expected = {f"fresh-{i}" for i in range(6)} | set(tally.committed)
    wait_for(
        lambda: set(logged_notes(settings)) >= expected, timeout=30, what="the workload's tags"
    )
    after = wait_for(
        lambda: (
            (m := daemon.scrape())["nkdaemon_queue_depth"] == 0
            and m["nkdaemon_lag_seconds"] == 0
            and m
        ),
        timeout=10,
        what="/metrics to show an empty queue",
    )

    assert len(scrapes) >= 5
    lags = [s["nkdaemon_lag_seconds"] for s in scrapes]
    assert len(set(lags)) >= 2 and max(lags) > 0, f"the lag figure never moved: {set(lags)}"
    counted = [before, *scrapes, after]
    events = [s["nkdaemon_events_logged_total"] for s in counted]
    assert events == sorted(events) and events[-1] > before["nkdaemon_events_logged_total"]
    transactions = logged(settings)
    assert after["nkdaemon_transactions_logged_total"] == len(transactions)
    assert after["nkdaemon_events_logged_total"] == sum(len(tx.events) for tx in transactions)
    assert after["nkdaemon_last_drain_timestamp_seconds"] > time.time() - 60
    assert daemon.get("/readyz")[0] == 200

    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()


def test_wake_ups_alone_keep_the_log_fresh_when_polling_is_rare(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """With the poll fallback at 30 s, only the wake-ups (LISTEN/NOTIFY on PostgreSQL,
    watchfiles on the SQLite files) can bring a change to the log within a second."""
    engine, config, settings = prepare(db_url, tmp_path, '[capture]\npoll_interval = "30s"\n')
    daemon = daemons(config)
    daemon.wait_ready()
    delays = []
    for i, gap in enumerate((0.2, 0.5, 1.2, 2.0)):
        time.sleep(gap)  # pacing on purpose: the daemon is asleep when the write comes
        note = f"woken-{i}"
        add_ledger_row(engine, note)
        committed = time.monotonic()
        wait_for(lambda note=note: note in logged_notes(settings), timeout=40, what=note)
        delays.append(time.monotonic() - committed)
    assert all(delay < 1.0 for delay in delays), f"seconds from commit to log: {delays}"
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()


def test_a_stream_of_wake_ups_is_drained_in_passes_spaced_by_min_pass_interval(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """Every commit wakes the daemon; under a steady stream it must not run a pass per
    commit (each pass costs the application throughput), yet every commit is logged
    within about min_pass_interval."""
    engine, config, settings = prepare(
        db_url, tmp_path, '[capture]\npoll_interval = "30s"\nmin_pass_interval = "1s"\n'
    )
    daemon = daemons(config)
    daemon.wait_ready()
    passes_before = daemon.scrape()["nkdaemon_drain_passes_total"]
    started = time.monotonic()
    notes = [f"stream-{i}" for i in range(40)]
    for note in notes:
        add_ledger_row(engine, note)
        time.sleep(0.075)
    last_commit = time.monotonic()
    wait_for(lambda: set(logged_notes(settings)) >= set(notes), timeout=40, what="the stream")
    delay = time.monotonic() - last_commit
    passes = daemon.scrape()["nkdaemon_drain_passes_total"] - passes_before
    seconds = time.monotonic() - started
    assert passes <= seconds + 2, f"{passes} passes in {seconds:.1f} s for {len(notes)} commits"
    assert delay < 2.0, f"the last commit reached the log after {delay:.2f} s"
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()


# --- crashes and shutdown ---------------------------------------------------------------


def test_sigkill_under_load_then_restart_loses_and_doubles_nothing(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    engine, config, settings = prepare(db_url, tmp_path, "[capture]\nbatch_transactions = 10\n")
    baseline = truth(settings)
    daemon = daemons(config)
    daemon.wait_ready()

    tally = banking.Tally()
    stop = threading.Event()
    writers = keep_writing(engine, tally, writers=3, stop=stop)
    rng = random.Random(4711)
    try:
        for _kill in range(KILLS):
            # Let it drain with changes arriving, then kill it at a random instant.
            progress = len(logged(settings))
            wait_for(
                lambda progress=progress: len(logged(settings)) > progress,
                timeout=30,
                what="the daemon to log something",
            )
            time.sleep(rng.uniform(0.0, 0.5))  # a random instant within the drain
            assert all(t.is_alive() for t in writers), "the writers stopped early"
            daemon.sigkill()
            daemon = daemons(config)
            daemon.wait_ready()
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    wait_all_committed_logged(settings, tally)
    wait_for(lambda: daemon.status()["queue_depth"] == 0, timeout=10, what="an empty queue")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()

    assert len(tally.committed) > 100
    assert problems(settings, baseline, tally, merged=db_url.startswith("sqlite")) == []


def test_a_second_sigterm_exits_at_once_and_a_restart_loses_and_doubles_nothing(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """An impatient operator: SIGTERM twice while the daemon works through a backlog. It
    must exit promptly (not finish the backlog), and the next run logs every committed
    change exactly once: the queue kept what the log lacked."""
    engine, config, settings = prepare(db_url, tmp_path, "[capture]\nbatch_transactions = 5\n")
    baseline = truth(settings)
    tally = banking.Tally()
    # a backlog before the daemon starts (tags w50-*, w51-*: none of keep_writing's)
    for thread in start_writers(engine, tally, writers=2, each=250, seed=77, first=50):
        thread.join()
    daemon = daemons(config)
    daemon.wait_ready()
    stop = threading.Event()
    writers = keep_writing(engine, tally, writers=2, stop=stop)
    try:
        daemon.send(signal.SIGTERM)
        time.sleep(0.1)  # two signals at once would merge into one
        daemon.send(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.wait(timeout=10)
        assert time.monotonic() - started < 5, "a second SIGTERM must not wait for the drain"
        assert code in (0, 1), daemon.stderr()  # 1 here; 0 if the first stop beat the second
        daemon = daemons(config)
        daemon.wait_ready()
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    wait_all_committed_logged(settings, tally)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()
    assert problems(settings, baseline, tally, merged=db_url.startswith("sqlite")) == []


@pytest.mark.parametrize("moment", ["busy", "idle"])
def test_sigterm_exits_zero_with_the_queue_drained_to_the_last_commit(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess], moment: str
) -> None:
    """The writers stop, one last change commits, then SIGTERM: that change is logged.

    busy: the signal comes while the daemon still works through the writers' backlog.
    idle: the daemon had caught up and sleeps; the last change and the signal come together.
    """
    engine, config, settings = prepare(db_url, tmp_path)
    baseline = truth(settings)
    daemon = daemons(config)
    daemon.wait_ready()

    tally = banking.Tally()
    for thread in start_writers(engine, tally, writers=3, each=40, seed=31):
        thread.join()
    if moment == "idle":
        wait_for(
            lambda: (
                set(logged_notes(settings)) >= set(tally.committed)
                and daemon.status()["queue_depth"] == 0
            ),
            timeout=30,
            what="the daemon to catch up",
        )
    # As an application's last write just before the operator stops the service.
    add_ledger_row(engine, "last")
    tally.add("last", True)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()
    assert daemon.logged_event("daemon.stopped") is not None

    status = cli_status(config)
    assert status["queue_depth"] == 0, (
        f"after SIGTERM ({moment}) {status['queue_depth']} committed changes are still queued"
    )
    assert status["lag_seconds"] == 0.0
    assert sorted(logged_notes(settings)) == sorted(tally.committed)
    assert problems(settings, baseline, tally, merged=db_url.startswith("sqlite")) == []


def test_sigterm_stops_the_daemon_while_a_log_write_is_blocked(db_url: str, tmp_path: Path) -> None:
    """A slow reader of stderr (a busy journal) holds the daemon inside a log write.

    SIGTERM must still stop it, with exit 0, once the output flows again: the signal handler
    may not wait for anything the interrupted code holds (the logger's lock).
    """
    engine, config, settings = prepare(db_url, tmp_path)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # a small pipe: full after ~25 lines
    process = subprocess.Popen(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), "run"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    output = bytearray()
    collector: threading.Thread | None = None
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        try:
            while b"daemon.started" not in output:
                chunk = reader.read(4096)
                assert chunk, f"the daemon exited before it started:\n{output.decode()}"
                output += chunk
            # Nobody reads its stderr now: every drain pass writes a line until one blocks,
            # and from then on nothing more is logged.
            for i in range(400):
                note = f"fill-{i}"
                add_ledger_row(engine, note)
                try:
                    wait_for(lambda note=note: note in logged_notes(settings), timeout=2, what=note)
                except AssertionError:
                    break  # the main thread is stuck in a log write
            else:
                raise AssertionError("the daemon never blocked on its full stderr")

            process.send_signal(signal.SIGTERM)
            collector = threading.Thread(target=lambda: output.extend(reader.read()))
            collector.start()  # the output flows again
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    "SIGTERM did not stop the daemon within 30 s of its output flowing again"
                ) from None
            collector.join(timeout=30)
            assert code == 0, output.decode(errors="replace")[-3000:]
            assert b'"daemon.stopped"' in output
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if collector is not None:
                collector.join(timeout=30)  # EOF now that the process is gone


# --- configuration reload ---------------------------------------------------------------


def test_a_config_edit_adds_a_table_and_a_broken_edit_is_refused(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    engine, config, settings = prepare(
        db_url, tmp_path, '[capture]\ntables = ["accounts", "ledger"]\n'
    )
    health = f'\n[health]\nlisten = "{settings.health.listen}"\n'
    three_tables = '[capture]\ntables = ["accounts", "ledger", "branches"]\n' + health
    daemon = daemons(config)
    daemon.wait_ready()

    branches_metadata.create_all(engine)  # a new table, not captured yet
    with engine.begin() as conn:
        conn.execute(branches.insert().values(code="HQ", city="Basel"))
    add_ledger_row(engine, "before-edit")
    wait_for(lambda: "before-edit" in logged_notes(settings), timeout=10, what="before-edit")
    assert logged_rows(settings, "branches", "code") == []

    # 1. The edit adds the table: no restart, and its new rows reach the log.
    write_config(tmp_path, db_url, three_tables)
    wait_for(
        lambda: daemon.logged_event("config.capture_changed"),
        timeout=15,
        what="config.capture_changed",
    )
    with engine.begin() as conn:
        conn.execute(branches.insert().values(code="B1", city="Bern"))
        conn.execute(branches.update().where(branches.c.code == "HQ").values(city="Zug"))
    with engine.begin() as conn:
        conn.execute(branches.insert().values(code="B2", city=None))
    wait_for(
        lambda: {"B1", "B2", "HQ"} <= set(logged_rows(settings, "branches", "code")),
        timeout=10,
        what="the added table's rows in the log",
    )
    status = daemon.status()
    assert status["config_error"] is None and status["pid"] == daemon.pid

    # 2. Invalid TOML: refused; the daemon drains on with the three tables, and says why.
    config.write_text(config.read_text() + '\n[snapshots\nschedule = "1h"\n')
    error = wait_for(
        lambda: daemon.status()["config_error"], timeout=15, what="config_error in /status"
    )
    assert "not valid TOML" in error and str(config) in error
    code, body = daemon.get("/readyz")
    assert code == 200, body  # the data is still fresh: readiness is about the backup
    assert daemon.get("/healthz")[0] == 200
    add_ledger_row(engine, "after-broken-toml")
    with engine.begin() as conn:
        conn.execute(branches.insert().values(code="B3", city="Chur"))
    wait_for(
        lambda: (
            "after-broken-toml" in logged_notes(settings)
            and "B3" in logged_rows(settings, "branches", "code")
        ),
        timeout=10,
        what="changes logged under the old configuration",
    )
    assert daemon.logged_event("config.reload_refused") is not None

    # 3. An unknown key: refused the same way, with the key named.
    write_config(tmp_path, db_url, three_tables + '\n[snapshots]\nshedule = "1h"\n')
    error = wait_for(
        lambda: "shedule" in (daemon.status()["config_error"] or "") and daemon.status(),
        timeout=15,
        what="the unknown key in config_error",
    )["config_error"]
    assert "unknown setting" in error
    assert daemon.get("/readyz")[0] == 200
    add_ledger_row(engine, "after-unknown-key")
    wait_for(
        lambda: "after-unknown-key" in logged_notes(settings),
        timeout=10,
        what="after-unknown-key",
    )

    # 4. Fixed again: the error clears.
    write_config(tmp_path, db_url, three_tables)
    wait_for(
        lambda: daemon.status()["config_error"] is None, timeout=15, what="config_error cleared"
    )
    assert daemon.running()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()

    verify = cli_process(config, "verify", "--source")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sighup_reloads_the_configuration(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """The file the daemon watches never changes: only SIGHUP can make it see the edit."""
    engine, _config, settings = prepare(db_url, tmp_path)
    health = health_section(free_port())
    body = textwrap.dedent(
        f"""
        [source]
        url = "{db_url}"

        [repository]
        path = "{settings.repository.path}"
        """
    )
    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    (first / "nkdaemon.toml").write_text(body + health)
    (second / "nkdaemon.toml").write_text(body + health + '\n[snapshots]\nschedule = "1s"\n')
    link_dir = tmp_path / "etc"
    link_dir.mkdir()
    config = link_dir / "nkdaemon.toml"
    config.symlink_to(first / "nkdaemon.toml")

    add_ledger_row(engine, "before-reload")  # a change, so a scheduled snapshot is taken
    daemon = daemons(config)
    daemon.wait_ready()
    snapshots = len(daemon.status()["snapshots"])

    swap = link_dir / "nkdaemon.toml.new"
    swap.symlink_to(second / "nkdaemon.toml")
    os.replace(swap, config)  # the daemon watches v1/, where nothing changes
    daemon.send(signal.SIGHUP)

    wait_for(lambda: daemon.logged_event("config.reloaded"), timeout=10, what="config.reloaded")
    assert daemon.logged_event("schedule.snapshots", schedule="1s") is not None
    wait_for(
        lambda: len(daemon.status()["snapshots"]) > snapshots,
        timeout=15,
        what="a scheduled snapshot after the reload",
    )
    assert daemon.logged_event("job.snapshot_done") is not None
    assert daemon.status()["config_error"] is None
    add_ledger_row(engine, "after-sighup")
    wait_for(lambda: "after-sighup" in logged_notes(settings), timeout=10, what="after-sighup")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()


# --- one writer per repository ------------------------------------------------------------


def test_a_second_daemon_on_the_same_repository_exits_naming_the_first(
    db_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    engine, config, settings = prepare(db_url, tmp_path)
    first = daemons(config, "first")
    first.wait_ready()

    # Its own health port: the refusal must come from the repository, not from the port.
    other = write_config(tmp_path, db_url, health_section(free_port()), name="other.toml")
    assert load_settings(other).repository.path == settings.repository.path
    done = subprocess.run(
        [sys.executable, "-m", "nkdaemon", "--config", str(other), "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"pid {first.pid}" in done.stderr, done.stderr
    assert "another nkdaemon process" in done.stderr and "Traceback" not in done.stderr

    # The first one is undisturbed and still the repository's writer.
    assert first.running()
    assert first.status()["pid"] == first.pid
    add_ledger_row(engine, "after-second")
    wait_for(lambda: "after-second" in logged_notes(settings), timeout=10, what="after-second")
    first.send(signal.SIGTERM)
    assert first.wait() == 0, first.stderr()
