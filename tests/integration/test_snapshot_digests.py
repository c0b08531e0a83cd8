"""The log between two snapshots checks itself (issue 10, defect 6).

Each snapshot records per-table row counts and content digests folded over its rows in its
own read of the source. `verify` replays the log from each snapshot and must reproduce the
next one, row for row and digest for digest; `restore` that ends exactly at a snapshot's
position must reproduce that snapshot's digests. The damage here is made with valid
checksums (a log record rewritten and its CRC recomputed; a change the capture triggers
never saw), so only this evidence can catch it.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from nkdaemon.core.digest import ALGORITHM, DigestFold, digest_of
from nkdaemon.core.log import encode_event
from nkdaemon.repository.log_format import FRAME, HEADER
from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots, read_table
from nkdaemon.runtime.config import Settings, load_settings
from tests.helpers import do_drain, do_install, engine_for, logged, run_cli, write_config
from tests.workloads.edms import EdmsWriter, edms_source

# --- a small SQLite repository: baseline, five logged updates, a second snapshot ----------


@dataclass(frozen=True)
class Repo:
    config: Path
    settings: Settings
    source: Path

    @property
    def snapshots(self) -> list[SnapshotInfo]:
        return list_snapshots(self.settings.repository.path / "snapshots")


def _items_repository(tmp_path: Path) -> Repo:
    source = tmp_path / "source.db"
    engine = engine_for(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL UNIQUE, qty int)"
        )
        for n in range(20):
            conn.exec_driver_sql(f"INSERT INTO items (code, qty) VALUES ('item-{n:02}', {n})")
    config = write_config(tmp_path, f"sqlite:///{source}")
    settings = load_settings(config)
    do_install(settings)
    for n in range(5):  # one log transaction each, qty 1000..1004
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE items SET qty = {1000 + n} WHERE code = 'item-{n:02}'")
        do_drain(settings)
    engine.dispose()
    time.sleep(0.01)  # the second snapshot's time is after the last commit's millisecond
    assert run_cli(config, "snapshot").exit_code == 0
    return Repo(config=config, settings=settings, source=source)


def _rewrite_record(settings: Settings, *changes: tuple[bytes, bytes]) -> None:
    """Replace bytes inside the log record that holds the first change's bytes, keeping
    its length, and give it a valid checksum again: damage every record check passes."""
    assert all(len(old) == len(new) for old, new in changes)
    needle = changes[0][0]
    for path in sorted((settings.repository.path / "log").iterdir()):
        data = bytearray(path.read_bytes())
        offset = HEADER.size
        while offset < len(data):
            length, _crc = FRAME.unpack_from(data, offset)
            start = offset + FRAME.size
            body = bytes(data[start : start + length])
            if needle in body:
                for old, new in changes:
                    assert old in body, old
                    body = body.replace(old, new, 1)
                data[start : start + length] = body
                FRAME.pack_into(data, offset, length, zlib.crc32(body))
                path.write_bytes(bytes(data))
                return
            offset = start + length
    raise AssertionError(f"no log record holds {needle!r}")


def _damage(repo: Repo, how: str) -> None:
    if how == "altered":  # one logged value changed
        _rewrite_record(repo.settings, (b'"qty":1003', b'"qty":1993'))
    else:  # one transaction's events removed, its record kept whole and valid
        tx = next(t for t in logged(repo.settings) if t.events[0].row["qty"] == 1003)
        events = orjson.dumps([encode_event(e) for e in tx.events])
        blank = b"[" + b" " * (len(events) - 2) + b"]"
        _rewrite_record(repo.settings, (events, blank), (b'"n":1,', b'"n":0,'))


def _verify(repo: Repo) -> tuple[int, str]:
    result = run_cli(repo.config, "verify")
    return result.exit_code, result.output


# --- verify ------------------------------------------------------------------------------


def test_snapshots_record_digests_of_their_rows(tmp_path: Path) -> None:
    repo = _items_repository(tmp_path)
    for snapshot in repo.snapshots:
        manifest = json.loads((snapshot.path / "manifest.json").read_text())
        assert manifest["digests"]["algorithm"] == ALGORITHM
        file = snapshot.table("items")
        assert file is not None and snapshot.digests is not None
        rows = [(item["k"], item["r"]) for item in read_table(snapshot, file)]
        assert snapshot.digests["items"] == digest_of(rows)
        assert snapshot.digests["items"].rows == file.rows == 20
    first, second = repo.snapshots
    assert first.digests != second.digests


def test_a_healthy_repository_verifies_pair_by_pair(tmp_path: Path) -> None:
    repo = _items_repository(tmp_path)
    code, output = _verify(repo)
    assert code == 0, output
    first, second = repo.snapshots
    assert (
        f"snapshots {first.id} -> {second.id}: the 5 logged transactions between them "
        f"reproduce {second.id}" in output
    )
    assert "verified: no problem found" in output


@pytest.mark.parametrize("how", ["altered", "removed"])
def test_verify_finds_a_logged_transaction_changed_with_valid_checksums(
    tmp_path: Path, how: str
) -> None:
    repo = _items_repository(tmp_path)
    _damage(repo, how)
    code, output = _verify(repo)
    assert code == 1, output
    first, second = repo.snapshots
    assert (
        f"problem: snapshots {first.id} -> {second.id}: the log between them does not "
        f"reproduce {second.id}: items: expected 20 rows, found 20 — different: "
        '{"code":"item-03"}' in output
    )
    assert "verified" not in output


def test_verify_names_a_snapshot_whose_rows_do_not_match_its_digests(tmp_path: Path) -> None:
    repo = _items_repository(tmp_path)
    second = repo.snapshots[1]
    _edit_manifest(second, lambda m: m["digests"]["tables"]["items"].update(digest="0" * 32))
    code, output = _verify(repo)
    assert code == 1, output
    assert f"problem: snapshot {second.id}: the rows of items (20 rows, digest " in output
    assert "do not match the digest recorded when it was taken (20 rows, digest 000000000000)" in (
        output
    )


def test_snapshots_without_digests_still_verify_and_say_so(tmp_path: Path) -> None:
    repo = _items_repository(tmp_path)
    for snapshot in repo.snapshots:
        _edit_manifest(snapshot, lambda m: m.pop("digests"))
    code, output = _verify(repo)
    assert code == 0, output
    for snapshot in repo.snapshots:
        assert f"snapshot {snapshot.id} carries no digests" in output
    _damage(repo, "altered")  # the log is still compared with the later snapshot's rows
    code, output = _verify(repo)
    assert code == 1 and '— different: {"code":"item-03"}' in output, output


def test_verify_finds_a_change_the_capture_never_saw(pg_url: str, tmp_path: Path) -> None:
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL UNIQUE, n int)"
        )
        conn.exec_driver_sql("INSERT INTO users (name, n) VALUES ('ann', 1), ('bob', 2)")
    config = write_config(tmp_path, pg_url)
    settings = load_settings(config)
    do_install(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE users SET n = 3 WHERE name = 'ann'")
    with engine.begin() as conn:  # triggers switched off: the log never hears of it
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("UPDATE users SET n = 99 WHERE name = 'bob'")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name, n) VALUES ('cy', 4)")
    engine.dispose()
    do_drain(settings)
    assert run_cli(config, "snapshot").exit_code == 0
    first, second = list_snapshots(settings.repository.path / "snapshots")
    code, output = _verify(Repo(config=config, settings=settings, source=tmp_path))
    assert code == 1, output
    assert (
        f"snapshots {first.id} -> {second.id}: the log between them does not reproduce "
        f'{second.id}: users: expected 3 rows, found 3 — different: {{"name":"bob"}}' in output
    )


def test_verify_replays_renames_cycles_and_deletes_between_snapshots(
    db_url: str, tmp_path: Path
) -> None:
    """A realistic history (EDMS: renamed users and workflows that nested keys follow, the
    workflow/state cycle, deletes and re-inserts) reproduces every later snapshot."""
    engine, settings, config = edms_source(db_url, tmp_path)
    writers = [EdmsWriter(n, seed=1010, rename_standard=n == 0) for n in range(2)]
    for _round in range(2):
        for writer in writers:
            writer.run(engine, 12)
        do_drain(settings)
        assert run_cli(config, "snapshot").exit_code == 0
    engine.dispose()
    snapshots = list_snapshots(settings.repository.path / "snapshots")
    assert len(snapshots) == 3
    code, output = _verify(Repo(config=config, settings=settings, source=tmp_path))
    assert code == 0, output
    for earlier, later in itertools.pairwise(snapshots):
        assert f"snapshots {earlier.id} -> {later.id}: the " in output
        assert f"reproduce {later.id} (12 tables, row for row)" in output


# --- restore -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["altered", "removed"])
def test_restore_to_a_snapshots_position_refuses_a_log_that_does_not_reach_it(
    tmp_path: Path, how: str
) -> None:
    """Restoring to just before the second snapshot starts from the first and replays the
    log to exactly the second's position: the damaged log agrees with itself, but not with
    the digests the second snapshot took from the source."""
    repo = _items_repository(tmp_path)
    _damage(repo, how)
    first, second = repo.snapshots
    last_commit = logged(repo.settings)[-1].commit_time
    at = last_commit + (second.moment - last_commit) / 2
    target = tmp_path / "target.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE kept (note text)")
    before = target.read_bytes()
    result = run_cli(
        repo.config,
        "restore",
        "--target",
        f"sqlite:///{target}",
        "--at",
        at.isoformat(),
        "--create-schema",
    )
    assert result.exit_code == 1, result.output
    assert f"snapshot {first.id}" in result.output  # the restore started from the first
    assert (
        f"the restored rows (20 rows, digest {_digest_prefix(repo, how)}) do not match the "
        f"digest snapshot {second.id} recorded at this source position" in result.output
    )
    assert target.read_bytes() == before


def test_restore_of_a_snapshot_checks_the_target_against_its_digests(tmp_path: Path) -> None:
    repo = _items_repository(tmp_path)
    second = repo.snapshots[1]
    _edit_manifest(second, lambda m: m["digests"]["tables"]["items"].update(digest="0" * 32))
    target = tmp_path / "target.db"
    result = run_cli(
        repo.config, "restore", "--target", f"sqlite:///{target}", "--latest", "--create-schema"
    )
    assert result.exit_code == 1, result.output
    assert f"do not match the digest snapshot {second.id} recorded" in result.output
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_a_restore_that_ends_at_a_snapshot_says_it_matched_its_digests(tmp_path: Path) -> None:
    from nkdaemon.runtime.session import Session
    from nkdaemon.services.restore import Restorer, open_restore_target, plan_restore

    repo = _items_repository(tmp_path)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with Session(repo.settings, writer=False) as session:
        plan = plan_restore(
            snapshots_dir=session.layout.snapshots_dir,
            log_store=session.log_store,
            at=None,
            last_logged=None,
        )
        report = Restorer(
            plan=plan, target=open_restore_target(target, "sqlite"), log_store=session.log_store
        ).run(dry_run=False, create_schema=True, prune_target=False)
    assert report.committed and report.cross_checked == repo.snapshots[1].id
    with sqlite3.connect(tmp_path / "target.db") as conn:
        rows = conn.execute("SELECT code, qty FROM items ORDER BY code").fetchall()
    fold = DigestFold()
    for code, qty in rows:
        fold.add({"code": code}, {"code": code, "qty": qty})
    assert fold.result() == repo.snapshots[1].digests["items"]  # type: ignore[index]


# --- helpers -----------------------------------------------------------------------------


def _edit_manifest(snapshot: SnapshotInfo, edit: object) -> None:
    path = snapshot.path / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)  # type: ignore[operator]
    path.write_text(json.dumps(manifest))


def _digest_prefix(repo: Repo, how: str) -> str:
    """The first 12 hex digits of the digest of what the damaged log restores."""
    with sqlite3.connect(repo.source) as conn:
        rows = dict(conn.execute("SELECT code, qty FROM items").fetchall())
    rows["item-03"] = 1993 if how == "altered" else 3
    digest = digest_of(({"code": c}, {"code": c, "qty": q}) for c, q in rows.items())
    return digest.value[:12]
