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
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from nkdaemon.runtime.config import Settings, load_settings
from tests import workload
from tests.helpers import (
    cli_process,
    cli_status,
    do_install,
    engine_for,
    logged,
    truth,
    write_config,
)
from tests.test_commit_order import problems

ROOT = Path(__file__).resolve().parent.parent
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


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    """One `python -m nkdaemon --config CONFIG run`, its stderr in a file."""

    def __init__(self, config: Path, stderr_path: Path) -> None:
        self.config = config
        self.stderr_path = stderr_path
        listen = load_settings(config).health.listen
        self.base = f"http://{listen}"
        with stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nkdaemon", "--config", str(config), "run"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The structured log lines (JSON: stderr is not a terminal)."""
        events = []
        for line in self.stderr().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line being written right now
        return events

    def logged_event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        for event in self.log_events():
            if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def scrape(self) -> dict[str, float]:
        """/metrics parsed as Prometheus text: unlabelled samples by name."""
        code, body = self.get("/metrics")
        assert code == 200, body
        values = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if not sample.labels:
                    values[sample.name] = sample.value
        return values

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.process.returncode}:\n{self.stderr()}"
                )
            try:
                return self.get("/readyz", timeout=1.0)[0] == 200
            except OSError:
                return False  # not listening yet

        wait_for(ready, timeout=timeout, what="/readyz to answer 200", interval=0.05)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def running(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts daemons; whatever is still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, name: str = "daemon") -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / f"{name}-{len(started)}.stderr")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.running():
            daemon.process.kill()
        daemon.process.wait(timeout=30)
        # Shown by pytest when the test failed: what each daemon said, drain lines left out.
        lines = [line for line in daemon.stderr().splitlines() if "drain.batch" not in line]
        print(f"--- {daemon.stderr_path.name} (exit {daemon.process.returncode}) ---")
        print("\n".join(lines[-40:]))


def health_section(port: int) -> str:
    return f'\n[health]\nlisten = "127.0.0.1:{port}"\n'


def prepare(url: str, tmp_path: Path, extra: str = "") -> tuple[sa.Engine, Path, Settings]:
    """The banking schema, a configuration with a free health port, capture installed."""
    engine = engine_for(url)
    workload.create(engine)
    config = write_config(tmp_path, url, extra + health_section(free_port()))
    settings = load_settings(config)
    do_install(settings)
    return engine, config, settings


def logged_notes(settings: Settings) -> list[str]:
    """The note of every ledger row inserted in the log (the workload's tags)."""
    return [
        e.row["note"]
        for tx in logged(settings)
        for e in tx.events
        if e.table == "ledger" and e.op == "I"
    ]


def logged_rows(settings: Settings, table: str, column: str) -> list[Any]:
    return [
        e.row[column]
        for tx in logged(settings)
        for e in tx.events
        if e.table == table and e.row is not None
    ]


def add_ledger_row(engine: sa.Engine, note: str) -> None:
    with engine.begin() as conn:
        conn.execute(workload.ledger.insert().values(note=note, account_id=None, amount=1))


def wait_all_committed_logged(settings: Settings, tally: workload.Tally) -> None:
    wait_for(
        lambda: set(logged_notes(settings)) >= set(tally.committed),
        timeout=60,
        what="every committed tag in the log",
    )


def start_writers(
    engine: sa.Engine, tally: workload.Tally, writers: int, each: int, seed: int, first: int = 0
) -> list[threading.Thread]:
    """Writer threads numbered from ``first`` (their tags: w{number}-{i})."""
    threads = [
        threading.Thread(target=workload.writer, args=(engine, n, each, tally, seed))
        for n in range(first, first + writers)
    ]
    for thread in threads:
        thread.start()
    return threads


def keep_writing(
    engine: sa.Engine, tally: workload.Tally, writers: int, stop: threading.Event
) -> list[threading.Thread]:
    """Writer threads that go on until ``stop`` (tags stay unique: w{number}-{i})."""

    def run(number: int) -> None:
        for round_ in range(10_000):
            if stop.is_set():
                return
            workload.writer(engine, number + 100 * round_, 10, tally, number)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    return threads


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
    tally = workload.Tally()
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

    tally = workload.Tally()
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
    tally = workload.Tally()
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

    tally = workload.Tally()
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
