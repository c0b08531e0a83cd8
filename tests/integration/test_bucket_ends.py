"""Nothing in the bucket is ever overwritten (issue 13): the durable end the replicator
uploads is a series of write-once end markers ``log/ends/`` (repository/log_end.py), and
readers of the bucket take the furthest of them and of an older release's ``log/end.json``.

Run on a local folder standing for the bucket, the same folder with every object sealed,
and a real bucket on SeaweedFS (tests/s3.py); a versioned SeaweedFS bucket shows from the
server's side that every key has exactly one version, and a fresh machine restores and
verifies from it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ReadableBytes, RepositoryStore
from nkdaemon.core.retention import RetentionPolicy
from nkdaemon.repository.bucket_layout import BucketLog, bucket_log
from nkdaemon.repository.encrypted_store import EncryptedStore
from nkdaemon.repository.envelope import MAGIC, EncryptionKey
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import DurableEnd, end_marker, read_end
from nkdaemon.repository.reader import read_log
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.state import Checkpoint
from nkdaemon.runtime.config import load_settings
from nkdaemon.services.prune import bucket_side, prune
from nkdaemon.services.replicate import PROGRESS_FILE, ReplicationConflict, Replicator
from tests.helpers import do_drain, run_cli
from tests.integration.test_replicate import drained, spool_for
from tests.integration.test_restore_from_bucket import fresh_machine
from tests.natural_content import differences, natural_content
from tests.s3 import S3Server

MakeBucket = Callable[[Path], RepositoryStore]
KEY = EncryptionKey.from_secret(bytes(range(32)))
ENDS = "log/ends/"


@pytest.fixture(params=["folder", "s3"])
def make_bucket(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> MakeBucket:
    if request.param == "folder":
        return lambda tmp: LocalStore(tmp / "bucket")
    server: S3Server = request.getfixturevalue("s3_server")
    for variable, value in server.environment().items():
        monkeypatch.setenv(variable, value)
    name = server.new_bucket()
    return lambda tmp: _s3(server, name)


def _s3(server: S3Server, name: str) -> S3Store:
    return S3Store(name, "edms", endpoint_url=server.endpoint, path_style=True)


class Counting:
    """A store that counts, per name, the writes it accepted, and any replace."""

    def __init__(self, inner: RepositoryStore) -> None:
        self.inner = inner
        self.written: Counter[str] = Counter()
        self.replaced: list[str] = []

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def read(self, name: str) -> bytes:
        return self.inner.read(name)

    def open(self, name: str) -> IO[bytes]:
        return self.inner.open(name)

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        self.inner.write_if_absent(name, data)
        self.written[name] += 1

    def replace(self, name: str, data: bytes) -> None:
        self.replaced.append(name)
        self.inner.replace(name, data)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def describe(self, name: str = "") -> str:
        return self.inner.describe(name)


def spool_end(spool: Path) -> DurableEnd:
    end = read_end(LocalStore(spool / "log"))
    assert end is not None
    return end


def same_end(theirs: DurableEnd | None, mine: DurableEnd) -> bool:
    assert theirs is not None
    fields = ("lsn", "segment", "offset", "position", "commit_time", "complete_through")
    return all(getattr(theirs, f) == getattr(mine, f) for f in fields)


def replicate_rounds(url: str, config: Path, replicator: Replicator) -> int:
    """Rounds with new rows, and idle drains that only move complete_through on; returns
    how many distinct durable ends the spool recorded after a round."""
    ends = set()
    for round_ in range(2):
        drained(url, config, round_ * 10, 10)
        replicator.run_once()
        ends.add(spool_end(replicator.spool))
        do_drain(load_settings(config))  # nothing new: the end moves by its time alone
        replicator.run_once()
        ends.add(spool_end(replicator.spool))
    return len(ends)


# --- written once ----------------------------------------------------------------------------


def test_every_object_is_written_once_and_the_end_is_a_series_of_markers(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", Counting(make_bucket(tmp_path))
    ends = replicate_rounds(url, config, Replicator(spool=spool, bucket=bucket))
    assert bucket.replaced == [], "nothing in the bucket is replaced"
    assert [k for k, n in bucket.written.items() if n != 1] == []
    markers = bucket.list(ENDS)
    written = [k for k in bucket.written if k.startswith(ENDS)]
    assert ends == len(written) > len(markers) == 2, "a marker per end; the newest 2 stay"
    assert markers == sorted(written)[-2:]
    assert "log/end.json" not in bucket.list("log/")
    assert same_end(bucket_log(bucket).durable_end(), spool_end(spool))
    assert list(read_log(bucket_log(bucket))) == list(read_log(SegmentLog(spool / "log")))


def test_a_versioned_bucket_holds_one_version_of_every_key_and_restores_at_its_end(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own record: with versioning on, an overwrite would leave a second
    version of the key. A fresh machine then restores and verifies at the latest end."""
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    name, client = s3_server.new_bucket(), s3_server.client()
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    (tmp_path / "origin").mkdir()
    url, config = spool_for(tmp_path / "origin")
    spool = tmp_path / "origin" / "repo"
    replicator = Replicator(spool=spool, bucket=_s3(s3_server, name))
    replicate_rounds(url, config, replicator)
    assert run_cli(config, "snapshot").exit_code == 0
    drained(url, config, 100, 5)
    replicator.run_once()

    versions = client.list_object_versions(Bucket=name)
    per_key = Counter(v["Key"] for v in versions["Versions"])
    assert per_key and [k for k, n in per_key.items() if n != 1] == []
    removed = {m["Key"] for m in versions.get("DeleteMarkers", ())}
    assert any(k.startswith(f"edms/{ENDS}") for k in removed), "superseded markers go"

    fresh = fresh_machine(tmp_path, s3_server, name)
    target = fresh.parent / "restored.db"
    restored = run_cli(
        fresh, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert restored.exit_code == 0, restored.output
    expected = natural_content(url, tmp_path / "reflect")
    assert differences(natural_content(f"sqlite:///{target}", tmp_path / "r"), expected) == []
    verified = run_cli(fresh, "verify")
    assert verified.exit_code == 0, verified.output


def test_the_same_end_written_again_after_a_lost_record_is_done_and_other_bytes_are_refused(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    drained(url, config, 0, 5)
    Replicator(spool=spool, bucket=bucket).run_once()
    before = tmp_path / "progress-before"
    shutil.copy(spool / PROGRESS_FILE, before)
    do_drain(load_settings(config))
    Replicator(spool=spool, bucket=bucket).run_once()
    markers = bucket.list(ENDS)
    shutil.copy(before, spool / PROGRESS_FILE)  # a crash after the marker, before its record
    again = Replicator(spool=spool, bucket=bucket).run_once()
    assert bucket.list(ENDS) == markers
    assert (
        again.end is not None and again.end["complete_through"] == spool_end(spool).complete_through
    )

    end = spool_end(spool)
    other = Checkpoint(
        lsn=end.lsn,
        segment=end.segment,
        offset=end.offset + 1,
        position=end.position,
        commit_time=end.commit_time,
        complete_through=end.complete_through,
    )
    name, data = end_marker(other)
    assert f"log/{name}" == markers[-1], "the name of the spool's end, with other bytes"
    bucket.delete(markers[-1])
    bucket.write_if_absent(markers[-1], data)  # another repository's end
    (spool / PROGRESS_FILE).unlink()
    with pytest.raises(ReplicationConflict, match="another durable end"):
        Replicator(spool=spool, bucket=bucket).run_once()


# --- reading ---------------------------------------------------------------------------------


def test_a_bucket_written_by_an_older_release_reads_and_the_furthest_end_counts(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    replicator = Replicator(spool=spool, bucket=bucket)
    drained(url, config, 0, 10)
    replicator.run_once()
    early = spool_end(spool)
    (early_marker,) = bucket.list(ENDS)
    early_bytes = bucket.read(early_marker)
    drained(url, config, 10, 10)
    replicator.run_once()
    late = spool_end(spool)
    late_bytes = bucket.read(bucket.list(ENDS)[-1])
    for marker in bucket.list(ENDS):  # as an older release left it: only log/end.json
        bucket.delete(marker)
    bucket.write_if_absent("log/end.json", late_bytes)
    assert same_end(bucket_log(bucket).durable_end(), late)
    assert list(read_log(bucket_log(bucket))) == list(read_log(SegmentLog(spool / "log")))

    bucket.write_if_absent(early_marker, early_bytes)  # a marker behind end.json
    assert early.lsn < late.lsn
    assert same_end(bucket_log(bucket).durable_end(), late), "the furthest of both"

    (spool / PROGRESS_FILE).unlink()  # the next round writes the end again, as a marker
    drained(url, config, 20, 3)
    Replicator(spool=spool, bucket=bucket).run_once()
    assert "log/end.json" not in bucket.list("log/"), "superseded by a further marker"
    assert same_end(bucket_log(bucket).durable_end(), spool_end(spool))


class Racing:
    """A bucket whose listing of the end markers is followed, before the reader reads
    what it listed, by ``meanwhile`` (a writer deleting markers, writing new ones)."""

    def __init__(self, inner: RepositoryStore, meanwhile: Callable[[list[str]], None]) -> None:
        self.inner, self.meanwhile, self.listings = inner, meanwhile, 0
        self.read = inner.read
        self.open = inner.open
        self.size = inner.size
        self.describe = inner.describe

    def list(self, prefix: str = "") -> list[str]:
        listed = self.inner.list(prefix)
        if prefix.startswith(ENDS):
            self.listings += 1
            self.meanwhile(listed)
        return listed


def test_a_marker_deleted_between_list_and_read_is_passed_over_for_the_next(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    replicator = Replicator(spool=spool, bucket=bucket)
    drained(url, config, 0, 10)
    replicator.run_once()
    early = spool_end(spool)
    drained(url, config, 10, 10)
    replicator.run_once()
    late_name = bucket.list(ENDS)[-1]
    late_bytes = bucket.read(late_name)

    def delete_newest(listed: list[str]) -> None:
        if listed and listed[-1] == late_name:
            bucket.delete(late_name)

    racing = Racing(bucket, delete_newest)
    assert same_end(read_end(BucketLog(racing)), early)
    assert racing.listings == 1

    bucket.write_if_absent(late_name, late_bytes)
    later = Checkpoint(lsn=spool_end(spool).lsn + 1, segment=early.segment, offset=early.offset + 1)
    later_name, later_bytes = end_marker(later)

    def supersede_all(listed: list[str]) -> None:  # every one listed gone, a newer one there
        if f"log/{later_name}" not in listed:
            bucket.write_if_absent(f"log/{later_name}", later_bytes)
            for name in listed:
                bucket.delete(name)

    racing = Racing(bucket, supersede_all)
    found = read_end(BucketLog(racing))
    assert found is not None and found.lsn == later.lsn and racing.listings == 2

    def always_superseded(listed: list[str]) -> None:
        newer = Checkpoint(lsn=later.lsn + len(listed) + vanishing.listings, segment=None, offset=0)
        bucket.write_if_absent(f"log/{end_marker(newer)[0]}", end_marker(newer)[1])
        for name in listed:
            bucket.delete(name)

    vanishing = Racing(bucket, always_superseded)
    with pytest.raises(RepositoryError, match="deleted as fast as they were listed"):
        read_end(BucketLog(vanishing))


def test_markers_of_an_encrypted_bucket_are_sealed_and_one_written_again_is_done(
    tmp_path: Path,
) -> None:
    """Sealing draws a new nonce each time: a marker written again (its record lost to a
    crash) has other stored bytes, and the same end inside."""
    url, config = spool_for(tmp_path)
    spool, raw = tmp_path / "repo", LocalStore(tmp_path / "bucket")
    replicate_rounds(url, config, Replicator(spool=spool, bucket=EncryptedStore(raw, KEY)))
    markers = raw.list(ENDS)
    assert len(markers) == 2
    for name in markers:
        assert raw.read(name).startswith(MAGIC), name
    assert same_end(read_end(BucketLog(EncryptedStore(raw, KEY))), spool_end(spool))
    (spool / PROGRESS_FILE).unlink()
    Replicator(spool=spool, bucket=EncryptedStore(raw, KEY)).run_once()
    assert raw.list(ENDS) == markers


# --- prune -----------------------------------------------------------------------------------


def test_prune_deletes_the_markers_newer_ones_supersede_and_dry_run_only_lists_them(
    tmp_path: Path, make_bucket: MakeBucket
) -> None:
    url, config = spool_for(tmp_path)
    spool, bucket = tmp_path / "repo", make_bucket(tmp_path)
    for round_ in range(3):  # three transactions: the durable end is past lsn 2
        drained(url, config, round_ * 10, 10)
    Replicator(spool=spool, bucket=bucket).run_once()
    end = spool_end(spool)
    assert end.lsn > 2
    stale = [end_marker(Checkpoint(lsn=n, segment=end.segment, offset=16)) for n in (1, 2)]
    for name, data in stale:  # left by a round whose deletes failed
        bucket.write_if_absent(f"log/{name}", data)
    bucket.write_if_absent("log/end.json", stale[0][1])  # and an older release's end
    markers = bucket.list(ENDS)
    assert len(markers) == 3
    policy, now = RetentionPolicy(keep_snapshots=1), datetime.now(UTC)

    (dry,) = prune([bucket_side(bucket)], policy, now, dry_run=True)
    doomed = ["log/end.json", f"log/{stale[0][0]}"]
    assert [d.name for d in dry.ends] == doomed
    assert all(d.kind == "end marker" for d in dry.ends)
    assert bucket.list(ENDS) == markers and "log/end.json" in bucket.list("log/")

    (done,) = prune([bucket_side(bucket)], policy, now, dry_run=False)
    assert [d.name for d in done.ends] == doomed
    assert bucket.list(ENDS) == markers[1:]
    assert "log/end.json" not in bucket.list("log/")
    assert same_end(bucket_log(bucket).durable_end(), end)
