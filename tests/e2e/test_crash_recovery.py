"""Invariant 1 under SIGKILL: a drain killed at any instant loses and doubles nothing.

A workload of more than 10,000 transactions runs while drain processes are started and
killed with SIGKILL: some at a random moment, some exactly after the log fsync, after the
checkpoint commit or after the queue delete of a batch. Afterwards the log holds every
committed change exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers import do_drain, do_install, engine_for, settings_for, truth, write_config
from tests.workloads import banking
from tests.workloads.banking import problems

TRANSACTIONS = 10_400
WRITERS = 4
MIN_KILLS = 20
STAGES = ("log_synced", "state_committed", "queue_deleted")
ROOT = Path(__file__).resolve().parents[2]


def _run_writers(engine, tally: banking.Tally) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=banking.writer, args=(engine, n, TRANSACTIONS // WRITERS, tally, 11)
        )
        for n in range(WRITERS)
    ]
    for thread in threads:
        thread.start()
    return threads


def _drain_process(config: Path, rng: random.Random) -> subprocess.Popen[bytes]:
    if rng.random() < 0.5:
        stage = rng.choice(STAGES)
        args = [
            sys.executable,
            str(ROOT / "tests" / "crash_drain.py"),
            str(config),
            stage,
            str(rng.randint(1, 3)),
        ]
    else:
        args = [sys.executable, "-m", "nkdaemon", "--config", str(config), "drain"]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkilled_drains_lose_and_double_nothing(db_url: str, tmp_path: Path) -> None:
    engine = engine_for(db_url)
    banking.create(engine)
    extra = "[capture]\nbatch_transactions = 40\n"
    config = write_config(tmp_path, db_url, extra)
    settings = settings_for(tmp_path, db_url, extra)
    do_install(settings)
    baseline = truth(settings)
    tally = banking.Tally()
    writers = _run_writers(engine, tally)
    rng = random.Random(20261126)
    kills = clean = 0
    while any(t.is_alive() for t in writers) or kills < MIN_KILLS:
        process = _drain_process(config, rng)
        try:
            process.wait(timeout=rng.uniform(0.3, 1.5))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        stderr = process.stderr.read().decode() if process.stderr else ""
        if process.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert process.returncode == 0, stderr
            clean += 1
        if kills > 200:
            break
        time.sleep(0)
    for thread in writers:
        thread.join()
    do_drain(settings)

    assert kills >= MIN_KILLS
    assert len(tally.committed) >= 10_000 * 0.75  # about a fifth are rolled back on purpose
    assert problems(settings, baseline, tally, merged=db_url.startswith("sqlite")) == []
