"""What only the bucket store has to show, beyond the contract every store passes
(test_store_contract.py): long streams sent as one conditional put, multipart uploads
that never overwrite and never linger, a SHA-256 on every write that the server checks,
throttling and lost answers retried, and errors that name the bucket and the way out
without ever showing a credential. What the store relies on in the server (If-None-Match,
checksums) is checked here too, not assumed.

Everything runs against a real SeaweedFS server; faults on the wire come from a loopback
proxy in front of it (tests/s3.py FaultProxy), never from a mocked client.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ObjectExistsError, ObjectMissingError
from nkdaemon.repository.s3_store import MIN_PART_SIZE, S3Store, S3StoreError, S3Unavailable
from nkdaemon.repository.snapshots import (
    SnapshotDamagedError,
    SnapshotWriter,
    list_snapshots,
    read_table,
)
from tests.integration.test_store_contract import killed_while, stall
from tests.s3 import FaultProxy, S3Server, fault_proxy

PART = MIN_PART_SIZE


@pytest.fixture(autouse=True)
def _credentials(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS chain finds the server's credentials in the environment."""
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)


def _store(server: S3Server | FaultProxy, bucket: str, **options: object) -> S3Store:
    return S3Store(
        bucket,
        "repo",
        endpoint_url=server.endpoint,
        region="us-east-1",
        path_style=True,
        part_size=PART,
        **options,  # type: ignore[arg-type]
    )


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _uploads_left(server: S3Server, bucket: str) -> list[str]:
    answer = server.client().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with fault_proxy(s3_server) as running:
        yield running


# --- long streams: spooled, then one conditional put; multipart beyond that -------------


def test_of_writers_racing_with_long_streams_exactly_one_wins_with_one_put_each(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """A stream longer than a part is spooled and sent as one PutObject with
    If-None-Match, which SeaweedFS makes atomic (its multipart completion is not)."""
    store = _store(proxy, s3_bucket)
    writers = 3
    start = threading.Barrier(writers)
    won: list[bytes] = []
    lost: list[ObjectExistsError] = []

    def write(n: int) -> None:
        data = bytes([n]) * (PART + 1000)
        start.wait()
        try:
            store.write_if_absent("contended", io.BytesIO(data))
            won.append(data)
        except ObjectExistsError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == writers - 1
    assert store.read("contended") == won[0]
    assert proxy.requests("POST") == [], "no multipart upload"
    assert sorted(len(put.body) for put in proxy.requests("PUT")) == [PART + 1000] * writers


def test_a_stream_beyond_the_single_put_limit_is_uploaded_in_parts_and_never_overwrites(
    s3_server: S3Server, s3_bucket: str
) -> None:
    store = _store(s3_server, s3_bucket, single_put_limit=PART)
    first = os.urandom(2 * PART + 123)
    store.write_if_absent("snapshots/s1/tables/1", io.BytesIO(first))
    head = s3_server.client().head_object(
        Bucket=s3_bucket, Key="repo/snapshots/s1/tables/1", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"].endswith("-3"), "three parts, each with its SHA-256"
    with pytest.raises(ObjectExistsError):
        store.write_if_absent("snapshots/s1/tables/1", io.BytesIO(os.urandom(2 * PART)))
    assert store.read("snapshots/s1/tables/1") == first
    assert _uploads_left(s3_server, s3_bucket) == [], "the refused upload was aborted"


def test_the_server_refuses_a_completion_with_if_none_match_once_the_key_exists(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """What the multipart path relies on (one writer after another; see the race in
    nkdaemon/repository/s3_store.py's docstring for what SeaweedFS does not promise)."""
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"first")
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="k")["UploadId"]
    part = client.upload_part(
        Bucket=s3_bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"second"
    )
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(
            Bucket=s3_bucket,
            Key="k",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            IfNoneMatch="*",
        )
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"first"
    client.abort_multipart_upload(Bucket=s3_bucket, Key="k", UploadId=upload)


def test_a_long_stream_that_fails_while_spooled_sends_nothing(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    class FailsLater:
        def __init__(self) -> None:
            self.given = 0

        def read(self, size: int = -1, /) -> bytes:
            if self.given >= PART:
                raise RuntimeError("the source broke")
            self.given += size
            return b"z" * size

    store = _store(proxy, s3_bucket)
    with pytest.raises(RuntimeError, match="the source broke"):
        store.write_if_absent("broken", FailsLater())
    assert store.list() == []
    assert proxy.requests("PUT") == [] and proxy.requests("POST") == []


def test_a_writer_killed_while_spooling_leaves_nothing_and_the_name_free(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    class StallsAfterOnePart:
        def __init__(self, ready: int) -> None:
            self.ready, self.given = ready, 0

        def read(self, size: int = -1, /) -> bytes:
            if self.given > PART:
                stall(self.ready)
            self.given += size
            return b"k" * size

    store = _store(s3_server, s3_bucket, spool_dir=str(tmp_path))
    killed_while(lambda ready: store.write_if_absent("torn", StallsAfterOnePart(ready)))
    assert store.list() == [] and _uploads_left(s3_server, s3_bucket) == []
    with pytest.raises(ObjectMissingError):
        store.read("torn")
    assert list(tmp_path.iterdir()) == [], "the spool file had no name to leave behind"
    store.write_if_absent("torn", b"whole")
    assert store.read("torn") == b"whole"


def test_uploads_left_by_killed_writers_are_aborted_once_old_enough(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """As a writer killed between two parts leaves it: one part sent, never completed."""
    client = s3_server.client()
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="repo/torn")["UploadId"]
    client.upload_part(
        Bucket=s3_bucket, Key="repo/torn", UploadId=upload, PartNumber=1, Body=b"k" * PART
    )
    client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x")  # not the store's
    store = _store(s3_server, s3_bucket)
    assert store.list() == []
    assert store.abort_stale_uploads(older_than=timedelta(hours=1)) == [], "may still run"
    assert store.abort_stale_uploads(older_than=timedelta(0)) == ["torn"]
    assert _uploads_left(s3_server, s3_bucket) == ["elsewhere/x"]


# --- checksums ------------------------------------------------------------------------------


def test_every_write_sends_the_sha256_of_its_body_and_the_server_keeps_it(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    store = _store(proxy, s3_bucket)
    small = b"a segment"
    store.write_if_absent("log/1", small)
    store.write_if_absent("log/ends/1.json", b'{"end": 1}')
    store.write_if_absent("spooled", io.BytesIO(os.urandom(PART + 10)))
    multipart = _store(proxy, s3_bucket, single_put_limit=PART)
    multipart.write_if_absent("in-parts", io.BytesIO(os.urandom(PART + 10)))
    puts = proxy.requests("PUT")
    assert len(puts) == 5, "three puts and two parts"
    for put in puts:
        assert put.headers["x-amz-checksum-sha256"] == _sha256(put.body), put.path
    head = s3_server.client().head_object(
        Bucket=s3_bucket, Key="repo/log/1", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == _sha256(small)


def test_the_server_refuses_a_put_whose_sha256_header_does_not_match_its_body(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """SeaweedFS checks x-amz-checksum-sha256 itself, not only the signed payload hash:
    the body and its signature here are right, only the checksum is not."""
    client = s3_server.client()
    with pytest.raises(ClientError) as refused:
        client.put_object(
            Bucket=s3_bucket, Key="k", Body=b"the body", ChecksumSHA256=_sha256(b"another")
        )
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents") is None


def test_a_body_corrupted_on_its_way_to_the_server_is_refused_and_nothing_changes(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    store = _store(proxy, s3_bucket)
    store.write_if_absent("log/end.json", b"old")
    proxy.corrupt_uploads = True
    with pytest.raises(S3Unavailable, match="do not match their SHA-256"):
        store.write_if_absent("log/1", b"a segment")
    with pytest.raises(S3Unavailable, match="do not match their SHA-256"):
        store.write_if_absent("log/ends/2.json", b"new")
    with pytest.raises(S3Unavailable, match="do not match their SHA-256"):
        store.write_if_absent("spooled", io.BytesIO(os.urandom(PART + 10)))
    multipart = _store(proxy, s3_bucket, single_put_limit=PART)
    with pytest.raises(S3Unavailable, match="do not match their SHA-256"):
        multipart.write_if_absent("in-parts", io.BytesIO(os.urandom(PART + 10)))
    proxy.corrupt_uploads = False
    assert store.list() == ["log/end.json"]
    assert store.read("log/end.json") == b"old"
    assert _uploads_left(s3_server, s3_bucket) == []
    refused = {put.status for put in proxy.requests("PUT")[1:]}
    assert refused and all(400 <= status < 500 for status in refused), refused


def test_a_body_corrupted_on_its_way_back_fails_its_checksum_on_read(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    store = _store(proxy, s3_bucket)
    store.write_if_absent("log/1", b"a segment" * 100)
    proxy.corrupt_downloads = True
    with pytest.raises(S3StoreError, match="log/1"):
        store.read("log/1")


def test_replace_is_refused_and_the_object_stays_as_written(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    """Nothing in a bucket is overwritten (issue 13): not even through the port's replace."""
    store = _store(proxy, s3_bucket)
    store.write_if_absent("log/end.json", b"written once")
    puts = len(proxy.requests("PUT"))
    with pytest.raises(RepositoryError, match="written once, never replaced"):
        store.replace("log/end.json", b"another")
    with pytest.raises(RepositoryError, match="never replaced"):
        store.replace("log/absent.json", b"new")
    assert len(proxy.requests("PUT")) == puts, "nothing was sent"
    assert store.list() == ["log/end.json"] and store.read("log/end.json") == b"written once"


def test_a_multipart_object_is_checked_on_read_by_its_format_not_by_the_store(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """botocore checks a GET against the SHA-256 of a single put, but skips the checksum of
    checksums a multipart object has (above 5 GiB): a byte changed on its way back reaches
    the reader, and the snapshot file's own SHA-256 (its manifest) refuses it."""
    store = _store(proxy, s3_bucket, single_put_limit=PART)
    writer = SnapshotWriter(store, time=datetime(2026, 1, 1, tzinfo=UTC), position=1)
    rows = ({"k": {"n": n}, "r": {"n": n, "x": os.urandom(48).hex()}} for n in range(120_000))
    writer.write_table(1, "t", rows)
    writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])
    (snapshot,) = list_snapshots(store)
    table = snapshot.table("t")
    assert table is not None
    name = snapshot.object(table.file)
    head = s3_server.client().head_object(
        Bucket=s3_bucket, Key=store.key(name), ChecksumMode="ENABLED"
    )
    assert "-" in head["ChecksumSHA256"], "uploaded in parts"
    intact = store.read(name)
    proxy.corrupt_downloads = True
    assert store.read(name) != intact, "the store passes the changed bytes on unchecked"
    with pytest.raises(SnapshotDamagedError, match="SHA-256"):
        next(iter(read_table(snapshot, table)))


# --- throttling -----------------------------------------------------------------------------


def test_throttling_is_retried_until_the_server_takes_the_write_or_the_read(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    store = _store(proxy, s3_bucket)
    assert store.list() == []  # the bucket is checked once, before the throttling starts
    proxy.throttle = 3
    store.write_if_absent("log/1", b"a segment")
    assert [put.status for put in proxy.requests("PUT")] == [503, 503, 503, 200]
    proxy.throttle = 2
    assert store.read("log/1") == b"a segment"
    assert [get.status for get in proxy.requests("GET")][-3:] == [503, 503, 200]


def test_throttling_that_outlasts_the_retries_is_reported_as_unavailable(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    store = _store(proxy, s3_bucket, max_attempts=2)
    assert store.list() == []
    proxy.throttle = 2
    with pytest.raises(S3Unavailable) as caught:
        store.write_if_absent("log/1", b"a segment")
    assert isinstance(caught.value, RepositoryError) and isinstance(caught.value, OSError)
    assert "SlowDown" in caught.value.message and s3_bucket in caught.value.message
    assert caught.value.hint
    assert len(proxy.requests("PUT")) == 2
    assert store.list() == []


def test_a_write_whose_answer_was_lost_is_retried_and_found_done_not_taken(
    s3_bucket: str, proxy: FaultProxy
) -> None:
    """The first put succeeds but its answer never arrives; botocore's retry meets 412,
    from our own write: the store finds its SHA-256 there and reports success, not a
    name taken by another writer. The same for a spooled stream (the retry sends the
    file again from its start) and for the completion of a multipart upload."""
    store = _store(proxy, s3_bucket)
    assert store.list() == []
    proxy.lose_answers = 1
    store.write_if_absent("log/1", b"a segment")
    assert [put.status for put in proxy.requests("PUT")] == [200, 412]
    assert store.read("log/1") == b"a segment"

    proxy.lose_answers = 1
    data = os.urandom(PART + 10)
    store.write_if_absent("spooled", io.BytesIO(data))
    assert [put.status for put in proxy.requests("PUT")][2:] == [200, 412]
    assert [len(put.body) for put in proxy.requests("PUT")][2:] == [len(data)] * 2
    assert store.read("spooled") == data

    proxy.lose_if = lambda exchange: exchange.method == "POST" and "uploadId=" in exchange.path
    proxy.lose_answers = 1
    multipart = _store(proxy, s3_bucket, single_put_limit=PART)
    multipart.write_if_absent("big", io.BytesIO(data))
    completions = [post for post in proxy.requests("POST") if "uploadId=" in post.path]
    assert [post.status for post in completions] == [200, 412]
    assert store.read("big") == data


# --- errors that say what to do -------------------------------------------------------------


def _whole_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error.args)


def test_a_wrong_secret_is_refused_clearly_and_no_credential_is_ever_shown(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + s3_server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    for attempt in (
        lambda store: store.list(),
        lambda store: store.write_if_absent("log/1", b"x"),
        lambda store: store.read("log/1"),
    ):
        with pytest.raises(S3StoreError) as caught:
            attempt(_store(s3_server, s3_bucket))
        assert s3_bucket in caught.value.message
        assert caught.value.hint and "AWS_SECRET_ACCESS_KEY" in caught.value.hint
        text = _whole_text(caught.value)
        for credential in (wrong, s3_server.secret_key, s3_server.access_key):
            assert credential not in text
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents") is None


def test_missing_credentials_are_reported_with_where_they_are_looked_for(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3StoreError, match="no AWS credentials") as caught:
        _store(s3_server, s3_bucket).list()
    assert caught.value.hint and "~/.aws/credentials" in caught.value.hint


def test_a_missing_bucket_is_named_and_never_created_by_a_write(s3_server: S3Server) -> None:
    """SeaweedFS creates a missing bucket on a first put; the store checks first, so a
    misspelt bucket does not become a new, empty repository."""
    store = _store(s3_server, "nkd-no-such-bucket")
    for attempt in (lambda: store.write_if_absent("log/1", b"x"), store.list):
        with pytest.raises(S3StoreError, match="'nkd-no-such-bucket' does not exist") as caught:
            attempt()
        assert caught.value.hint and "create the bucket" in caught.value.hint
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "nkd-no-such-bucket" not in buckets


def test_an_endpoint_that_is_down_is_reported_as_unavailable(s3_bucket: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = S3Store(s3_bucket, "repo", endpoint_url=endpoint, path_style=True, max_attempts=2)
    with pytest.raises(S3Unavailable, match="cannot reach the S3 endpoint") as caught:
        store.read("log/1")
    assert endpoint in caught.value.message and isinstance(caught.value, OSError)


# --- names and prefixes ---------------------------------------------------------------------


def test_a_prefix_keeps_stores_apart_and_foreign_keys_are_not_listed(
    s3_server: S3Server, s3_bucket: str
) -> None:
    store = S3Store(s3_bucket, "/repo/", endpoint_url=s3_server.endpoint, path_style=True)
    neighbour = S3Store(s3_bucket, "repo2", endpoint_url=s3_server.endpoint, path_style=True)
    store.write_if_absent("log/1", b"mine")
    neighbour.write_if_absent("log/1", b"theirs")
    client = s3_server.client()
    for key in ("repo/.hidden", "repo/log/.part", "repo/folder/"):  # made by other tools
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    assert store.list() == ["log/1"] and neighbour.list() == ["log/1"]
    assert store.read("log/1") == b"mine"
    assert store.describe("log/1") == f"s3://{s3_bucket}/repo/log/1"
    assert S3Store(s3_bucket).describe("log/1") == f"s3://{s3_bucket}/log/1"


_PART = st.text("abcxyzABZ0189-_.+=", min_size=1, max_size=12).filter(
    lambda part: not part.startswith(".")
)
_NAME = st.lists(_PART, min_size=1, max_size=3).map("/".join)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.lists(_PART, max_size=2).map("/".join),
    # A name is never also a folder of another (the repository's names never are; a
    # directory store cannot hold both, and SeaweedFS's filer refuses it too).
    names=st.lists(_NAME, min_size=1, max_size=6, unique=True).filter(
        lambda names: not any(b.startswith(a + "/") for a in names for b in names)
    ),
)
def test_any_names_under_any_prefix_list_and_read_back_as_written(
    s3_server: S3Server, s3_bucket: str, prefix: str, names: list[str]
) -> None:
    """Each example under a prefix of its own in the test's bucket: the names come back
    exactly, sorted, filtered by any prefix of theirs, and each reads as written."""
    store = S3Store(
        s3_bucket, f"{uuid.uuid4().hex}/{prefix}", endpoint_url=s3_server.endpoint, path_style=True
    )
    for name in names:
        store.write_if_absent(name, name.encode())
    assert store.list() == sorted(names)
    for name in names:
        assert store.read(name) == name.encode()
        start = name[: len(name) // 2 + 1]
        assert store.list(start) == sorted(n for n in names if n.startswith(start))


def test_a_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        S3Store("bucket", part_size=MIN_PART_SIZE - 1)
