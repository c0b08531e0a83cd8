"""The drain: committed changes from the source queue into the log, exactly once.

One pass: fence the queue, then read whole transactions in commit order, translate ids to
natural keys and append them to the log; every batch of transactions, fsync the log and
commit the key index with the checkpoint; at the end delete the drained queue rows. A
crash anywhere leaves the queue rows (drained again, and skipped where the checkpoint or
the log already has them) or nothing to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from nkdaemon.core.errors import CaptureError, LogGapError, RepositoryError
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.log import (
    ChangeEvent,
    Chunk,
    Commit,
    Definition,
    Gap,
    decode_time,
    encode_time,
)
from nkdaemon.core.ports import (
    CaptureSelector,
    CaptureSource,
    QueuedChange,
    SchemaChange,
    SchemaDrift,
)
from nkdaemon.core.translate import Translator
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import Checkpoint, StateStore
from nkdaemon.services.table_shapes import TableShapes

log = structlog.get_logger("nkdaemon.drain")

CHUNK_EVENTS = 2000


@dataclass(kw_only=True)
class DrainResult:
    transactions: int = 0
    events: int = 0
    skipped: int = 0
    last_lsn: int = 0
    last_commit_time: str | None = None
    gap: tuple[int, int] | None = None


@dataclass(kw_only=True)
class _Batch:
    transactions: int = 0
    events: int = 0
    skipped: int = 0
    lsn: int = 0
    commit_time: str | None = None


@dataclass(kw_only=True)
class _Tx:
    position: int
    txid: str | None
    commit_time: datetime
    append: bool
    lsn: int = 0
    part: int = 0
    events: int = 0
    pending: list[ChangeEvent] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=list)


class Drainer:
    """Drains one source into one repository. Holds the log open for appending."""

    def __init__(
        self,
        *,
        source: CaptureSource,
        log_store: SegmentLog,
        state: StateStore,
        tables: Callable[[], dict[int, TableSpec]],
        batch_transactions: int = 1000,
        on_stage: Callable[[str], None] | None = None,
        fence_guard: Callable[[], AbstractContextManager[Any]] | None = None,
        cuts: Callable[[], Sequence[int]] | None = None,
        selects: CaptureSelector | None = None,
    ) -> None:
        self._source = source
        self._log = log_store
        self._state = state
        self._shapes = TableShapes(tables, state)
        self._batch_transactions = batch_transactions
        # Which tables capture follows as they appear (None: only the installed ones).
        self._selects: CaptureSelector = selects or (lambda names: [])
        # Observability hook: called with "log_synced", "state_committed", "queue_deleted"
        # after each step of a batch (metrics; crash tests kill the process there).
        self._on_stage = on_stage or (lambda stage: None)
        # Snapshot positions must be known as of the fence: both are read under the guard.
        self._fence_guard = fence_guard or contextlib.nullcontext
        self._cuts_of = cuts or (lambda: ())
        self._cuts: Sequence[int] = ()
        self._log_position = 0
        self._flushed_log_position = 0
        self._last_time: datetime | None = None
        # The log holds every transaction committed at or before this time (ISO 8601).
        self._complete_through: str | None = None
        self._pass: tuple[int, str] = (0, "")  # this pass's fence and the time before it
        self._gap: tuple[int, int] | None = None
        self._opened = False
        self._stopped = False

    # --- opening: recovery --------------------------------------------------------------

    def open(self) -> None:
        """Recover the log tail and reconcile it with the checkpoint."""
        # Drain only a source whose capture feeds this repository (core/ownership.py).
        self._source.bind(self._state.get_meta("installation_id"))
        checkpoint = self._state.checkpoint()
        end = self._log.recover(
            durable_segment=checkpoint.segment, durable_offset=checkpoint.offset
        )
        self._log_position = end.last_position
        self._flushed_log_position = end.last_position
        self._last_time = end.last_commit_time or _time(checkpoint.commit_time)
        try:
            recorded = self._log.durable_end()
        except RepositoryError:  # a damaged log/end.json: the checkpoint stands, and is rewritten
            recorded = None
        self._complete_through = _later(
            checkpoint.complete_through, recorded.complete_through if recorded else None
        )
        if end.last_lsn < checkpoint.lsn:
            self._record_gap(end.last_lsn + 1, checkpoint)
        # Read once: kept in memory, written only when it changes (not on every pass).
        self._stopped = bool(self._state.get_meta("capture_stopped"))
        self._opened = True

    def _record_gap(self, first_lost: int, checkpoint: Checkpoint) -> None:
        self._log.append_gap(
            Gap(
                from_lsn=first_lost,
                to_lsn=checkpoint.lsn,
                position=checkpoint.position,
                reason="records made durable earlier are missing from the log",
            )
        )
        segment, offset = self._log.sync()
        self._on_stage("log_synced")
        self._commit(dataclasses.replace(checkpoint, segment=segment, offset=offset))
        self._log_position = self._flushed_log_position = checkpoint.position
        self._gap = (first_lost, checkpoint.lsn)
        log.error("log.gap_recorded", first_lsn=first_lost, last_lsn=checkpoint.lsn)

    # --- one pass --------------------------------------------------------------------

    def drain_once(self) -> DrainResult:
        """Drain everything committed before this call; return what was logged."""
        if not self._opened:
            self.open()
        result = DrainResult()
        # Taken before the fence: every transaction committed by then is at or below it
        # (never earlier than a time already recorded, should the clock step back).
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        started = _later(now, self._complete_through) or now
        try:
            self._follow_schema()
        except CaptureError as exc:
            self._stopped_by(exc)
            raise
        with self._fence_guard():
            fence = self._source.fence()
            self._cuts = self._cuts_of()
        self._pass = (fence, started)
        after = self._state.checkpoint().position
        if after < self._log_position:
            # The log got further than the checkpoint before a crash: bring the key index
            # up to the log first, as a pass of its own, so that a source that cannot tell
            # transactions apart (SQLite) does not mix logged and new changes.
            after = self._stream(after, self._log_position, result)
        while after < fence:
            after = self._stream(after, fence, result)
        if self._stopped:
            self._state.set_meta("capture_stopped", "")
            self._stopped = False
        if self._complete_through != started:  # a quiet pass: nothing flushed it
            self._commit(dataclasses.replace(self._state.checkpoint(), complete_through=started))
            self._complete_through = started
        if self._gap is not None:
            first, last = self._gap
            self._gap = None
            raise LogGapError(
                f"log transactions {first}..{last} had been made durable and are now missing "
                "(the log was truncated or damaged); the gap is recorded and draining went on",
                hint="take a snapshot now (`nkdaemon snapshot`): restores to times after it do "
                "not need the lost transactions",
            )
        return result

    def _stream(self, after: int, upto: int, result: DrainResult) -> int:
        """Drain (after, upto]; a schema change restarts from the last durable batch."""
        for attempt in range(3):
            try:
                self._try_stream(after, upto, result)
                return upto
            except SchemaDrift as drift:
                after = self._abort()
                if attempt == 2:
                    raise CaptureError(
                        f"table {drift.table!r} keeps changing shape ({', '.join(drift.columns)})"
                    ) from None
                self._shapes.refresh(drift)
            except CaptureError as exc:
                self._abort()
                self._stopped_by(exc)
                raise
            except BaseException:
                self._abort()
                raise
        raise AssertionError("unreachable")

    def _stopped_by(self, exc: CaptureError) -> None:
        # Kept for `status` (another process) until a pass gets through again.
        self._state.set_meta("capture_stopped", f"{exc.message} ({exc.hint})")
        self._stopped = True

    def _abort(self) -> int:
        """Forget the batch in hand; return the position the repository has made durable."""
        try:
            self._log.rollback()
        finally:  # the key index must never keep a failed batch's keys
            self._state.rollback()
            self._shapes.rollback()  # nor the shapes the batch moved tables to
            self._log_position = self._flushed_log_position
        return self._state.checkpoint().position

    def _try_stream(self, after: int, upto: int, result: DrainResult) -> None:
        """One read of the queue; durable every batch_transactions transactions."""
        translator = Translator(self._shapes.tables, self._state)
        batch = _Batch()
        tx: _Tx | None = None
        for queued in self._source.read(self._shapes.tables, after, upto, self._cuts):
            if tx is None or queued.position != tx.position:
                if tx is not None:
                    self._finish_tx(tx, translator, batch)
                    if batch.transactions + batch.skipped >= self._batch_transactions:
                        # Durable now; the queue rows go at the end of the read, in one
                        # delete (the queue has no index to find a batch's rows cheaply).
                        self._flush(tx.position, batch, result, delete=False)
                        batch = _Batch()
                tx = self._start_tx(queued)
            change = queued.change
            if isinstance(change, SchemaChange):
                self._schema_change(tx, translator, change)
                continue
            translator.translate(change)
            if tx.append:
                tx.pending.extend(translator.ready())
                if len(tx.pending) >= CHUNK_EVENTS:
                    self._flush_chunk(tx)
        if tx is not None:
            self._finish_tx(tx, translator, batch)
        self._flush(upto, batch, result, delete=True)

    def _flush(self, position: int, batch: _Batch, result: DrainResult, *, delete: bool) -> None:
        """Make a batch durable: log fsync, then the index and checkpoint, then the queue."""
        checkpoint = self._state.checkpoint()
        segment, offset = self._log.sync()
        self._on_stage("log_synced")
        fence, started = self._pass
        complete = started if position >= fence else checkpoint.complete_through
        self._commit(
            Checkpoint(
                lsn=max(batch.lsn, checkpoint.lsn),
                position=position,
                segment=segment,
                offset=offset,
                commit_time=batch.commit_time or checkpoint.commit_time,
                complete_through=complete,
            )
        )
        self._complete_through = complete
        self._flushed_log_position = self._log_position
        self._on_stage("state_committed")
        if delete:
            self._source.delete_through(position)
            self._on_stage("queue_deleted")
        result.transactions += batch.transactions
        result.events += batch.events
        result.skipped += batch.skipped
        if batch.lsn:
            result.last_lsn = batch.lsn
            result.last_commit_time = batch.commit_time
            log.info(
                "drain.batch",
                transactions=batch.transactions,
                events=batch.events,
                last_lsn=batch.lsn,
                skipped=batch.skipped,
            )

    def _commit(self, checkpoint: Checkpoint) -> None:
        """Record a durable end: first in the log's own end file (which a copy of the
        repository without state.db keeps), then with the key index in state.db."""
        self._log.publish_end(checkpoint)
        self._state.commit(checkpoint)

    def _start_tx(self, queued: QueuedChange) -> _Tx:
        append = queued.position > self._log_position
        tx = _Tx(
            position=queued.position,
            txid=queued.txid,
            commit_time=queued.commit_time,
            append=append,
        )
        if append:
            tx.lsn = self._log.next_lsn
        return tx

    def _flush_chunk(self, tx: _Tx) -> None:
        self._log.append_chunk(Chunk(lsn=tx.lsn, part=tx.part, events=tuple(tx.pending)))
        tx.events += len(tx.pending)
        tx.part += 1
        tx.pending = []

    def _finish_tx(self, tx: _Tx, translator: Translator, batch: _Batch) -> None:
        rest = translator.finish()
        if not tx.append:
            batch.skipped += 1
            return
        tx.pending.extend(rest)
        for definition in tx.definitions:
            self._log.append_definition(definition)
        when = self._log_time(tx.commit_time)
        self._log.append_commit(
            Commit(
                lsn=tx.lsn,
                position=tx.position,
                txid=tx.txid,
                commit_time=when,
                parts=tx.part,
                count=tx.events + len(tx.pending),
                events=tuple(tx.pending),
            )
        )
        self._log.roll_if_full()
        self._log_position = tx.position
        self._last_time = when
        batch.transactions += 1
        batch.events += tx.events + len(tx.pending)
        batch.lsn = tx.lsn
        batch.commit_time = encode_time(when)

    def _log_time(self, commit_time: datetime) -> datetime:
        """The commit time to log: never before the previous one (a clock stepped back),
        and after the time through which the log was said to be complete (a SQLite
        transaction whose changes were made before a pass but committed after it)."""
        when = commit_time.astimezone(UTC)
        if self._last_time is not None:
            when = max(when, self._last_time)
        if self._complete_through is not None:
            floor = decode_time(self._complete_through) + timedelta(microseconds=1)
            when = max(when, floor)
        return when

    # --- schema changes ----------------------------------------------------------------

    def _follow_schema(self) -> None:
        """Let the source bring capture in line with the tables' shapes before the fence,
        so what it queued for them is drained in this pass."""
        queued = self._source.follow_schema(self._selects)
        if not queued:
            return
        for change in queued:
            log.warning(
                "capture.schema_followed",
                table=change.name,
                change=change.kind,
                columns=list(change.columns or ()),
                baseline=change.baseline,
            )
        self._shapes.refresh(None)

    def _schema_change(self, tx: _Tx, translator: Translator, change: SchemaChange) -> None:
        """Log the table's definition from this point of the transaction on; its later
        changes are read in the shape it gives."""
        definition = self._shapes.apply(change)
        seed = change.kind == "referenced"  # its shape is the same: no definition logged
        translator.schema_changed(
            change.table,
            baseline=change.baseline,
            spec=self._shapes.tables.get(change.table),
            seed=seed,
        )
        if not tx.append or seed:
            return
        tx.pending.extend(translator.ready())
        tx.definitions.append(
            Definition(
                lsn=tx.lsn,
                table=change.name,
                definition=definition,
                change=change.kind,
                at_event=tx.events + len(tx.pending),
                renamed=change.renamed,
                command=change.command,
            )
        )
        log.info(
            "drain.schema_change",
            table=change.name,
            change=change.kind,
            columns=list(change.columns or ()),
            renamed=[list(pair) for pair in change.renamed],
            baseline=change.baseline,
        )


def _time(text: str | None) -> datetime | None:
    return None if text is None else decode_time(text)


def _later(time: str | None, other: str | None) -> str | None:
    """The later of two ISO 8601 times, either of which may be missing."""
    if time is None or other is None:
        return time or other
    return max(time, other, key=datetime.fromisoformat)
