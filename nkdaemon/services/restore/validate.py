"""Checking a restore before it commits: the target's rows, read back by natural key, against
what the snapshot and the log say (and a snapshot's digests taken at the same position)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Generic

from nkdaemon.core.digest import DigestFold
from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, TableSpec
from nkdaemon.core.log import LoggedTransaction
from nkdaemon.core.overlay import LogOverlay
from nkdaemon.core.partition_diff import PARTITIONS, compare_partitioned
from nkdaemon.core.ports import Address, RestoreTarget, TableT
from nkdaemon.core.restore_runs import Row
from nkdaemon.core.shapes import ShapeHistory, fold_in_shape
from nkdaemon.core.table_diff import TableDiff
from nkdaemon.core.values import lossless_as
from nkdaemon.repository.snapshots import SnapshotInfo, read_table, read_table_batches
from nkdaemon.services.restore.plan import RestoreReport
from nkdaemon.services.verify_snapshots import cross_check, digest_witness

RefValue = dict[str, object] | None
"""A reference read back: the natural key of the row it names (or, for a reference to a
row the target lacks, ``{"$missing": address}``); None when unset."""


class TargetRenderer(Generic[TableT]):
    """Reads target rows back as (natural key, payload), references named by natural key."""

    def __init__(
        self,
        target: RestoreTarget[TableT],
        tables: Mapping[str, TableT],
        converted: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self._target = target
        self._tables = tables
        self._converted = converted or {}
        self._keys: dict[str, dict[Address, NaturalKey | None]] = {}

    def _keys_of(self, name: str) -> dict[Address, NaturalKey | None]:
        if name not in self._keys:
            table = self._tables[name]
            self._keys[name] = {}
            for row in self._read_with_address(table):
                address, canonical = row
                self._keys[name][address] = self._key(table, canonical)
        return self._keys[name]

    def _read_with_address(self, table: TableT) -> Iterator[tuple[Address, Mapping[str, object]]]:
        for row in self._target.read(table):
            yield tuple(row.get(c) for c in table.primary_key), row

    def _ref(self, fk: ForeignKeySpec, row: Mapping[str, object]) -> RefValue:
        values = [row.get(c) for c in fk.columns]
        if any(v is None for v in values):
            return None
        if fk.by_natural_key:
            return dict(zip(fk.ref_columns, values, strict=True))
        ref = self._tables[fk.ref_table]
        by_ref = dict(zip(fk.ref_columns, values, strict=True))
        address = tuple(by_ref[c] for c in ref.primary_key)
        return self._keys_of(fk.ref_table).get(address, {"$missing": list(address)})

    def _key(self, table: TableT, row: Mapping[str, object]) -> NaturalKey | None:
        return None if table.spec.full_row_identity else self._natural_key(table, row)

    def _natural_key(self, table: TableT, row: Mapping[str, object]) -> NaturalKey:
        spec = table.spec
        return {
            p.name: row.get(p.column) if p.column is not None else self._ref(p.foreign_key, row)  # type: ignore[arg-type]
            for p in spec.key_parts
        }

    def rows(self, name: str) -> Iterator[tuple[NaturalKey, Row]]:
        table = self._tables[name]
        render = self._renderer(name)
        for row in self._target.read(table):  # no address: validation does not need it
            yield render(row)

    def rows_with_addresses(self, name: str) -> Iterator[tuple[Address, tuple[NaturalKey, Row]]]:
        render = self._renderer(name)
        for address, row in self._read_with_address(self._tables[name]):
            yield address, render(row)

    def _renderer(self, name: str) -> Callable[[Mapping[str, object]], tuple[NaturalKey, Row]]:
        """Renders one target row as (natural key, payload); what can be worked out once
        per table is (this runs for every row of a validation)."""
        table = self._tables[name]
        spec = table.spec
        fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
        wanted = [
            c.name
            for c in spec.columns
            if c.name not in spec.surrogate_columns and c.name not in fk_columns
        ]
        converted = [
            (c, spec.column(c).logical_type)
            for c in self._converted.get(name, ())
            if c in spec.column_index
        ]
        plain_key = [(p.name, p.column) for p in spec.key_parts if p.column is not None]
        nested = len(plain_key) != len(spec.key_parts)
        names: list[str] = []

        def render(row: Mapping[str, object]) -> tuple[NaturalKey, Row]:
            if converted:
                row = dict(row) | {c: lossless_as(t, row.get(c)) for c, t in converted}
            if not names:  # the columns the target has: the same in every row it reads
                names.extend(n for n in wanted if n in row)
            payload: Row = {n: row.get(n) for n in names}
            for fk in spec.foreign_keys:
                payload[fk.part_name] = self._ref(fk, row)
            if spec.full_row_identity:
                return payload, payload
            if nested:
                return self._natural_key(table, row), payload
            return {part: row.get(column) for part, column in plain_key}, payload

        return render


def overlay_of(
    snapshot: SnapshotInfo,
    specs: Sequence[TableSpec],
    transactions: Iterator[LoggedTransaction],
    in_play: Collection[str],
) -> tuple[LogOverlay, int]:
    """The log after ``snapshot`` folded over the rows it touched only (the snapshot is
    streamed later, table by table), and the source position it reaches."""
    overlay = LogOverlay(specs)
    position = snapshot.position
    for tx in transactions:
        overlay.apply_transaction(
            (e for e in tx.events if e.table in in_play),
            where=f"log transaction {tx.lsn}: ",
        )
        position = tx.position
    return overlay, position


def shaped_expectation(
    snapshot: SnapshotInfo,
    shapes: ShapeHistory,
    specs: Sequence[TableSpec],
    transactions: Iterator[LoggedTransaction],
) -> tuple[LogFold, int]:
    """What the snapshot and the log say the tables hold at the instant, in its shape and
    narrowed to ``specs`` (the columns the target's tables have, NULL where the log gave
    none: as the target reads them back), and the source position they reach."""
    reached = {"position": snapshot.position}

    def counted() -> Iterator[LoggedTransaction]:
        for tx in transactions:
            reached["position"] = tx.position
            yield tx

    expectation, _walk = fold_in_shape(
        shapes,
        snapshot_rows(snapshot, shapes.start),
        counted(),
        specs=specs,
        keep_rows=False,
        fill_lacking=True,
    )
    return expectation, reached["position"]


def snapshot_rows(
    snapshot: SnapshotInfo, tables: Iterable[str]
) -> Iterator[tuple[str, NaturalKey, Row]]:
    """(table, key, row) of the snapshot's rows of ``tables``."""
    for name in tables:
        file = snapshot.table(name)
        if file is not None:
            for item in read_table(snapshot, file):
                yield name, item["k"], item["r"]


def validate_streamed(
    *,
    target: RestoreTarget[TableT],
    tables: Mapping[str, TableT],
    order: Sequence[str],
    selected: Collection[str],
    overlay: LogOverlay,
    snapshot: SnapshotInfo,
    position: int,
    report: RestoreReport,
    witness: bool = True,
    partitions: int = PARTITIONS,
) -> None:
    """Compare each selected table of the target with the snapshot and the log's changes
    over it, in memory that does not grow with the table (core/partition_diff.py), into
    the report (and, with ``witness``, with the digests of a snapshot taken at the same
    position)."""
    found = digest_witness(snapshot, position) if witness else None
    renderer = TargetRenderer(target, tables, report.converted_columns)
    for name in (n for n in order if n in selected):
        fold = DigestFold()

        def expected(name: str = name) -> Iterator[tuple[NaturalKey, Row]]:
            return overlay.expected_rows(name, _snapshot_pairs(snapshot, name))

        def actual(name: str = name) -> Iterator[tuple[NaturalKey, Row]]:
            return renderer.rows(name)

        diff = compare_partitioned(
            name,
            keyless=tables[name].spec.full_row_identity,
            expected=expected,
            actual=actual,
            partitions=partitions,
            witness=fold if found else None,
        )
        _judge(diff, tables[name].rows_before, found, fold, report)


def _snapshot_pairs(snapshot: SnapshotInfo, name: str) -> Iterator[tuple[NaturalKey, Row]]:
    """(key, row) of the snapshot's rows of one table (one generator: this runs per row)."""
    file = snapshot.table(name)
    if file is not None:
        for batch in read_table_batches(snapshot, file):
            for item in batch:
                yield item["k"], item["r"]


def _judge(
    diff: TableDiff,
    rows_before: int,
    found: SnapshotInfo | None,
    fold: DigestFold,
    report: RestoreReport,
) -> None:
    """Into the report: rows only a seeded target had are counted, left alone (unless
    pruned); otherwise the digest witness, if there is one, must agree."""
    if diff.unexpected and rows_before:
        report.target_only[diff.table] = len(diff.unexpected)
        diff.actual -= len(diff.unexpected)
        diff.unexpected = []
    elif found is not None:
        cross_check(diff, found, fold.result())
        report.cross_checked = found.id
    report.diffs.append(diff)


def validate(
    *,
    target: RestoreTarget[TableT],
    tables: Mapping[str, TableT],
    order: Sequence[str],
    selected: Collection[str],
    expectation: LogFold,
    snapshot: SnapshotInfo,
    position: int,
    report: RestoreReport,
    witness: bool = True,
) -> None:
    """Compare each selected table of the target with the expectation, into the report
    (and, with ``witness``, with the digests of a snapshot taken at the same position)."""
    # a snapshot taken at exactly this position: evidence read from the source
    found = digest_witness(snapshot, position) if witness else None
    renderer = TargetRenderer(target, tables, report.converted_columns)
    for name in (n for n in order if n in selected):
        fold = DigestFold()
        rows = renderer.rows(name)
        diff = expectation.compare(name, fold.passing(rows) if found else rows)
        _judge(diff, tables[name].rows_before, found, fold, report)
