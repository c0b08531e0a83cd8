"""Retention decisions (core/retention.py), over generated repositories and policies.

The property that matters: after deleting what the plan says, every instant the policy
retains still has a snapshot at or before it and every log transaction after that snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.errors import UsageError
from nkdaemon.core.retention import (
    PrunePlan,
    RetentionPolicy,
    SegmentEntry,
    SnapshotEntry,
    plan_prune,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def repositories(draw: st.DrawFn) -> tuple[list[SnapshotEntry], list[SegmentEntry], datetime]:
    """Snapshots at growing times and log positions; segments covering the log in order."""
    sizes = draw(st.lists(st.integers(0, 5), min_size=1, max_size=8))  # transactions each
    segments, lsn = [], 0
    for number, size in enumerate(sizes):
        first = lsn + 1 if size else None
        lsn += size
        segments.append(
            SegmentEntry(name=f"{number:04d}", first_lsn=first, last_lsn=lsn if size else None)
        )
    hours = draw(st.lists(st.integers(0, 24 * 30), min_size=0, max_size=8, unique=True))
    positions = sorted(
        draw(st.lists(st.integers(0, lsn), min_size=len(hours), max_size=len(hours)))
    )
    snapshots = [
        SnapshotEntry(id=f"s{h:05d}", time=START + timedelta(hours=h), log_lsn=p)
        for h, p in zip(sorted(hours), positions, strict=True)
    ]
    now = START + timedelta(hours=draw(st.integers(max(hours, default=0), 24 * 40)))
    return snapshots, segments, now


def _deleted(plan: PrunePlan, kind: str) -> set[str]:
    return {d.name for d in plan.deletions if d.kind == kind}


def _policy(keep_snapshots: int | None, keep_days: float | None) -> RetentionPolicy:
    if keep_snapshots is None and keep_days is None:
        keep_snapshots = 1
    return RetentionPolicy(keep_snapshots=keep_snapshots, keep_days=keep_days)


@given(
    repositories(),
    st.none() | st.integers(1, 6),
    st.none() | st.floats(0.5, 35),
)
def test_every_retained_instant_stays_restorable(
    repository: tuple[list[SnapshotEntry], list[SegmentEntry], datetime],
    keep_snapshots: int | None,
    keep_days: float | None,
) -> None:
    snapshots, segments, now = repository
    policy = _policy(keep_snapshots, keep_days)
    plan = plan_prune(snapshots, segments, policy, now)
    gone_snapshots, gone_segments = _deleted(plan, "snapshot"), _deleted(plan, "segment")
    kept = [s for s in snapshots if s.id not in gone_snapshots]
    assert set(plan.kept_snapshots) == {s.id for s in kept}
    assert set(plan.kept_segments) | gone_segments == {s.name for s in segments}
    assert not set(plan.kept_segments) & gone_segments
    if not snapshots:
        assert not plan.deletions
        return
    newest = max(snapshots, key=lambda s: s.time)
    assert newest in kept
    assert segments[-1].name not in gone_segments  # the one being appended
    if policy.keep_snapshots is not None:
        newest_n = sorted(snapshots, key=lambda s: s.time)[-policy.keep_snapshots :]
        assert all(s in kept for s in newest_n)
    # the instants the policy promises: from the oldest it keeps to now
    if policy.keep_days is not None:
        boundary = now - timedelta(days=policy.keep_days)
        had_base = [s for s in snapshots if s.time <= boundary]
        if had_base:  # instants from the boundary on had a base before; they still must
            assert any(s.time <= boundary for s in kept)
    base = min(kept, key=lambda s: s.time)
    assert plan.oldest_restorable == base.time
    # every transaction after the oldest kept snapshot is still in a kept segment
    for segment in segments:
        if segment.last_lsn is not None and segment.last_lsn > base.log_lsn:
            assert segment.name not in gone_segments
    # and what goes is really older: no deleted snapshot is newer than a kept one
    assert all(s.time <= base.time for s in snapshots if s.id in gone_snapshots)


def test_the_reasons_name_the_rule_and_the_snapshot_kept() -> None:
    snapshots = [
        SnapshotEntry(id=f"s{d}", time=START + timedelta(days=d), log_lsn=10 * d) for d in range(4)
    ]
    segments = [
        SegmentEntry(name="0001", first_lsn=1, last_lsn=10),
        SegmentEntry(name="0002", first_lsn=11, last_lsn=20),
        SegmentEntry(name="0003", first_lsn=21, last_lsn=35),
    ]
    plan = plan_prune(
        snapshots, segments, RetentionPolicy(keep_snapshots=2), START + timedelta(days=5)
    )
    assert plan.kept_snapshots == ("s2", "s3")
    assert [(d.kind, d.name) for d in plan.deletions] == [
        ("snapshot", "s0"),
        ("snapshot", "s1"),
        ("segment", "0001"),
        ("segment", "0002"),
    ]
    assert "keep_snapshots = 2" in plan.deletions[0].reason
    assert "s2" in plan.deletions[2].reason


def test_keep_days_keeps_the_snapshot_before_the_window_as_its_base() -> None:
    snapshots = [
        SnapshotEntry(id=f"s{d}", time=START + timedelta(days=d), log_lsn=d) for d in (0, 3, 6, 9)
    ]
    now = START + timedelta(days=10)
    plan = plan_prune(snapshots, [], RetentionPolicy(keep_days=5), now)
    # the window starts at day 5; day 5 is restored from the snapshot of day 3
    assert plan.kept_snapshots == ("s3", "s6", "s9")
    assert plan.oldest_restorable == START + timedelta(days=3)


@pytest.mark.parametrize(
    ("keep_snapshots", "keep_days", "message"),
    [(None, None, "no retention policy"), (0, None, "at least 1"), (None, 0, "more than 0")],
)
def test_a_policy_that_would_delete_everything_is_refused(
    keep_snapshots: int | None, keep_days: float | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        RetentionPolicy(keep_snapshots=keep_snapshots, keep_days=keep_days)
