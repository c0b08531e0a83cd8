"""Retention: which snapshots and log segments no retained restore point needs.

Pure decisions over what a repository lists; the prune service deletes what this returns
(and only that). The rule that keeps restores working: a restore of instant T starts from
the newest snapshot at or before T and replays the log after that snapshot's position, so
the retained snapshots are always the newest ones (a suffix in time), and a segment may go
only when every transaction in it is at or before the oldest retained snapshot's position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from nkdaemon.core.errors import UsageError


@dataclass(frozen=True, kw_only=True, slots=True)
class RetentionPolicy:
    """``keep_snapshots``: the newest N snapshots; ``keep_days``: every instant of the last
    D days stays restorable. With both, whatever either keeps is kept."""

    keep_snapshots: int | None = None
    keep_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep_snapshots is None and self.keep_days is None:
            raise UsageError(
                "no retention policy is configured, so nothing may be pruned",
                hint="set [retention] keep_snapshots = N and/or keep_days = D",
            )
        if self.keep_snapshots is not None and self.keep_snapshots < 1:
            raise UsageError(
                f"[retention] keep_snapshots = {self.keep_snapshots}: at least 1 is needed",
                hint="the newest snapshot is always kept; use keep_snapshots = 1 or more",
            )
        if self.keep_days is not None and self.keep_days <= 0:
            raise UsageError(
                f"[retention] keep_days = {self.keep_days}: it must be more than 0",
                hint="keep_days is how many days back every instant stays restorable",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotEntry:
    """A snapshot as retention sees it: its instant and the log position it contains."""

    id: str
    time: datetime
    log_lsn: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SegmentEntry:
    """A log segment and the transactions it holds (``last_lsn`` None: none yet)."""

    name: str
    first_lsn: int | None
    last_lsn: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Deletion:
    kind: Literal["snapshot", "segment", "end marker"]  # end marker: a bucket's (prune)
    name: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PrunePlan:
    kept_snapshots: tuple[str, ...]
    kept_segments: tuple[str, ...]
    deletions: tuple[Deletion, ...]
    # the oldest instant a restore can still reach after the prune (None: no snapshot)
    oldest_restorable: datetime | None

    @property
    def nothing_to_do(self) -> bool:
        return not self.deletions


def plan_prune(
    snapshots: Sequence[SnapshotEntry],
    segments: Sequence[SegmentEntry],
    policy: RetentionPolicy,
    now: datetime,
) -> PrunePlan:
    """What to delete so that ``policy`` still holds and nothing it retains breaks.

    ``segments`` are in log order. The newest snapshot, everything after it and the last
    segment (the one being appended) are never deleted.
    """
    ordered = sorted(snapshots, key=lambda s: (s.time, s.log_lsn, s.id))
    if not ordered:
        return PrunePlan(
            kept_snapshots=(),
            kept_segments=tuple(s.name for s in segments),
            deletions=(),
            oldest_restorable=None,
        )
    first_kept, why = _oldest_retained(ordered, policy, now)
    base = ordered[first_kept]
    deletions = [
        Deletion(
            kind="snapshot", name=s.id, reason=f"older than {base.id}, the oldest kept ({why})"
        )
        for s in ordered[:first_kept]
    ]
    kept_segments: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if not last and segment.last_lsn is not None and segment.last_lsn <= base.log_lsn:
            deletions.append(
                Deletion(
                    kind="segment",
                    name=segment.name,
                    reason=f"transactions {segment.first_lsn}..{segment.last_lsn} are all at or "
                    f"before snapshot {base.id} (log position {base.log_lsn}), the oldest kept",
                )
            )
        else:
            kept_segments.append(segment.name)
    return PrunePlan(
        kept_snapshots=tuple(s.id for s in ordered[first_kept:]),
        kept_segments=tuple(kept_segments),
        deletions=tuple(deletions),
        oldest_restorable=base.time,
    )


def _oldest_retained(
    ordered: Sequence[SnapshotEntry], policy: RetentionPolicy, now: datetime
) -> tuple[int, str]:
    """The index of the oldest snapshot any rule keeps, and the rule that keeps it."""
    candidates = [(len(ordered) - 1, "the newest snapshot is always kept")]
    if policy.keep_snapshots is not None:
        index = max(0, len(ordered) - policy.keep_snapshots)
        candidates.append((index, f"keep_snapshots = {policy.keep_snapshots}"))
    if policy.keep_days is not None:
        boundary = now - timedelta(days=policy.keep_days)
        # the newest snapshot at or before the boundary is the base for instants just after it
        at_or_before = [i for i, s in enumerate(ordered) if s.time <= boundary]
        index = at_or_before[-1] if at_or_before else 0
        candidates.append(
            (index, f"keep_days = {policy.keep_days:g} (restorable since {boundary.isoformat()})")
        )
    return min(candidates)
