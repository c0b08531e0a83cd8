"""Progress bars for long commands: one tqdm bar per stage, with rows per second, on a
terminal; nothing at all when stderr is not one (a log, a pipe, systemd)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Never

from tqdm import tqdm

STAGE_TITLES = {"index": "indexing referenced rows", "snapshot": "snapshot rows"}


@contextmanager
def stage_bars() -> Iterator[Callable[[str, int], None]]:
    """A progress callback (stage, rows since the last call) drawing a bar per stage."""
    bars: dict[str, tqdm[Never]] = {}
    shown = sys.stderr.isatty()

    def progress(stage: str, rows: int) -> None:
        if not shown:
            return
        bar = bars.get(stage)
        if bar is None:
            for earlier in bars.values():  # stages come one after another
                earlier.close()
            bar = tqdm(desc=STAGE_TITLES.get(stage, stage), unit=" rows", file=sys.stderr)
            bars[stage] = bar
        bar.update(rows)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()
