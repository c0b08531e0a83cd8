"""Prune over generated timelines (hypothesis), at the service level, on real folders:
snapshots written by SnapshotWriter, segments as files named by their first transaction,
log/end.json, and for a spool a replication record of what the bucket holds.

Whatever the timeline and policy: prune deletes exactly its plan's deletions and nothing
else, a dry run deletes nothing and plans the same, the newest snapshot, the durable end's
segment and what follows it and end.json stay, no kept snapshot loses any of the log after
it, each rule's snapshots stay, and a spool deletes only what the bucket holds.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.retention import RetentionPolicy
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import write_end
from nkdaemon.repository.log_format import segment_header, segment_name
from nkdaemon.repository.snapshots import SnapshotWriter, list_snapshots
from nkdaemon.repository.state import Checkpoint
from nkdaemon.services.prune import local_side, prune
from nkdaemon.services.replicate import PROGRESS_FILE, Progress

START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def timelines(draw: st.DrawFn) -> dict[str, object]:
    steps = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
    firsts = [1]
    for step in steps[:-1]:
        firsts.append(firsts[-1] + step)
    last_lsn = firsts[-1] + steps[-1] - 1
    end_index = draw(st.integers(max(0, len(firsts) - 2), len(firsts) - 1))
    count = draw(st.integers(1, 6))
    hours = sorted(
        draw(st.lists(st.integers(0, 24 * 20), min_size=count, max_size=count, unique=True))
    )
    lsns = sorted(draw(st.lists(st.integers(0, last_lsn), min_size=count, max_size=count)))
    policy = draw(
        st.tuples(st.none() | st.integers(1, 5), st.none() | st.floats(0.05, 15)).filter(
            lambda p: p != (None, None)
        )
    )
    return {
        "firsts": firsts,
        "end_index": end_index,
        "snapshots": list(zip(hours, lsns, strict=True)),
        "policy": RetentionPolicy(keep_snapshots=policy[0], keep_days=policy[1]),
        "now_hours": hours[-1] + draw(st.integers(0, 48)),
        "replicated": draw(st.booleans()),
        "uploaded": draw(st.sets(st.integers(0, 16))),
    }


def build(root: Path, timeline: dict[str, object]) -> None:
    firsts: list[int] = timeline["firsts"]  # type: ignore[assignment]
    log = root / "log"
    log.mkdir(parents=True)
    for first in firsts:
        (log / segment_name(first)).write_bytes(segment_header())
    end = segment_name(firsts[timeline["end_index"]])  # type: ignore[index]
    write_end(LocalStore(log), Checkpoint(lsn=1, segment=end, offset=16))
    ids = []
    for position, (hours, lsn) in enumerate(timeline["snapshots"]):  # type: ignore[arg-type]
        writer = SnapshotWriter(
            root / "snapshots", time=START + timedelta(hours=hours), position=position
        )
        ids.append(
            writer.commit(installation="i", log_lsn=lsn, dialect="sqlite", definitions=[]).id
        )
    if timeline["replicated"]:
        names = [segment_name(f) for f in firsts]
        uploaded: set[int] = timeline["uploaded"]  # type: ignore[assignment]
        progress = Progress(
            whole=tuple(n for i, n in enumerate(names) if i in uploaded),
            snapshots=tuple(s for i, s in enumerate(ids) if i + 8 in uploaded),
        )
        (root / PROGRESS_FILE).write_bytes(progress.as_json())


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@settings(max_examples=150, deadline=None)
@given(timelines())
def test_prune_deletes_only_what_its_plan_releases_and_keeps_every_restore_point(
    timeline: dict[str, object],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, timeline)
        check(root, timeline)


def check(root: Path, timeline: dict[str, object]) -> None:
    policy: RetentionPolicy = timeline["policy"]  # type: ignore[assignment]
    now = START + timedelta(hours=timeline["now_hours"])  # type: ignore[arg-type]
    replicated = bool(timeline["replicated"])
    before, snapshots = files(root), list_snapshots(root / "snapshots")
    side = local_side(root, replicated=replicated)
    (dry,) = prune([side], policy, now, dry_run=True)
    assert files(root) == before
    (done,) = prune([side], policy, now, dry_run=False)
    assert done.plan == dry.plan and done.held == dry.held

    gone = {d.name for d in done.plan.deletions}
    expected = {
        f
        for f in before
        if not any(f.startswith(f"snapshots/{n}/") or f == f"log/{n}" for n in gone)
    }
    assert files(root) == expected, "exactly the plan's deletions"
    left = list_snapshots(root / "snapshots")
    assert left and left[-1].id == snapshots[-1].id, "the newest snapshot stays"
    firsts: list[int] = timeline["firsts"]  # type: ignore[assignment]
    end_index: int = timeline["end_index"]  # type: ignore[assignment]
    for first in firsts[end_index:]:
        assert (root / "log" / segment_name(first)).exists()
    assert (root / "log" / "end.json").exists()
    oldest = min(s.log_lsn for s in left)
    for i, first in enumerate(firsts[:-1]):
        if segment_name(first) in gone:
            assert firsts[i + 1] - 1 <= oldest, "a kept snapshot lost log after it"
    kept_ids = [s.id for s in left]
    if policy.keep_snapshots is not None:
        assert [s.id for s in snapshots[-policy.keep_snapshots :]] == kept_ids[
            -min(policy.keep_snapshots, len(snapshots)) :
        ]
    if policy.keep_days is not None:
        boundary = now - timedelta(days=policy.keep_days)
        base = [s for s in snapshots if s.moment <= boundary]
        if base:
            assert base[-1].id in kept_ids, "the snapshot a window's first instant needs"
    if replicated:
        progress = (root / PROGRESS_FILE).read_text()
        for name in gone:
            assert f'"{name}"' in progress, (
                f"{name} deleted from the spool before the bucket had it"
            )
