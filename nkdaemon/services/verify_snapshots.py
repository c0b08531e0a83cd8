"""The log between two snapshots checks itself; a restore to a snapshot's position too.

A snapshot is read from the source, not from the log, so it is evidence the log cannot
fake. For each pair of consecutive snapshots of one capture installation, earlier and
later, `verify` loads the earlier one into the restore validation's model (core
expectation: rows by natural key, references as entities), applies every logged
transaction after its position up to the later one's, and compares the result row for row
with the later snapshot's rows, whose digests must in the same pass equal the ones that
snapshot recorded in its own read of the source (core/digest.py). A lost, added or altered
transaction between the two — even one written with valid checksums — shows as a table
that differs, named with both snapshots. Memory: the model's key and hash per row, never a
copy of the rows.

`restore` uses ``digest_witness`` and ``cross_check``: when the restored state is exactly a
snapshot's position, the target's rows read back must fold to that snapshot's digests.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.digest import Digest, DigestFold
from nkdaemon.core.errors import NkdError
from nkdaemon.core.fold import LogFold, ReplayError
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.log import ChangeEvent
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.core.table_diff import TableDiff
from nkdaemon.repository.reader import AtMarker, transactions_between
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots, read_table

Pairs = Iterable[tuple[Any, Any]]


class Findings(Protocol):
    """Where results go (verify's report)."""

    problems: list[str]
    warnings: list[str]
    notes: list[str]


@dataclass(frozen=True, kw_only=True)
class _Pair:
    earlier: SnapshotInfo
    later: SnapshotInfo

    @property
    def label(self) -> str:
        return f"snapshots {self.earlier.id} -> {self.later.id}"


def verify_snapshot_chain(
    snapshots: Sequence[SnapshotInfo],
    log_store: SegmentLog,
    findings: Findings,
    *,
    logged_position: int | None,
) -> None:
    """Check each pair of snapshots through the log, and every snapshot's rows against
    the digests it recorded (on the way, or on their own for one no pair read whole)."""
    _Chain(log_store, findings, logged_position).run(snapshots)


class _Chain:
    def __init__(
        self, log_store: SegmentLog, findings: Findings, logged_position: int | None
    ) -> None:
        self.log_store = log_store
        self.findings = findings
        self.logged_position = logged_position
        self.checked: set[tuple[str, str]] = set()  # (snapshot, table) folded whole

    def run(self, snapshots: Sequence[SnapshotInfo]) -> None:
        for snapshot in snapshots:
            if snapshot.digests is None:
                self.findings.notes.append(
                    f"snapshot {snapshot.id} carries no digests (written by an earlier release)"
                )
        captured = [s for s in snapshots if s.imported is None]  # imports have no log between
        for earlier, later in itertools.pairwise(captured):
            pair = _Pair(earlier=earlier, later=later)
            try:
                self.pair(pair)
            except ReplayError as exc:
                self.findings.problems.append(
                    f"{pair.label}: the log after {earlier.id} cannot be applied to it: "
                    f"{exc.message}"
                )
            except NkdError as exc:  # damage the snapshot and log checks report themselves
                self.findings.warnings.append(f"{pair.label}: not compared ({exc.message})")
        for snapshot in snapshots:
            if snapshot.digests is not None:
                self.alone(snapshot)

    def alone(self, snapshot: SnapshotInfo) -> None:
        """Fold the tables no pair read whole, against their digests."""
        try:
            for file in snapshot.tables:
                if (snapshot.id, file.name) in self.checked:
                    continue
                fold = DigestFold()
                fold.add_all(_pairs(snapshot, file.name))
                self.digest(snapshot, file.name, fold)
        except NkdError as exc:
            self.findings.warnings.append(
                f"snapshot {snapshot.id}: digests not checked ({exc.message})"
            )

    def pair(self, pair: _Pair) -> None:
        earlier, later = pair.earlier, pair.later
        if earlier.installation != later.installation:
            self.findings.notes.append(
                f"{pair.label}: {later.id} is the baseline of another capture installation; "
                "the log is not compared across it"
            )
            return
        if later.position < earlier.position:
            self.findings.problems.append(
                f"{pair.label}: the later snapshot is at source position {later.position}, "
                f"before the earlier one's {earlier.position}"
            )
            return
        tables, skipped = _comparable(earlier, later)
        for name, why in skipped.items():
            self.findings.notes.append(f"{pair.label}: {name} not compared ({why})")
        expectation = LogFold([tables[n] for n in insert_order(list(tables.values())).tables])
        project = _projections(earlier, later, tables)
        self.load(earlier, expectation, project)
        applied, covered = _apply_log(pair, self.log_store, expectation, project)
        if not (covered or (self.logged_position or 0) >= later.position):
            self.findings.warnings.append(
                f"{pair.label}: not compared yet (the log does not reach source position "
                f"{later.position}; run `nkdaemon drain`)"
            )
            return
        differing = [d for d in self.compare(later, expectation, project) if not d.ok]
        for diff in differing:
            self.findings.problems.append(
                f"{pair.label}: the log between them does not reproduce {later.id}: "
                f"{diff.summary()}"
            )
        if not differing:
            self.findings.notes.append(
                f"{pair.label}: the {applied} logged transactions between them reproduce "
                f"{later.id} ({len(tables)} tables, row for row)"
            )

    def load(
        self, snapshot: SnapshotInfo, expectation: LogFold, project: Mapping[str, Projection]
    ) -> None:
        for name in expectation.tables():
            fold = DigestFold()
            for key, row in self.folding(snapshot, name, fold):
                expectation.load(name, *project[name](key, row))
            self.digest(snapshot, name, fold)
        expectation.finish_load()

    def compare(
        self, snapshot: SnapshotInfo, expectation: LogFold, project: Mapping[str, Projection]
    ) -> list[TableDiff]:
        diffs = []
        for name in expectation.tables():
            fold = DigestFold()
            rows = (project[name](k, r) for k, r in self.folding(snapshot, name, fold))
            diffs.append(expectation.compare(name, rows))
            self.digest(snapshot, name, fold)
        return diffs

    def folding(self, snapshot: SnapshotInfo, name: str, fold: DigestFold) -> Pairs:
        """The table's rows, folded into ``fold`` unless an earlier pass checked them."""
        if snapshot.digests is None or (snapshot.id, name) in self.checked:
            return _pairs(snapshot, name)
        return fold.passing(_pairs(snapshot, name))

    def digest(self, snapshot: SnapshotInfo, name: str, fold: DigestFold) -> None:
        """Compare one table's rows, folded as they were read whole, with its digest."""
        if snapshot.digests is None or (snapshot.id, name) in self.checked:
            return
        self.checked.add((snapshot.id, name))
        recorded = snapshot.digests.get(name)
        found = fold.result()
        if recorded != found:
            self.findings.problems.append(
                f"snapshot {snapshot.id}: the rows of {name} ({found.describe()}) do not match "
                "the digest recorded when it was taken "
                f"({recorded.describe() if recorded else 'none'})"
            )


def _comparable(
    earlier: SnapshotInfo, later: SnapshotInfo
) -> tuple[dict[str, TableSpec], dict[str, str]]:
    """The tables both snapshots hold with the same key, and why the others are left out."""
    before = {d["name"]: spec_from_json(d) for d in earlier.definitions}
    after = {d["name"]: spec_from_json(d) for d in later.definitions}
    tables: dict[str, TableSpec] = {}
    skipped: dict[str, str] = {}
    for name in sorted(set(before) | set(after)):
        if name not in before:
            skipped[name] = f"captured from {later.id} on"
        elif name not in after:
            skipped[name] = f"no longer captured in {later.id}"
        elif _key_shape(before[name]) != _key_shape(after[name]):
            skipped[name] = "its natural key changed between them"
        else:
            tables[name] = before[name]
    return tables, skipped


def _key_shape(spec: TableSpec) -> tuple[Any, ...]:
    return (
        spec.full_row_identity,
        tuple(
            (p.name, p.column, p.foreign_key and p.foreign_key.ref_table) for p in spec.key_parts
        ),
    )


Projection = Callable[[Any, Any], tuple[Any, Any]]


def _projections(
    earlier: SnapshotInfo, later: SnapshotInfo, tables: Mapping[str, TableSpec]
) -> dict[str, Projection]:
    """Per table, (key, row) -> (key, row) on the fields both snapshots' rows hold: a
    column added or dropped between them is left out of the comparison (the digests,
    folded over whole rows, are checked on their own)."""
    after = {d["name"]: spec_from_json(d) for d in later.definitions}
    out: dict[str, Projection] = {}
    for name, spec in tables.items():
        common = _fields(spec) & _fields(after[name])
        if common == _fields(spec) == _fields(after[name]):
            out[name] = _whole
        else:
            out[name] = _keeping(frozenset(common), spec.full_row_identity)
    return out


def _fields(spec: TableSpec) -> set[str]:
    references = {c for fk in spec.foreign_keys for c in fk.columns}
    plain = {
        c.name
        for c in spec.columns
        if c.name not in spec.surrogate_columns and c.name not in references
    }
    return plain | {fk.part_name for fk in spec.foreign_keys}


def _whole(key: Any, row: Any) -> tuple[Any, Any]:
    return key, row


def _keeping(fields: frozenset[str], whole_row_key: bool) -> Projection:
    def project(key: Any, row: Any) -> tuple[Any, Any]:
        kept = None if row is None else {f: v for f, v in row.items() if f in fields}
        if whole_row_key and key is not None:
            key = {f: v for f, v in key.items() if f in fields}
        return key, kept

    return project


def _pairs(snapshot: SnapshotInfo, name: str) -> Iterator[tuple[Any, Any]]:
    file = snapshot.table(name)
    if file is not None:
        for item in read_table(snapshot, file):
            yield item["k"], item["r"]


def _apply_log(
    pair: _Pair,
    log_store: SegmentLog,
    expectation: LogFold,
    project: Mapping[str, Projection],
) -> tuple[int, bool]:
    """Apply the transactions after the earlier snapshot up to the later one's position:
    (how many, whether the log is known to reach that position)."""
    earlier, later = pair.earlier, pair.later
    applied = 0
    replay = transactions_between(
        log_store,
        from_lsn=earlier.log_lsn,
        after=earlier.position,
        through=later.position,
        at_marker=AtMarker.REFUSE,  # between two snapshots of one installation: none may lie
    )
    for item in replay:
        events = (_project_event(e, project) for e in item.events if e.table in project)
        expectation.apply_transaction(events, where=f"log transaction {item.lsn}: ")
        applied += 1
    return applied, replay.passed_limit


def _project_event(event: ChangeEvent, project: Mapping[str, Projection]) -> ChangeEvent:
    projection = project[event.table]
    if projection is _whole or event.op == "T":
        return event
    key, row = projection(event.key, event.row)
    old_key = None if event.old_key is None else projection(event.old_key, None)[0]
    return dataclasses.replace(event, key=key, row=row, old_key=old_key)


# --- restore's cross-check ---------------------------------------------------------------


def digest_witness(snapshot: SnapshotInfo, position: int) -> SnapshotInfo | None:
    """The snapshot (of ``snapshot``'s installation, with digests) taken exactly at
    ``position``, if there is one: a restore ending there must reproduce its digests."""
    for other in reversed(list_snapshots(snapshot.path.parent)):
        if (
            other.position == position
            and other.installation == snapshot.installation
            and other.digests is not None
        ):
            return other
    return None


def cross_check(diff: TableDiff, witness: SnapshotInfo, found: Digest) -> None:
    """Mark ``diff`` as differing unless the restored rows fold to the witness's digest."""
    recorded = (witness.digests or {}).get(diff.table)
    if recorded is not None and recorded != found:
        diff.differing.append(
            f"the restored rows ({found.describe()}) do not match the digest snapshot "
            f"{witness.id} recorded at this source position ({recorded.describe()})"
        )
