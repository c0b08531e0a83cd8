"""Encrypted objects (repository/envelope.py): what goes in comes out only with the right
key and name, and every change to the stored bytes is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.repository.envelope import (
    HEADER_SIZE,
    EncryptionKey,
    EncryptionKeyError,
    PlaintextObjectError,
    TamperedObjectError,
    key_id_of,
    load_key,
    new_salt,
    seal,
    unseal,
)

KEY = EncryptionKey.from_secret(bytes(range(32)))
OTHER = EncryptionKey.from_secret(bytes(range(1, 33)))
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)


@given(names, st.binary(max_size=4096))
def test_what_is_sealed_opens_with_the_same_key_and_name(name: str, plaintext: bytes) -> None:
    assert unseal(KEY, name, seal(KEY, name, plaintext)) == plaintext


def test_already_compressed_data_is_stored_as_it_is_and_comes_back() -> None:
    compressed = zstandard.ZstdCompressor().compress(b"row " * 1000)
    assert unseal(KEY, "t.jsonl.zst", seal(KEY, "t.jsonl.zst", compressed)) == compressed


def test_the_plaintext_never_appears_in_the_stored_bytes() -> None:
    marker = b"MARKER-7f3a9c"
    for plaintext in (marker, marker * 50, zstandard.ZstdCompressor().compress(marker)):
        sealed = seal(KEY, "log/0001", plaintext)
        assert marker not in sealed


@settings(max_examples=25)
@given(st.binary(min_size=1, max_size=200))
def test_every_changed_byte_is_caught(plaintext: bytes) -> None:
    sealed = seal(KEY, "log/0001", plaintext)
    for offset in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[offset] ^= 0x01
        with pytest.raises((TamperedObjectError, EncryptionKeyError, PlaintextObjectError)):
            unseal(KEY, "log/0001", bytes(damaged))


def test_a_cut_object_is_caught() -> None:
    sealed = seal(KEY, "snapshots/x/manifest.json", b'{"tables": []}')
    for length in range(len(sealed)):
        with pytest.raises((TamperedObjectError, PlaintextObjectError)):
            unseal(KEY, "snapshots/x/manifest.json", sealed[:length])


def test_an_object_moved_to_another_name_fails_its_tag() -> None:
    sealed = seal(KEY, "log/0001", b"first segment")
    with pytest.raises(TamperedObjectError, match="log/0002"):
        unseal(KEY, "log/0002", sealed)


def test_a_wrong_key_is_named_not_reported_as_damage() -> None:
    sealed = seal(KEY, "log/0001", b"data")
    assert key_id_of(sealed) == KEY.key_id
    with pytest.raises(EncryptionKeyError) as wrong:
        unseal(OTHER, "log/0001", sealed)
    assert KEY.key_id in str(wrong.value) and OTHER.key_id in str(wrong.value)


def test_a_plaintext_object_is_refused() -> None:
    with pytest.raises(PlaintextObjectError, match="not encrypted"):
        unseal(KEY, "log/0001", b'{"lsn": 1}' + bytes(HEADER_SIZE))


def test_a_raw_key_file_and_a_passphrase_file_both_give_keys(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    assert load_key(raw, salt=new_salt()) == KEY
    phrase = tmp_path / "phrase.key"
    phrase.write_text("correct horse battery staple\n")
    salt = new_salt()
    first, again = load_key(phrase, salt=salt), load_key(phrase, salt=salt)
    assert first == again and first != load_key(phrase, salt=new_salt())


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"short", "neither a 32-byte key"), (bytes(range(200, 231)), "neither a 32-byte key")],
)
def test_a_key_file_that_is_neither_is_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(EncryptionKeyError, match=message):
        load_key(path, salt=new_salt())


def test_a_missing_key_file_says_which_setting_names_it(tmp_path: Path) -> None:
    with pytest.raises(EncryptionKeyError, match="encryption_key_file"):
        load_key(tmp_path / "absent.key", salt=new_salt())


def test_the_secret_never_shows_in_a_representation() -> None:
    assert bytes(range(32)).hex() not in repr(KEY) and KEY.key_id in repr(KEY)
