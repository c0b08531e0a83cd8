"""`nkdaemon run`: the daemon."""

from __future__ import annotations

import click

from nkdaemon.cli import AppContext, pass_app
from nkdaemon.runtime.daemon import Daemon
from nkdaemon.runtime.logging import configure_logging


def register(cli: click.Group) -> None:
    cli.add_command(run_command)


@click.command("run")
@pass_app
def run_command(app: AppContext) -> None:
    """Drain continuously, snapshot on schedule, serve health; stop with SIGTERM."""
    settings = app.settings
    configure_logging("debug" if app.verbose else settings.logging.level, settings.logging.format)
    code = Daemon(app.config_path, settings).run()
    raise SystemExit(code)
