"""Encryption that is really applied (repository/encrypted_store.py), on a local directory
and on a bucket of a real S3 server (SeaweedFS): what reaches the medium is never readable,
a wrong or missing key is named, a repository created encrypted refuses plaintext, and a
changed or moved object is caught and named. (The store contract itself runs through
EncryptedStore in tests/integration/test_store_contract.py.)"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.repository.encrypted_store import (
    MARKER,
    EncryptedStore,
    PlaintextRepositoryError,
    read_marker,
    refuse_plaintext,
)
from nkdaemon.repository.envelope import (
    MAGIC,
    ZSTD_MAGIC,
    EncryptionKey,
    EncryptionKeyError,
    TamperedObjectError,
    unseal,
)
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.repository.snapshots import SnapshotWriter, list_snapshots, read_table
from tests.s3 import S3Server

KEY = EncryptionKey.from_secret(bytes(range(32)))
OTHER = EncryptionKey.from_secret(bytes(range(1, 33)))
SEGMENT = "log/0000000000000001.nkdlog"
TABLE = "snapshots/20260101T000000000000Z-1/tables/1.jsonl.zst"
END = "log/ends/0000000000000001-20260101T000000000000Z.json"


@dataclass
class Medium:
    """Where the objects land: the plain store under the encryption, and every byte the
    medium holds, read around the store (files on disk, or every key in the bucket)."""

    store: RepositoryStore
    raw: Callable[[], dict[str, bytes]]
    overwrite: Callable[[str, bytes], None]  # around the store (a bucket store never does)
    intact: dict[str, bytes] = field(default_factory=dict)  # objects as first stored


@pytest.fixture(params=["directory", "bucket"])
def medium(request: pytest.FixtureRequest, tmp_path: Path) -> Medium:
    if request.param == "directory":
        root = tmp_path / "repo"
        return Medium(LocalStore(root), lambda: _files(root), LocalStore(root).replace)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    store = S3Store(
        bucket,
        "backups/edms",
        endpoint_url=server.endpoint,
        region=server.region,
        path_style=True,
        client=server.client(),
    )
    client = server.client()

    def overwrite(name: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=store.key(name), Body=data)

    return Medium(store, lambda: _bucket(server, bucket), overwrite)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _bucket(server: S3Server, bucket: str) -> dict[str, bytes]:
    client = server.client()
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def _rows(marker: str, count: int) -> Iterator[dict[str, Any]]:
    for n in range(count):
        code = f"DOC-{n:05d}"
        yield {"k": {"code": code}, "r": {"code": code, "title": f"{marker} {n}"}}


def _decompresses(data: bytes) -> bool:
    try:
        zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError:
        return False
    return True


# --- nothing readable reaches the medium ----------------------------------------------------


def test_a_marker_value_written_through_the_store_appears_nowhere_on_the_medium(
    medium: Medium,
) -> None:
    marker = f"MARKER-{uuid.uuid4()}"
    store = EncryptedStore(medium.store, KEY)
    writer = SnapshotWriter(store, time=datetime(2026, 1, 1, tzinfo=UTC), position=1)
    writer.write_table(1, marker, _rows(marker, 3_000))  # a table named by it, too
    writer.commit(installation=marker, log_lsn=0, dialect="sqlite", definitions=[])
    store.write_if_absent(SEGMENT, f'{{"title": "{marker}"}}\n'.encode() * 50)
    store.write_if_absent("log/streamed", io.BytesIO(marker.encode() * 5_000))
    store.write_if_absent(END, json.dumps({"note": marker}).encode())

    (snapshot,) = list_snapshots(store)  # everything reads back through the key
    table = snapshot.table(marker)
    assert table is not None and list(read_table(snapshot, table)) == list(_rows(marker, 3_000))
    assert marker.encode() in store.read(SEGMENT) and marker.encode() in store.read(END)

    stored = medium.raw()
    assert len(stored) == 6, sorted(stored)  # table, manifest, 3 log objects, encryption.json
    for name, data in stored.items():
        assert marker.encode() not in data, name
        assert not data.startswith(ZSTD_MAGIC) and not _decompresses(data), name
        assert name.endswith(MARKER) or data.startswith(MAGIC), name


def test_the_marker_holds_the_key_id_and_salt_and_nothing_secret(medium: Medium) -> None:
    store = EncryptedStore(medium.store, KEY)
    assert medium.store.list() == [], "opening writes nothing: a read-only store is read"
    store.write_if_absent("a", b"x")
    marker = read_marker(medium.store)
    assert marker is not None and marker.key_id == KEY.key_id
    (text,) = [data for name, data in medium.raw().items() if name.endswith(MARKER)]
    assert KEY.secret.hex().encode() not in text and KEY.secret not in text
    assert store.list() == ["a"], "the marker is the store's own, never listed"
    with pytest.raises(ValueError, match="own object"):
        store.write_if_absent(MARKER, b"{}")


# --- keys: wrong, missing, passphrases ------------------------------------------------------


def test_a_wrong_key_is_refused_naming_both_key_ids_and_never_the_key(medium: Medium) -> None:
    EncryptedStore(medium.store, KEY).write_if_absent(SEGMENT, b"records")
    with pytest.raises(EncryptionKeyError) as refused:
        EncryptedStore(medium.store, OTHER)
    message = str(refused.value)
    assert KEY.key_id in message and OTHER.key_id in message
    assert "encryption_key_file" in message
    assert KEY.secret.hex() not in message and OTHER.secret.hex() not in message


def test_an_encrypted_repository_without_a_key_is_refused_naming_the_key_it_needs(
    medium: Medium,
) -> None:
    refuse_plaintext(medium.store)  # an empty store may be written plain
    EncryptedStore(medium.store, KEY).write_if_absent(SEGMENT, b"records")
    with pytest.raises(EncryptionKeyError) as refused:
        refuse_plaintext(medium.store)  # what a session without a key checks first
    assert KEY.key_id in str(refused.value) and "encryption_key_file" in str(refused.value)


def test_a_plaintext_repository_is_written_plain_and_refuses_to_become_encrypted(
    medium: Medium,
) -> None:
    refuse_plaintext(medium.store)
    medium.store.write_if_absent(SEGMENT, b"plain records")
    refuse_plaintext(medium.store)  # still no marker: a plain session goes on
    encrypted = EncryptedStore(medium.store, KEY)
    with pytest.raises(PlaintextRepositoryError, match=SEGMENT):
        encrypted.write_if_absent("log/0000000000000002.nkdlog", b"sealed records")
    assert medium.store.list() == [SEGMENT], "neither the marker nor the object was written"


def test_an_encrypted_repository_that_lost_its_marker_is_not_written_into(
    medium: Medium,
) -> None:
    EncryptedStore(medium.store, KEY).write_if_absent(SEGMENT, b"records")
    medium.store.delete(MARKER)
    store = EncryptedStore(medium.store, KEY)
    with pytest.raises(RepositoryError, match=f"put back {MARKER}"):
        store.write_if_absent("log/0000000000000002.nkdlog", b"more records")
    assert medium.store.list() == [SEGMENT]
    assert store.read(SEGMENT) == b"records", "what is there still reads with the key"


def test_a_passphrase_is_stretched_with_the_salt_the_repository_records(
    medium: Medium, tmp_path: Path
) -> None:
    phrase, wrong = tmp_path / "phrase.key", tmp_path / "wrong.key"
    phrase.write_text("correct horse battery staple\n")
    wrong.write_text("incorrect horse battery staple\n")
    first, second = EncryptedStore(medium.store, phrase), EncryptedStore(medium.store, phrase)
    assert first.key_id != second.key_id, "two new repositories, two salts"
    first.write_if_absent("a", b"first")
    second.write_if_absent("b", b"second")  # it takes the salt the first one recorded
    again = EncryptedStore(medium.store, phrase)
    assert again.key_id == first.key_id == second.key_id
    assert again.read("a") == b"first" and again.read("b") == b"second"
    with pytest.raises(EncryptionKeyError, match=first.key_id):
        EncryptedStore(medium.store, wrong)


# --- damage: every changed byte, a moved object ---------------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_changed_byte_anywhere_fails_and_names_the_object(medium: Medium, data: Any) -> None:
    store = EncryptedStore(medium.store, KEY)
    if not store.list():
        store.write_if_absent(SEGMENT, b'{"lsn": 1, "title": "report"}\n' * 40_000)
        compressed = zstandard.ZstdCompressor().compress(os.urandom(1 << 20) * 2)
        store.write_if_absent(TABLE, io.BytesIO(compressed))  # stored as it is, streamed
    name = data.draw(st.sampled_from([SEGMENT, TABLE]), label="object")
    sealed = medium.intact.setdefault(name, medium.store.read(name))
    offset = data.draw(st.integers(0, len(sealed) - 1), label="offset")
    damaged = bytearray(sealed)
    damaged[offset] ^= data.draw(st.integers(1, 255), label="flip")
    medium.overwrite(name, bytes(damaged))
    try:
        with pytest.raises(RepositoryError, match=name):
            store.read(name)
        with pytest.raises(RepositoryError, match=name), store.open(name) as handle:
            while handle.read(1 << 16):  # the end of the stream is never reached unchecked
                pass
    finally:
        medium.overwrite(name, sealed)


def test_an_object_moved_to_another_name_fails_its_tag_naming_the_name(medium: Medium) -> None:
    store = EncryptedStore(medium.store, KEY)
    store.write_if_absent(SEGMENT, b"records of the first segment")
    moved = "log/0000000000000009.nkdlog"
    medium.store.write_if_absent(moved, medium.store.read(SEGMENT))
    for read in (store.read, store.size):
        with pytest.raises(TamperedObjectError, match=moved):
            read(moved)
    assert store.read(SEGMENT) == b"records of the first segment"


def test_a_streamed_object_opens_with_the_envelope_too(medium: Medium) -> None:
    """Objects sealed block by block are the envelope's format: ``unseal`` opens them."""
    store = EncryptedStore(medium.store, KEY)
    plain = b"line of a segment\n" * 100_000
    store.write_if_absent(SEGMENT, io.BytesIO(plain))
    assert unseal(KEY, SEGMENT, medium.store.read(SEGMENT)) == plain
    assert store.size(SEGMENT) == len(plain) and medium.store.size(SEGMENT) < len(plain) // 10


class _Chunks:
    """A stream that hands out the given chunks, one per read, whatever size is asked."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = [c for c in chunks if c]

    def read(self, size: int = -1, /) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


@settings(max_examples=60, deadline=None)
@given(
    head=st.sampled_from([b"", ZSTD_MAGIC, ZSTD_MAGIC[:2], MAGIC]),
    chunks=st.lists(st.binary(max_size=300), max_size=8),
)
def test_a_stream_cut_anywhere_reads_back_as_written(head: bytes, chunks: list[bytes]) -> None:
    """However a stream's reads fall (the first one shorter than zstd's magic, data that
    starts like compressed data, or nothing at all), the object reads back as it was."""
    plain = head + b"".join(chunks)
    with tempfile.TemporaryDirectory() as folder:
        inner = LocalStore(Path(folder))
        store = EncryptedStore(inner, KEY)
        store.write_if_absent("object", _Chunks([head[:2], head[2:], *chunks]))
        assert store.read("object") == plain and store.size("object") == len(plain)
        assert unseal(KEY, "object", inner.read("object")) == plain
