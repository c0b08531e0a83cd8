"""One restore, stage by stage, inside one target transaction: prepare the target's tables,
load, replay, prune, validate, then commit (or roll back and say what differed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic

import structlog

from nkdaemon.core.definitions import restricted_spec
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.partition_diff import PARTITIONS
from nkdaemon.core.ports import Address, RestoreTarget, TableT
from nkdaemon.core.restore_plan import InsertOrder, insert_order
from nkdaemon.core.restore_runs import referenced_tables
from nkdaemon.core.shapes import ShapeWalk
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.services.restore.load import Loader, WholeRows
from nkdaemon.services.restore.plan import (
    Progress,
    RestoreError,
    RestorePlan,
    RestoreReport,
    replay_range,
)
from nkdaemon.services.restore.replay import Replayer
from nkdaemon.services.restore.resolve import Resolver
from nkdaemon.services.restore.validate import (
    overlay_of,
    shaped_expectation,
    validate,
    validate_streamed,
)
from nkdaemon.services.restore.write import RowWriter

if TYPE_CHECKING:
    from nkdaemon.targets.table import TargetTable

log = structlog.get_logger("nkdaemon.restore")

_PSEUDO = ("rowid", "ctid")  # addresses, not columns


class Restorer(Generic[TableT]):
    """Writes one plan into one target; see ``run``."""

    def __init__(
        self,
        *,
        plan: RestorePlan,
        target: RestoreTarget[TableT],
        log_store: SegmentLog,
        progress: Progress | None = None,
    ) -> None:
        self.plan = plan
        self.target = target
        self.log_store = log_store
        self.progress = progress or (lambda stage, n: None)
        self.report = RestoreReport(plan=plan)
        self.refuse_missing_references = False
        # a column the instant has and the target lacks: refused, unless this is set (then
        # its values are left out and counted in the report)
        self.ignore_missing_columns = False
        # hash partitions of the streamed validation (tests force 1 to name every row)
        self.validation_partitions = PARTITIONS
        self._tables: dict[str, TableT] = {}
        self._selected = {s.name for s in plan.tables}
        # only rows other tables refer to are worth remembering the address of
        self._referenced = {
            fk.ref_table for s in plan.context for fk in s.foreign_keys if not fk.by_natural_key
        }
        # with --table: the tables the selected ones refer to, directly or not; the rows
        # that the restored rows need are added to them where the target lacks them
        self._closure = referenced_tables(plan.context, self._selected)
        self._in_play = self._selected | self._closure

    def run(self, *, dry_run: bool, create_schema: bool, prune_target: bool) -> RestoreReport:
        started = time.monotonic()
        try:
            self._prepare(create_schema)
            writer = self._writer()
            whole = WholeRows(self._whole_before())
            order = insert_order([self._tables[n].spec for n in self._play_order()])
            self._load_and_replay(writer, whole, order)
            for name in self._in_play:
                self.target.advance(self._tables[name])
            if prune_target:
                self._prune(writer.written, whole)
            self._timed("validate", lambda: self._validate(order.tables))
            self._finish(dry_run)
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

    def _finish(self, dry_run: bool) -> None:
        failed = [d for d in self.report.diffs if not d.ok]
        if failed:
            self._refuse_unplaced(failed_tables={d.table for d in failed})
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

    def _refuse_unplaced(self, failed_tables: set[str]) -> None:
        """A difference explained by values the log holds for columns no definition had
        (captured across a schema change the log does not record): say that."""
        if self.plan.shapes is None:
            return
        walk = ShapeWalk(self.plan.shapes)
        for tx in replay_range(self.log_store, self.plan.snapshot, self.plan.at):
            walk.transaction(tx)
        found = sorted((t, c, n) for (t, c), n in walk.unplaced.items() if t in failed_tables)
        if found:
            raise RestoreError(
                "the log holds values of columns that the tables' definitions then did not "
                "have, so they cannot be restored; nothing was written:\n  "
                + "\n  ".join(f"{t}.{c}: {n} values" for t, c, n in found),
                hint="the schema changed without the log recording it (a release that did "
                "not follow schema changes); take a snapshot now and restore from it, or "
                "restore to a time before the change",
            )

    # --- the target's tables ------------------------------------------------------------

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
            self._create(missing)
        elif missing:
            raise RestoreError(
                f"the target has no table {', '.join(s.name for s in missing)}"
                + (" (as the table was at the restore time)" if self.plan.shape_changed else ""),
                hint="create the application's schema first, pass --create-schema, or "
                "restore the other tables only (--table)",
            )
        lacking: list[str] = []
        for name in self._play_order():
            self._tables[name] = self._check_columns(self._tables[name], lacking)
        if lacking:
            raise RestoreError(
                f"the target lacks column(s) {', '.join(lacking)}, which the tables had at "
                "the restore time; their values would be lost",
                hint="add the columns to the target, use --create-schema on an empty "
                "database, or pass --ignore-missing-columns to restore without those "
                "values (the report counts them by table and column)",
            )
        for name in self._selected:
            self._check_table(name)

    def _check_columns(self, table: TableT, lacking: list[str]) -> TableT:
        """Match the instant's columns with the target's by name: a column the target has
        and the instant lacks gets its default; one the instant has and the target lacks
        is listed in ``lacking`` (refused), or with ignore_missing_columns left out (the
        table's spec narrowed)."""
        spec = table.spec
        name = spec.name
        extra = [c for c in table.columns if c not in spec.column_index and c not in _PSEUDO]
        if extra:
            self.report.target_only_columns[name] = extra
        converted = {
            c.name: table.types[c.name]
            for c in spec.columns
            if c.name in table.types and _type_word(table.types[c.name]) != _type_word(c.sql_type)
        }
        if converted:
            self.report.converted_columns[name] = converted
        absent = [c.name for c in spec.columns if c.name not in table.columns]
        if not absent:
            return table
        needed = set(spec.primary_key) | set(spec.key_column_names)
        keys = [c for c in absent if c in needed]
        if keys:
            raise RestoreError(
                f"target table {name} has no column {', '.join(keys)}, which the backup's "
                "rows are named by",
                hint="bring the target's schema up to the backup's (migrate it), or use "
                "--create-schema on an empty database",
            )
        if not self.ignore_missing_columns:
            lacking.extend(f"{name}.{column}" for column in absent)
            return table
        kept = [c.name for c in spec.columns if c.name in table.columns]
        narrowed = self.target.inspect(restricted_spec(spec, kept))
        assert narrowed is not None  # it was there a moment ago, in this transaction
        self.report.skipped_columns[name] = absent
        return narrowed

    @property
    def _shaped(self) -> bool:
        """Restore through the state at T in T's shape (not the snapshot, then the log):
        the shapes changed on the way, or the target's tables are narrower."""
        return self.plan.shape_changed or bool(self.report.skipped_columns)

    def _create(self, missing: list[TableSpec]) -> None:
        self.report.schema_notes += self.target.create(missing)
        for spec in missing:
            table = self.target.inspect(spec)
            if table is None:  # the target said it made the table: a bug if not
                raise RestoreError(f"--create-schema did not create table {spec.name}")
            self._tables[spec.name] = table

    def _check_table(self, name: str) -> None:
        table = self._tables[name]
        for fk in table.spec.foreign_keys:
            if fk.ref_table not in self._tables:
                raise RestoreError(
                    f"{name} refers to {fk.ref_table}, which the target does not have",
                    hint=f"restore {fk.ref_table} too, or create it in the target",
                )

    def _writer(self) -> RowWriter[TableT]:
        tables = self._tables
        return RowWriter(
            target=self.target,
            tables=tables,
            resolver=Resolver(self.target, tables),
            referenced=self._referenced,
            written={
                name: set()
                for name in self._selected
                if tables[name].rows_before and not tables[name].spec.full_row_identity
            },
        )

    def _whole_before(self) -> dict[str, set[Address]]:
        """Rows captured whole, in a target that holds some: the rows there before."""
        return {
            name: set(self.target.addresses(self._tables[name]))
            for name in self._selected
            if self._tables[name].rows_before and self._tables[name].spec.full_row_identity
        }

    # --- stages -------------------------------------------------------------------------

    def _load_and_replay(
        self, writer: RowWriter[TableT], whole: WholeRows, order: InsertOrder
    ) -> None:
        # A target that holds rows of the restored tables (restored before, or seeded):
        # the state at T is written over it by natural key, not the log replayed onto it,
        # since replaying a rename onto a row that already has the new key cannot work.
        merging = (
            bool(self._closure)
            or self._shaped
            or any(self._tables[name].rows_before for name in self._selected)
        )
        loader = Loader(
            plan=self.plan,
            log_store=self.log_store,
            writer=writer,
            selected=self._selected,
            whole=whole,
            report=self.report,
            progress=self.progress,
        )
        loader.refuse_missing_references = self.refuse_missing_references
        loader.shaped = self._shaped
        if merging:
            self._timed("load", lambda: loader.load_state(order))
            return
        self._timed("load", lambda: loader.load_snapshot(order))
        replayer = Replayer(
            plan=self.plan,
            log_store=self.log_store,
            writer=writer,
            selected=self._selected,
            order=order,
            report=self.report,
            progress=self.progress,
        )
        self._timed("replay", replayer.replay)

    def _prune(self, written: dict[str, set[Address]], whole: WholeRows) -> None:
        """--prune-target: delete the rows of the restored tables that the restore did not
        write (or, captured whole, did not claim)."""
        for name, kept in written.items():
            table = self._tables[name]
            extra = [a for a in self.target.addresses(table) if a not in kept]
            self.target.delete(table, extra)
            self.report.pruned[name] = len(extra)
        for name, before in whole.before.items():
            extra = list(before - whole.claimed[name])
            self.target.delete(self._tables[name], extra)
            self.report.pruned[name] = len(extra)

    def _validate(self, order: tuple[str, ...]) -> None:
        snapshot = self.plan.snapshot
        transactions = replay_range(self.log_store, snapshot, self.plan.at)
        # a narrower target's rows cannot fold to the source's digests
        witness = not self.report.skipped_columns
        if self._shaped:  # across a schema change: the whole state, in memory
            assert self.plan.shapes is not None
            expectation, position = shaped_expectation(
                snapshot, self.plan.shapes, [self._tables[n].spec for n in order], transactions
            )
            validate(
                target=self.target,
                tables=self._tables,
                order=order,
                selected=self._selected,
                expectation=expectation,
                snapshot=snapshot,
                position=position,
                report=self.report,
                witness=witness,
            )
            return
        specs = [self._tables[n].spec for n in order]
        overlay, position = overlay_of(snapshot, specs, transactions, self._in_play)
        validate_streamed(
            target=self.target,
            tables=self._tables,
            order=order,
            selected=self._selected,
            overlay=overlay,
            snapshot=snapshot,
            position=position,
            report=self.report,
            witness=witness,
            partitions=self.validation_partitions,
        )


def _type_word(sql_type: str | None) -> str:
    return "".join((sql_type or "").lower().split())


def open_restore_target(url: str, source_dialect: str) -> RestoreTarget[TargetTable]:
    """The target at ``url`` (PostgreSQL or SQLite), one transaction open in it."""
    from nkdaemon.targets.factory import open_target

    return open_target(url, source_dialect=source_dialect)
