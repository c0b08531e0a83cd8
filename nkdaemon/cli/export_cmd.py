"""`nkdaemon export (--at TIME | --latest) [--table T]... [--format django] [-o FILE]`."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
from tqdm import tqdm

from nkdaemon.cli import AppContext, pass_app
from nkdaemon.core.errors import UsageError
from nkdaemon.core.legacy import ModelMap
from nkdaemon.core.restore_plan import parse_time
from nkdaemon.runtime.session import Session
from nkdaemon.services.export import export_fixture
from nkdaemon.services.fixture_io import write_fixture
from nkdaemon.services.restore import plan_restore


def register(cli: click.Group) -> None:
    cli.add_command(export_command)


@click.command("export")
@click.option("--at", "at_text", help="Point in time, ISO 8601 (no zone: UTC, with a warning).")
@click.option("--latest", is_flag=True, help="The latest logged state.")
@click.option("--table", "tables", multiple=True, help="Export only this table (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["django"]), default="django", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (.gz/.bz2/.xz/.zst compress) instead of standard output.",
)
@pass_app
def export_command(
    app: AppContext,
    at_text: str | None,
    latest: bool,
    tables: tuple[str, ...],
    fmt: str,
    output: Path | None,
) -> None:
    """Write the state at TIME as a Django fixture with natural keys (`manage.py loaddata`).

    Reads the local repository, or the bucket when the configuration names one and this
    machine has no spool."""
    if bool(at_text) == latest:
        raise UsageError("give exactly one of --at TIME and --latest")
    at: datetime | None = None
    if at_text:
        when = parse_time(at_text)
        if when.assumed_utc:
            click.echo(f"warning: --at {at_text} has no time zone; taken as UTC", err=True)
        at = when.moment
    say = click.echo if output is not None else _to_stderr
    with Session(app.settings, writer=False) as session:
        session.require_repository()
        plan = plan_restore(
            snapshots_dir=session.snapshots,
            log_store=session.log_store,
            at=at,
            last_logged=_last_logged(session),
            tables=tables,
        )
        for line in plan.describe():
            say(line.replace("restore ", "export ", 1))
        bar = tqdm(
            total=plan.snapshot_rows,
            unit="row",
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
        )
        with write_fixture(output) as out:
            report = export_fixture(
                plan=plan,
                log_store=session.log_store,
                model_map=ModelMap(explicit=app.settings.legacy.models),
                out=out,
                progress=bar.update,
            )
        bar.close()
    for label, (table, rows) in sorted(report.models.items()):
        say(f"  {label:40} <- {table:28} {rows:>10} rows")
    rate = report.rows / report.seconds if report.seconds else 0.0
    where = str(output) if output is not None else "standard output"
    say(f"exported {report.rows} rows to {where} in {report.seconds:.1f} s ({rate:.0f} rows/s)")


def _last_logged(session: Session) -> datetime | None:
    """The latest instant the log read (spool or bucket) holds every change up to: its
    durable end's last commit, or the later time a drain found the queue empty (a quiet
    source); as restore takes it."""
    end = session.log_store.durable_end()
    return None if end is None else end.covered_until()


def _to_stderr(message: str) -> None:
    click.echo(message, err=True)
