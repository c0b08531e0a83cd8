"""`nkdaemon status [--json]`."""

from __future__ import annotations

from typing import Any

import click

from nkdaemon.cli import AppContext, echo_json, pass_app
from nkdaemon.runtime.replicate_loop import bucket_store
from nkdaemon.runtime.session import Session
from nkdaemon.services.status import collect_status


def register(cli: click.Group) -> None:
    cli.add_command(status_command)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status_command(app: AppContext, as_json: bool) -> None:
    """Lag, queue depth, last logged transaction, snapshots, log size.

    With a bucket, how far it is behind the spool; on a machine with no spool, what the
    bucket holds (a configuration naming only the bucket is enough)."""
    settings = app.settings
    bucket = settings.repository.bucket
    with Session(settings, writer=False) as session:
        status = collect_status(
            session,
            source_name=settings.source.redacted_url,
            bucket=None if bucket is None else bucket.url,
            bucket_objects=bucket_store(bucket) if session.from_bucket and bucket else None,
            max_replication_lag=settings.health.max_replication_lag_seconds,
            source_configured=settings.source.configured,
        )
    if as_json:
        echo_json(status)
    else:
        depth = status["queue_depth"]
        lag = status["lag_seconds"]
        click.echo(f"source       {status['source']}")
        click.echo(f"repository   {status['repository']}")
        click.echo(f"queue        {'unknown' if depth is None else f'{depth} changes waiting'}")
        click.echo(f"lag          {'unknown' if lag is None else f'{lag:.1f} s'}")
        click.echo(
            f"last logged  transaction {status['last_lsn']}"
            + (f" committed {status['last_commit_time']}" if status["last_commit_time"] else "")
        )
        complete = status["complete_through"]
        click.echo(f"complete     {'unknown' if complete is None else f'through {complete}'}")
        click.echo(f"log          {status['log_bytes']} bytes in {status['log_segments']} segments")
        click.echo(f"snapshots    {len(status['snapshots'])}")
        if "replication" in status:
            _replication_lines(status["replication"])
        mode = status.get("capture_mode")
        if mode:
            click.echo(f"schema       changes followed: {mode}")
        for imported in status.get("imported_snapshots", []):
            click.echo(
                f"imported     {imported['time']}  {imported['rows']} rows from "
                f"{imported.get('file', '?')} (restore point at that instant only)"
            )
        for note in status["notes"]:
            click.echo(f"note         {note}")
        for error in status["errors"]:
            click.echo(f"problem      {error}", err=True)
    if status["errors"]:
        raise SystemExit(1)


def _replication_lines(replication: dict[str, Any]) -> None:
    click.echo(f"bucket       {replication['bucket']}")
    if replication.get("read_from") == "bucket":
        if "replicated_lsn" in replication:
            committed = replication["replicated_commit_time"]
            click.echo(
                f"replicated   transaction {replication['replicated_lsn']}"
                + (f" committed {committed}" if committed else "")
                + " (read from the bucket: how far it is behind is known where the spool is)"
            )
        return
    if replication.get("lag_seconds") is None:
        return
    click.echo(
        f"replicated   transaction {replication['replicated_lsn']}, behind by "
        f"{replication['lag_seconds']:.1f} s and {replication['lag_bytes']} bytes"
        + (
            f" ({replication['snapshots_waiting']} snapshots waiting)"
            if replication["snapshots_waiting"]
            else ""
        )
    )
    click.echo(f"spool        {replication['spool_bytes']} bytes")
