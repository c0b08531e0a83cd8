"""The scaling benchmark's table, verdicts, JSON and bulk-update plan (benchmarks/scaling.py),
without a database: a wrong verdict here would publish a target as met when it is not."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _scaling_report import Record, Target, memory_lines, read_json, render_table, write_json
from scaling import BULK_STATEMENT_ROWS, update_ranges

RATE = Target(kind="rate", value=50_000)
RATIO = Target(kind="ratio", value=2)


def _rate(events: int, seconds: float) -> Record:
    return Record(scale=10, stage="drain", rows=events, seconds=seconds, target=RATE)


def _ratio(seconds: float, anchor: float) -> Record:
    return Record(
        scale=10,
        stage="snapshot",
        rows=1_000_000,
        seconds=seconds,
        anchor="pg_dump -Fc",
        anchor_seconds=anchor,
        target=RATIO,
        max_rss_kb=80 * 1024,
    )


def test_a_rate_target_is_met_at_the_rate_and_not_below_it() -> None:
    assert _rate(100_000, 2.0).met is True
    assert _rate(99_999, 2.0).met is False


def test_a_ratio_target_compares_the_time_with_its_anchor() -> None:
    assert _ratio(2.0, 1.0).met is True
    assert _ratio(2.01, 1.0).met is False
    assert Record(scale=1, stage="x", rows=1, seconds=1.0, target=RATIO).met is None  # no anchor


def test_the_table_prints_every_stage_with_its_verdict_and_memory() -> None:
    table = render_table([_rate(200_000, 2.0), _ratio(30.0, 1.0)])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["stage", "rows", "time"]
    assert "100,000" in lines[2] and lines[2].split()[-1] == "yes"
    assert "30.00x" in lines[3] and lines[3].split()[-2:] == ["NO", "80"]
    assert "largest peak memory 80 MB (snapshot); < 1 GB: yes" in table


def test_memory_that_grows_more_than_a_fifth_from_1m_to_10m_rows_is_flagged() -> None:
    def at(scale: int, mb: int) -> Record:
        return Record(scale=scale, stage="install", rows=scale, seconds=1.0, max_rss_kb=mb * 1024)

    assert memory_lines([at(10, 100), at(100, 120)])[-1].endswith("yes")
    assert "NO: install 100 -> 121 MB" in memory_lines([at(10, 100), at(100, 121)])[-1]
    assert "< 1 GB: NO" in memory_lines([at(100, 1100)])[0]


def test_the_json_gives_back_the_same_table(tmp_path: Path) -> None:
    records = [_rate(200_000, 2.0), _ratio(30.0, 1.0)]
    write_json(tmp_path / "scaling.json", records, {"cores": 2})
    again, meta = read_json(tmp_path / "scaling.json")
    assert again == records and meta == {"cores": 2}


@given(scale=st.integers(1, 30), events=st.integers(0, 5_000_000))
def test_the_bulk_updates_make_exactly_the_events_asked_for(scale: int, events: int) -> None:
    rows = scale * 100_000  # pgbench_accounts at this scale
    ranges = update_ranges(rows, events)
    assert sum(high - low for low, high in ranges) == events
    for low, high in ranges:
        assert 0 <= low < high <= rows
        assert high - low <= BULK_STATEMENT_ROWS
