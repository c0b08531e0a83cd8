"""`nkdaemon demo`."""

from __future__ import annotations

from pathlib import Path

import click

from nkdaemon.runtime.demo import run_demo


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for the example database and repository (default: a new temp folder).",
    )
    def demo(directory: Path | None) -> None:
        """Run the whole cycle on the EDMS example in SQLite, with nothing to set up."""
        root = run_demo(directory, click.echo)
        click.echo(f"done; everything is in {root}")
