"""Encrypted objects: compressed, then sealed with AES-256-GCM, a key id in the clear.

Every object of an encrypted repository (segments, snapshot files, manifests) is stored as

    b"NKDE" | version (1 byte) | key id (8 bytes) | nonce (12 bytes) | ciphertext + tag

where the ciphertext is of the zstandard-compressed object (already compressed data is
stored as it is, flagged in the version byte), and the authenticated data is the header and
the object's name, so an object moved to another name fails its tag like a tampered one.
The key id is a keyed hash of the key (it identifies the key and reveals nothing of it), so
a wrong key is told apart from a damaged object and named in the error.

A key file holds either exactly 32 bytes (a raw key), or a passphrase (text), which scrypt
turns into a key with the repository's salt.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from nkdaemon.core.errors import RepositoryError

MAGIC = b"NKDE"
COMPRESSED = 1  # version byte: the plaintext was compressed here
STORED = 2  # version byte: the plaintext was already compressed (zstd) and is stored as is
KEY_ID_SIZE = 8
NONCE_SIZE = 12
HEADER_SIZE = len(MAGIC) + 1 + KEY_ID_SIZE + NONCE_SIZE
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# scrypt parameters for passphrases (RFC 7914's interactive-login figures, doubled)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class EncryptionKeyError(RepositoryError):
    """The key given cannot open this repository's objects (wrong, missing or malformed)."""

    kind = "encryption"


class TamperedObjectError(RepositoryError):
    """An encrypted object fails its authentication tag: it was changed or damaged."""

    kind = "corruption"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"object {name} fails its authentication tag: it was changed or damaged since it "
            "was written",
            hint="restore from a point that does not need this object, or from a copy of the "
            "repository; `nkdaemon verify` lists every damaged object",
        )
        self.name = name


class PlaintextObjectError(RepositoryError):
    """An object of an encrypted repository is not encrypted."""

    kind = "corruption"


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """A 32-byte AES key and its public id."""

    secret: bytes
    key_id: str

    def __repr__(self) -> str:  # never show the secret, in logs or tracebacks
        return f"EncryptionKey(key_id={self.key_id!r})"

    @classmethod
    def from_secret(cls, secret: bytes) -> EncryptionKey:
        if len(secret) != 32:
            raise EncryptionKeyError(f"an encryption key is 32 bytes, this one is {len(secret)}")
        digest = hashlib.blake2b(secret, digest_size=KEY_ID_SIZE, person=b"nkd-key-id")
        return cls(secret=secret, key_id=digest.hexdigest())


def new_salt() -> bytes:
    return os.urandom(16)


def load_key(path: Path, *, salt: bytes) -> EncryptionKey:
    """The key in ``path``: 32 raw bytes, or a passphrase stretched with ``salt``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncryptionKeyError(
            f"cannot read the encryption key file {path}: {exc.strerror or exc}",
            hint="check [repository] encryption_key_file and the file's permissions",
        ) from exc
    if len(data) == 32:
        return EncryptionKey.from_secret(data)
    passphrase = data.decode("utf-8", errors="strict").strip() if _is_text(data) else ""
    if len(passphrase) < 12:
        raise EncryptionKeyError(
            f"the encryption key file {path} holds neither a 32-byte key nor a passphrase of "
            "at least 12 characters",
            hint="create a key with `head -c 32 /dev/urandom > KEYFILE` (and keep a copy "
            "elsewhere: without it nothing in the repository can be read)",
        )
    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return EncryptionKey.from_secret(kdf.derive(passphrase.encode("utf-8")))


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def seal(key: EncryptionKey, name: str, plaintext: bytes) -> bytes:
    """The stored form of object ``name``."""
    compressed = plaintext.startswith(ZSTD_MAGIC)
    version = STORED if compressed else COMPRESSED
    body = plaintext if compressed else zstandard.ZstdCompressor(level=3).compress(plaintext)
    nonce = os.urandom(NONCE_SIZE)
    header = MAGIC + bytes([version]) + bytes.fromhex(key.key_id) + nonce
    return header + AESGCM(key.secret).encrypt(nonce, body, header + name.encode("utf-8"))


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC) and len(data) >= HEADER_SIZE


def key_id_of(data: bytes) -> str | None:
    """The id of the key that sealed ``data``, or None if it is not sealed."""
    if not is_sealed(data):
        return None
    return data[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_ID_SIZE].hex()


def unseal(key: EncryptionKey, name: str, data: bytes) -> bytes:
    """The plaintext of object ``name``; raises if it is not sealed, sealed with another
    key, or changed since."""
    if not is_sealed(data):
        raise PlaintextObjectError(
            f"object {name} of an encrypted repository is not encrypted",
            hint="an encrypted repository never holds plaintext objects; something other "
            "than nkdaemon wrote it: move it aside and run `nkdaemon verify`",
        )
    version = data[len(MAGIC)]
    sealed_with = key_id_of(data)
    if sealed_with != key.key_id:
        raise EncryptionKeyError(
            f"object {name} was encrypted with key {sealed_with}, and the key given is "
            f"{key.key_id}",
            hint="set [repository] encryption_key_file to the key with id "
            f"{sealed_with}; without it this repository cannot be read",
        )
    if version not in (COMPRESSED, STORED):
        raise TamperedObjectError(name)
    header, nonce = data[:HEADER_SIZE], data[HEADER_SIZE - NONCE_SIZE : HEADER_SIZE]
    try:
        body = AESGCM(key.secret).decrypt(nonce, data[HEADER_SIZE:], header + name.encode())
    except InvalidTag:
        raise TamperedObjectError(name) from None
    if version == STORED:
        return body
    # a frame compressed as a stream records no content size, which decompress() needs
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body))
