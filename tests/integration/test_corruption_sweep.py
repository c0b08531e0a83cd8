"""Invariants 6 and 10, swept: no damage to a repository passes as success.

A small repository (SQLite source, 600-byte log segments, three snapshots, one transaction
large enough to be logged in chunks) is damaged in a copy, one way at a time: a byte
flipped in every record of every segment (and every segment header), at sampled offsets of
every snapshot file and manifest, every segment removed, every non-last segment cut at each
of its record boundaries; all of it with state.db kept and with state.db removed (the
off-site copy). Each time `verify` must fail naming the damaged file, and `restore --latest`
must either fail leaving the target untouched or produce exactly the true state.

verify and restore run in-process through the service functions the commands call; a few
cases go through the command line. NKD_FULL_SWEEP=1 flips every byte of every record
instead of one chosen per record.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.segments import HEADER, Record, SegmentLog
from nkdaemon.repository.state import read_checkpoint
from nkdaemon.services.restore import Restorer, open_restore_target, plan_restore
from nkdaemon.services.verify import VerifyReport, verify_log, verify_snapshots
from tests.helpers import run_cli, write_config

FULL = os.environ.get("NKD_FULL_SWEEP") == "1"
STATES = ["state.db kept", "state.db removed"]

SCHEMA = """
CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL UNIQUE, qty int);
CREATE TABLE tags (
    id integer PRIMARY KEY,
    item_id integer NOT NULL REFERENCES items (id),
    label text NOT NULL,
    UNIQUE (item_id, label)
);
"""

Truth = tuple[list[tuple[str, int]], list[tuple[str, str]]]


def _content(database: Path) -> Truth:
    with sqlite3.connect(database) as conn:
        items = sorted(conn.execute("SELECT code, qty FROM items").fetchall())
        tags = sorted(
            conn.execute(
                "SELECT i.code, t.label FROM tags t JOIN items i ON i.id = t.item_id"
            ).fetchall()
        )
    return items, tags


def _commit(app: sqlite3.Connection, *statements: tuple[str, tuple[object, ...]]) -> None:
    app.execute("BEGIN")
    for sql, args in statements:
        app.execute(sql, args)
    app.execute("COMMIT")


def _workload(app: sqlite3.Connection, config: Path, rng: random.Random, round_: int) -> None:
    """A few source transactions, each drained on its own: one log transaction each."""
    for step in range(4):
        code = f"r{round_}s{step}"
        _commit(
            app,
            ("INSERT INTO items (code, qty) VALUES (?, ?)", (code, rng.randint(0, 99))),
            ("UPDATE items SET qty = qty + 1 WHERE code = ?", (f"seed{rng.randint(0, 9)}",)),
            (
                "INSERT INTO tags (item_id, label) SELECT id, ? FROM items WHERE code = ?",
                (f"t{round_}{step}", code),
            ),
        )
        assert run_cli(config, "drain").exit_code == 0
    _commit(app, ("DELETE FROM tags WHERE label = ?", (f"t{round_}0",)))
    assert run_cli(config, "drain").exit_code == 0


@dataclass(frozen=True)
class Original:
    directory: Path
    truth: Truth


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    directory = tmp_path_factory.mktemp("sweep")
    app = sqlite3.connect(directory / "app.db", isolation_level=None)
    app.executescript(SCHEMA)
    for i in range(10):
        _commit(app, ("INSERT INTO items (code, qty) VALUES (?, ?)", (f"seed{i}", i)))
    config = write_config(directory, f"sqlite:///{directory / 'app.db'}", _SMALL_SEGMENTS)
    assert run_cli(config, "install").exit_code == 0
    rng = random.Random(10)
    _workload(app, config, rng, 0)
    # one transaction of more than 2,000 events: logged as CHUNK records, compressed
    _commit(app, *[("UPDATE items SET qty = ? WHERE code = 'seed0'", (n,)) for n in range(2100)])
    assert run_cli(config, "drain").exit_code == 0
    assert run_cli(config, "snapshot").exit_code == 0
    _workload(app, config, rng, 1)
    assert run_cli(config, "snapshot").exit_code == 0
    _workload(app, config, rng, 2)
    app.close()
    return Original(directory=directory, truth=_content(directory / "app.db"))


_SMALL_SEGMENTS = "segment_size = 600\n"


@dataclass
class Copy:
    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def layout(self) -> RepositoryLayout:
        return RepositoryLayout(self.repo)


def _copy(original: Original, into: Path, state: str) -> Copy:
    shutil.rmtree(into, ignore_errors=True)
    ignore = shutil.ignore_patterns("state.db*") if state == "state.db removed" else None
    shutil.copytree(original.directory / "repo", into / "repo", ignore=ignore)
    return Copy(root=into)


def _log(copy: Copy) -> SegmentLog:
    """The log as a reader session opens it: state.db's checkpoint when there is one."""
    state = copy.layout.state_path
    return SegmentLog(copy.layout.log_dir, checkpoint=lambda: read_checkpoint(state))


def _verify(copy: Copy) -> VerifyReport:
    report = VerifyReport()
    verify_log(_log(copy), report)
    verify_snapshots(copy.layout.snapshots_dir, report)
    return report


def _restore_latest(copy: Copy) -> Truth | BaseException:
    """`restore --latest --create-schema` into a new SQLite file: its content, or the error
    (after checking that the target was left untouched)."""
    target = copy.root / "target.db"
    target.unlink(missing_ok=True)
    try:
        log_store = _log(copy)
        plan = plan_restore(
            snapshots_dir=copy.layout.snapshots_dir, log_store=log_store, at=None, last_logged=None
        )
        Restorer(
            plan=plan,
            target=open_restore_target(f"sqlite:///{target}", plan.snapshot.dialect),
            log_store=log_store,
        ).run(dry_run=False, create_schema=True, prune_target=False)
    except Exception as exc:
        assert _untouched(target), f"{exc!r} left the target changed"
        return exc
    return _content(target)


def _untouched(target: Path) -> bool:
    if not target.exists():
        return True
    with sqlite3.connect(target) as conn:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


Damage = tuple[str, str, Callable[[Copy], None]]  # (what, the file verify must name, how)


def _check(original: Original, tmp_path: Path, state: str, damages: Iterator[Damage]) -> int:
    """Apply each damage to a fresh copy; return how many were checked."""
    failures: list[str] = []
    count = 0
    for what, file, damage in damages:
        count += 1
        copy = _copy(original, tmp_path / "copy", state)
        damage(copy)
        report = _verify(copy)
        if report.ok or not any(file in p for p in report.problems):
            failures.append(f"{what}: verify said {report.problems or 'verified'}")
        outcome = _restore_latest(copy)
        if not isinstance(outcome, BaseException) and outcome != original.truth:
            failures.append(f"{what}: restore --latest succeeded with a different state")
    assert not failures, f"{len(failures)} failures in {count} damages:\n" + "\n".join(failures)
    return count


def _flip(path: Path, offset: int, *, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _segments(original: Original) -> list[str]:
    return SegmentLog(original.directory / "repo" / "log").segments()


def _records(original: Original, name: str) -> list[Record]:
    log = SegmentLog(original.directory / "repo" / "log")
    return [r for r in log.records(strict=True) if r.segment == name]


# --- the sweeps --------------------------------------------------------------------------


def test_the_original_verifies_and_restores_exactly(original: Original, tmp_path: Path) -> None:
    for state in STATES:
        copy = _copy(original, tmp_path / "copy", state)
        report = _verify(copy)
        assert report.ok, report.problems
        assert report.durable_end is not None
        assert _restore_latest(copy) == original.truth
    assert len(_segments(original)) >= 6, "several segments"
    assert any(r.kind == 1 for name in _segments(original) for r in _records(original, name)), (
        "a chunked transaction"
    )


@pytest.mark.parametrize("state", STATES)
def test_a_flipped_byte_in_any_log_record_is_caught(
    original: Original, tmp_path: Path, state: str
) -> None:
    rng = random.Random(6)

    def damages() -> Iterator[Damage]:
        for name in _segments(original):
            header = range(HEADER.size) if FULL else [rng.randrange(HEADER.size)]
            spans = [(-1, o) for o in header]
            for index, record in enumerate(_records(original, name)):
                offsets = (
                    range(record.offset, record.end)
                    if FULL
                    else [rng.randrange(record.offset, record.end)]
                )
                spans += [(index, o) for o in offsets]
            for index, offset in spans:
                yield (
                    f"{name} record {index} byte {offset}",
                    name,
                    lambda c, n=name, o=offset: _flip(c.layout.log_dir / n, o),
                )

    assert _check(original, tmp_path, state, damages()) > 20


@pytest.mark.parametrize("state", STATES)
def test_a_missing_or_cut_segment_is_caught(original: Original, tmp_path: Path, state: str) -> None:
    names = _segments(original)

    def damages() -> Iterator[Damage]:
        for name in names:
            yield (f"{name} removed", name, lambda c, n=name: (c.layout.log_dir / n).unlink())
        for name in names[:-1]:
            records = _records(original, name)
            cuts = [r.offset for r in records[1:]] + [HEADER.size]
            for cut in cuts:
                yield (f"{name} cut at {cut}", name, lambda c, n=name, at=cut: _cut(c, n, at))
        last = names[-1]
        for record in _records(original, last):  # the last one too, before its durable end
            yield (
                f"{last} cut at {record.offset}",
                last,
                lambda c, at=record.offset: _cut(c, last, at),
            )

    assert _check(original, tmp_path, state, damages()) > 10


def _cut(copy: Copy, name: str, at: int) -> None:
    with (copy.layout.log_dir / name).open("r+b") as handle:
        handle.truncate(at)


def _snapshot_files(original: Original) -> list[Path]:
    snapshots = original.directory / "repo" / "snapshots"
    return sorted(p for p in snapshots.glob("*/tables/*") if p.stat().st_size)


@pytest.mark.parametrize("state", STATES)
def test_a_flipped_byte_in_a_manifest_is_caught(
    original: Original, tmp_path: Path, state: str
) -> None:
    rng = random.Random(7)
    manifests = sorted((original.directory / "repo" / "snapshots").glob("*/manifest.json"))
    assert len(manifests) == 3

    def damages() -> Iterator[Damage]:
        for manifest in manifests:
            relative = manifest.relative_to(original.directory / "repo")
            size = manifest.stat().st_size
            for offset in [*sorted(rng.sample(range(size), 12)), 0, size - 1]:
                yield (
                    f"{relative} byte {offset}",
                    manifest.parent.name,
                    lambda c, r=relative, o=offset: _flip(c.repo / r, o),
                )

    _check(original, tmp_path, state, damages())


@pytest.mark.parametrize("state", STATES)
def test_a_flipped_byte_in_a_snapshot_file_is_caught(
    original: Original, tmp_path: Path, state: str
) -> None:
    rng = random.Random(8)

    def damages() -> Iterator[Damage]:
        for path in _snapshot_files(original):
            relative = path.relative_to(original.directory / "repo")
            size = path.stat().st_size
            for offset in sorted(rng.sample(range(size), min(size, 8))):
                yield (
                    f"{relative} byte {offset}",
                    f"tables/{path.name}",
                    lambda c, r=relative, o=offset: _flip(c.repo / r, o),
                )

    _check(original, tmp_path, state, damages())


@pytest.mark.parametrize("state", STATES)
def test_a_flipped_bit_in_the_newest_snapshot_is_caught(
    original: Original, tmp_path: Path, state: str
) -> None:
    """A one-bit flip keeps text ASCII (an 0xFF flip never does), so only the checksum can
    tell; these are the files `restore --latest` reads."""
    rng = random.Random(9)
    newest = max((original.directory / "repo" / "snapshots").glob("*/manifest.json")).parent

    def damages() -> Iterator[Damage]:
        for path in sorted(newest.glob("tables/*")):
            relative = path.relative_to(original.directory / "repo")
            for offset in sorted(rng.sample(range(path.stat().st_size), 24)):
                yield (
                    f"{relative} bit 0 of byte {offset}",
                    f"tables/{path.name}",
                    lambda c, r=relative, o=offset: _flip(c.repo / r, o, mask=0x01),
                )

    _check(original, tmp_path, state, damages())


# --- the same through the command line ---------------------------------------------------


def test_the_commands_fail_on_a_damaged_middle_segment(original: Original, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path / "copy", "state.db removed")
    config = write_config(copy.root, f"sqlite:///{original.directory / 'app.db'}")
    name = _segments(original)[len(_segments(original)) // 2]
    record = _records(original, name)[0]
    _flip(copy.layout.log_dir / name, (record.offset + record.end) // 2)
    verify = run_cli(config, "verify")
    assert verify.exit_code == 1
    assert f"log segment {name} is corrupt at byte offset {record.offset}" in verify.output
    target = tmp_path / "restored.db"
    restore = run_cli(
        config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    outcome_ok = restore.exit_code == 0 and _content(target) == original.truth
    assert outcome_ok or (restore.exit_code == 1 and _untouched(target)), restore.output
