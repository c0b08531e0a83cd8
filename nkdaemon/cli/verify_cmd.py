"""`nkdaemon verify [--source]`."""

from __future__ import annotations

import click

from nkdaemon.cli import AppContext, is_permission_error, pass_app, permission_message
from nkdaemon.core.errors import LockHeldError
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from nkdaemon.services.verify import VerifyReport, verify_log, verify_snapshots, verify_source


def register(cli: click.Group) -> None:
    cli.add_command(verify_command)


@click.command("verify")
@click.option("--source", "with_source", is_flag=True, help="Also compare with the live source.")
@pass_app
def verify_command(app: AppContext, with_source: bool) -> None:
    """Check every log segment and snapshot; with --source, that the log reproduces the source."""
    report = VerifyReport()
    if with_source:
        try:  # bring the log up to date first, unless the daemon is doing it
            with Session(app.settings, writer=True) as session:
                session.drainer().drain_once()
        except LockHeldError:
            pass
        except OSError as exc:  # a read-only copy: compare with what the log holds
            if not is_permission_error(exc):
                raise
            message, _hint = permission_message(exc, app)
            click.echo(f"note: not draining first ({message})", err=True)
    with Session(app.settings, writer=False) as session:
        session.require_repository()
        captured = [s for s in list_snapshots(session.snapshots) if s.imported is None]
        needed_from = min((s.log_lsn + 1 for s in captured), default=1)
        verify_log(session.log_store, report, needed_from=needed_from)
        snapshots = verify_snapshots(
            session.snapshots,
            report,
            log_store=session.log_store,
            logged_position=session.logged_position(),
        )
        if with_source and not report.problems:
            verify_source(
                source=session.source,
                tables=dict(load_registry(session.engine, session.settings, session.source).tables),
                snapshots=snapshots,
                log_store=session.log_store,
                logged_position=session.logged_position(),
                report=report,
            )
    click.echo(
        f"log: {report.segments} segments, {report.transactions} transactions; "
        f"snapshots: {report.snapshots}"
    )
    for note in report.notes:
        click.echo(f"checked: {note}")
    end = report.durable_end
    if end is not None:
        click.echo(
            f"durable end: {end.describe()}; complete through {end.complete_through or 'unknown'}"
        )
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    for diff in report.diffs:
        click.echo(("ok      " if diff.ok else "DIFFERS ") + diff.summary())
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo("verified: no problem found")
