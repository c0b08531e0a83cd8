"""`nkdaemon init`: write a commented starter configuration."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from nkdaemon.core.errors import UsageError
from nkdaemon.core.settings import toml_string

STARTER = """\
# nkdaemon configuration. Every setting is shown; the commented ones have their default.

[source]
# Any SQLAlchemy URL. PostgreSQL: "postgresql+psycopg://app@127.0.0.1:5432/edms"
# (prefer a password file or PGPASSWORD over a password in the URL).
url = {url}
# schema = "public"          # PostgreSQL schema of the captured tables

[repository]
# Where the event log, snapshots and key index live (relative to this file).
path = {repository}
# segment_size = "64MiB"     # log segment size

[capture]
tables = ["*"]               # globs of tables to capture
# exclude = []               # globs of tables to leave out
# key_cache_size = 100000    # id -> natural key LRU cache entries
# batch_transactions = 1000 # source transactions per durable batch (one fsync each)
# poll_interval = "1s"       # how often the daemon looks for changes without a wake-up
# min_pass_interval = "200ms" # least time between passes, however often woken

# A table with no unique NOT NULL constraint needs its natural key declared:
# [tables.documents]
# natural_key = ["document_number"]   # a foreign-key column stands for the referenced row's key
# A table whose rows have no identity at all can be captured as whole rows:
# [tables.audit_trail]
# identity = "full"

[snapshots]
schedule = "0 3 * * *"       # cron (UTC), or an interval such as "6h"
# keep = 7                   # snapshots to keep

[health]
listen = "127.0.0.1:8787"    # /healthz /readyz /metrics /status
# max_lag = "60s"            # /readyz fails when changes wait longer than this
# max_snapshot_age = "26h"   # /readyz fails when the newest snapshot is older

[log]
# level = "info"             # debug, info, warning, error
# format = "auto"            # auto (JSON unless on a terminal), json, console
"""


def register(cli: click.Group) -> None:
    @cli.command("init")
    @click.option(
        "--source", "url", default="sqlite:///app.db", show_default=True, help="Source URL."
    )
    @click.option(
        "--repository", default="nkdaemon-repo", show_default=True, help="Repository path."
    )
    @click.option("--force", is_flag=True, help="Overwrite an existing file.")
    @click.argument("path", required=False, type=click.Path(dir_okay=False))
    @click.pass_context
    def init(ctx: click.Context, url: str, repository: str, force: bool, path: str | None) -> None:
        """Write a commented starter configuration (default ./nkdaemon.toml)."""
        target = Path(path or "nkdaemon.toml")
        if target.exists() and not force:
            raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
        target.write_text(STARTER.format(url=toml_string(url), repository=toml_string(repository)))
        install = (
            "nkdaemon install"
            if path is None
            else f"nkdaemon --config {shlex.quote(str(target))} install"
        )
        if ctx.get_parameter_source("url") is ParameterSource.DEFAULT:
            click.echo(f"wrote {target}; edit [source] url, then run `{install}`")
        else:
            click.echo(f"wrote {target}; next: `{install}`")
