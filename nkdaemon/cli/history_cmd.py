"""`nkdaemon history TABLE KEY=VALUE...`."""

from __future__ import annotations

import json

import click

from nkdaemon.cli import AppContext, echo_json, pass_app
from nkdaemon.core.errors import UsageError
from nkdaemon.core.events import OP_NAMES
from nkdaemon.core.history import HistoryTracker, RowHistory
from nkdaemon.repository.reader import LogMarker, read_log
from nkdaemon.runtime.session import Session


def register(cli: click.Group) -> None:
    cli.add_command(history_command)


def parse_selector(pairs: tuple[str, ...]) -> dict[str, str]:
    selector: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(
                f"{pair!r} is not KEY=VALUE",
                hint="e.g. `nkdaemon history users username=alice`; nested keys use dots: "
                "user_id.username=alice",
            )
        selector[name] = value
    return selector


@click.command("history")
@click.argument("table")
@click.argument("pairs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def history_command(app: AppContext, table: str, pairs: tuple[str, ...], as_json: bool) -> None:
    """Every change of one row, by natural key, across renames."""
    selector = parse_selector(pairs)
    tracker = HistoryTracker(table)
    with Session(app.settings, writer=False) as session:
        session.layout.require()
        for item in read_log(session.log_store):
            if isinstance(item, LogMarker):
                if item.kind == "epoch":
                    tracker.new_epoch()
                continue
            tracker.feed(item.lsn, item.commit_time, item.events)
    rows = tracker.matching(selector)
    if as_json:
        echo_json([[entry.__dict__ for entry in row.entries] for row in rows])
        return
    if not rows:
        click.echo(f"no change of {table} matching {' '.join(pairs)} is in the log")
        raise SystemExit(1)
    for number, row in enumerate(rows, start=1):
        _render(table, number, row)


def _render(table: str, number: int, row: RowHistory) -> None:
    keys = " -> ".join(
        json.dumps(k, ensure_ascii=False)
        for k in row.keys()  # noqa: SIM118 - RowHistory.keys() is a method, not dict.keys()
    )
    click.echo(f"{table} row {number}: {keys}")
    for entry in row.entries:
        what = OP_NAMES.get(entry.op, entry.op)
        line = f"  tx {entry.lsn:<8} {entry.commit_time}  {what:<8}"
        if entry.old_key is not None:
            line += f" key {json.dumps(entry.old_key, ensure_ascii=False)} -> "
            line += json.dumps(entry.key, ensure_ascii=False)
        if entry.row is not None:
            line += f" {json.dumps(entry.row, ensure_ascii=False)}"
        elif entry.op == "D":
            line += f" {json.dumps(entry.key, ensure_ascii=False)}"
        click.echo(line)
