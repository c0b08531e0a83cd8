"""`nkdaemon systemd-unit`: the systemd unit for this installation, with its real paths.

pip puts the `nkdaemon` command wherever the interpreter lives (a virtualenv, /usr/local,
~/.local), so the unit under systemd/ is a template: this command fills in the command
that runs this very installation, the configuration file and the repository folder (the
only place ProtectSystem=strict leaves writable).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nkdaemon.cli import AppContext, pass_app

# Folders the unit's sandbox hides from the service, and the setting that hides them.
HIDDEN = {
    Path("/home"): "ProtectHome=true",
    Path("/root"): "ProtectHome=true",
    Path("/run/user"): "ProtectHome=true",
    Path("/tmp"): "PrivateTmp=true",
    Path("/var/tmp"): "PrivateTmp=true",
}


def register(cli: click.Group) -> None:
    cli.add_command(systemd_unit_command)


@click.command("systemd-unit")
@click.option("--user", default="nkdaemon", show_default=True, help="User and group to run as.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the unit to this file (default: standard output).",
)
@pass_app
def systemd_unit_command(app: AppContext, user: str, output: Path | None) -> None:
    """Print the systemd unit that runs this nkdaemon installation as a service.

    ExecStart is the command of this installation (wherever pip installed it); with a
    configuration file (--config, $NKDAEMON_CONFIG or ./nkdaemon.toml), the unit points
    at it and lets the daemon write its repository folder. Install it with
    `nkdaemon --config /etc/nkdaemon/nkdaemon.toml systemd-unit -o
    /etc/systemd/system/nkdaemon.service && systemctl daemon-reload`.
    """
    run = command()
    values = {"ExecStart": f"{systemd_quote(*run)} run", "User": user, "Group": user}
    paths = [Path(run[0])]
    if app.config_path.exists():
        config = app.config_path.resolve()
        repository = app.settings.repository.path.resolve()
        values["Environment"] = systemd_quote(f"NKDAEMON_CONFIG={config}")
        values["ReadWritePaths"] = systemd_quote(str(repository))
        paths += [config, repository]
    else:
        click.echo(
            f"note: no configuration file at {app.config_path}; the unit reads "
            "/etc/nkdaemon/nkdaemon.toml and may write /var/lib/nkdaemon only",
            err=True,
        )
    unit = fill_unit(unit_template(), values)
    for path in paths:
        for folder, setting in HIDDEN.items():
            if path.is_relative_to(folder):
                click.echo(
                    f"warning: {path} is under {folder}, which {setting} hides from the "
                    "service; put nkdaemon and its files elsewhere (e.g. a virtualenv in "
                    "/opt/nkdaemon, the repository in /var/lib/nkdaemon)",
                    err=True,
                )
    if output is None:
        click.echo(unit, nl=False)
    else:
        output.write_text(unit, encoding="utf-8")
        click.echo(
            f"wrote {output}; then: systemctl daemon-reload && systemctl enable --now nkdaemon"
        )


def command() -> tuple[str, ...]:
    """The command that runs this installation: its console script beside the interpreter,
    else the interpreter with ``-m nkdaemon``."""
    script = Path(sys.executable).parent / "nkdaemon"
    if script.is_file():
        return (str(script),)
    return (sys.executable, "-m", "nkdaemon")


def unit_template() -> str:
    """systemd/nkdaemon.service (in the wheel, or the source tree)."""
    here = Path(__file__).resolve().parent.parent
    for path in (
        here / "_systemd" / "nkdaemon.service",
        here.parent / "systemd" / "nkdaemon.service",
    ):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError("systemd/nkdaemon.service is missing from this installation")


def fill_unit(template: str, values: dict[str, str]) -> str:
    """The template with the value of each named setting replaced (``Environment``: the
    one that sets NKDAEMON_CONFIG)."""
    lines = []
    for line in template.splitlines(keepends=True):
        key, sep, value = line.partition("=")
        if sep and key in values and (key != "Environment" or "NKDAEMON_CONFIG=" in value):
            line = f"{key}={values[key]}\n"
        lines.append(line)
    return "".join(lines)


def systemd_quote(*words: str) -> str:
    """Words as systemd reads them: quoted where they hold spaces or quotes, % doubled."""
    out = []
    for word in words:
        word = word.replace("%", "%%")
        if any(c in word for c in " \t\"'\\"):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(word)
    return " ".join(out)
