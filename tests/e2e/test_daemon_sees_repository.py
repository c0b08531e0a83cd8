"""The daemon reports the repository as it is on disk, not as it was when it started.

Other processes change the repository beside a running daemon (`nkdaemon snapshot` takes a
snapshot without the lock): /status and /readyz must show what they did.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from nkdaemon.runtime.config import load_settings
from tests.daemon_harness import DaemonProcess, free_port, wait_for
from tests.helpers import cli_process, do_install, engine_for, write_config
from tests.workloads import banking

MAX_SNAPSHOT_AGE = 5.0


def _readiness(daemon: DaemonProcess) -> tuple[int, list[str]]:
    code, body = daemon.get("/readyz")
    reasons: list[str] = json.loads(body)["reasons"]
    return code, reasons


def _running(daemon: DaemonProcess) -> Callable[[], bool]:
    def running() -> bool:
        assert daemon.running(), daemon.stderr()
        try:
            return bool(daemon.status()["state"] == "running")
        except OSError:
            return False  # not listening yet

    return running


def test_a_snapshot_taken_by_another_process_shows_in_status_and_makes_the_daemon_ready(
    sqlite_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    banking.create(engine_for(sqlite_url))
    config = write_config(
        tmp_path,
        sqlite_url,
        f'[health]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'max_snapshot_age = "{MAX_SNAPSHOT_AGE:g}s"\n',
    )
    do_install(load_settings(config))
    daemon = daemons(config)
    wait_for(_running(daemon), timeout=30, what="the daemon running")  # ready or not
    assert len(daemon.status()["snapshots"]) == 1  # the baseline install took

    # The baseline ages past the bound: not ready, and the reason says why.
    code, reasons = wait_for(
        lambda: (r := _readiness(daemon))[0] == 503 and r,
        timeout=MAX_SNAPSHOT_AGE + 15,
        what="/readyz 503 for an old snapshot",
    )
    assert any("newest snapshot is" in r for r in reasons), reasons

    done = cli_process(config, "snapshot", "--json")
    assert done.returncode == 0, done.stderr
    manual = json.loads(done.stdout)["id"]

    # Read from the repository at each request: no pass, job or reload has to happen first.
    assert [s["id"] for s in daemon.status()["snapshots"]][-1] == manual
    code, reasons = _readiness(daemon)
    assert code == 200 and reasons == [], reasons

    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr()
