"""End markers (repository/log_end.py): their names sort as the durable ends they record,
so the newest name a reader lists is the furthest end; and their bytes read back as the
end written, whatever the times' offsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.repository.log_end import decode_end, end_marker, furthest
from nkdaemon.repository.state import Checkpoint

MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)


@st.composite
def growing_ends(draw: st.DrawFn) -> list[Checkpoint]:
    """Durable ends as a drain records them: the lsn never goes back, nor complete_through
    (written in any UTC offset); an end may repeat an lsn with a later time."""
    ends: list[Checkpoint] = []
    lsn, offset = draw(st.integers(0, 10**6)), 16
    moment: datetime | None = draw(st.none() | MOMENTS)
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            step = draw(st.integers(1, 10**9))
            lsn, offset = lsn + step, offset + step
        if draw(st.booleans()) or moment is None:
            base = moment or datetime(2000, 1, 1, tzinfo=UTC)
            moment = base + timedelta(microseconds=draw(st.integers(1, 10**12)))
        shown = moment.astimezone(draw(OFFSETS)).isoformat()
        ends.append(
            Checkpoint(
                lsn=lsn, segment="0000000000000001.nkdlog", offset=offset, complete_through=shown
            )
        )
    return ends


@given(growing_ends())
def test_the_last_marker_name_is_the_furthest_end(ends: list[Checkpoint]) -> None:
    named = {end_marker(e)[0]: e for e in ends}
    newest = named[max(named)]
    decoded = [decode_end(name, end_marker(e)[1]) for name, e in named.items()]
    best = furthest(decoded)
    assert best is not None
    assert (newest.lsn, newest.offset) == (best.lsn, best.offset)
    assert newest.complete_through is not None and best.complete_through is not None
    assert datetime.fromisoformat(newest.complete_through) == datetime.fromisoformat(
        best.complete_through
    )


@given(growing_ends())
def test_a_marker_reads_back_as_the_end_it_records(ends: list[Checkpoint]) -> None:
    for end in ends:
        name, data = end_marker(end)
        assert name.startswith("ends/") and name.endswith(".json")
        read = decode_end(name, data)
        assert (read.lsn, read.segment, read.offset, read.complete_through) == (
            end.lsn,
            end.segment,
            end.offset,
            end.complete_through,
        )
        assert read.origin == f"log/{name}"
