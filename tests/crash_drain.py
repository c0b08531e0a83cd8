"""Run one drain pass and SIGKILL ourselves at a chosen step of a chosen batch.

Usage: python tests/crash_drain.py CONFIG STAGE BATCH
STAGE is log_synced, state_committed or queue_deleted; BATCH counts from 1.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.session import Session


def main() -> None:
    config, stage, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    seen = {"count": 0}

    def hook(name: str) -> None:
        if name == stage:
            seen["count"] += 1
            if seen["count"] == batch:
                os.kill(os.getpid(), signal.SIGKILL)

    with Session(load_settings(config), writer=True) as session:
        session.drainer(on_stage=hook).drain_once()


if __name__ == "__main__":
    main()
