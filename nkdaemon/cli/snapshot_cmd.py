"""`nkdaemon snapshot`."""

from __future__ import annotations

import click

from nkdaemon.cli import AppContext, echo_json, pass_app
from nkdaemon.cli.progress import stage_bars
from nkdaemon.core.errors import NotInstalledError
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from nkdaemon.services.snapshot import take_snapshot


def register(cli: click.Group) -> None:
    cli.add_command(snapshot_command)


@click.command("snapshot")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot's manifest summary.")
@click.option("--force", is_flag=True, help="Take one even if nothing changed since the last.")
@pass_app
def snapshot_command(app: AppContext, as_json: bool, force: bool) -> None:
    """Write a consistent snapshot of every captured table now (writers may go on).

    None is written when the source has not changed since the newest snapshot: it stands
    for now too (and is marked current), and retention keeps older restore points."""
    with Session(app.settings, writer=False) as session, stage_bars() as progress:
        session.layout.require()
        installation = session.state.get_meta("installation_id")
        if installation is None:
            raise NotInstalledError(
                "this repository has no capture installation", hint="run `nkdaemon install`"
            )
        result = take_snapshot(
            source=session.source,
            tables=dict(load_registry(session.engine, session.settings, session.source).tables),
            directory=session.layout.snapshots_dir,
            installation=installation,
            log_lsn=lambda: session.state.checkpoint().lsn,
            cuts=session.cuts,
            force=force,
            log_store=session.log_store,
            progress=progress,
        )
    info = result.info
    rows = sum(t.rows for t in info.tables)
    if as_json:
        echo_json(
            {
                "id": info.id,
                "time": info.time,
                "position": info.position,
                "rows": rows,
                "taken": result.taken,
                "note": result.note,
            }
        )
        return
    if result.note:
        click.echo(result.note)
    if result.taken:
        click.echo(
            f"snapshot {info.id}: {rows} rows in {len(info.tables)} tables, "
            f"source position {info.position}, as of {info.time}"
        )
