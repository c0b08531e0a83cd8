"""`nkdaemon history TABLE KEY=VALUE...`."""

from __future__ import annotations

import json
from typing import Any

import click

from nkdaemon.cli import AppContext, echo_json, pass_app
from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.errors import UsageError
from nkdaemon.core.history import HistoryEntry, HistoryTracker, RowHistory
from nkdaemon.core.log import OP_NAMES, Epoch, Gap, encode_time
from nkdaemon.repository.reader import read_log
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.session import Session

# Besides row changes: a schema change of the table, and a row as a baseline after one.
ENTRY_NAMES = {**OP_NAMES, "S": "schema", "B": "baseline"}


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
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def history_command(app: AppContext, table: str, pairs: tuple[str, ...], as_json: bool) -> None:
    """Every change of one row of TABLE, found by its natural key, across renames.

    Each KEY=VALUE names one part of the row's natural key and its value, compared as
    text; parts left out match anything, and a row matches if any key it ever had does.
    A foreign key in a natural key stands for the referenced row's own key: reach into
    it with dots, one step per level.

    \b
    Examples:
      nkdaemon history users username=alice
      nkdaemon history user_roles user_id.username=alice role_id.name=admin
      nkdaemon history document_states workflow_id.name=review code=draft
    """
    selector = parse_selector(pairs)
    tracker = HistoryTracker(table)
    logged: set[str] = set()
    with Session(app.settings, writer=False) as session:
        session.require_repository()
        segments = session.log_store.segments()  # a pruned log starts after transaction 1
        start = int(segments[0].split(".")[0]) if segments else 1
        for item in read_log(session.log_store, from_lsn=start):
            if isinstance(item, Gap | Epoch):
                if isinstance(item, Epoch):
                    tracker.new_epoch()
                continue
            logged.update(e.table for e in item.events)
            logged.update(d.table for d in item.definitions)
            tracker.feed(item.lsn, item.commit_time, item.events, item.definitions)
        captured = _captured(session, logged)
    if table not in captured:
        raise UsageError(
            f"table {table!r} is not captured in this repository",
            hint=f"captured tables: {', '.join(sorted(captured)) or '(none yet)'}",
        )
    rows = tracker.matching(selector)
    if as_json:
        echo_json([[_as_json(entry) for entry in row.entries] for row in rows])
        return
    if not rows:
        click.echo(f"no change of {table} matching {' '.join(pairs)} is in the log")
        key = _key_names(captured[table])
        if key:
            click.echo(f"  ({table} is named by {key}; see `nkdaemon history --help`)")
        raise SystemExit(1)
    for number, row in enumerate(rows, start=1):
        _render(table, number, row)


def _captured(session: Session, logged: set[str]) -> dict[str, dict[str, Any] | None]:
    """Table name -> its newest stored definition (None if only the log names it): the
    tables of the installation, of every snapshot, and of the log."""
    tables: dict[str, dict[str, Any] | None] = dict.fromkeys(logged)
    tables.update(dict.fromkeys(session.installed_tables()))
    for snapshot in list_snapshots(session.snapshots):
        tables.update({d["name"]: d for d in snapshot.definitions if "name" in d})
    return tables


def _key_names(definition: dict[str, Any] | None) -> str:
    if definition is None:
        return ""
    spec = spec_from_json(definition)
    if spec.full_row_identity:
        return "its whole row (identity = full)"
    return "(" + ", ".join(part.name for part in spec.key_parts) + ")"


def _as_json(entry: HistoryEntry) -> dict[str, Any]:
    return {**entry.__dict__, "commit_time": encode_time(entry.commit_time)}


def _render(table: str, number: int, row: RowHistory) -> None:
    keys = " -> ".join(
        json.dumps(k, ensure_ascii=False)
        for k in row.keys()  # noqa: SIM118 - RowHistory.keys() is a method, not dict.keys()
    )
    click.echo(f"{table} row {number}: {keys}")
    for entry in row.entries:
        what = ENTRY_NAMES.get(entry.op, entry.op)
        line = f"  tx {entry.lsn:<8} {encode_time(entry.commit_time)}  {what:<8}"
        if entry.change is not None:
            line += f" {entry.change}"
        if entry.old_key is not None:
            line += f" key {json.dumps(entry.old_key, ensure_ascii=False)} -> "
            line += json.dumps(entry.key, ensure_ascii=False)
        if entry.row is not None:
            line += f" {json.dumps(entry.row, ensure_ascii=False)}"
        elif entry.op == "D":
            line += f" {json.dumps(entry.key, ensure_ascii=False)}"
        click.echo(line)
