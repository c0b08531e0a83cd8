"""Planning a restore: which snapshot, which part of the log, in which order to write.

Pure decisions; nothing here touches a file or a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nkdaemon.core.errors import UsageError
from nkdaemon.core.keys import ForeignKeySpec, TableSpec


@dataclass(frozen=True, kw_only=True)
class RestoreTime:
    """The instant to restore, as UTC, and whether the user gave no time zone."""

    moment: datetime
    assumed_utc: bool


def parse_time(text: str) -> RestoreTime:
    """ISO 8601; a time without zone is taken as UTC (the caller warns)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise UsageError(
            f"--at {text!r} is not an ISO 8601 time",
            hint="write e.g. 2026-11-26T09:30:00+01:00 or 2026-11-26T08:30:00Z",
        ) from None
    if moment.tzinfo is None:
        return RestoreTime(moment=moment.replace(tzinfo=UTC), assumed_utc=True)
    try:
        return RestoreTime(moment=moment.astimezone(UTC), assumed_utc=False)
    except OverflowError:
        raise UsageError(
            f"--at {text!r} lies outside the years 1 to 9999 once taken to UTC",
            hint="give a time between 0001-01-01 and 9999-12-31 in UTC",
        ) from None


@dataclass(frozen=True, kw_only=True)
class SnapshotChoice:
    id: str
    time: datetime
    position: int
    installation: str
    imported: bool = False  # made by import-legacy: a restore point only at its own instant


def choose_snapshot(
    snapshots: Sequence[SnapshotChoice], at: datetime, last_logged: datetime | None
) -> SnapshotChoice:
    """The newest snapshot at or before ``at``; refuses a time outside what the repository holds.

    An imported snapshot (an older backup brought in) is the state at its own instant only:
    nothing is known of the changes after it until captured history starts, so a time
    strictly between the two is refused."""
    if not snapshots:
        raise UsageError(
            "the repository holds no snapshot to restore from",
            hint="run `nkdaemon install` (it takes the baseline) or `nkdaemon snapshot`",
        )
    ordered = sorted(snapshots, key=lambda s: (s.time, s.position))
    exact = [s for s in ordered if s.imported and s.time == at]
    if exact:
        return exact[-1]
    captured = [s for s in ordered if not s.imported]
    newest_time = ordered[-1].time if not captured else captured[-1].time
    if last_logged is not None and captured:
        newest_time = max(newest_time, last_logged)
    candidates = [s for s in captured if s.time <= at]
    if candidates and at <= newest_time:
        return candidates[-1]
    imports = [s for s in ordered if s.imported and s.time < at]
    if imports and (not captured or at < captured[0].time):
        start = captured[0].time.isoformat() if captured else None
        raise UsageError(
            f"cannot restore to {at.isoformat()}: the newest restore point before it is the "
            f"imported snapshot at {imports[-1].time.isoformat()}, and "
            + (f"captured history starts at {start}" if start else "no history was captured")
            + "; nothing is known of the changes in between",
            hint=f"restore to exactly {imports[-1].time.isoformat()} (the imported state)"
            + (f", or to {start} or later" if start else ""),
        )
    raise UsageError(
        f"cannot restore to {at.isoformat()}: the repository covers "
        f"{ordered[0].time.isoformat()} to {newest_time.isoformat()}",
        hint="choose a time in that range, or --latest",
    )


@dataclass(frozen=True, kw_only=True)
class InsertOrder:
    """Tables in an order where every reference points backwards, except ``deferred``
    foreign keys (self-references and cycle breakers), which are set after the rows exist."""

    tables: tuple[str, ...]
    deferred: Mapping[str, tuple[ForeignKeySpec, ...]]


def insert_order(specs: Sequence[TableSpec]) -> InsertOrder:
    """Order tables by foreign keys; break cycles at nullable references.

    Key references can never be deferred (a row is found by its key), so a cycle through
    keys alone is an error the registry already refuses.
    """
    names = {s.name for s in specs}
    by_name = {s.name: s for s in specs}
    deferred: dict[str, list[ForeignKeySpec]] = {n: [] for n in names}
    edges: dict[str, set[str]] = {n: set() for n in names}
    for spec in specs:
        key_fks = {p.foreign_key.columns for p in spec.key_parts if p.foreign_key is not None}
        for fk in spec.foreign_keys:
            if fk.ref_table not in names:
                continue
            if fk.ref_table == spec.name and fk.columns not in key_fks:
                deferred[spec.name].append(fk)
            else:
                edges[spec.name].add(fk.ref_table)
    order: list[str] = []
    remaining = set(names)
    while remaining:
        ready = sorted(n for n in remaining if not (edges[n] & remaining))
        if not ready:
            ready = [_break_cycle(remaining, edges, by_name, deferred)]
            continue
        order.extend(ready)
        remaining -= set(ready)
    return InsertOrder(
        tables=tuple(order), deferred={n: tuple(v) for n, v in deferred.items() if v}
    )


def _break_cycle(
    remaining: set[str],
    edges: dict[str, set[str]],
    specs: Mapping[str, TableSpec],
    deferred: dict[str, list[ForeignKeySpec]],
) -> str:
    # only a reference inside a cycle can break it: a table that merely refers into a cycle
    # waits for it, with its references set as it is written
    cycle_of = _cycles(remaining, edges)
    for name in sorted(remaining):
        spec = specs[name]
        key_fks = {p.foreign_key.columns for p in spec.key_parts if p.foreign_key is not None}
        for fk in spec.foreign_keys:
            if fk in deferred[name] or fk.ref_table == name:
                continue  # deferred already, or a self-reference, which is no edge
            nullable = all(spec.column(c).nullable for c in fk.columns)
            cycle = cycle_of.get(name)
            if (
                cycle is not None
                and cycle_of.get(fk.ref_table) == cycle
                and fk.columns not in key_fks
                and nullable
            ):
                deferred[name].append(fk)
                if not any(
                    f.ref_table == fk.ref_table
                    for f in spec.foreign_keys
                    if f not in deferred[name]
                ):
                    edges[name].discard(fk.ref_table)
                return name
    tables = ", ".join(sorted(remaining))
    raise UsageError(
        f"the tables {tables} refer to each other through NOT NULL foreign keys, so no insert "
        "order works",
        hint="make one of those foreign keys nullable or DEFERRABLE in the target",
    )


def _cycles(remaining: set[str], edges: Mapping[str, set[str]]) -> dict[str, int]:
    """Table -> the number of the cycle (strongly connected component of more than one
    table) it is in, for the tables of ``remaining`` that are in one (Tarjan's algorithm,
    iterative, so a long chain of references cannot exhaust the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: dict[str, int] = {}
    counter = cycles = 0
    for root in sorted(remaining):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root] & remaining)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    if len(members) > 1:
                        cycles += 1
                        found.update(dict.fromkeys(members, cycles))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child] & remaining))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found
