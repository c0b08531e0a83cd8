"""One harness for `nkdaemon run` as a real subprocess: start, poll HTTP, signal, collect output.

Every daemon test goes through `DaemonProcess` and the `daemons` fixture (registered in
conftest.py), so a daemon left running by a failing test is always killed, and what it said
is printed under the failure.
"""

from __future__ import annotations

import json
import resource
import signal
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
from nkdaemon.runtime.daemon import GRACE_SECONDS
from tests.helpers import ROOT, cli_status, do_install, engine_for, logged, write_config
from tests.pg import free_port
from tests.workloads import banking

START_TIMEOUT = 30.0

__all__ = ["free_port"]


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
    """One `python -m nkdaemon --config CONFIG run`; stdout and stderr go to one file."""

    def __init__(
        self,
        config: Path,
        output_path: Path,
        *,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.output_path = output_path
        self.base = f"http://{load_settings(config).health.listen}"
        with output_path.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nkdaemon", "--config", str(config), "run"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=preexec_fn,  # the daemon's own limits, set before exec
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        """Everything the daemon has written so far."""
        return self.output_path.read_text(errors="replace")

    def output(self, last: int = 60) -> str:
        return "\n".join(self.stderr().splitlines()[-last:])

    def log_events(self) -> list[dict[str, Any]]:
        """The structured log lines (JSON: the output is not a terminal)."""
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

    def ready(self) -> tuple[int, list[str]]:
        """/readyz: its status code and the reasons it gives."""
        code, body = self.get("/readyz")
        return code, list(json.loads(body)["reasons"])

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def metric_samples(self) -> list[Any]:
        code, body = self.get("/metrics")
        assert code == 200, body
        return [
            sample
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        ]

    def scrape(self) -> dict[str, float]:
        """/metrics parsed as Prometheus text: unlabelled samples by name."""
        return {s.name: s.value for s in self.metric_samples() if not s.labels}

    def metric(self, name: str, **labels: str) -> float:
        for sample in self.metric_samples():
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return 0.0

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``condition`` until it returns something truthy; the daemon must stay alive."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.process.returncode} while waiting for "
                    f"{what}; its output:\n{self.output()}"
                )
            try:
                last = condition()
            except OSError as exc:  # the HTTP server is not up yet, or the request broke
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what} (last: {last!r}); "
                    f"daemon output:\n{self.output()}"
                )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self.wait_for("/readyz to answer 200", lambda: self.get("/readyz", 1.0)[0] == 200, timeout)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM; the exit code (within the grace period and a margin)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=GRACE_SECONDS + 15)

    def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def running(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts daemons; whatever is still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, name: str = "daemon", **options: Any) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / f"{name}-{len(started)}.out", **options)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
        # Shown by pytest when the test failed: what each daemon said, drain lines left out.
        lines = [line for line in daemon.stderr().splitlines() if "drain.batch" not in line]
        print(f"--- {daemon.output_path.name} (exit {daemon.process.returncode}) ---")
        print("\n".join(lines[-40:]))


# --- the banking workload under a daemon ---------------------------------------------------


def health_section(port: int) -> str:
    return f'\n[health]\nlisten = "127.0.0.1:{port}"\n'


def daemon_config(directory: Path, url: str, extra: str = "") -> Path:
    """A configuration with a free health port and a short poll interval."""
    return write_config(
        directory,
        url,
        textwrap.dedent(
            f"""
            [capture]
            poll_interval = "200ms"

            [health]
            listen = "127.0.0.1:{free_port()}"
            """
        )
        + textwrap.dedent(extra),
    )


def wait_caught_up(daemon: DaemonProcess, config: Path, timeout: float = 60.0) -> None:
    """Every committed change has left the source queue (the log and checkpoint have it)."""
    daemon.wait_for(
        "the source queue to be drained (status --json queue_depth == 0)",
        lambda: cli_status(config, exit_codes=(0, 1))["queue_depth"] == 0,
        timeout,
    )


def prepare(url: str, tmp_path: Path, extra: str = "") -> tuple[sa.Engine, Path, Settings]:
    """The banking schema, a configuration with a free health port, capture installed."""
    engine = engine_for(url)
    banking.create(engine)
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
        conn.execute(banking.ledger.insert().values(note=note, account_id=None, amount=1))


def wait_all_committed_logged(settings: Settings, tally: banking.Tally) -> None:
    wait_for(
        lambda: set(logged_notes(settings)) >= set(tally.committed),
        timeout=60,
        what="every committed tag in the log",
    )


def start_writers(
    engine: sa.Engine, tally: banking.Tally, writers: int, each: int, seed: int, first: int = 0
) -> list[threading.Thread]:
    """Writer threads numbered from ``first`` (their tags: w{number}-{i})."""
    threads = [
        threading.Thread(target=banking.writer, args=(engine, n, each, tally, seed))
        for n in range(first, first + writers)
    ]
    for thread in threads:
        thread.start()
    return threads


def keep_writing(
    engine: sa.Engine, tally: banking.Tally, writers: int, stop: threading.Event
) -> list[threading.Thread]:
    """Writer threads that go on until ``stop`` (tags stay unique: w{number}-{i})."""

    def run(number: int) -> None:
        for round_ in range(10_000):
            if stop.is_set():
                return
            banking.writer(engine, number + 100 * round_, 10, tally, number)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    return threads


def limit_file_size(limit: int) -> Callable[[], None]:
    """A full disk for the daemon's files (RLIMIT_FSIZE), as ``preexec_fn``: a write past
    ``limit`` bytes fails with EFBIG, not a signal."""

    def apply() -> None:  # in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    return apply


def wait_repository_unready(daemon: DaemonProcess) -> None:
    """Wait for /readyz to answer 503 naming the repository, one reason starting with
    "repository: "."""
    _code, reasons = daemon.wait_for(
        "/readyz 503 naming the repository",
        lambda: (lambda r: r if r[0] == 503 and any("repository" in x for x in r[1]) else None)(
            daemon.ready()
        ),
    )
    assert any(reason.startswith("repository: ") for reason in reasons), reasons
