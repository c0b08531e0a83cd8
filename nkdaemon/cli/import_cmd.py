"""`nkdaemon import-legacy FILE [--at TIME] [--format django] [--allow-dangling]`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from nkdaemon.cli import AppContext, pass_app
from nkdaemon.core.errors import RepositoryError, SourceUnavailable
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.legacy import ModelMap
from nkdaemon.core.restore_plan import parse_time
from nkdaemon.runtime.session import Session
from nkdaemon.services.legacy_import import (
    ImportRefused,
    ImportReport,
    ImportSettings,
    Progress,
    import_fixture,
)

SHOWN_PROBLEMS = 200


def register(cli: click.Group) -> None:
    cli.add_command(import_command)


@click.command("import-legacy")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--at", "at_text", help="The instant the backup holds (default: the file's mtime).")
@click.option("--format", "fmt", type=click.Choice(["django"]), default="django", show_default=True)
@click.option(
    "--allow-dangling",
    is_flag=True,
    help="Import nullable references to rows missing from the file as NULL (listed).",
)
@pass_app
def import_command(
    app: AppContext, file: Path, at_text: str | None, fmt: str, allow_dangling: bool
) -> None:
    """Take an older backup (Django dumpdata JSON, .gz/.bz2/.xz/.zst too) into the
    repository as a snapshot at TIME; `restore --at TIME` restores it."""
    if not file.exists():
        raise click.BadParameter(f"{file}: no such file", param_hint="FILE")
    at = _instant(file, at_text)
    with Session(app.settings, writer=False) as session:
        session.layout.ensure()
        specs, dialect, origin = _definitions(session)
        click.echo(f"importing {file} as the state at {at.isoformat()}")
        click.echo(f"  table definitions: {origin}")
        settings = ImportSettings(
            specs=specs,
            dialect=dialect,
            model_map=ModelMap(explicit=app.settings.legacy.models),
            allow_dangling=allow_dangling,
        )
        with _bars() as progress:
            try:
                report = import_fixture(
                    path=file,
                    at=at,
                    snapshots_dir=session.layout.snapshots_dir,
                    work_dir=session.layout.root,
                    settings=settings,
                    progress=progress,
                )
            except ImportRefused as refused:
                _show_problems(refused.report)
                raise
    _summary(report)


def _instant(file: Path, at_text: str | None) -> datetime:
    if at_text is None:
        at = datetime.fromtimestamp(file.stat().st_mtime, tz=UTC)
        click.echo(f"no --at given: taking the file's modification time, {at.isoformat()}")
        return at
    when = parse_time(at_text)
    if when.assumed_utc:
        click.echo(f"warning: --at {at_text} has no time zone; taken as UTC", err=True)
    return when.moment


def _definitions(session: Session) -> tuple[dict[int, TableSpec], str, str]:
    """The tables as the configured source defines them (numbered as capture knows them,
    when it is installed); the newest snapshot's definitions when the source is down."""
    from nkdaemon.sources.registry import reflect_registry

    try:
        installed = session.source.installed_tables()
        registry = reflect_registry(session.engine, session.settings, numbers=installed)
        specs = dict(registry.tables)
        if installed:
            specs = {n: s for n, s in specs.items() if s.name in installed}
        origin = f"the source ({session.settings.source.redacted_url})"
        return specs, session.settings.source.dialect, origin
    except SourceUnavailable as exc:
        from nkdaemon.core.definitions import spec_from_json
        from nkdaemon.repository.snapshots import list_snapshots

        snapshots = list_snapshots(session.layout.snapshots_dir)
        if not snapshots:
            raise RepositoryError(
                f"no table definitions: {exc.message}, and the repository has no snapshot",
                hint="make [source] reachable (its schema defines the tables), then retry",
            ) from None
        newest = snapshots[-1]
        specs = {s.number: s for s in map(spec_from_json, newest.definitions)}
        return specs, newest.dialect, f"snapshot {newest.id} (the source is unreachable)"


@contextmanager
def _bars() -> Iterator[Progress]:
    bars: dict[str, Any] = {}
    quiet = not sys.stderr.isatty()

    def progress(stage: str, n: int, total: int | None) -> None:
        if stage not in bars:
            unit = "B" if stage == "read" else "obj"
            bars[stage] = tqdm(
                total=total, desc=stage, unit=unit, unit_scale=True, disable=quiet, file=sys.stderr
            )
        bars[stage].update(n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def _show_problems(report: ImportReport) -> None:
    click.echo(f"reconciliation report for {report.file}:", err=True)
    for line in [p.line() for p in report.problems][:SHOWN_PROBLEMS]:
        click.echo(f"  {line}", err=True)
    if report.problem_count > SHOWN_PROBLEMS:
        click.echo(f"  ... and {report.problem_count - SHOWN_PROBLEMS} more", err=True)
    for model, count in sorted(report.counts(report.problems).items()):
        click.echo(f"  {model}: {count} problems", err=True)


def _summary(report: ImportReport) -> None:
    for label, (table, rows) in sorted(report.models.items()):
        click.echo(f"  {label:40} -> {table:28} {rows:>10} rows")
    if report.nulled:
        click.echo(f"{len(report.nulled)} references to rows not in the file set to NULL:")
        for problem in report.nulled[:SHOWN_PROBLEMS]:
            click.echo(f"  {problem.line()}")
        for model, count in sorted(report.counts(report.nulled).items()):
            click.echo(f"  {model}: {count} set to NULL")
    if report.empty_tables:
        click.echo(f"  no rows in the file for: {', '.join(report.empty_tables)} (empty)")
    assert report.snapshot is not None
    rows = sum(t.rows for t in report.snapshot.tables)
    rate = report.objects / report.seconds if report.seconds else 0.0
    click.echo(
        f"imported {report.objects} objects ({rows} rows) as snapshot {report.snapshot.id} "
        f"in {report.seconds:.1f} s ({rate:.0f} objects/s); restore it with "
        f"`nkdaemon restore --at {report.at.isoformat()} --target URL`"
    )
