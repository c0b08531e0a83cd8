"""The command line: thin commands that parse, call a service, and render."""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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

    def repository_path(self) -> Path | None:
        """The repository folder, if the configuration has been loaded."""
        return None if self._settings is None else self._settings.repository.path

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
        except OSError as exc:
            if not is_permission_error(exc):
                self._unexpected(ctx, exc)
            message, hint = permission_message(exc, ctx.obj)
            click.echo(redact(f"error: {message}"), err=True)
            click.echo(redact(f"  hint: {hint}"), err=True)
            ctx.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            self._unexpected(ctx, exc)

    @staticmethod
    def _unexpected(ctx: click.Context, exc: Exception) -> NoReturn:
        if ctx.obj is not None and getattr(ctx.obj, "verbose", 0) > 1:
            raise exc
        click.echo(redact(f"error: unexpected {type(exc).__name__}: {exc}"), err=True)
        click.echo(
            "  hint: this is a bug in nkdaemon; run again with -vv for the traceback and report it",
            err=True,
        )
        ctx.exit(1)


def is_permission_error(exc: OSError) -> bool:
    """Permission denied, or a read-only file system: the user's setup, not a bug."""
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def permission_message(exc: OSError, app: AppContext | None) -> tuple[str, str]:
    """(message, hint) naming the file, its folder, the access it lacked and the user."""
    path = Path(exc.filename) if exc.filename else None
    user = _user()
    why = "the file system is read-only" if exc.errno == errno.EROFS else "permission denied"
    if path is None:
        return (
            f"{why} (as user {user}): {exc.strerror}",
            "check the permissions of the files named above",
        )
    if path.exists() and not os.access(path, os.R_OK):
        what = f"cannot read {path}"
    elif exc.errno == errno.EROFS or not os.access(path.parent, os.W_OK):
        what = f"cannot write in the folder {path.parent} ({path.name})"
    else:
        what = f"cannot write {path}"
    hint = (
        f"run the command as a user who may do that (the folder's owner is "
        f"{_owner(path.parent)}), or change the permissions"
    )
    repository = app.repository_path() if app is not None else None
    if repository is not None and path.resolve().is_relative_to(repository.resolve()):
        hint += (
            f"; the repository {repository} is read-only for {user}: `status`, `verify`, "
            "`history` and `restore` work on it as it is, while `install`, `drain`, `run` "
            "and `snapshot` write to it"
        )
    return f"{what}: {why} (as user {user})", hint


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owner(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return "unknown"


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
        prune_cmd,
        restore_cmd,
        run_cmd,
        snapshot_cmd,
        status_cmd,
        systemd_cmd,
        verify_cmd,
    )

    for module in (
        init_cmd,
        capture_cmds,
        run_cmd,
        snapshot_cmd,
        prune_cmd,
        restore_cmd,
        status_cmd,
        history_cmd,
        verify_cmd,
        systemd_cmd,
        import_cmd,
        export_cmd,
        demo_cmd,
    ):
        module.register(cli)


_register_commands()
