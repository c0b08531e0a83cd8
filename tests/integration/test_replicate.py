"""Replication of the spool to a bucket (services/replicate.py), on both kinds of store:
a local folder standing for the bucket, and a real bucket on SeaweedFS (tests/s3.py).

The spool is a real repository fed by real drains from a SQLite source, with segments
small enough to roll. What is checked is what a reader of the bucket gets: every
segment's durable bytes (whole, or its pieces concatenated), the end markers, snapshots whole.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.repository.bucket_layout import (
    PIECES,
    BucketLog,
    bucket_log,
    bucket_snapshots,
    read_segment,
)
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import read_end
from nkdaemon.repository.reader import read_log
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import list_snapshots, read_table
from nkdaemon.services.replicate import (
    PROGRESS_FILE,
    ReplicationConflict,
    Replicator,
    segment_bytes,
)
from tests.helpers import captured_notes, cli_status, do_drain, engine_for, run_cli
from tests.s3 import S3Server, fault_proxy

MakeBucket = Callable[[Path], RepositoryStore]


@pytest.fixture(params=["folder", "s3"])
def make_bucket(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> MakeBucket:
    if request.param == "folder":
        return lambda tmp: LocalStore(tmp / "bucket")
    server: S3Server = request.getfixturevalue("s3_server")
    for variable, value in server.environment().items():
        monkeypatch.setenv(variable, value)
    name = server.new_bucket()
    return lambda tmp: S3Store(
        name, "edms/prod", endpoint_url=server.endpoint, region=server.region, path_style=True
    )


def add_notes(url: str, first: int, count: int) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for i in range(first, first + count):
            conn.execute(
                sa.text("INSERT INTO notes (body) VALUES (:b)"),
                {"b": f"note {i} {secrets.token_hex(100)}"},
            )
    engine.dispose()


def spool_for(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    settings = captured_notes(url, tmp_path)
    config = settings.file
    assert config is not None
    text = config.read_text().replace("[repository]\n", '[repository]\nsegment_size = "4KiB"\n')
    config.write_text(text)
    return url, config


def drained(url: str, config: Path, first: int, count: int) -> None:
    from nkdaemon.runtime.config import load_settings

    add_notes(url, first, count)
    do_drain(load_settings(config))


def assert_bucket_holds_spool(spool: Path, bucket: RepositoryStore, *, rolled: bool = True) -> None:
    """Every durable byte of the spool's log is in the bucket, once, and its newest end
    marker says so."""
    local = LocalStore(spool)
    end = read_end(LocalStore(spool / "log"))
    assert end is not None
    sizes = segment_bytes(local, end)
    assert len(sizes) >= (2 if rolled else 1), "the test means the log to have rolled"
    for name, size in sizes.items():
        assert read_segment(bucket, name) == local.read(f"log/{name}")[:size], name
    assert_same_end(bucket, spool)


def assert_same_end(bucket: RepositoryStore, spool: Path) -> None:
    mine, theirs = read_end(LocalStore(spool / "log")), read_end(BucketLog(bucket))
    assert mine is not None and theirs is not None
    assert (theirs.lsn, theirs.segment, theirs.offset) == (mine.lsn, mine.segment, mine.offset)


def test_the_bucket_gets_every_durable_byte_of_a_rolling_log_and_the_snapshots(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    replicator = Replicator(spool=spool, bucket=bucket)
    for round_ in range(4):
        drained(url, config, round_ * 10, 10)
        replicator.run_once()
    assert run_cli(config, "snapshot").exit_code == 0
    drained(url, config, 100, 3)  # the open segment grows after a piece went up
    progress = replicator.run_once()
    assert_bucket_holds_spool(spool, bucket)
    assert progress.behind_since is None
    local = LocalStore(spool)
    assert len(progress.snapshots) == 2  # install's and the one taken here
    assert set(progress.snapshots) == {n.split("/")[1] for n in local.list("snapshots/")}
    for snapshot in progress.snapshots:
        for name in local.list(f"snapshots/{snapshot}/"):
            if not name.endswith("checked.json"):
                assert bucket.read(name) == local.read(name)
    # closed segments are whole objects, their pieces gone; only the open one has pieces
    end = read_end(LocalStore(spool / "log"))
    assert end is not None
    pieces = {p.split("/")[2] for p in bucket.list(f"{PIECES}/")}
    assert pieces <= {end.segment}


def test_a_second_round_uploads_nothing_and_a_lost_record_uploads_nothing_again(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    drained(url, config, 0, 30)
    first = Replicator(spool=spool, bucket=bucket).run_once()
    objects = bucket.list()
    again = Replicator(spool=spool, bucket=bucket).run_once()
    assert again.uploaded_bytes == first.uploaded_bytes
    (spool / PROGRESS_FILE).unlink()  # as if every confirmation had been lost to a crash
    fresh = Replicator(spool=spool, bucket=bucket).run_once()
    assert fresh.uploaded_bytes == 0, "objects already there with the same bytes are not sent"
    assert bucket.list() == objects


def test_a_piece_uploaded_before_a_crash_is_taken_as_it_is_and_the_next_one_follows_it(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    drained(url, config, 0, 2)
    Replicator(spool=spool, bucket=bucket).run_once()
    before = tmp_path / "progress-before"
    shutil.copy(spool / PROGRESS_FILE, before)
    drained(url, config, 2, 1)
    Replicator(spool=spool, bucket=bucket).run_once()
    shutil.copy(before, spool / PROGRESS_FILE)  # the record of that piece was lost
    drained(url, config, 3, 30)  # more data: the next piece would be longer
    Replicator(spool=spool, bucket=bucket).run_once()
    assert_bucket_holds_spool(spool, bucket, rolled=False)
    for round_ in range(4):  # the segment closes: uploaded whole, its pieces deleted
        drained(url, config, 100 + 10 * round_, 10)
    Replicator(spool=spool, bucket=bucket).run_once()
    assert_bucket_holds_spool(spool, bucket)
    assert "0000000000000001.nkdlog" not in {p.split("/")[2] for p in bucket.list(PIECES)}


def test_another_repository_in_the_same_prefix_is_refused(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket(tmp_path)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        url, config = spool_for(tmp_path / name)
        drained(url, config, 0, 5)
        if name == "two":
            with pytest.raises(ReplicationConflict, match="another repository"):
                Replicator(spool=tmp_path / name / "repo", bucket=bucket).run_once()
        else:
            Replicator(spool=tmp_path / name / "repo", bucket=bucket).run_once()


def test_throttling_is_retried_and_the_round_completes(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    url, config = spool_for(tmp_path)
    for round_ in range(4):
        drained(url, config, 10 * round_, 10)
    with fault_proxy(s3_server) as proxy:
        bucket = S3Store(s3_server.new_bucket(), "p", endpoint_url=proxy.endpoint, path_style=True)
        proxy.throttle = 3  # the next three requests: 503 SlowDown
        Replicator(spool=tmp_path / "repo", bucket=bucket).run_once()
        slowed = [e for e in proxy.seen if e.status == 503]
        assert len(slowed) == 3
    assert_bucket_holds_spool(tmp_path / "repo", bucket_direct(s3_server, bucket.bucket))


def bucket_direct(server: S3Server, name: str) -> S3Store:
    return S3Store(name, "p", endpoint_url=server.endpoint, client=server.client())


def test_status_shows_the_replicated_transaction_the_lag_and_the_spool(tmp_path: Path) -> None:
    url, config = spool_for(tmp_path)
    text = config.read_text().replace("[repository]\n", '[repository]\nurl = "s3://backups/x"\n')
    config.write_text(text)
    spool = tmp_path / "repo"
    replicator = Replicator(spool=spool, bucket=LocalStore(tmp_path / "bucket"))
    drained(url, config, 0, 10)
    replicator.run_once()
    drained(url, config, 10, 10)
    behind = cli_status(config, exit_codes=(0, 1))
    replication = behind["replication"]
    assert replication["bucket"] == "s3://backups/x"
    assert 0 < replication["replicated_lsn"] < behind["last_lsn"]
    assert replication["lag_bytes"] > 0
    assert replication["spool_bytes"] > replication["lag_bytes"]
    replicator.run_once()
    caught_up = cli_status(config, exit_codes=(0, 1))["replication"]
    assert caught_up["replicated_lsn"] == behind["last_lsn"]
    assert (caught_up["lag_bytes"], caught_up["lag_seconds"]) == (0, 0.0)
    shown = run_cli(config, "status").output
    assert f"replicated   transaction {behind['last_lsn']}, behind by 0.0 s and 0 bytes" in shown


def test_a_reader_of_the_bucket_gets_the_spools_log_and_snapshots(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    replicator = Replicator(spool=spool, bucket=bucket)
    for round_ in range(4):
        drained(url, config, round_ * 10, 10)
        replicator.run_once()
    assert run_cli(config, "snapshot").exit_code == 0
    drained(url, config, 100, 3)  # the open segment: pieces in the bucket
    replicator.run_once()
    spool_log = SegmentLog(spool / "log")
    from_bucket = bucket_log(bucket)
    assert list(read_log(from_bucket)) == list(read_log(spool_log))
    theirs, mine = from_bucket.durable_end(), read_end(LocalStore(spool / "log"))
    assert theirs is not None and mine is not None
    assert (theirs.lsn, theirs.segment, theirs.offset) == (mine.lsn, mine.segment, mine.offset)
    snapshots = list_snapshots(bucket_snapshots(bucket))
    assert [s.id for s in snapshots] == [s.id for s in list_snapshots(spool / "snapshots")]
    newest = snapshots[-1]
    assert sum(1 for t in newest.tables for _ in read_table(newest, t)) == sum(
        t.rows for t in newest.tables
    )
    with pytest.raises(RepositoryError, match="never written"):
        from_bucket.store.write_if_absent("x.nkdlog", b"")
