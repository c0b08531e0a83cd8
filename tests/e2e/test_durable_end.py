"""Invariants 6 and 10: every reader knows where the durable log ends.

A byte flipped in the newest segment is not a write in progress when the repository says
those bytes were made durable: `verify` names the file and offset and exits 1, `restore`
exits 1 and leaves the target untouched (or, with --allow-truncated-log, restores the
intact prefix and says so). The durable end comes from the checkpoint in state.db and,
for a copy of the repository without state.db, from the log's own end file.

And the other side of the same evidence: a quiet source's log is complete up to the last
drain pass, not only up to its last commit, so `restore --at` a time after the last commit
works and says there was no change since.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nkdaemon.core.errors import LogTruncatedError
from nkdaemon.core.log import Commit
from nkdaemon.repository.log_end import write_end
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import Checkpoint
from tests.helpers import cli_process, run_cli, write_config

ITEMS = "CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL UNIQUE, qty int)"


def _app(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    database = tmp_path / "app.db"
    app = sqlite3.connect(database, isolation_level=None)
    app.execute("PRAGMA synchronous = OFF")  # 3,000 commits: the test needs no fsync of them
    app.execute(ITEMS)
    return database, app


def _commit(app: sqlite3.Connection, sql: str, *args: object) -> None:
    app.execute("BEGIN")
    app.execute(sql, args)
    app.execute("COMMIT")


@dataclass(frozen=True)
class Issue:
    """A copy of the repository of issue 10, its source and configuration."""

    config: Path
    app: sqlite3.Connection
    segment: Path
    repo: Path


@pytest.fixture(scope="module")
def issue_original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository of issue 10: 3,000 inserts, a drain, three rounds of 200 updates each
    followed by a drain: five logged transactions in one segment. Built once."""
    directory = tmp_path_factory.mktemp("issue10")
    database, app = _app(directory)
    config = write_config(directory, f"sqlite:///{database}")
    assert run_cli(config, "install").exit_code == 0
    for i in range(3000):
        _commit(app, "INSERT INTO items (code, qty) VALUES (?, ?)", f"c{i}", i)
    assert run_cli(config, "drain").exit_code == 0
    for _round in range(3):
        for i in range(200):
            _commit(app, "UPDATE items SET qty = qty + 1 WHERE code = ?", f"c{i}")
        assert run_cli(config, "drain").exit_code == 0
    app.close()
    return directory


@pytest.fixture
def issue(issue_original: Path, tmp_path: Path) -> Issue:
    shutil.copy(issue_original / "app.db", tmp_path / "app.db")
    shutil.copytree(issue_original / "repo", tmp_path / "repo")
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'app.db'}")
    (segment,) = SegmentLog(tmp_path / "repo" / "log").segments()
    app = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    return Issue(
        config=config, app=app, segment=tmp_path / "repo" / "log" / segment, repo=tmp_path / "repo"
    )


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _rows(database: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(database) as conn:
        return sorted(conn.execute("SELECT code, qty FROM items").fetchall())


def test_a_byte_flipped_in_the_newest_segment_is_corruption_not_a_write_in_progress(
    issue: Issue, tmp_path: Path
) -> None:
    config, segment = issue.config, issue.segment
    assert 12_000 < segment.stat().st_size < 15_000, "the issue's segment was 13,478 bytes"
    truth = sorted(issue.app.execute("SELECT code, qty FROM items").fetchall())
    _flip(segment, segment.stat().st_size // 2)

    verify = cli_process(config, "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "verified" not in verify.stdout
    assert f"log segment {segment.name} is corrupt at byte offset" in verify.stderr

    target = tmp_path / "restored.db"
    restore = cli_process(
        config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert "match" not in restore.stdout
    assert f"log segment {segment.name} is corrupt at byte offset" in restore.stderr
    assert "nothing was written to the target" in restore.stderr
    assert "--allow-truncated-log" in restore.stderr
    assert _untouched(target)

    # asked for, the intact prefix is restored, and the output says loudly that it is one
    prefix = run_cli(
        config,
        "restore",
        "--latest",
        "--create-schema",
        "--allow-truncated-log",
        "--target",
        f"sqlite:///{target}",
    )
    assert prefix.exit_code == 0, prefix.output
    assert "WARNING" in prefix.stderr and "intact prefix" in prefix.stderr
    assert segment.name in prefix.stderr
    assert "of the 5 the repository made durable" in prefix.stderr
    restored = _rows(target)
    assert restored != truth
    assert len(restored) in (0, 3000), "whole transactions only"


def _untouched(target: Path) -> bool:
    if not target.exists():
        return True
    with sqlite3.connect(target) as conn:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def _without_state(repo: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (repo / name).unlink(missing_ok=True)


def test_a_copy_without_state_db_still_knows_its_durable_end(issue: Issue, tmp_path: Path) -> None:
    _without_state(issue.repo)
    _flip(issue.segment, issue.segment.stat().st_size // 2)
    verify = run_cli(issue.config, "verify")
    assert verify.exit_code == 1, verify.output
    assert f"log segment {issue.segment.name} is corrupt at byte offset" in verify.output
    assert "recorded in log/end.json" in verify.output
    target = tmp_path / "restored.db"
    restore = run_cli(
        issue.config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restore.exit_code == 1, restore.output
    assert _untouched(target)
    assert not (issue.repo / "state.db").exists(), "a reader creates no state.db"


@pytest.mark.parametrize("state", ["with state.db", "without state.db"])
def test_a_log_cut_short_at_a_record_boundary_fails_restore_latest(
    issue: Issue, tmp_path: Path, state: str
) -> None:
    """Whole records, but fewer transactions than the repository made durable."""
    if state == "without state.db":
        _without_state(issue.repo)
    records = list(SegmentLog(issue.segment.parent).records(strict=True))
    with issue.segment.open("r+b") as handle:
        handle.truncate(records[-1].offset)  # the last transaction is gone, cleanly
    target = tmp_path / "restored.db"
    restore = run_cli(
        issue.config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restore.exit_code == 1, restore.output
    assert f"log segment {issue.segment.name} ends at byte offset {records[-1].offset}" in (
        restore.output
    )
    assert "before its durable end" in restore.output
    assert _untouched(target)
    verify = run_cli(issue.config, "verify")
    assert verify.exit_code == 1 and "before its durable end" in verify.output


def test_a_torn_tail_past_the_durable_end_is_a_write_in_progress(issue: Issue) -> None:
    """What a reader beside the writer sees: bytes after the durable end that are not yet
    a whole record. They are not damage, and the drain's recovery cuts them."""
    whole = issue.segment.read_bytes()
    with issue.segment.open("ab") as handle:
        handle.write(b"\x00\x00\x10\x00garbage")
    verify = run_cli(issue.config, "verify")
    assert verify.exit_code == 0, verify.output
    assert "log: 1 segments, 5 transactions" in verify.output
    assert run_cli(issue.config, "drain").exit_code == 0
    assert issue.segment.read_bytes() == whole


def test_a_damaged_end_file_is_reported_and_the_next_drain_rewrites_it(issue: Issue) -> None:
    end_file = issue.repo / "log" / "end.json"
    _flip(end_file, end_file.stat().st_size // 2)
    verify = run_cli(issue.config, "verify")
    assert verify.exit_code == 1, verify.output
    assert "log/end.json, which records where the durable log ends, is damaged" in verify.output
    target = issue.repo.parent / "restored.db"
    restore = run_cli(issue.config, "restore", "--latest", "--target", f"sqlite:///{target}")
    assert restore.exit_code == 1 and _untouched(target), restore.output
    assert run_cli(issue.config, "drain").exit_code == 0, "the writer trusts state.db instead"
    assert run_cli(issue.config, "verify").exit_code == 0


def test_an_end_file_that_claims_more_than_the_log_holds(tmp_path: Path) -> None:
    """Offsets that line up but transactions that do not: the lsn counts too."""
    log = SegmentLog(tmp_path)
    log.recover(durable_segment=None, durable_offset=0)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    log.append_commit(
        Commit(lsn=1, position=1, txid=None, commit_time=when, parts=0, count=0, events=())
    )
    segment, offset = log.sync()
    log.close()
    write_end(tmp_path, Checkpoint(lsn=2, position=2, segment=segment, offset=offset))
    with pytest.raises(LogTruncatedError, match="holds transactions up to 1; its durable end"):
        list(SegmentLog(tmp_path).records())


def test_a_repository_of_an_older_release_stays_readable(issue: Issue, tmp_path: Path) -> None:
    """No end.json, and a copy without state.db: nothing says where the log ends, so the
    readers keep the old rule (and verify says it cannot tell)."""
    (issue.repo / "log" / "end.json").unlink()
    _without_state(issue.repo)
    verify = run_cli(issue.config, "verify")
    assert verify.exit_code == 0, verify.output
    assert "records no durable end" in verify.output
    target = tmp_path / "restored.db"
    restore = run_cli(
        issue.config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restore.exit_code == 0, restore.output
    assert _rows(target) == sorted(issue.app.execute("SELECT code, qty FROM items").fetchall())


# --- defect 2: a quiet source ------------------------------------------------------------


def test_restore_at_a_time_after_the_last_commit_of_a_quiet_source(tmp_path: Path) -> None:
    database, app = _app(tmp_path)
    config = write_config(tmp_path, f"sqlite:///{database}")
    assert run_cli(config, "install").exit_code == 0
    for i in range(5):
        _commit(app, "INSERT INTO items (code, qty) VALUES (?, ?)", f"q{i}", i)
    assert run_cli(config, "drain").exit_code == 0
    last_commit = datetime.fromisoformat(_status(config)["last_commit_time"])
    for _pass in range(2):  # nothing changes, the daemon keeps draining
        assert run_cli(config, "drain").exit_code == 0
    status = _status(config)
    complete = datetime.fromisoformat(status["complete_through"])
    assert complete > last_commit
    assert status["last_commit_time"] == last_commit.isoformat()
    text = run_cli(config, "status")
    assert f"through {complete.isoformat()}" in text.output

    at = last_commit + (complete - last_commit) / 2
    assert at > last_commit
    target = tmp_path / "restored.db"
    restore = run_cli(
        config,
        "restore",
        "--at",
        at.isoformat(),
        "--create-schema",
        "--target",
        f"sqlite:///{target}",
    )
    assert restore.exit_code == 0, restore.output
    assert "no change between the last logged commit" in restore.output
    assert _rows(target) == [(f"q{i}", i) for i in range(5)]

    # beyond what any drain pass has seen: refused, naming how far the log is complete
    later = complete + timedelta(seconds=1)
    refused = run_cli(
        config, "restore", "--at", later.isoformat(), "--target", f"sqlite:///{target}"
    )
    assert refused.exit_code == 2, refused.output
    assert complete.isoformat() in refused.output


def test_a_copy_without_state_db_knows_how_far_its_log_is_complete(tmp_path: Path) -> None:
    database, app = _app(tmp_path)
    config = write_config(tmp_path, f"sqlite:///{database}")
    assert run_cli(config, "install").exit_code == 0
    _commit(app, "INSERT INTO items (code, qty) VALUES ('x', 1)")
    assert run_cli(config, "drain").exit_code == 0
    assert run_cli(config, "drain").exit_code == 0
    complete = _status(config)["complete_through"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "repo", copy / "repo", ignore=shutil.ignore_patterns("state.db*"))
    copied = write_config(copy, f"sqlite:///{database}")
    target = tmp_path / "restored.db"
    restore = run_cli(
        copied, "restore", "--at", complete, "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restore.exit_code == 0, restore.output
    assert _rows(target) == [("x", 1)]


def _status(config: Path) -> dict[str, Any]:
    result = run_cli(config, "status", "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document
