"""Prune: delete what no retained restore point needs ([retention], core/retention).

A repository is pruned as one or two copies (``PruneSide``): the local repository, or the
spool and the bucket it is replicated to. Each copy is planned from what that copy holds
(core/retention.plan_prune), and only the plan's deletions are made, in an order that
keeps every state in between restorable:

1. snapshots, oldest first, each manifest first (repository/snapshots.delete_snapshot):
   a half-deleted snapshot has no manifest, so no reader takes it for a whole one;
2. then segments, oldest first: every snapshot left by step 1 starts after them.

Never deleted: the newest snapshot, anything after it, the segment holding the durable
end (the open one) and anything after it, ``log/end.json`` of a local repository, the
newest end markers of a bucket (older ones go, as the replicator deletes them: see
repository/log_end), imported snapshots (the repository is their only copy). A spool
replicated to a bucket gives up only what the bucket already holds
(``replication.json``); a segment is then kept while any snapshot older than it is kept,
so a kept snapshot never loses the log after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import structlog

from nkdaemon.core.ports import RepositoryStore
from nkdaemon.core.retention import (
    Deletion,
    PrunePlan,
    RetentionPolicy,
    SegmentEntry,
    SnapshotEntry,
    plan_prune,
)
from nkdaemon.repository.bucket_layout import PIECES, BucketLog, Within, bucket_snapshots
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import KEEP_ENDS, read_end, surplus_ends
from nkdaemon.repository.log_format import SUFFIX
from nkdaemon.repository.snapshots import SnapshotInfo, delete_snapshot, list_snapshots
from nkdaemon.services.replicate import load_progress, spool_end

log = structlog.get_logger("nkdaemon.prune")

NOT_IN_BUCKET = "kept in the spool: the bucket does not hold it yet"
REMAINS = "the files of a snapshot whose removal was interrupted (its manifest is gone)"


@dataclass(frozen=True, kw_only=True)
class PruneSide:
    """One copy of a repository: ``where`` names it in output ("repository", "spool",
    "bucket"); ``log`` lists its segments; ``end_segment`` holds its durable end;
    ``releasable`` says whether a deletion may be made in this copy."""

    where: str
    snapshots: RepositoryStore
    log: RepositoryStore
    end_segment: str | None
    delete_segment: Callable[[str], None]
    releasable: Callable[[Deletion], bool] = lambda _deletion: True
    ends: RepositoryStore | None = None  # a bucket's log folder: its surplus end markers go


@dataclass(frozen=True, kw_only=True)
class PruneResult:
    """What prune decided for one copy: ``plan`` (its deletions are the ones made, or
    with ``dry_run`` the ones that would be) and ``held``: what retention releases but
    this copy keeps (see PruneSide.releasable)."""

    where: str
    plan: PrunePlan
    held: tuple[Deletion, ...]
    dry_run: bool
    # files of snapshots whose removal was interrupted (no manifest), older than the kept
    remains: tuple[Deletion, ...] = ()
    # a bucket's end markers that newer ones supersede (and an older release's end.json)
    ends: tuple[Deletion, ...] = ()


def local_side(path: Path, *, replicated: bool, where: str = "repository") -> PruneSide:
    """The repository (or spool) at ``path``; ``replicated``: it is a spool whose deletions
    must already be in the bucket."""
    store = LocalStore(path)
    end = spool_end(path)
    return PruneSide(
        where=where,
        snapshots=LocalStore(path / "snapshots"),
        log=LocalStore(path / "log"),
        end_segment=None if end is None else end.segment,
        delete_segment=lambda name: store.delete(f"log/{name}"),
        releasable=_in_bucket(store) if replicated else lambda _deletion: True,
    )


def bucket_side(bucket: RepositoryStore) -> PruneSide:
    """The repository in a bucket (docs/FORMAT.md, "The repository in a bucket")."""
    log_store = BucketLog(bucket)
    end = read_end(log_store)

    def delete_segment(name: str) -> None:
        bucket.delete(f"log/{name}")
        for piece in bucket.list(f"{PIECES}/{name}/"):
            bucket.delete(piece)

    return PruneSide(
        where="bucket",
        snapshots=bucket_snapshots(bucket),
        log=log_store,
        end_segment=None if end is None else end.segment,
        delete_segment=delete_segment,
        ends=Within(bucket, "log/"),
    )


def prune(
    sides: Sequence[PruneSide], policy: RetentionPolicy, now: datetime, *, dry_run: bool
) -> list[PruneResult]:
    """Plan each copy and, unless ``dry_run``, delete what its plan releases."""
    results = []
    for side in sides:
        listed = list_snapshots(side.snapshots)
        snapshots = [s for s in listed if s.imported is None]
        plan, held = plan_side(side, snapshots, policy, now)
        remains = _remains(side, listed, plan)
        ends = _surplus_ends(side)
        if not dry_run:
            _delete(side, plan, snapshots)
            _delete_remains(side, remains)
            _delete_ends(side, ends)
        results.append(
            PruneResult(
                where=side.where,
                plan=plan,
                held=held,
                dry_run=dry_run,
                remains=remains,
                ends=ends,
            )
        )
    return results


def plan_side(
    side: PruneSide, snapshots: Sequence[SnapshotInfo], policy: RetentionPolicy, now: datetime
) -> tuple[PrunePlan, tuple[Deletion, ...]]:
    """The plan for one copy, less what it may not release, and what that holds back."""
    entries = [SnapshotEntry(id=s.id, time=s.moment, log_lsn=s.log_lsn) for s in snapshots]
    plan = plan_prune(entries, segment_entries(side), policy, now)
    held_snapshots = {
        d.name for d in plan.deletions if d.kind == "snapshot" and not side.releasable(d)
    }
    # a kept snapshot needs every transaction after its log position
    bases = [e.log_lsn for e in entries if e.id in held_snapshots or e.id in plan.kept_snapshots]
    floor = min(bases, default=0)
    bounds = {s.name: s.last_lsn for s in segment_entries(side)}
    go, held = [], []
    for deletion in plan.deletions:
        if not side.releasable(deletion):
            held.append(replace(deletion, reason=NOT_IN_BUCKET))
        elif deletion.kind == "segment" and (bounds.get(deletion.name) or 0) > floor:
            why = f"kept: a kept snapshot starts at log position {floor}, before its end"
            held.append(replace(deletion, reason=why))
        else:
            go.append(deletion)
    return replace(
        plan,
        deletions=tuple(go),
        kept_snapshots=(*sorted(held_snapshots), *plan.kept_snapshots),
        kept_segments=(*(d.name for d in held if d.kind == "segment"), *plan.kept_segments),
    ), tuple(held)


def segment_entries(side: PruneSide) -> list[SegmentEntry]:
    """The copy's segments up to the one holding its durable end (the last one given to
    the plan, which never deletes it); each holds transactions up to the next one's name
    less one (a segment is named by its first record's number, and rolls between
    transactions)."""
    names = sorted(n for n in side.log.list() if n.endswith(SUFFIX))
    if side.end_segment is not None:
        names = [n for n in names if n <= side.end_segment]
    firsts = [int(n[: -len(SUFFIX)]) for n in names]
    return [
        SegmentEntry(
            name=name,
            first_lsn=first,
            last_lsn=firsts[i + 1] - 1 if i + 1 < len(names) else None,
        )
        for i, (name, first) in enumerate(zip(names, firsts, strict=True))
    ]


def _delete(side: PruneSide, plan: PrunePlan, snapshots: Sequence[SnapshotInfo]) -> None:
    by_id = {s.id: s for s in snapshots}
    for deletion in plan.deletions:  # the plan lists snapshots first, oldest first
        if deletion.kind == "snapshot":
            delete_snapshot(by_id[deletion.name])
        else:
            side.delete_segment(deletion.name)
        log.info(
            "prune.deleted",
            where=side.where,
            kind=deletion.kind,
            name=deletion.name,
            reason=deletion.reason,
        )


def _remains(
    side: PruneSide, listed: Sequence[SnapshotInfo], plan: PrunePlan
) -> tuple[Deletion, ...]:
    """Folders without a manifest older than the oldest kept snapshot: what an interrupted
    removal left (a snapshot being written or uploaded is newer than every whole one)."""
    if not plan.kept_snapshots:
        return ()
    oldest = min(plan.kept_snapshots)
    whole = {s.id for s in listed}
    folders = {name.split("/", 1)[0] for name in side.snapshots.list() if "/" in name}
    return tuple(
        Deletion(kind="snapshot", name=folder, reason=REMAINS)
        for folder in sorted(folders - whole)
        if folder < oldest
    )


def _delete_remains(side: PruneSide, remains: Sequence[Deletion]) -> None:
    for deletion in remains:
        for name in side.snapshots.list(f"{deletion.name}/"):
            side.snapshots.delete(name)
        log.info("prune.deleted_remains", where=side.where, name=deletion.name)


def _surplus_ends(side: PruneSide) -> tuple[Deletion, ...]:
    if side.ends is None:
        return ()
    why = f"superseded: a newer end marker records a further durable end ({KEEP_ENDS} kept)"
    return tuple(
        Deletion(kind="end marker", name=f"log/{name}", reason=why)
        for name in surplus_ends(side.ends)
    )


def _delete_ends(side: PruneSide, ends: Sequence[Deletion]) -> None:
    for deletion in ends:
        assert side.ends is not None, "only a side with end markers has surplus ones"
        side.ends.delete(deletion.name.removeprefix("log/"))
        log.info("prune.deleted", where=side.where, kind=deletion.kind, name=deletion.name)


def _in_bucket(spool: LocalStore) -> Callable[[Deletion], bool]:
    """Whether the bucket holds a deletion's object, by the spool's replication record."""
    progress = load_progress(spool)
    whole, uploaded = set(progress.whole), set(progress.snapshots)
    return lambda d: d.name in (uploaded if d.kind == "snapshot" else whole)
