"""Point-in-time restore into any database, all or nothing, in stages.

plan (which snapshot, which part of the log, which tables) -> load the snapshot and replay
the log inside one target transaction, reconnecting every reference by natural key ->
compare per-table counts and content with what the log says -> commit, or roll back and
say what differed. Rows are matched by natural key, so a target whose ids differ (or
whose reference data was seeded in another order) receives the right references.
"""

from __future__ import annotations

import contextlib
import json
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from cachetools import LRUCache

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.digest import DigestFold
from nkdaemon.core.errors import NkdError, UsageError
from nkdaemon.core.expectation import Expectation, TableDiff
from nkdaemon.core.keys import ForeignKeySpec, TableSpec
from nkdaemon.core.replay import NaturalState, shapes_of
from nkdaemon.core.restore_plan import (
    InsertOrder,
    SnapshotChoice,
    choose_snapshot,
    insert_order,
)
from nkdaemon.repository.reader import LoggedTransaction, LogMarker, read_log
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import (
    SnapshotInfo,
    TableFile,
    list_snapshots,
    read_table,
    read_table_batches,
)
from nkdaemon.services.verify_snapshots import cross_check, digest_witness
from nkdaemon.targets.postgres import PostgresTarget
from nkdaemon.targets.sqlite import SqliteTarget
from nkdaemon.targets.table import Address, TargetTable
from nkdaemon.targets.table import same_value as _same

log = structlog.get_logger("nkdaemon.restore")

CHUNK = 5000
WINDOW_EVENTS = 2000
Progress = Callable[[str, int], None]


class RestoreError(NkdError):
    """The restore could not be completed; the target was rolled back."""

    kind = "restore"


def _text(key: Any) -> str:
    """Canonical text of a natural key (cache and dictionary key).

    Decoded to str on purpose: orjson's bytes keep a 4 KiB allocation each, which made a
    200,000-entry cache cost 800 MB; the str is the key's own size."""
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


def _show(key: Any) -> str:
    return json.dumps(key, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, kw_only=True)
class RestorePlan:
    snapshot: SnapshotInfo
    at: datetime | None
    tables: tuple[TableSpec, ...]
    context: tuple[TableSpec, ...]
    transactions: int
    events: int
    first_lsn: int | None
    last_lsn: int | None
    snapshot_rows: int
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        when = "the latest logged state" if self.at is None else self.at.isoformat()
        lines = [
            f"restore {when}",
            f"  snapshot {self.snapshot.id} ({self.snapshot_rows} rows, source position "
            f"{self.snapshot.position})",
        ]
        if self.transactions:
            lines.append(
                f"  then {self.transactions} logged transactions ({self.events} events), "
                f"log {self.first_lsn}..{self.last_lsn}"
            )
        else:
            lines.append("  no logged transaction after the snapshot")
        lines.append(f"  tables: {', '.join(s.name for s in self.tables)}")
        return lines


@dataclass(kw_only=True)
class RestoreReport:
    plan: RestorePlan
    committed: bool = False
    rows_loaded: int = 0
    events_applied: int = 0
    target_only: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    diffs: list[TableDiff] = field(default_factory=list)
    referenced_rows_added: dict[str, int] = field(default_factory=dict)
    schema_notes: list[str] = field(default_factory=list)  # what --create-schema left out
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    cross_checked: str | None = None  # the snapshot whose digests the restored rows matched


def _choices(snapshots: Sequence[SnapshotInfo]) -> list[SnapshotChoice]:
    return [
        SnapshotChoice(
            id=s.id,
            time=s.moment,
            position=s.position,
            installation=s.installation,
            imported=s.imported is not None,
        )
        for s in snapshots
    ]


def plan_restore(
    *,
    snapshots_dir: Any,
    log_store: SegmentLog,
    at: datetime | None,
    last_logged: datetime | None,
    tables: Sequence[str] = (),
) -> RestorePlan:
    snapshots = list_snapshots(snapshots_dir)
    if at is None:
        if not snapshots:
            choose_snapshot([], datetime.now(UTC), last_logged)
        captured = [s for s in snapshots if s.imported is None]
        chosen = (captured or snapshots)[-1]
    else:
        picked = choose_snapshot(_choices(snapshots), at, last_logged)
        chosen = next(s for s in snapshots if s.id == picked.id)
    definitions = [spec_from_json(d) for d in chosen.definitions]
    by_name = {s.name: s for s in definitions}
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        raise UsageError(
            f"--table {', '.join(unknown)}: not captured in snapshot {chosen.id}",
            hint=f"tables there: {', '.join(sorted(by_name))}",
        )
    selected = tuple(by_name[t] for t in tables) if tables else tuple(definitions)
    names = {s.name for s in selected}
    count = events = 0
    first = last = None
    for tx in replay_range(log_store, chosen, at):
        count += 1
        events += sum(1 for e in tx.events if e["t"] in names)
        first = first or tx.lsn
        last = tx.lsn
    rows = sum(t.rows for t in chosen.tables if t.name in {s.name for s in selected})
    return RestorePlan(
        snapshot=chosen,
        at=at,
        tables=selected,
        context=tuple(definitions),
        transactions=count,
        events=events,
        first_lsn=first,
        last_lsn=last,
        snapshot_rows=rows,
    )


def replay_range(
    log_store: SegmentLog, snapshot: SnapshotInfo, at: datetime | None
) -> Iterator[LoggedTransaction]:
    """The logged transactions after a snapshot, up to ``at``, within its capture epoch
    (none after an imported snapshot: the log does not continue it)."""
    if snapshot.imported is not None:
        return
    limit = None if at is None else at.isoformat(timespec="microseconds")
    for item in read_log(log_store, from_lsn=max(1, snapshot.log_lsn)):
        if isinstance(item, LogMarker):
            if item.lsn <= snapshot.log_lsn:
                continue
            if item.kind == "epoch":
                return  # capture was re-installed: its baseline snapshot takes over
            raise RestoreError(
                f"the log lost transactions {item.payload['from_lsn']}..{item.payload['to_lsn']} "
                "after the chosen snapshot",
                hint="restore to a time before the gap, or after a snapshot taken after it",
            )
        if item.position <= snapshot.position:
            continue
        if limit is not None and _utc(item.commit_time) > limit:
            return
        yield item


def _utc(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds")


class _Resolver:
    """Natural key -> target address, through an LRU cache, in batches.

    Entries are per table generation: renaming or deleting rows of a table bumps its
    generation and that of every table whose keys contain its keys.

    A row deleted by the transaction in hand keeps its address until the transaction ends,
    for the keys of other rows that contain its key: a later event of the same transaction
    may still name it there (a PostgreSQL cascade logs the parent's delete before its
    children's). The row itself is not found any more (it may be inserted again).
    """

    def __init__(self, target: Any, tables: Mapping[str, TargetTable], size: int = 200_000) -> None:
        self._target = target
        self._tables = tables
        self._cache: LRUCache[tuple[str, int, str], Address] = LRUCache(maxsize=size)
        self._generation: dict[str, int] = dict.fromkeys(tables, 0)
        self._containers: dict[str, set[str]] = {name: set() for name in tables}
        self._gone: dict[tuple[str, str], Address] = {}
        for name, table in tables.items():
            for part in table.spec.key_parts:
                if part.foreign_key is not None and part.foreign_key.ref_table in self._containers:
                    self._containers[part.foreign_key.ref_table].add(name)

    def remember(self, table: str, key: Any, address: Address) -> None:
        self._cache[(table, self._generation[table], _text(key))] = address

    def forget(self) -> None:
        """Drop every cached address (the target's rows were rolled back to an earlier state)."""
        self._gone.clear()
        for name in self._generation:
            self._generation[name] += 1

    def deleted(self, table: str, found: Mapping[str, Address | None]) -> None:
        """These rows (key text -> address) were just deleted in the transaction in hand."""
        for text, address in found.items():
            if address is not None:
                self._gone[(table, text)] = address
        self.changed(table)

    def end_transaction(self) -> None:
        self._gone.clear()

    def changed(self, table: str) -> None:
        seen: set[str] = set()
        todo = [table]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            self._generation[name] += 1
            todo.extend(self._containers.get(name, ()))

    def key_values(self, table: str, keys: Sequence[Any]) -> list[tuple[Any, ...] | None]:
        """Each key as the values of the table's key columns (references as addresses)."""
        spec = self._tables[table].spec
        nested: dict[str, dict[str, Address | None]] = {}
        for part in spec.key_parts:
            if part.foreign_key is not None and not part.foreign_key.by_natural_key:
                nested[part.name] = self.resolve(
                    part.foreign_key.ref_table, [k[part.name] for k in keys], deleted_too=True
                )
        natural = {
            part.name: self.natural_reference_values(part.foreign_key, [k[part.name] for k in keys])
            for part in spec.key_parts
            if part.foreign_key is not None and part.foreign_key.by_natural_key
        }
        out: list[tuple[Any, ...] | None] = []
        for i, key in enumerate(keys):
            values: list[Any] = []
            for part in spec.key_parts:
                fk = part.foreign_key
                if fk is None:
                    assert part.column is not None
                    values.append(
                        self._target.param(self._tables[table], part.column, key[part.name])
                    )
                elif fk.by_natural_key:
                    held = natural[part.name][i]
                    if held is None:
                        values = []
                        break
                    values.extend(held)
                else:
                    address = nested[part.name].get(_text(key[part.name]))
                    if address is None:
                        values = []
                        break
                    values.extend(_fk_values(fk, self._tables[fk.ref_table], address))
            out.append(tuple(values) if values else None)
        return out

    def natural_reference_values(
        self, fk: ForeignKeySpec, keys: Sequence[Any]
    ) -> list[list[Any] | None]:
        """The column values of references by natural key: the referenced rows' key
        values, as the target holds them (a key part that is itself a reference becomes
        that row's address), or None where a part that is a reference is not found."""
        ref = self._tables[fk.ref_table]
        columns = _key_columns(ref.spec)
        out: list[list[Any] | None] = []
        for values in self.key_values(fk.ref_table, keys):
            if values is None:
                out.append(None)
                continue
            by_column = dict(zip(columns, values, strict=True))
            out.append([by_column[c] for c in fk.ref_columns])
        return out

    def resolve(
        self, table: str, keys: Sequence[Any], *, deleted_too: bool = False
    ) -> dict[str, Address | None]:
        """key text -> address (None when the target has no such row); ``deleted_too``:
        or had it until the transaction in hand deleted it."""
        generation = self._generation[table]
        result: dict[str, Address | None] = {}
        missing: dict[str, Any] = {}
        for key in keys:
            text = _text(key)
            address = self._cache.get((table, generation, text))
            if address is not None:
                result[text] = address
            elif text not in result:
                missing[text] = key
        if missing:
            texts = list(missing)
            values = self.key_values(table, [missing[t] for t in texts])
            columns = _key_columns(self._tables[table].spec)
            lookup = [v for v in values if v is not None]
            found = self._target.find(self._tables[table], columns, lookup) if lookup else {}
            for text, value in zip(texts, values, strict=True):
                address = found.get(value) if value is not None else None
                if address is not None:
                    self._cache[(table, generation, text)] = address
                elif deleted_too:  # the key as it was at this event
                    address = self._gone.get((table, text))
                result[text] = address
        return result


def _key_columns(spec: TableSpec) -> list[str]:
    columns: list[str] = []
    for part in spec.key_parts:
        if part.column is not None:
            columns.append(part.column)
        elif part.foreign_key is not None:
            columns.extend(part.foreign_key.columns)
    return columns


def _fk_values(fk: ForeignKeySpec, ref: TargetTable, address: Address) -> list[Any]:
    """Our foreign-key column values for a referenced row's address (its primary key)."""
    by_column = dict(zip(ref.primary_key, address, strict=True))
    return [by_column[c] for c in fk.ref_columns]


class Restorer:
    """Writes one plan into one target; see ``run``."""

    def __init__(
        self,
        *,
        plan: RestorePlan,
        target: Any,
        log_store: SegmentLog,
        progress: Progress | None = None,
    ) -> None:
        self.plan = plan
        self.target = target
        self.log_store = log_store
        self.progress = progress or (lambda stage, n: None)
        self.report = RestoreReport(plan=plan)
        self.refuse_missing_references = False
        self._tables: dict[str, TargetTable] = {}
        self._selected = {s.name for s in plan.tables}
        self._written: dict[str, set[Address]] = {}
        self._deferred: list[tuple[str, Address, ForeignKeySpec, Any]] = []
        # references waiting for their row (cycle breakers, forward references), by row
        self._late: dict[int, list[tuple[ForeignKeySpec, Any]]] = {}
        # only rows other tables refer to are worth remembering the address of
        self._referenced = {
            fk.ref_table for s in plan.context for fk in s.foreign_keys if not fk.by_natural_key
        }
        self._converter_cache: dict[tuple[str, tuple[str, ...]], list[tuple[str, Any]]] = {}
        self._order = InsertOrder(tables=(), deferred={})  # set once the target is known
        # with --table: the tables the selected ones refer to, directly or not; the rows
        # that the restored rows need are added to them where the target lacks them
        self._closure = referenced_tables(plan.context, self._selected)
        self._in_play = self._selected | self._closure
        self._merging = False
        self._fold_refusal = ""

    # --- stages -------------------------------------------------------------------------

    def run(self, *, dry_run: bool, create_schema: bool, prune_target: bool) -> RestoreReport:
        started = time.monotonic()
        try:
            self._prepare(create_schema)
            order = insert_order([self._tables[n].spec for n in self._play_order()])
            self._order = order
            if self._merging:
                self._timed("load", lambda: self._load_state(order))
            else:
                self._timed("load", lambda: self._load_snapshot(order))
                self._timed("replay", self._replay)
            for name in self._in_play:
                self.target.advance(self._tables[name])
            if prune_target:
                self._prune()
            self._timed("validate", lambda: self._validate(order))
            failed = [d for d in self.report.diffs if not d.ok]
            if failed:
                raise RestoreError(
                    "the restored data does not match what the log says; nothing was written:\n  "
                    + "\n  ".join(d.summary() for d in failed),
                    hint="run `nkdaemon verify`; if the repository is sound, report this",
                )
            self.target.check_constraints()  # what commit would check, also for a dry run
            if dry_run:
                self.target.rollback()
            else:
                self.target.commit()
                self.report.committed = True
        except BaseException:
            self.target.rollback()
            raise
        finally:
            self.report.seconds = time.monotonic() - started
            self.target.close()
        return self.report

    def _timed(self, stage: str, work: Callable[[], None]) -> None:
        started = time.monotonic()
        work()
        self.report.stages[stage] = time.monotonic() - started
        log.info("restore.stage", stage=stage, seconds=round(self.report.stages[stage], 3))

    def _play_order(self) -> list[str]:
        return [s.name for s in self.plan.context if s.name in self._in_play]

    def _prepare(self, create_schema: bool) -> None:
        missing = []
        for spec in self.plan.context:
            table = self.target.inspect(spec)
            if table is None:
                if spec.name in self._in_play:
                    missing.append(spec)
                continue
            self._tables[spec.name] = table
        if missing and create_schema:
            self.report.schema_notes += self.target.create(missing)
            for spec in missing:
                self._tables[spec.name] = self.target.inspect(spec)
        elif missing:
            raise RestoreError(
                f"the target has no table {', '.join(s.name for s in missing)}",
                hint="create the application's schema first, or pass --create-schema",
            )
        for name in self._selected:
            table = self._tables[name]
            absent = [c.name for c in table.spec.columns if c.name not in table.columns]
            if absent:
                raise RestoreError(
                    f"target table {name} has no column {', '.join(absent)}",
                    hint="bring the target's schema up to the backup's (migrate it), or use "
                    "--create-schema on an empty database",
                )
            for fk in table.spec.foreign_keys:
                if fk.ref_table not in self._tables:
                    raise RestoreError(
                        f"{name} refers to {fk.ref_table}, which the target does not have",
                        hint=f"restore {fk.ref_table} too, or create it in the target",
                    )
        self.resolver = _Resolver(self.target, self._tables)
        self._written = {
            name: set()
            for name in self._selected
            if self._tables[name].rows_before and not self._tables[name].spec.full_row_identity
        }
        # rows captured whole, in a target that holds some: the rows there before, and those
        # of them the snapshot claimed as its own (a multiset: equal rows are interchangeable)
        self._whole_before = {
            name: set(self.target.addresses(self._tables[name]))
            for name in self._selected
            if self._tables[name].rows_before and self._tables[name].spec.full_row_identity
        }
        self._whole_claimed: dict[str, set[Address]] = {n: set() for n in self._whole_before}
        # A target that holds rows of the restored tables (restored before, or seeded):
        # the state at T is written over it by natural key, not the log replayed onto it,
        # since replaying a rename onto a row that already has the new key cannot work.
        self._merging = bool(self._closure) or any(
            self._tables[name].rows_before for name in self._selected
        )

    # --- writing rows -------------------------------------------------------------------

    def _write(
        self,
        table: TargetTable,
        items: Sequence[tuple[Any, dict[str, Any]]],
        *,
        match: bool,
        deferred: Sequence[ForeignKeySpec] = (),
        late_refs: bool = False,
        update_existing: bool = True,
    ) -> None:
        """Insert rows (or update the rows matched by key) for (key, payload) pairs;
        ``update_existing`` false: rows the target has are left as they are."""
        spec = table.spec
        name = spec.name
        plain, fk_cols = _value_columns(spec)
        refs = self._resolve_refs(spec, [row for _, row in items], deferred, late_refs)
        existing: dict[str, Address | None] = {}
        if match:
            existing = self.resolver.resolve(name, [k for k, _ in items])
            new_rows = [
                (k, r, refs[i]) for i, (k, r) in enumerate(items) if existing.get(_text(k)) is None
            ]
        else:  # a snapshot into an empty table: every row is new
            new_rows = [(k, r, refs[i]) for i, (k, r) in enumerate(items)]
        generated = bool(spec.surrogate_columns) and table.generated
        ids = self.target.allocate(table, len(new_rows)) if generated and new_rows else []
        columns = plain + fk_cols + (list(spec.surrogate_columns) if generated else [])
        convert = self._converters(table, plain)
        as_is = all(f is _same for _c, f in convert)
        inserts: Sequence[Sequence[Any]]
        if as_is and not fk_cols and not generated:  # values straight from the row
            inserts = _in_column_order([row for _key, row, _refs in new_rows], plain)
        else:
            built: list[list[Any]] = []
            for i, (_key, row, ref_values) in enumerate(new_rows):
                get = row.get
                values = [get(c) for c in plain] if as_is else [f(get(c)) for c, f in convert]
                values += ref_values
                if generated:
                    values.append(ids[i])
                built.append(values)
            inserts = built
        self.target.insert(table, columns if generated else plain + fk_cols, inserts)
        updates = []
        for i, (key, row) in enumerate(items if existing and update_existing else ()):
            address = existing.get(_text(key))
            if address is not None:
                values = [f(row.get(c)) for c, f in convert] + refs[i]
                updates.append([*values, *address])
                for fk, ref_key in self._late.pop(id(row), []):  # set once its row exists
                    self._deferred.append((name, address, fk, ref_key))
        self.target.update(table, plain + fk_cols, updates)
        remember = name in self._referenced
        if not (remember or name in self._written or self._late):
            return
        for i, (key, row, _refs) in enumerate(new_rows):
            if not (remember or name in self._written or id(row) in self._late):
                continue
            address = (
                (ids[i],)
                if generated
                else self._address_of(table, row, inserts[i], plain + fk_cols)
            )
            if remember:
                self.resolver.remember(name, key, address)
            if name in self._written:
                self._written[name].add(address)
            for fk, ref_key in self._late.pop(id(row), []):
                self._deferred.append((name, address, fk, ref_key))
        if existing and name in self._written:
            self._written[name].update(a for a in existing.values() if a is not None)

    def _converters(self, table: TargetTable, columns: list[str]) -> list[tuple[str, Any]]:
        key = (table.spec.name, tuple(columns))
        found = self._converter_cache.get(key)
        if found is None:
            found = [(c, self.target.converter(table, c)) for c in columns]
            self._converter_cache[key] = found
        return found

    def _address_of(
        self, table: TargetTable, row: dict[str, Any], values: Sequence[Any], columns: list[str]
    ) -> Address:
        by_column = dict(zip(columns, values, strict=False))
        return tuple(by_column[c] for c in table.primary_key)

    def _resolve_refs(
        self,
        spec: TableSpec,
        rows: Sequence[dict[str, Any]],
        deferred: Sequence[ForeignKeySpec],
        late_refs: bool,
    ) -> list[list[Any]]:
        """The foreign-key column values of each row, in spec.foreign_keys column order."""
        self._late = {}
        if not spec.foreign_keys:
            return [[]] * len(rows)  # nothing extends these: no foreign key to add
        out: list[list[Any]] = [[] for _ in rows]
        for fk in spec.foreign_keys:
            ref_table = self._tables[fk.ref_table]
            keys = [row.get(fk.part_name) for row in rows]
            wanted = [k for k in keys if k is not None]
            found: Mapping[str, Any] = {}
            if fk in deferred or not wanted:
                pass
            elif fk.by_natural_key:
                values = self.resolver.natural_reference_values(fk, wanted)
                found = {_text(k): v for k, v in zip(wanted, values, strict=True)}
            else:
                found = self.resolver.resolve(fk.ref_table, wanted)
            for i, key in enumerate(keys):
                if key is None:
                    out[i].extend([None] * len(fk.columns))
                elif fk in deferred:  # a cycle breaker, even when its values are the key
                    out[i].extend([None] * len(fk.columns))
                    self._late.setdefault(id(rows[i]), []).append((fk, key))
                else:
                    address = found.get(_text(key))
                    if address is None:
                        if late_refs and all(spec.column(c).nullable for c in fk.columns):
                            out[i].extend([None] * len(fk.columns))
                            self._late.setdefault(id(rows[i]), []).append((fk, key))
                            continue
                        raise RestoreError(
                            f"{spec.name} refers to {fk.ref_table} {_show(key)}, which neither the "
                            "backup nor the target holds",
                            hint=f"restore {fk.ref_table} too (drop --table), or create that row "
                            "in the target first",
                        )
                    out[i].extend(
                        address if fk.by_natural_key else _fk_values(fk, ref_table, address)
                    )
        return out

    def _apply_deferred(self, *, partial: bool = False) -> None:
        """Set references that waited for their row. ``partial``: those whose row exists
        now, keeping the rest (called after every run of events, so a reference is set
        before a later event can rename or delete the row it names); otherwise all."""
        pending, self._deferred = self._deferred, []
        by_target: dict[tuple[str, int], list[tuple[Address, Any, ForeignKeySpec]]] = {}
        for name, address, fk, key in pending:
            by_target.setdefault((name, id(fk)), []).append((address, key, fk))
        for (name, _), entries in by_target.items():
            fk = entries[0][2]
            table = self._tables[name]
            found = self.resolver.resolve(fk.ref_table, [key for _, key, _ in entries])
            rows = []
            for address, key, _ in entries:
                ref = found.get(_text(key))
                if ref is None:
                    if partial:
                        self._deferred.append((name, address, fk, key))
                        continue
                    raise RestoreError(
                        f"{name} refers to {fk.ref_table} {_show(key)}, which does not exist"
                    )
                if fk.by_natural_key:
                    values = self.resolver.natural_reference_values(fk, [key])[0]
                    assert values is not None  # the row it names was just found
                else:
                    values = _fk_values(fk, self._tables[fk.ref_table], ref)
                rows.append([*values, *address])
            self.target.update(table, list(fk.columns), rows)

    # --- stage: snapshot ----------------------------------------------------------------

    def _load_snapshot(self, order: InsertOrder) -> None:
        snapshot = self.plan.snapshot
        for name in order.tables:
            file = snapshot.table(name)
            if file is None:
                continue
            table = self._tables[name]
            if name in self._whole_before:
                self._load_whole_rows_into_rows(table, file)
                continue
            match = table.rows_before > 0 and not table.spec.full_row_identity
            straight = None if match or order.deferred.get(name) else self._straight_copy(table)
            if straight is not None:
                # one COPY for the whole table: the server inserts while rows are parsed here
                self.target.insert(table, straight, self._picked_rows(snapshot, file, straight))
                continue
            for batch in read_table_batches(snapshot, file):
                for start in range(0, len(batch), CHUNK):
                    chunk = [(item["k"], item["r"]) for item in batch[start : start + CHUNK]]
                    self._write(table, chunk, match=match, deferred=order.deferred.get(name, ()))
                    self.report.rows_loaded += len(chunk)
                    self.progress("load", len(chunk))
        self._apply_deferred()

    def _load_state(self, order: InsertOrder) -> None:
        """Write the state at T, folded from the snapshot and the log, over the target's
        rows by natural key; rows of the closure are only added where missing."""
        state = fold_state(self.plan.context, self._snapshot_events(), self._counted_log())
        needed = state.referenced_closure(self._selected)
        if self.refuse_missing_references:
            self._refuse_missing(needed)
        for name in order.tables:
            table = self._tables[name]
            deferred = order.deferred.get(name, ())
            if name not in self._selected:
                self._add_missing(table, needed.get(name, []), deferred)
            elif table.spec.full_row_identity:
                rows = [row for _k, row, count in state.rendered(name) for _ in range(count)]
                self._claim_whole_rows(table, rows)
            else:
                items = [(key, row) for key, row, _count in state.rendered(name)]
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    self._write(table, chunk, match=True, deferred=deferred, late_refs=True)
                    self.progress("load", len(chunk))
            self._apply_deferred(partial=True)
        self._apply_deferred()

    def _snapshot_events(self) -> Iterator[dict[str, Any]]:
        snapshot = self.plan.snapshot
        for spec in self.plan.context:
            file = snapshot.table(spec.name)
            if file is not None:
                for item in read_table(snapshot, file):
                    if spec.name in self._selected:
                        self.report.rows_loaded += 1
                    yield {"t": spec.name, "o": "I", "k": item["k"], "r": item["r"]}

    def _counted_log(self) -> Iterator[LoggedTransaction]:
        for tx in replay_range(self.log_store, self.plan.snapshot, self.plan.at):
            self.report.events_applied += sum(1 for e in tx.events if e["t"] in self._selected)
            yield tx

    def _add_missing(
        self,
        table: TargetTable,
        items: list[tuple[Any, Any]],
        deferred: Sequence[ForeignKeySpec],
    ) -> None:
        """Rows of a table outside --table that restored rows refer to: inserted where the
        target lacks them (or, with refuse_missing_references, listed and refused)."""
        name = table.spec.name
        missing = self._missing(name, items)
        if missing:
            self._write(table, missing, match=False, deferred=deferred, late_refs=True)
            self.report.referenced_rows_added[name] = len(missing)

    def _missing(self, name: str, items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        found = self.resolver.resolve(name, [key for key, _row in items])
        return [(key, row) for key, row in items if found.get(_text(key)) is None]

    def _refuse_missing(self, needed: Mapping[str, list[tuple[Any, Any]]]) -> None:
        """--no-referenced-rows: name every referenced row the target lacks, and refuse."""
        lines = []
        for name, items in sorted(needed.items()):
            missing = self._missing(name, items)
            if missing:
                shown = ", ".join(_show(key) for key, _row in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                lines.append(f"{len(missing)} {name} rows the target lacks: {shown}{more}")
        if lines:
            raise RestoreError(
                "the restored rows refer to rows outside --table that the target lacks:\n  "
                + "\n  ".join(lines),
                hint="create them first, restore those tables too, or drop "
                "--no-referenced-rows to have them added as they were at the restore time",
            )

    def _load_whole_rows_into_rows(self, table: TargetTable, file: TableFile) -> None:
        """Rows captured whole, into a table that holds some: each snapshot row takes an
        equal row of the target if one is left unclaimed, and is inserted otherwise, so
        restoring the same state twice leaves the table as it was."""
        rows = [item["r"] for item in read_table(self.plan.snapshot, file)]
        self.report.rows_loaded += len(rows)
        self._claim_whole_rows(table, rows)

    def _claim_whole_rows(self, table: TargetTable, rows: Iterable[dict[str, Any]]) -> None:
        name = table.spec.name
        waiting: dict[str, list[Address]] = {}
        renderer = _TargetRenderer(self.target, self._tables)
        for address, (_key, payload) in renderer.rows_with_addresses(name):
            waiting.setdefault(_text(payload), []).append(address)
        new_rows = []
        for row in rows:
            equal = waiting.get(_text(row))
            if equal:
                self._whole_claimed.setdefault(name, set()).add(equal.pop())
            else:
                new_rows.append((row, row))
        for start in range(0, len(new_rows), CHUNK):
            self._write(table, new_rows[start : start + CHUNK], match=False)

    def _picked_rows(
        self, snapshot: SnapshotInfo, file: TableFile, columns: list[str]
    ) -> Iterator[tuple[Any, ...]]:
        for batch in read_table_batches(snapshot, file):
            yield from _in_column_order([item["r"] for item in batch], columns)
            self.report.rows_loaded += len(batch)
            self.progress("load", len(batch))

    def _straight_copy(self, table: TargetTable) -> list[str] | None:
        """For a table whose snapshot rows go into the target as they are (no reference
        to resolve, no id to draw, no value to convert, no address to remember): its
        columns; otherwise None."""
        spec = table.spec
        if spec.foreign_keys or spec.surrogate_columns or spec.name in self._referenced:
            return None
        if spec.name in self._written:
            return None
        columns = [c.name for c in spec.columns]
        if not all(f is _same for _c, f in self._converters(table, columns)):
            return None
        return columns

    # --- stage: log ---------------------------------------------------------------------

    def _replay(self) -> None:
        window: list[LoggedTransaction] = []
        size = 0
        for tx in replay_range(self.log_store, self.plan.snapshot, self.plan.at):
            window.append(tx)
            size += len(tx.events)
            if size >= WINDOW_EVENTS:
                self._replay_window(window)
                window, size = [], 0
        if window:
            self._replay_window(window)

    def _replay_window(self, window: list[LoggedTransaction]) -> None:
        """Resolve the keys a window of transactions names in a few queries, then apply it
        with the writes pipelined (their results are not waited for one by one).

        Runs of transactions that only insert rows and update them in place are applied as
        their net change, table by table; anything else, one transaction after another."""
        self._prefetch(window)
        self._fold_refusal = ""
        try:
            with self.target.batch():
                for run, foldable in _foldable_runs(window, self._foldable):
                    if not (foldable and len(run) > 1 and self._apply_folded(run)):
                        for tx in run:
                            self._apply_transaction(tx)
        except NkdError as exc:
            if self._fold_refusal:  # the first refusal is often the real cause: say both
                exc.message += (
                    " (before that, applying the same changes as their net change failed: "
                    f"{self._fold_refusal.splitlines()[0]})"
                )
            raise

    def _apply_transaction(self, tx: LoggedTransaction) -> None:
        for (table_name, op), events in _runs(tx.events):
            if table_name not in self._selected:
                continue
            self._apply(self._tables[table_name], op, events)
            self.report.events_applied += len(events)
            if self._deferred:
                self._apply_deferred(partial=True)
        self._apply_deferred()
        self.resolver.end_transaction()
        self.progress("replay", sum(1 for e in tx.events if e["t"] in self._selected))

    def _foldable(self, tx: LoggedTransaction) -> bool:
        """True when the transaction only inserts rows and updates rows without renaming
        them: such transactions commute table by table, so a run of them can be applied as
        its net change (each row's last version), parents before children."""
        for event in tx.events:
            name = event["t"]
            if name not in self._selected:
                continue
            op = event["o"]
            if op == "I":
                continue
            if op != "U" or event.get("ok") is not None:
                return False
            if self._tables[name].spec.full_row_identity:
                return False
        return True

    def _apply_folded(self, run: list[LoggedTransaction]) -> bool:
        """Apply a run of foldable transactions as its net change, inside a savepoint.

        The order of rows within a table can differ from the log's (each row moves to its
        first change), which a target's own unique constraint on other columns may refuse
        for a moment (two rows swapping a value). Then the savepoint is rolled back and the
        caller applies the run in log order: returns False."""
        inserts: dict[str, dict[str, tuple[Any, dict[str, Any]]]] = {}
        updates: dict[str, dict[str, tuple[Any, dict[str, Any]]]] = {}
        multiset: dict[str, list[dict[str, Any]]] = {}
        events = 0
        for tx in run:
            for event in tx.events:
                name = event["t"]
                if name not in self._selected:
                    continue
                events += 1
                if self._tables[name].spec.full_row_identity:
                    multiset.setdefault(name, []).append(event["r"])
                    continue
                text = _text(event["k"])
                inserted = inserts.setdefault(name, {})
                if event["o"] == "I" or text in inserted:
                    inserted[text] = (event["k"], event["r"])
                else:
                    updates.setdefault(name, {})[text] = (event["k"], event["r"])
        try:
            with self.target.attempt():
                for name in self._order.tables:
                    table = self._tables[name]
                    if name in multiset:
                        self._write(table, [(r, r) for r in multiset[name]], match=False)
                    if name in inserts:
                        self._write(table, list(inserts[name].values()), match=True, late_refs=True)
                    if name in updates:
                        self._update_many(table, list(updates[name].values()))
                self._apply_deferred()
        except NkdError as exc:
            log.info("restore.fold_refused", transactions=len(run), reason=str(exc))
            self._fold_refusal = str(exc)
            self._deferred, self._late = [], {}
            self.resolver.forget()
            return False
        self.report.events_applied += events
        self.progress("replay", events)
        return True

    def _prefetch(self, window: list[LoggedTransaction]) -> None:
        wanted: dict[str, list[Any]] = {}
        for tx in window:
            for event in tx.events:
                name = event["t"]
                if name not in self._selected:
                    continue
                spec = self._tables[name].spec
                if spec.full_row_identity:
                    continue
                if event["o"] in ("U", "D"):
                    wanted.setdefault(name, []).append(event.get("ok") or event["k"])
                row = event.get("r") or {}
                for fk in spec.foreign_keys:
                    value = row.get(fk.part_name)
                    if value is not None and not fk.by_natural_key:
                        wanted.setdefault(fk.ref_table, []).append(value)
        for name, keys in wanted.items():
            if name in self._tables:
                self.resolver.resolve(name, keys)

    def _apply(self, table: TargetTable, op: str, events: list[dict[str, Any]]) -> None:
        name = table.spec.name
        if op == "T":
            self.target.delete_all(table)
            self.resolver.changed(name)
            return
        if table.spec.full_row_identity:
            self._apply_multiset(table, op, events)
            return
        if op == "I":
            self._write(table, [(e["k"], e["r"]) for e in events], match=True, late_refs=True)
            return
        if op == "D":
            found = self.resolver.resolve(name, [e["k"] for e in events])
            addresses = [a for a in found.values() if a is not None]  # cascades took the rest
            self.target.delete(table, addresses)
            self.resolver.deleted(name, found)
            return
        for event in events:  # updates one by one: a rename changes what later ones find
            self._update_many(table, [(event["k"], event["r"])], old_key=event.get("ok"))
            if event.get("ok") is not None:
                self.resolver.changed(name)

    def _update_many(
        self, table: TargetTable, items: Sequence[tuple[Any, dict[str, Any]]], old_key: Any = None
    ) -> None:
        """Update rows in place to (key, row); ``old_key``: the one row's key before a rename."""
        spec = table.spec
        name = spec.name
        olds = [old_key] if old_key is not None else [key for key, _ in items]
        found = self.resolver.resolve(name, olds)
        plain, fk_columns = _value_columns(spec)
        convert = self._converters(table, plain)
        refs = self._resolve_refs(spec, [row for _, row in items], (), True)
        rows: list[list[Any]] = []
        addresses: list[Address] = []
        for (_key, row), old, ref_values in zip(items, olds, refs, strict=True):
            address = found.get(_text(old))
            if address is None:
                raise RestoreError(
                    f"the log updates {name} {_show(old)}, which the target does not hold"
                )
            values = [f(row.get(c)) for c, f in convert] + ref_values
            rows.append([*values, *address])
            if not spec.surrogate_columns:
                address = self._address_of(table, row, values, plain + fk_columns)
            addresses.append(address)
        self.target.update(table, plain + fk_columns, rows)
        for (key, row), address in zip(items, addresses, strict=True):
            self.resolver.remember(name, key, address)
            for fk, ref_key in self._late.pop(id(row), []):
                self._deferred.append((name, address, fk, ref_key))
        if self._deferred:  # a reference to these rows' keys can be set right away
            self._apply_deferred(partial=True)

    def _apply_multiset(self, table: TargetTable, op: str, events: list[dict[str, Any]]) -> None:
        for event in events:
            if op in ("U", "D"):
                old = event.get("ok") or event["k"]
                self._delete_one_equal(table, old)
            if op in ("I", "U"):
                self._write(table, [(event["r"], event["r"])], match=False)

    def _delete_one_equal(self, table: TargetTable, row: dict[str, Any]) -> None:
        spec = table.spec
        found = self._as_target_values(table, row)
        address = self.target.find_one_equal(table, *found) if found is not None else None
        if address is None:
            raise RestoreError(f"the log deletes a {spec.name} row the target does not hold")
        self.target.delete(table, [address])

    def _as_target_values(
        self, table: TargetTable, row: Mapping[str, Any]
    ) -> tuple[list[str], list[Any]] | None:
        """A logged whole row as the target's columns and values: references (logged as
        the natural keys of the rows they name) become those rows' addresses, or key
        values. None when a row it refers to is not in the target (nor was it earlier in
        the transaction in hand), so no equal row can be there either."""
        plain, _references = _value_columns(table.spec)
        columns = [c for c in plain if c in row]
        values = [self.target.param(table, c, row.get(c)) for c in columns]
        for fk in table.spec.foreign_keys:
            key = row.get(fk.part_name)
            columns.extend(fk.columns)
            if key is None:
                values.extend([None] * len(fk.columns))
                continue
            if fk.by_natural_key:
                held = self.resolver.natural_reference_values(fk, [key])[0]
            else:
                found = self.resolver.resolve(fk.ref_table, [key], deleted_too=True)
                address = found.get(_text(key))
                ref = self._tables[fk.ref_table]
                held = None if address is None else _fk_values(fk, ref, address)
            if held is None:
                return None
            values.extend(held)
        return columns, values

    # --- stage: target-only rows and validation -----------------------------------------

    def _prune(self) -> None:
        for name, written in self._written.items():
            table = self._tables[name]
            extra = [a for a in self._addresses(table) if a not in written]
            self.target.delete(table, extra)
            self.report.pruned[name] = len(extra)
        for name, before in self._whole_before.items():
            extra = list(before - self._whole_claimed[name])
            self.target.delete(self._tables[name], extra)
            self.report.pruned[name] = len(extra)

    def _addresses(self, table: TargetTable) -> list[Address]:
        return list(self.target.addresses(table))

    def _validate(self, order: InsertOrder) -> None:
        specs = [self._tables[n].spec for n in order.tables]
        expectation = Expectation(specs)
        snapshot = self.plan.snapshot
        for name in order.tables:
            file = snapshot.table(name)
            if file is not None:
                for item in read_table(snapshot, file):
                    expectation.load(name, item["k"], item["r"])
        expectation.finish_load()
        position = snapshot.position
        for tx in replay_range(self.log_store, snapshot, self.plan.at):
            expectation.apply_transaction(
                (e for e in tx.events if e["t"] in self._in_play),
                where=f"log transaction {tx.lsn}: ",
            )
            position = tx.position
        # a snapshot taken at exactly this position: evidence read from the source
        witness = digest_witness(snapshot, position)
        renderer = _TargetRenderer(self.target, self._tables)
        for name in (n for n in order.tables if n in self._selected):
            fold = DigestFold()
            rows = renderer.rows(name)
            diff = expectation.compare(name, fold.passing(rows) if witness else rows)
            if diff.unexpected and self._tables[name].rows_before:
                # rows only the target had: reported, left alone (unless pruned)
                self.report.target_only[name] = len(diff.unexpected)
                diff.actual -= len(diff.unexpected)
                diff.unexpected = []
            elif witness is not None:
                cross_check(diff, witness, fold.result())
                self.report.cross_checked = witness.id
            self.report.diffs.append(diff)


class _TargetRenderer:
    """Reads target rows back as (natural key, payload), references named by natural key."""

    def __init__(self, target: Any, tables: Mapping[str, TargetTable]) -> None:
        self._target = target
        self._tables = tables
        self._keys: dict[str, dict[Address, Any]] = {}

    def _keys_of(self, name: str) -> dict[Address, Any]:
        if name not in self._keys:
            table = self._tables[name]
            self._keys[name] = {}
            for row in self._read_with_address(table):
                address, canonical = row
                self._keys[name][address] = self._key(table, canonical)
        return self._keys[name]

    def _read_with_address(self, table: TargetTable) -> Iterator[tuple[Address, dict[str, Any]]]:
        for row in self._target.read(table):
            yield tuple(_raw_pk(table, row)), row

    def _ref(self, fk: ForeignKeySpec, row: Mapping[str, Any]) -> Any:
        values = [row.get(c) for c in fk.columns]
        if any(v is None for v in values):
            return None
        if fk.by_natural_key:
            return dict(zip(fk.ref_columns, values, strict=True))
        ref = self._tables[fk.ref_table]
        by_ref = dict(zip(fk.ref_columns, values, strict=True))
        address = tuple(by_ref[c] for c in ref.primary_key)
        return self._keys_of(fk.ref_table).get(address, {"$missing": list(address)})

    def _key(self, table: TargetTable, row: Mapping[str, Any]) -> Any:
        spec = table.spec
        if spec.full_row_identity:
            return None
        return {
            p.name: row.get(p.column) if p.column is not None else self._ref(p.foreign_key, row)  # type: ignore[arg-type]
            for p in spec.key_parts
        }

    def rows(self, name: str) -> Iterator[tuple[Any, dict[str, Any]]]:
        for _address, item in self.rows_with_addresses(name):
            yield item

    def rows_with_addresses(
        self, name: str
    ) -> Iterator[tuple[Address, tuple[Any, dict[str, Any]]]]:
        table = self._tables[name]
        spec = table.spec
        fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
        for address, row in self._read_with_address(table):
            payload = {
                c.name: row.get(c.name)
                for c in spec.columns
                if c.name not in spec.surrogate_columns
                and c.name not in fk_columns
                and c.name in row
            }
            for fk in spec.foreign_keys:
                payload[fk.part_name] = self._ref(fk, row)
            key = self._key(table, row) if not spec.full_row_identity else payload
            yield address, (key, payload)


def referenced_tables(specs: Sequence[TableSpec], selected: set[str]) -> set[str]:
    """The tables that the ``selected`` ones refer to, directly or not, outside them."""
    by_name = {s.name: s for s in specs}
    found: set[str] = set()
    todo = [n for n in selected if n in by_name]
    while todo:
        for fk in by_name[todo.pop()].foreign_keys:
            ref = fk.ref_table
            if (
                ref in by_name
                and ref not in selected
                and ref not in found
                and not fk.by_natural_key
            ):
                found.add(ref)
                todo.append(ref)
    return found


def fold_state(
    specs: Sequence[TableSpec],
    snapshot_events: Iterable[dict[str, Any]],
    transactions: Iterable[LoggedTransaction],
) -> NaturalState:
    """The natural-key state made by a snapshot's rows and the log after it."""
    shapes = shapes_of(specs)
    order = insert_order(specs).tables
    rank = {name: i for i, name in enumerate(order)}
    state = NaturalState(shapes=shapes)
    # a key names its parents' keys, so parents are loaded first
    by_table: dict[str, list[dict[str, Any]]] = {}
    for event in snapshot_events:
        by_table.setdefault(event["t"], []).append(event)
    state.apply_transaction(
        (e for name in sorted(by_table, key=lambda n: rank.get(n, 0)) for e in by_table[name]),
        where="snapshot: ",
    )
    for tx in transactions:
        state.apply_transaction(tx.events, where=f"log transaction {tx.lsn}: ")
    return state


def _raw_pk(table: TargetTable, row: Mapping[str, Any]) -> list[Any]:
    return [row.get(c) for c in table.primary_key]


def _value_columns(spec: TableSpec) -> tuple[list[str], list[str]]:
    """(plain, references): the columns a payload fills as they are, and the foreign-key
    columns filled from resolved references, each in definition order."""
    references = [c for fk in spec.foreign_keys for c in fk.columns]
    taken = set(references)
    plain = [
        c.name for c in spec.columns if c.name not in spec.surrogate_columns and c.name not in taken
    ]
    return plain, references


def _in_column_order(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Each row's values in column order, None where a row lacks a column (an older
    snapshot); taken in C when every row has them all."""
    if len(columns) > 1:  # itemgetter of one column gives the value, not a tuple
        take = operator.itemgetter(*columns)
        with contextlib.suppress(KeyError):
            return [take(row) for row in rows]
    return [tuple(row.get(c) for c in columns) for row in rows]


def _foldable_runs(
    window: Sequence[LoggedTransaction], foldable: Callable[[LoggedTransaction], bool]
) -> Iterator[tuple[list[LoggedTransaction], bool]]:
    """Consecutive transactions split into runs that are all foldable or all not."""
    run: list[LoggedTransaction] = []
    kind = False
    for tx in window:
        this = foldable(tx)
        if run and this != kind:
            yield run, kind
            run = []
        kind = this
        run.append(tx)
    if run:
        yield run, kind


def _runs(
    events: Iterable[dict[str, Any]],
) -> Iterator[tuple[tuple[str, str], list[dict[str, Any]]]]:
    """Consecutive events of the same table and operation, in order."""
    current: tuple[str, str] | None = None
    batch: list[dict[str, Any]] = []
    for event in events:
        marker = (event["t"], event["o"])
        if marker != current and batch:
            assert current is not None
            yield current, batch
            batch = []
        current = marker
        batch.append(event)
    if batch and current is not None:
        yield current, batch


def open_restore_target(url: str, source_dialect: str) -> PostgresTarget | SqliteTarget:
    from nkdaemon.targets.factory import open_target

    return open_target(url, source_dialect=source_dialect)
