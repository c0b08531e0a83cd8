"""`nkdaemon prune [--dry-run]`."""

from __future__ import annotations

import click

from nkdaemon.cli import AppContext, pass_app
from nkdaemon.runtime.retention import prune_configured
from nkdaemon.services.prune import PruneResult


def register(cli: click.Group) -> None:
    cli.add_command(prune_command)


@click.command("prune")
@click.option(
    "--dry-run", is_flag=True, help="List what would be deleted, and why; delete nothing."
)
@pass_app
def prune_command(app: AppContext, dry_run: bool) -> None:
    """Delete the snapshots and log segments no restore point kept by [retention] needs.

    Works on the repository, or on the spool and the bucket; the newest snapshot, the log
    after it and the open segment are never deleted. May run while the daemon runs."""
    for result in prune_configured(app.settings, dry_run=dry_run):
        _render(result)


def _render(result: PruneResult) -> None:
    plan = result.plan
    verb = "would delete" if result.dry_run else "deleted"
    for deletion in (*plan.deletions, *result.remains, *result.ends):
        click.echo(f"{result.where}: {verb} {deletion.kind} {deletion.name}: {deletion.reason}")
    for deletion in result.held:
        click.echo(f"{result.where}: kept {deletion.kind} {deletion.name}: {deletion.reason}")
    since = plan.oldest_restorable.isoformat() if plan.oldest_restorable else "nothing"
    click.echo(
        f"{result.where}: {verb} {len(plan.deletions)}; kept {len(plan.kept_snapshots)} "
        f"snapshots and {len(plan.kept_segments)} segments; restorable from {since}"
    )
