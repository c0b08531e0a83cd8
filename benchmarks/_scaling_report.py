"""The scaling table of benchmarks/scaling.py: one record per stage and size, its target,
the printed table, the JSON file and the log-log plot. No database here, so it is tested
without one (tests/unit/test_scaling_report.py)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True, kw_only=True)
class Target:
    """What issue 15 asks of a stage: a rate at least ``value`` (per second), or a time at
    most ``value`` times its anchor's."""

    kind: Literal["rate", "ratio"]
    value: float

    def describe(self, unit: str) -> str:
        if self.kind == "rate":
            return f">= {self.value:,.0f} {unit}"
        return f"<= {self.value:g}x"


@dataclass(frozen=True, kw_only=True)
class Record:
    """One stage at one size. ``rows`` counts what the stage went through (rows, or events
    for drain and replay); the anchor is what a user would use instead, timed in the same
    run. ``max_rss_kb`` is the peak memory of the stage's own process (None: the stage is
    part of a process whose peak is on another record, e.g. the stages of one restore)."""

    scale: int
    stage: str
    rows: int
    seconds: float
    unit: str = "rows/s"
    anchor: str | None = None
    anchor_seconds: float | None = None
    target: Target | None = None
    max_rss_kb: int | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    @property
    def ratio(self) -> float | None:
        if self.anchor_seconds is None or self.anchor_seconds <= 0:
            return None
        return self.seconds / self.anchor_seconds

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.target.kind == "rate":
            return self.rate >= self.target.value
        ratio = self.ratio
        return None if ratio is None else ratio <= self.target.value

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(rate=self.rate, ratio=self.ratio, met=self.met)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Record:
        fields = {k: v for k, v in data.items() if k not in ("rate", "ratio", "met")}
        if fields.get("target") is not None:
            fields["target"] = Target(**fields["target"])
        return Record(**fields)


HEADER = ("stage", "rows", "time s", "rate /s", "anchor s", "ratio", "target", "met?", "RSS MB")
RSS_LIMIT_KB = 1024 * 1024  # issue 15: peak memory of any command under 1 GB


def _cells(record: Record) -> tuple[str, ...]:
    ratio = record.ratio
    met = {True: "yes", False: "NO", None: ""}[record.met]
    return (
        record.stage,
        f"{record.rows:,}",
        f"{record.seconds:.2f}",
        f"{record.rate:,.0f}",
        "" if record.anchor_seconds is None else f"{record.anchor_seconds:.2f}",
        "" if ratio is None else f"{ratio:.2f}x",
        "" if record.target is None else record.target.describe(record.unit),
        met,
        "" if record.max_rss_kb is None else f"{record.max_rss_kb / 1024:.0f}",
    )


def render_table(records: list[Record]) -> str:
    """The one table: a line per stage and size, columns aligned, then the memory lines."""
    rows = [HEADER, *(_cells(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    rule = "  ".join("-" * w for w in widths)
    lines = [_line(HEADER, widths), rule]
    for number, record in enumerate(records):
        if number and record.scale != records[number - 1].scale:
            lines.append(rule)  # one block per size
        lines.append(_line(rows[number + 1], widths))
    return "\n".join([*lines, *memory_lines(records)])


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    """Names and targets to the left, figures to the right."""
    placed = [
        c.ljust(w) if i in (0, 6) else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(placed).rstrip()


def memory_lines(records: list[Record]) -> list[str]:
    """Issue 15's memory target: every command under 1 GB, and each command's peak the
    same within 20% from 1M to 10M rows (scale 10 to 100)."""
    peaks: dict[int, dict[str, int]] = {}
    for r in records:
        if r.max_rss_kb is not None:
            peaks.setdefault(r.scale, {})[r.stage] = r.max_rss_kb
    lines = []
    for scale, by_stage in sorted(peaks.items()):
        stage, peak = max(by_stage.items(), key=lambda item: item[1])
        verdict = "yes" if peak < RSS_LIMIT_KB else "NO"
        lines.append(
            f"scale {scale}: largest peak memory {peak / 1024:.0f} MB ({stage}); < 1 GB: {verdict}"
        )
    if 10 in peaks and 100 in peaks:
        grown = [
            f"{stage} {peaks[10][stage] / 1024:.0f} -> {kb / 1024:.0f} MB"
            for stage, kb in peaks[100].items()
            if stage in peaks[10] and kb > 1.2 * peaks[10][stage]
        ]
        lines.append(
            "memory flat from 1M to 10M rows (within 20%): "
            + ("yes" if not grown else "NO: " + ", ".join(grown))
        )
    return lines


def write_json(path: Path, records: list[Record], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "records": [r.as_json() for r in records]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def read_json(path: Path) -> tuple[list[Record], dict[str, Any]]:
    payload = json.loads(path.read_text())
    return [Record.from_json(r) for r in payload["records"]], payload["meta"]


def plot(records: list[Record], path: Path) -> None:
    """Time per stage against rows, log-log, PostgreSQL and SQLite side by side: nkdaemon
    solid, each anchor dashed (drawn once where two stages share it). matplotlib is
    imported here only: it is the `bench` extra, not a dependency of nkdaemon."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib, which nkdaemon itself does not: "
            "pip install 'nkdaemon[bench]' (or pip install matplotlib), then run again"
        ) from None
    panels = {
        "PostgreSQL source": [r for r in records if not r.stage.startswith("sqlite")],
        "SQLite source": [r for r in records if r.stage.startswith("sqlite")],
    }
    panels = {title: found for title, found in panels.items() if found}
    figure, axes_list = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6), squeeze=False)
    for axes, (title, found) in zip(axes_list[0], panels.items(), strict=True):
        _panel(axes, title, found, plt.get_cmap("tab10"))
    figure.suptitle("nkdaemon (solid) beside what a user would use instead (dashed)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(axes: Any, title: str, records: list[Record], colours: Any) -> None:
    drawn: set[str] = set()
    for number, stage in enumerate(dict.fromkeys(r.stage for r in records)):
        points = sorted((r for r in records if r.stage == stage), key=lambda r: r.rows)
        colour = colours(number % 10)
        axes.plot(
            [r.rows for r in points], [r.seconds for r in points], "o-", color=colour, label=stage
        )
        anchored = [r for r in points if r.anchor is not None and r.anchor_seconds is not None]
        if anchored and anchored[0].anchor not in drawn:
            drawn.add(str(anchored[0].anchor))
            axes.plot(
                [r.rows for r in anchored],
                [r.anchor_seconds for r in anchored],
                "s--",
                color=colour,
                alpha=0.7,
                label=f"{anchored[0].anchor} (anchor)",
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel("rows (events for drain and replay)")
    axes.set_ylabel("seconds")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
