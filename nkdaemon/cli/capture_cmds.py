"""`nkdaemon install`, `uninstall`, `drain`."""

from __future__ import annotations

import click

from nkdaemon.cli import AppContext, echo_json, pass_app
from nkdaemon.cli.progress import stage_bars
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install, uninstall


def register(cli: click.Group) -> None:
    cli.add_command(install_command)
    cli.add_command(uninstall_command)
    cli.add_command(drain_command)


@click.command("install")
@click.option(
    "--take-over",
    is_flag=True,
    help="Move capture here from the repository that captures the source now (it then "
    "receives no more changes).",
)
@pass_app
def install_command(app: AppContext, take_over: bool) -> None:
    """Add the capture schema and triggers to the source (idempotent)."""
    with Session(app.settings, writer=True) as session, stage_bars() as progress:
        result = install(
            session.settings,
            engine=session.engine,
            source=session.source,
            layout=session.layout,
            state=session.state,
            log_store=session.log_store,
            take_over=take_over,
            progress=progress,
        )
    if result.taken_from is not None:
        click.echo(
            f"capture taken over from {result.taken_from.describe()}; that repository "
            "receives no more changes"
        )
    click.echo(
        f"capture installed on {len(result.tables)} tables ({', '.join(result.tables)}); "
        f"{result.seeded_rows} existing rows indexed"
        + ("; history starts here" if result.rebaselined else "")
    )


@click.command("uninstall")
@click.option(
    "--force",
    is_flag=True,
    help="Discard changes that have not reached the log, and remove capture even when it "
    "feeds another repository.",
)
@pass_app
def uninstall_command(app: AppContext, force: bool) -> None:
    """Remove the capture schema and triggers from the source (idempotent)."""
    with Session(app.settings, writer=False) as session:
        ours = session.state.get_meta("installation_id")
        discarded = uninstall(session.source, ours=ours, force=force)
    suffix = f" ({discarded} queued changes discarded)" if discarded else ""
    click.echo(f"capture removed from the source{suffix}")


@click.command("drain")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def drain_command(app: AppContext, as_json: bool) -> None:
    """One pass of the daemon's drain: queue -> log, then exit."""
    with Session(app.settings, writer=True) as session:
        result = session.drainer().drain_once()
    if as_json:
        echo_json(
            {
                "transactions": result.transactions,
                "events": result.events,
                "last_lsn": result.last_lsn,
                "last_commit_time": result.last_commit_time,
            }
        )
    else:
        click.echo(
            f"drained {result.transactions} transactions ({result.events} events)"
            + (f"; log now ends at transaction {result.last_lsn}" if result.last_lsn else "")
        )
