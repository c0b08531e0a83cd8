"""`nkdaemon restore --target URL (--at TIME | --latest) [--table T]... [--dry-run]
[--create-schema] [--ignore-missing-columns] [--allow-truncated-log]`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import click
import structlog
from sqlalchemy.engine import make_url
from tqdm import tqdm

from nkdaemon.cli import AppContext, pass_app
from nkdaemon.core.errors import (
    LogCorruptionError,
    LogTruncatedError,
    RepositoryError,
    UsageError,
)
from nkdaemon.core.restore_plan import parse_time
from nkdaemon.repository.log_end import DurableEnd
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.runtime.config import canonical_url, redact_url
from nkdaemon.runtime.logging import register_secrets
from nkdaemon.runtime.session import Session
from nkdaemon.services.restore import (
    RestorePlan,
    Restorer,
    RestoreReport,
    open_restore_target,
    plan_restore,
)

log = structlog.get_logger("nkdaemon.restore")

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def register(cli: click.Group) -> None:
    cli.add_command(restore_command)


@click.command("restore")
@click.option("--target", "target_url", required=True, help="Database URL to restore into.")
@click.option("--at", "at_text", help="Point in time, ISO 8601 (no zone: UTC, with a warning).")
@click.option("--latest", is_flag=True, help="The latest logged state.")
@click.option("--table", "tables", multiple=True, help="Restore only this table (repeatable).")
@click.option("--dry-run", is_flag=True, help="Plan, load and check, then roll back.")
@click.option("--create-schema", is_flag=True, help="Create missing tables from the backup.")
@click.option("--prune-target", is_flag=True, help="Delete rows only the target holds.")
@click.option(
    "--no-referenced-rows",
    is_flag=True,
    help="With --table: refuse (listing them) instead of adding the rows of other tables "
    "that the restored rows refer to and the target lacks.",
)
@click.option(
    "--ignore-missing-columns",
    is_flag=True,
    help="Restore into target tables that lack columns the restored instant had, leaving "
    "those values out (counted by table and column in the report).",
)
@click.option(
    "--allow-truncated-log",
    is_flag=True,
    help="If the log is damaged, restore the transactions before the damage (says so loudly).",
)
@pass_app
def restore_command(
    app: AppContext,
    target_url: str,
    at_text: str | None,
    latest: bool,
    tables: tuple[str, ...],
    dry_run: bool,
    create_schema: bool,
    prune_target: bool,
    no_referenced_rows: bool,
    ignore_missing_columns: bool,
    allow_truncated_log: bool,
) -> None:
    """Rebuild the state of any moment into a database whose ids may differ."""
    if bool(at_text) == latest:
        raise UsageError("give exactly one of --at TIME and --latest")
    at: datetime | None = None
    if at_text:
        when = parse_time(at_text)
        if when.assumed_utc:
            click.echo(f"warning: --at {at_text} has no time zone; taken as UTC", err=True)
        at = when.moment
    target_url = canonical_url(target_url)
    register_secrets(_password(target_url))
    with Session(app.settings, writer=False) as session:
        session.require_repository()
        log_store = session.log_store
        if allow_truncated_log:
            log_store = log_store.tolerating_damage()
        end = _durable_end(log_store)
        plan = _plan(session, log_store, at, end, tables)
        for line in plan.describe():
            click.echo(line)
        if at is not None and end is not None and not log_store.damage:
            _say_quiet_tail(at, end)
        _warn_truncated(log_store, end, plan.last_lsn)
        total = plan.snapshot_rows + plan.events
        bar = tqdm(total=total, unit="row", disable=not sys.stderr.isatty(), file=sys.stderr)
        done = {"n": 0}

        def progress(stage: str, n: int) -> None:
            bar.update(n)
            done["n"] += n
            if not sys.stderr.isatty() and done["n"] % 100_000 < n:
                log.info("restore.progress", stage=stage, done=done["n"], total=total)

        with _sqlite_files_kept_only_if_committed(target_url, dry_run=dry_run):
            target = open_restore_target(target_url, plan.snapshot.dialect)
            restorer = Restorer(plan=plan, target=target, log_store=log_store, progress=progress)
            restorer.refuse_missing_references = no_referenced_rows
            restorer.ignore_missing_columns = ignore_missing_columns
            report = restorer.run(
                dry_run=dry_run, create_schema=create_schema, prune_target=prune_target
            )
        bar.close()
    rate = (report.rows_loaded + report.events_applied) / report.seconds if report.seconds else 0
    for note in report.schema_notes:
        click.echo(f"note: --create-schema: {note}")
    _say_shape(report)
    for name, count in report.target_only.items():
        click.echo(f"note: {count} rows of {name} exist only in the target; left alone")
    for name, count in report.referenced_rows_added.items():
        click.echo(
            f"note: added {count} rows of {name} that the restored rows refer to, as they were "
            "then (--no-referenced-rows refuses instead)"
        )
    for name, count in report.pruned.items():
        if count:
            click.echo(f"pruned {count} rows of {name} that only the target held")
    if report.cross_checked:
        click.echo(
            f"cross-checked: every restored table matches the digests snapshot "
            f"{report.cross_checked} recorded from the source at this position"
        )
    verdict = "checked, then rolled back (--dry-run)" if dry_run else "committed"
    if log_store.damage:
        verdict = f"the log's intact prefix only; {verdict}"
    click.echo(
        f"{report.rows_loaded} snapshot rows and {report.events_applied} logged changes into "
        f"{redact_url(target_url)}: counts and checksums match; {verdict} "
        f"({report.seconds:.1f} s, {rate:.0f} rows/s)"
    )
    _warn_truncated(log_store, end, plan.last_lsn)


def _say_shape(report: RestoreReport) -> None:
    """What the target's and the instant's shapes made of the values: nothing is left out
    without a line here."""
    for name, columns in sorted(report.target_only_columns.items()):
        click.echo(
            f"note: {name}: column {', '.join(columns)} is not in the restored instant; "
            "the target's default filled it"
        )
    for name, types in sorted(report.converted_columns.items()):
        listed = ", ".join(f"{column} ({sql_type})" for column, sql_type in sorted(types.items()))
        click.echo(
            f"note: {name}: column {listed} has another type in the target than at the "
            "restore time; the target converted the values, and validation read them back "
            "in the backup's type (a value that does not convert exactly counts as different)"
        )
    for name, columns in sorted(report.skipped_columns.items()):
        click.echo(
            f"warning: --ignore-missing-columns: the target's {name} lacks column "
            f"{', '.join(columns)}; validation compared the other columns only"
        )
    for (name, column), count in sorted(report.dropped_values.items()):
        click.echo(
            f"warning: dropped {count} non-NULL values of {name}.{column} (not in the target)"
        )
    for (name, column), count in sorted(report.lacking_values.items()):
        click.echo(
            f"warning: the log holds no value of {name}.{column} for {count} rows (added "
            "with a default and no baseline logged): written as NULL"
        )
    for (name, column), count in sorted(report.unplaced_values.items()):
        click.echo(
            f"warning: the log holds {count} values of {name}.{column}, a column its "
            "definition did not have then: left out"
        )


def _durable_end(log_store: SegmentLog) -> DurableEnd | None:
    try:
        return log_store.durable_end()
    except RepositoryError as exc:
        raise RepositoryError(
            f"{exc.message}; nothing was written to the target", hint=exc.hint
        ) from None


def _plan(
    session: Session,
    log_store: SegmentLog,
    at: datetime | None,
    end: DurableEnd | None,
    tables: tuple[str, ...],
) -> RestorePlan:
    """The plan, which reads every log record the restore needs: damage found here stops
    the restore before the target is touched."""
    try:
        return plan_restore(
            snapshots_dir=session.snapshots,
            log_store=log_store,
            at=at,
            last_logged=None if end is None else end.covered_until(),
            tables=tables,
        )
    except (LogCorruptionError, LogTruncatedError) as exc:
        raise RepositoryError(
            f"{exc.message}\nnothing was written to the target",
            hint="restore from an intact copy of the repository, or pass --allow-truncated-log "
            "to restore only the transactions before the damage",
        ) from None


def _say_quiet_tail(at: datetime, end: DurableEnd) -> None:
    last = end.commit_time
    if last is not None and at > datetime.fromisoformat(last):
        click.echo(
            f"  no change between the last logged commit ({last}) and {at.isoformat()}: "
            f"the log is complete through {end.complete_through}"
        )


def _warn_truncated(log_store: SegmentLog, end: DurableEnd | None, last_lsn: int | None) -> None:
    """Said before the restore and again after it, on stderr, so that no one misses it."""
    if not log_store.damage:
        return
    upto = f"transaction {last_lsn}" if last_lsn else "the snapshot (no logged transaction)"
    held = "" if end is None else f", of the {end.lsn} the repository made durable"
    for damage in log_store.damage:
        click.echo(f"WARNING: {damage}", err=True)
    click.echo(
        f"WARNING: --allow-truncated-log: restoring the intact prefix of the log only, up to "
        f"{upto}{held}; every later transaction is NOT in the target",
        err=True,
    )


@contextlib.contextmanager
def _sqlite_files_kept_only_if_committed(url: str, *, dry_run: bool) -> Iterator[None]:
    """Opening a SQLite target creates its file: a restore that rolls back (--dry-run, or a
    failure) removes the files it created, leaving the folder as it was."""
    path = _sqlite_path(url)
    files = [] if path is None else [path, *(Path(f"{path}{s}") for s in SQLITE_SIDE_FILES)]
    new = [f for f in files if not f.exists()]
    committed = False
    try:
        yield
        committed = not dry_run
    finally:
        if not committed:
            for file in new:
                file.unlink(missing_ok=True)


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases, in-memory and URI forms)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return None if database.startswith("file:") else Path(database)


def _password(url: str) -> list[str]:
    try:
        password = make_url(url).password
    except Exception:
        return []
    return [str(password)] if password else []
