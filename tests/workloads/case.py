"""One generated case end to end: build the source, play the workload, restore every
recorded instant in every way, compare each result with the truth through natural keys.

``run_case`` raises a :class:`Failure` whose class names the restore mode, the kind of
failure and (for a refused restore) the error's shape, so hypothesis keeps distinct
defects apart and shrinks each on its own.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.config import Settings, load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.sources.registry import Registry
from tests.helpers import do_install, engine_for, run_cli, write_config
from tests.natural_content import differences, leave_millisecond
from tests.workloads.edms import writer_engine
from tests.workloads.restoring import (
    Content,
    Databases,
    Pool,
    Raw,
    RestoreRun,
    deferring_tables,
    drift,
    execute,
    natural,
    raw_rows,
    reflected,
    restore,
    seed,
    unreferenced_tables,
    without_locator,
)
from tests.workloads.schema import Schema
from tests.workloads.workload import Application, Marker, Workload, describe


@dataclass(frozen=True, kw_only=True)
class Case:
    schema: Schema
    workload: Workload
    seed: int = 0

    def describe(self) -> str:
        return "\n".join(
            [
                f"-- {self.schema.dialect}, features: {', '.join(sorted(self.schema.features()))}",
                *(s + ";" for s in self.schema.ddl()),
                self.schema.config(),
                f"-- seed rows: {self.workload.seed_rows}, steps:",
                *describe(self.workload.steps),
            ]
        )


def literal(value: object) -> str:
    """Python source for a case (or any part of one), leaving out fields at their default:
    what a reproduction test writes down."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = []
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if f.repr and current != default:
                parts.append(f"{f.name}={literal(current)}")
        return f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


class Failure(AssertionError):
    """A generated case failed; subclasses (one per kind of failure) keep bugs apart."""


_FAILURES: dict[str, type[Failure]] = {}


def failure(mode: str, category: str, message: str, signature: str = "") -> Failure:
    name = re.sub(r"\W+", "_", f"{mode}_{category}_{signature}".strip("_"))[:120]
    klass = _FAILURES.setdefault(name, type(name, (Failure,), {}))
    return klass(f"[{mode}] {category}: {message}")


@dataclass(frozen=True, kw_only=True)
class Instant:
    number: int
    moment: datetime
    content: Content
    raw: Raw
    renamed: frozenset[tuple[str, tuple[object, ...]]]  # Application.renamed then


@dataclass
class Report:
    instants: int = 0
    restores: int = 0
    restore_seconds: float = 0.0
    done: dict[str, int] = field(default_factory=dict)


@dataclass
class _Run:
    case: Case
    disabled: Collection[str]
    timeout: float
    databases: Databases
    directory: Path
    config: Path = Path()
    settings: Settings | None = None
    registry: Registry | None = None
    report: Report = field(default_factory=Report)
    made_by_restore: set[str] = field(default_factory=set)  # targets --create-schema made

    @property
    def schema(self) -> Schema:
        return self.case.schema

    def on(self, feature: str) -> bool:
        return feature not in self.disabled


def run_case(
    case: Case,
    *,
    directory: Path,
    pool: Pool | None,
    disabled: Collection[str] = frozenset(),
    timeout: float = 60,
) -> Report:
    """Build, play, restore and compare; raises a Failure on the first thing that is wrong."""
    databases = Databases(case.schema.dialect, directory, pool)
    run = _Run(case, disabled, timeout, databases, directory)
    try:
        instants = _play(run)
        covered = _covered_until(run.config)
        for instant in instants:
            _check_instant(run, instant, latest=instant.moment > covered)
        return run.report
    finally:
        databases.release()


# --- the source and its workload --------------------------------------------------------------


def _play(run: _Run) -> list[Instant]:
    schema, workload = run.schema, run.case.workload
    source = run.databases.new("source")
    execute(source, schema.ddl())
    run.config = write_config(run.directory, source, schema.config())
    run.settings = settings = load_settings(run.config)
    engine = writer_engine(source)
    try:
        with engine.connect() as conn:
            app = Application(schema=schema, conn=conn)
            app.seed(workload.seed_rows)
            try:
                do_install(settings)
            except Exception as exc:
                raise failure("install", "refused", str(exc), type(exc).__name__) from exc
            # one drainer for the whole workload, as the daemon keeps one (each new one
            # reflects the source again, which is slow on PostgreSQL)
            with Session(settings, writer=True) as session:
                run.registry = _baseline_registry(session)
                drainer = session.drainer()
                instants = _steps(run, app, source, drainer.drain_once)
                drainer.drain_once()
            run.report.done = app.done
    finally:
        engine.dispose()
    return instants


def _baseline_registry(session: Session) -> Registry:
    """The captured tables as the baseline snapshot defines them (no reflection)."""
    baseline = list_snapshots(session.layout.snapshots_dir)[0]
    specs = [spec_from_json(d) for d in baseline.definitions]
    return Registry(tables={s.number: s for s in specs})


def _steps(run: _Run, app: Application, source: str, drain: Callable[[], object]) -> list[Instant]:
    instants: list[Instant] = []
    for step in run.case.workload.steps:
        if not isinstance(step, Marker):
            app.transaction(step)
        elif step.kind == "instant":
            instants.append(_instant(run, source, len(instants), drain, app))
        elif step.kind == "snapshot":
            out = run_cli(run.config, "snapshot")
            if out.exit_code != 0:
                raise failure("snapshot", "refused", out.output, _signature(run, out.output))
        else:
            drain()
    return instants


def _instant(
    run: _Run, source: str, number: int, drain: Callable[[], object], app: Application
) -> Instant:
    """The source's content now, read after the last commit; on SQLite a drain pass closes
    the log transaction here (see docs/FORMAT.md), and the clock leaves the millisecond."""
    assert run.registry is not None and run.settings is not None
    content = natural(source, run.registry, run.directory / "read")
    raw = raw_rows(source, run.schema)
    sqlite = run.schema.dialect == "sqlite"
    if sqlite:
        drain()
    moment = datetime.now(UTC)
    if sqlite:
        leave_millisecond(moment)
    run.report.instants += 1
    return Instant(
        number=number, moment=moment, content=content, raw=raw, renamed=frozenset(app.renamed)
    )


# --- restoring an instant ----------------------------------------------------------------------


def _covered_until(config: Path) -> datetime:
    """Up to when the repository says it can restore (the last commit or snapshot)."""
    out = run_cli(config, "status", "--json")
    status = json.loads(out.stdout)
    times = [s["time"] for s in status["snapshots"]] + [status["last_commit_time"] or ""]
    return max(datetime.fromisoformat(t) for t in times if t)


def _check_instant(run: _Run, instant: Instant, *, latest: bool) -> None:
    """Restore the instant every way; ``latest``: nothing was committed after it, and
    --at would be refused as past the last commit (issue 10), so restore --latest."""
    rng = random.Random(run.case.seed * 1000 + instant.number)
    at = ("--latest",) if latest else ("--at", instant.moment.isoformat())
    url = _restore_into_empty(run, instant, at)
    if run.on("twice"):
        _restore_twice(run, instant, at, url)
    if run.on("single_table") or run.on("single_table_empty"):
        _restore_one_table(run, instant, at, url, rng)
    if run.on("preseeded"):
        url = run.databases.new("b")
        execute(url, run.schema.ddl())
        seed(
            url,
            run.schema,
            instant.raw,
            rng,
            deferred=run.on("matched_deferred"),
            renamed=set() if run.on("preseeded_renamed") else instant.renamed,
        )
        _restore(run, "b preseeded", instant, ("--target", url, *at))
        _next_insert(run, url)


def _restore_into_empty(run: _Run, instant: Instant, at: tuple[str, ...]) -> str:
    """(a): into an empty database, with --create-schema (or the application's schema)."""
    url = run.databases.new("a")
    if run.on("create_schema"):
        _restore(run, "a create-schema", instant, ("--target", url, *at, "--create-schema"))
    else:
        execute(url, run.schema.ddl())
        _restore(run, "a empty", instant, ("--target", url, *at))
    return url


def _restore_twice(run: _Run, instant: Instant, at: tuple[str, ...], url: str) -> None:
    """(c): the same restore again into (a)'s target, which holds the instant already."""
    before = raw_rows(url, run.schema)
    _restore(run, "c twice", instant, ("--target", url, *at))
    after = raw_rows(url, run.schema)
    changed = _changed_rows(without_locator(before), without_locator(after))
    if run.on("twice_same_ids") and changed:
        raise failure("c twice", "changed", f"the second restore changed rows: {changed}")


def _restore_one_table(
    run: _Run, instant: Instant, at: tuple[str, ...], url: str, rng: random.Random
) -> None:
    """(d): --table of one table of (a)'s target, after that table drifted from the
    instant (single_table), or was emptied (single_table_empty: only a table no other
    table's rows refer to). Not a table that refers to itself or sits in a cycle unless
    matched_deferred is on, nor one with references unless single_table_references is."""
    deferring = set() if run.on("matched_deferred") else deferring_tables(run.schema)
    if not run.on("single_table_references"):
        deferring |= {t.name for t in run.schema.tables if t.foreign_keys}
    if run.on("single_table"):
        choices = [t for t in run.schema.tables if t.name not in deferring]
        empty = False
    else:
        free = unreferenced_tables(url, run.schema)
        choices = [t for t in run.schema.tables if t.name in free and t.name not in deferring]
        empty = True
    if not choices:
        return
    table = rng.choice(choices)
    drift(url, run.schema, table, rng, empty=empty)
    _restore(run, "d --table", instant, ("--target", url, *at, "--table", table.name))


def _changed_rows(before: Raw, after: Raw) -> str:
    for table in before:
        gone = [r for r in before[table] if r not in after[table]]
        new = [r for r in after[table] if r not in before[table]]
        if gone or new:
            return f"{table}: {gone[:2]} became {new[:2]}"
    return ""


def _restore(run: _Run, mode: str, instant: Instant, args: tuple[str, ...]) -> None:
    done = restore(run.config, args, timeout=run.timeout)
    run.report.restores += 1
    run.report.restore_seconds += done.seconds
    where = f"instant {instant.number}, restore {' '.join(args[2:])}"
    if done.exit_code is None:
        raise failure(mode, "timeout", f"{where}: no answer in {run.timeout:.0f} s")
    if not done.ok:
        detail = done.output + _traceback(run, args, done)
        raise failure(mode, "refused", f"{where}:\n{detail}", _signature(run, done.output))
    found = differences(_read_target(run, mode, args), instant.content)
    if found:
        raise failure(mode, "content", f"{where}:\n" + "\n".join(found))


def _read_target(run: _Run, mode: str, args: tuple[str, ...]) -> Content:
    """The target's content by natural key; a schema --create-schema made is reflected (its
    types may differ from the source's), an application's is read as the source is."""
    assert run.registry is not None
    url, read = args[1], run.directory / "read"
    try:
        if "--create-schema" in args:
            run.made_by_restore.add(url)
        registry = reflected(url, run.schema, read) if url in run.made_by_restore else run.registry
        return natural(url, registry, read)
    except Exception as exc:
        raise failure(mode, "unreadable", f"{url}: {exc!r}", type(exc).__name__) from exc


def _traceback(run: _Run, args: tuple[str, ...], done: RestoreRun) -> str:
    """For an unexpected error, where it came from: the same restore again with -vv (the
    first one rolled back, so the target is as it was)."""
    if "unexpected" not in done.output:
        return ""
    again = restore(run.config, args, timeout=run.timeout, traceback=True)
    lines = again.output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    return "" if start is None else "\n" + "\n".join(lines[start:][-16:])


def _next_insert(run: _Run, url: str) -> None:
    """The application's next insert into every table works (sequences moved past the
    restored ids); tried in a transaction that is rolled back."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn, conn.begin() as tx:
            app = Application(schema=run.schema, conn=conn, counter=10**6)
            for table in run.schema.tables:
                try:
                    app.insert_new(table)
                except sa.exc.DBAPIError as exc:
                    raise failure(
                        "b preseeded", "next-insert", f"{table.name}: {exc}", table.id_kind
                    ) from None
            tx.rollback()
    finally:
        engine.dispose()


def _signature(run: _Run, output: str) -> str:
    """The shape of an error: its first error line with names, values and numbers blotted."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    text = lines[0] if lines else (output.strip().splitlines() or ["no output"])[-1]
    names = {t.name for t in run.schema.tables} | {
        c.name for t in run.schema.tables for c in t.columns
    }
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, "N")
    text = re.sub(r"\{.*\}", "{}", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", text)
    return re.sub(r"\d+", "0", text)[:80]
