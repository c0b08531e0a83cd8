"""The command line: thin commands that parse, call a service, and render."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from nkdaemon import __version__
from nkdaemon.core.errors import NkdError
from nkdaemon.runtime.config import Settings, find_config, load_settings
from nkdaemon.runtime.logging import configure_logging, redact

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """Per-invocation state: where the configuration is, loaded on first use."""

    def __init__(self, config: str | None, verbose: int) -> None:
        self.config_path = find_config(config)
        self.verbose = verbose
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
            level = "debug" if self.verbose else self._settings.logging.level
            configure_logging(level, self._settings.logging.format)
        return self._settings


pass_app = click.make_pass_decorator(AppContext)


class NkdGroup(click.Group):
    """Turns nkdaemon errors into a message, a hint and an exit code: never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NkdError as exc:
            click.echo(redact(f"error: {exc.message}"), err=True)
            if exc.hint:
                click.echo(redact(f"  hint: {exc.hint}"), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.obj is not None and getattr(ctx.obj, "verbose", 0) > 1:
                raise
            click.echo(
                redact(f"error: unexpected {type(exc).__name__}: {exc}"),
                err=True,
            )
            click.echo(
                "  hint: this is a bug in nkdaemon; run again with -vv for the traceback and "
                "report it",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=NkdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False),
    help="Configuration file (default: $NKDAEMON_CONFIG, else ./nkdaemon.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv: tracebacks).")
@click.version_option(__version__, prog_name="nkdaemon")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int) -> None:
    """Natural-key change-capture backups for PostgreSQL and SQLite."""
    configure_logging("debug" if verbose else "warning", "auto")
    ctx.obj = AppContext(config, verbose)


def main() -> None:
    cli.main(prog_name="nkdaemon", standalone_mode=True)


def echo_json(data: Any) -> None:
    import json

    click.echo(redact(json.dumps(data, indent=2, ensure_ascii=False, default=str)))


def here() -> Path:
    return Path.cwd()


def _register_commands() -> None:
    from nkdaemon.cli import (
        capture_cmds,
        demo_cmd,
        export_cmd,
        history_cmd,
        import_cmd,
        init_cmd,
        restore_cmd,
        run_cmd,
        snapshot_cmd,
        status_cmd,
        verify_cmd,
    )

    for module in (
        init_cmd,
        capture_cmds,
        run_cmd,
        snapshot_cmd,
        restore_cmd,
        status_cmd,
        history_cmd,
        verify_cmd,
        import_cmd,
        export_cmd,
        demo_cmd,
    ):
        module.register(cli)


_register_commands()
