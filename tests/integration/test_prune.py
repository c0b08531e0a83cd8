"""`nkdaemon prune` on a real local repository: a SQLite source changed (inserts, updates,
deletes) and drained in rounds, snapshots between them, 4 KiB segments so the log rolls.

After a prune, every recorded instant inside the retained window (and the window's first
instant) restores to exactly what the source held then; instants before it are refused
with the range the repository covers; `--dry-run` deletes nothing and lists why.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.retention import retention_policy
from nkdaemon.services.prune import NOT_IN_BUCKET, local_side, prune
from nkdaemon.services.replicate import Replicator
from tests.helpers import do_drain, do_install, engine_for, run_cli, write_config
from tests.natural_content import Content, differences, leave_millisecond, natural_content


@dataclass
class History:
    """A source's recorded states: ``instants`` (time, content), ``snapshots`` (ids)."""

    url: str
    config: Path
    instants: list[tuple[datetime, Content]] = field(default_factory=list)


def change(url: str, round_: int, drain: Callable[[], object]) -> None:
    """One round of changes, in three transactions (twenty inserts, two updates, a
    delete), each drained."""
    engine = engine_for(url)
    with engine.begin() as conn:
        for i in range(20):
            body = f"doc {round_}.{i} {secrets.token_hex(100)}"
            conn.execute(
                sa.text("INSERT INTO docs (code, body) VALUES (:c, :b)"),
                {"c": f"D-{round_}-{i}", "b": body},
            )
    drain()
    with engine.begin() as conn:
        ids = conn.execute(sa.text("SELECT id FROM docs ORDER BY id")).scalars().all()
        for doc in ids[round_ : round_ + 2]:
            conn.execute(
                sa.text("UPDATE docs SET body = body || ' edited' WHERE id = :i"), {"i": doc}
            )
    drain()
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM docs WHERE id = :i"), {"i": ids[-3]})
    engine.dispose()
    drain()


def captured_docs(directory: Path) -> tuple[str, Path]:
    """A table of documents keyed by code, captured into a repository of 4 KiB segments."""
    url = f"sqlite:///{directory / 'app.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE docs (id integer PRIMARY KEY, code text NOT NULL UNIQUE, body text)"
        )
    engine.dispose()
    config = write_config(directory, url)
    config.write_text(
        config.read_text().replace("[repository]\n", '[repository]\nsegment_size = "4KiB"\n')
    )
    do_install(load_settings(config))
    return url, config


def build_history(directory: Path, rounds: int, snapshot_after: set[int]) -> History:
    """Rounds of changes, each drained and its instant recorded; snapshots after some."""
    directory.mkdir()
    url, config = captured_docs(directory)
    history = History(url=url, config=config)
    for round_ in range(rounds):
        change(url, round_, lambda: do_drain(load_settings(config)))
        record(history, directory)
        if round_ in snapshot_after:
            assert run_cli(config, "snapshot").exit_code == 0
    # a restore reaches no further than the last logged commit: one more after the last instant
    change(url, rounds, lambda: do_drain(load_settings(config)))
    return history


def record(history: History, directory: Path) -> None:
    at = datetime.now(UTC)
    leave_millisecond(at)
    history.instants.append((at, natural_content(history.url, directory / "reflect")))
    time.sleep(0.002)


def with_retention(config: Path, text: str) -> None:
    config.write_text(config.read_text() + f"\n[retention]\n{text}\n")


def files(root: Path) -> dict[str, int]:
    """The repository's log and snapshot files, and their sizes."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for folder in ("log", "snapshots")
        for p in (root / folder).rglob("*")
        if p.is_file()
    }


def said(output: str, where: str) -> str:
    """The lines prune printed about one copy (its log events left out)."""
    return "\n".join(line for line in output.splitlines() if line.startswith(f"{where}: "))


def restore(config: Path, at: datetime, target: Path) -> tuple[int, str, Content | None]:
    result = run_cli(
        config,
        "restore",
        "--at",
        at.isoformat(),
        "--create-schema",
        "--target",
        f"sqlite:///{target}",
    )
    if result.exit_code != 0:
        return result.exit_code, result.output, None
    return 0, result.output, natural_content(f"sqlite:///{target}", target.parent / "reflect")


def assert_window_restores(history: History, config: Path, start: datetime, tmp: Path) -> None:
    """Every recorded instant from ``start`` on, and ``start`` itself, restores exactly;
    every one before it is refused, naming the range."""
    before = [(at, c) for at, c in history.instants if at < start]
    inside = [(at, c) for at, c in history.instants if at >= start]
    assert before and inside, "the test means the window to cut the history"
    checks = [(start, before[-1][1]), *inside]
    for n, (at, expected) in enumerate(checks):
        code, output, content = restore(config, at, tmp / f"inside-{n}.db")
        assert code == 0, output
        assert content is not None
        assert differences(content, expected) == [], at
    for n, (at, _expected) in enumerate(before):
        code, output, _ = restore(config, at, tmp / f"before-{n}.db")
        assert code != 0
        assert f"covers {start.isoformat()}" in output, output


def test_prune_keeps_every_instant_of_the_window_restorable_and_refuses_older(
    tmp_path: Path,
) -> None:
    history = build_history(tmp_path / "origin", rounds=6, snapshot_after={1, 3, 4})
    config, repo = history.config, tmp_path / "origin" / "repo"
    with_retention(config, "keep_snapshots = 2")
    snapshots = list_snapshots(repo / "snapshots")
    assert len(snapshots) == 4  # install's baseline and three
    segments_before = sorted((repo / "log").glob("*.nkdlog"))
    assert len(segments_before) >= 5, "the test means the log to have rolled"
    oldest_kept = snapshots[2]

    before = files(repo)
    dry = run_cli(config, "prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert files(repo) == before, "--dry-run deletes nothing"
    for gone in snapshots[:2]:
        assert f"would delete snapshot {gone.id}: older than {oldest_kept.id}" in dry.output
    assert "would delete segment" in dry.output and "keep_snapshots = 2" in dry.output

    pruned = run_cli(config, "prune")
    assert pruned.exit_code == 0, pruned.output
    assert [s.id for s in list_snapshots(repo / "snapshots")] == [s.id for s in snapshots[2:]]
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [
        s.id for s in snapshots[2:]
    ], "no remains of a deleted snapshot"
    segments_after = sorted((repo / "log").glob("*.nkdlog"))
    assert segments_before[-1] in segments_after and len(segments_after) < len(segments_before)
    assert (repo / "log" / "end.json").exists()
    first_left = int(segments_after[0].name.split(".")[0])
    assert first_left <= oldest_kept.log_lsn + 1, "the log after the oldest snapshot is whole"
    assert said(dry.output, "repository").replace("would delete", "deleted") == said(
        pruned.output, "repository"
    )

    assert_window_restores(history, config, oldest_kept.moment, tmp_path)
    verified = run_cli(config, "verify")
    assert verified.exit_code == 0, verified.output
    assert "the log before it was pruned" in verified.output
    recent = run_cli(config, "history", "docs", "code=D-5-1", "--json")
    assert recent.exit_code == 0, recent.output
    older = run_cli(config, "history", "docs", "code=D-0-5", "--json")
    assert older.exit_code == 0, older.output
    (row,) = json.loads(older.output[older.output.index("[") :])
    assert {e["op"] for e in row} == {"U"}, "its insert was pruned; its updates after are kept"
    assert all(e["lsn"] >= first_left for e in row)
    again = run_cli(config, "prune")
    assert "repository: deleted 0;" in again.output


def test_prune_without_retention_refuses_with_the_policy_error(tmp_path: Path) -> None:
    (tmp_path / "origin").mkdir()
    _url, config = captured_docs(tmp_path / "origin")
    before = files(tmp_path / "origin" / "repo")
    result = run_cli(config, "prune", "--dry-run")
    assert result.exit_code == 2
    assert "no retention policy is configured" in result.output
    assert "keep_snapshots" in result.output
    assert files(tmp_path / "origin" / "repo") == before


def test_keep_days_keeps_the_snapshot_that_starts_the_window(tmp_path: Path) -> None:
    """keep_days at a chosen ``now``: the window starts between two snapshots, so the one
    before it is the base kept; instants after it restore, instants before it do not."""
    history = build_history(tmp_path / "origin", rounds=5, snapshot_after={0, 2, 3})
    config, repo = history.config, tmp_path / "origin" / "repo"
    snapshots = list_snapshots(repo / "snapshots")
    boundary = history.instants[2][0]  # after snapshot 2's instant, before snapshot 3
    now = boundary + timedelta(days=0.5)
    with_retention(config, "keep_days = 0.5")
    settings = load_settings(config)
    (result,) = prune(
        [local_side(repo, replicated=False)], retention_policy(settings), now, dry_run=False
    )
    kept = [s.id for s in list_snapshots(repo / "snapshots")]
    base = max((s for s in snapshots if s.moment <= boundary), key=lambda s: s.moment)
    assert kept == [s.id for s in snapshots if s.moment >= base.moment]
    assert "keep_days = 0.5" in result.plan.deletions[0].reason
    assert_window_restores(history, config, base.moment, tmp_path)


def test_a_spool_gives_up_only_what_the_bucket_holds(tmp_path: Path) -> None:
    history = build_history(tmp_path / "origin", rounds=5, snapshot_after={1, 3})
    spool = tmp_path / "origin" / "repo"
    with_retention(history.config, "keep_snapshots = 1")
    policy = retention_policy(load_settings(history.config))
    before = files(spool)
    (held,) = prune([local_side(spool, replicated=True)], policy, datetime.now(UTC), dry_run=False)
    assert held.plan.deletions == () and held.held
    assert {d.reason for d in held.held} == {NOT_IN_BUCKET}
    assert files(spool) == before
    Replicator(spool=spool, bucket=LocalStore(tmp_path / "bucket")).run_once()
    (done,) = prune([local_side(spool, replicated=True)], policy, datetime.now(UTC), dry_run=False)
    assert {d.name for d in done.plan.deletions} == {d.name for d in held.held}
    assert len(list_snapshots(spool / "snapshots")) == 1


def test_the_remains_of_an_interrupted_removal_are_never_a_snapshot_and_go_next_time(
    tmp_path: Path,
) -> None:
    """A removal cut short after its first step (the manifest) leaves files no reader takes
    for a snapshot; the next prune deletes them, and only them."""
    history = build_history(tmp_path / "origin", rounds=3, snapshot_after={0, 1})
    repo = tmp_path / "origin" / "repo"
    with_retention(history.config, "keep_snapshots = 3")
    snapshots = list_snapshots(repo / "snapshots")
    assert len(snapshots) == 3
    cut_short = snapshots[0]
    (repo / "snapshots" / cut_short.id / "manifest.json").unlink()
    assert [s.id for s in list_snapshots(repo / "snapshots")] == [s.id for s in snapshots[1:]]
    assert list((repo / "snapshots" / cut_short.id).iterdir()), "its table files are left"

    dry = run_cli(history.config, "prune", "--dry-run")
    assert f"would delete snapshot {cut_short.id}: the files of a snapshot whose removal" in (
        dry.output
    )
    assert (repo / "snapshots" / cut_short.id).exists()
    pruned = run_cli(history.config, "prune")
    assert pruned.exit_code == 0, pruned.output
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [s.id for s in snapshots[1:]]
