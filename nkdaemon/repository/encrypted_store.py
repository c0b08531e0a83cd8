"""Encryption applied to a whole store: every object sealed on its way in, opened on its way
out (repository/envelope.py), and a marker that makes the repository's encryption durable.

``EncryptedStore(inner, key)`` is a RepositoryStore over another one (a local directory, a
bucket). Each object is stored in the envelope: compressed (unless it already is zstd),
then sealed with AES-256-GCM, the object's name in the authenticated data, so a changed
byte, a cut object and an object moved to another name all fail the tag. A stream is
sealed as it is read (the cipher and the compressor run block by block), so a large
snapshot file is never held in memory; ``open`` streams too, and checks the tag when the
stream ends: the bytes before it are handed out unverified, and the end of the stream is
never reached without the check (a reader that reads to the end, as snapshot readers do,
before it acts, never acts on a damaged object).

The marker, ``encryption.json`` at the store's root, is the one object in the clear: the
repository's key id and the scrypt salt a passphrase is stretched with. It is written
(with ``write_if_absent``) before the first object, so a store that holds it holds nothing
readable without the key: an EncryptedStore whose key has another id refuses the store,
naming both ids, and ``refuse_plaintext`` is the check a store used without encryption
makes before it writes or reads (it names the key id that is needed). An EncryptedStore
refuses to begin over a store that already holds objects without the marker (a plaintext
repository: encryption is chosen when a repository is created). The marker never shows in
listings, and its name is not an object name here.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ObjectExistsError, ReadableBytes, RepositoryStore
from nkdaemon.repository.envelope import (
    COMPRESSED,
    HEADER_SIZE,
    MAGIC,
    NONCE_SIZE,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    STORED,
    ZSTD_MAGIC,
    EncryptionKey,
    EncryptionKeyError,
    TamperedObjectError,
    key_id_of,
    load_key,
    new_salt,
    seal,
    unseal,
)

__all__ = [
    "MARKER",
    "EncryptedStore",
    "EncryptionMarker",
    "PlaintextRepositoryError",
    "read_marker",
    "refuse_plaintext",
]

MARKER = "encryption.json"
MARKER_FORMAT = 1
TAG_SIZE = 16  # AES-GCM's tag, after the ciphertext
_BLOCK = 1 << 20
_KEY_SETTING = "[repository] encryption_key_file"


class PlaintextRepositoryError(RepositoryError):
    """Encryption was asked for a store that already holds plaintext objects."""

    kind = "encryption"


@dataclass(frozen=True, kw_only=True, slots=True)
class EncryptionMarker:
    """What ``encryption.json`` records: the key's id and the salt of its passphrase."""

    key_id: str
    salt: bytes

    def to_json(self) -> bytes:
        body = {
            "format": MARKER_FORMAT,
            "cipher": "AES-256-GCM",
            "key_id": self.key_id,
            "salt": self.salt.hex(),
            "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "created": datetime.now(UTC).isoformat(),
        }
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, where: str, data: bytes) -> EncryptionMarker:
        try:
            body = json.loads(data)
            if int(body["format"]) > MARKER_FORMAT:
                raise RepositoryError(
                    f"{where} has encryption format {body['format']}; this release reads up "
                    f"to {MARKER_FORMAT}",
                    hint="upgrade nkdaemon",
                )
            return cls(key_id=str(body["key_id"]), salt=bytes.fromhex(body["salt"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"{where} is unreadable ({exc}): the repository's encryption cannot be known",
                hint="put back the repository's encryption.json from a copy; it holds no "
                "secret (the key id and the passphrase's salt)",
            ) from None


def read_marker(store: RepositoryStore) -> EncryptionMarker | None:
    """The encryption marker of ``store``, or None when the store is not encrypted."""
    if MARKER not in store.list(MARKER):
        return None
    return EncryptionMarker.from_json(store.describe(MARKER), store.read(MARKER))


def refuse_plaintext(store: RepositoryStore) -> None:
    """Raise EncryptionKeyError if ``store`` holds an encrypted repository: the check a
    store used without a key makes before it writes (a repository created encrypted never
    receives a plaintext object) or reads (nothing in it is readable without the key)."""
    marker = read_marker(store)
    if marker is not None:
        raise EncryptionKeyError(
            f"the repository {store.describe()} is encrypted with key {marker.key_id}, and "
            "no encryption key is configured",
            hint=f"set {_KEY_SETTING} to the file holding the key with id {marker.key_id}; "
            "without it nothing in this repository can be read",
        )


class EncryptedStore:
    """``inner``'s objects, sealed with ``key`` (see the module docstring).

    ``key`` is an EncryptionKey, or the path of a key file (32 raw bytes, or a passphrase
    stretched with the salt the store's marker records; a new salt for a new store).
    Construction reads the marker, and raises EncryptionKeyError when it names another key;
    nothing is written before the first write, so a read-only store is read.

    ``size`` is the plaintext's size, which only the object's content tells: it reads the
    whole object (and checks it). Callers that want the stored size ask ``inner``.
    """

    def __init__(self, inner: RepositoryStore, key: EncryptionKey | Path) -> None:
        self.inner = inner
        self._source = key
        self._lock = threading.Lock()
        marker = read_marker(inner)
        self._marked = marker is not None
        self._salt = new_salt() if marker is None else marker.salt
        self._key = self._key_for(self._salt)
        if marker is not None:
            self._check(marker)

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return self._key.key_id

    # --- reading ---------------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        return [name for name in self.inner.list(prefix) if name != MARKER]

    def size(self, name: str) -> int:
        total = 0
        with self.open(name) as handle:
            while block := handle.read(_BLOCK):
                total += len(block)
        return total

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def open(self, name: str) -> IO[bytes]:
        _own(name)
        return io.BufferedReader(_Opening(self.inner.open(name), self._key, name), _BLOCK)

    def describe(self, name: str = "") -> str:
        return self.inner.describe(name)

    # --- writing ---------------------------------------------------------------------

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        _own(name)
        key = self._marked_key()
        sealed = seal(key, name, data) if isinstance(data, bytes) else _Sealing(data, key, name)
        self.inner.write_if_absent(name, sealed)

    def replace(self, name: str, data: bytes) -> None:
        _own(name)
        key = self._marked_key()
        self.inner.replace(name, seal(key, name, data))

    def delete(self, name: str) -> None:
        _own(name)
        self.inner.delete(name)

    # --- the marker ------------------------------------------------------------------

    def _marked_key(self) -> EncryptionKey:
        """The key to seal with, once the store's marker names it (written first)."""
        with self._lock:
            if not self._marked:
                self._mark()
                self._marked = True
            return self._key

    def _mark(self) -> None:
        names = self.inner.list()
        if MARKER in names or (names and read_marker(self.inner) is not None):
            self._adopt()
            return
        if names:
            raise self._unmarked(names[0])
        marker = EncryptionMarker(key_id=self._key.key_id, salt=self._salt)
        try:
            self.inner.write_if_absent(MARKER, marker.to_json())
        except ObjectExistsError:  # another writer created the repository meanwhile
            self._adopt()

    def _unmarked(self, first: str) -> RepositoryError:
        """The error for objects found without a marker: plaintext ones, or sealed ones
        whose marker was lost (a store told of neither must not write beside them)."""
        with self.inner.open(first) as handle:
            sealed = handle.read(len(MAGIC)) == MAGIC
        if sealed:
            return RepositoryError(
                f"{self.inner.describe()} holds encrypted objects (such as {first}) but not "
                f"its {MARKER}, which records the repository's key id",
                hint=f"put back {MARKER} from a copy of the repository (it holds no secret); "
                "until then nothing is written here",
            )
        return PlaintextRepositoryError(
            f"{self.inner.describe()} holds objects written without encryption (such as "
            f"{first}): encryption is chosen when a repository is created",
            hint=f"start a new repository (an empty folder or bucket prefix) for "
            f"{_KEY_SETTING}, or remove the setting to go on with this one unencrypted",
        )

    def _adopt(self) -> None:
        """Take the marker another writer wrote: its salt, and the check of its key id."""
        marker = read_marker(self.inner)
        assert marker is not None, "a marker is never deleted"
        self._salt, self._key = marker.salt, self._key_for(marker.salt)
        self._check(marker)

    def _key_for(self, salt: bytes) -> EncryptionKey:
        if isinstance(self._source, EncryptionKey):
            return self._source
        return load_key(self._source, salt=salt)

    def _check(self, marker: EncryptionMarker) -> None:
        if marker.key_id != self._key.key_id:
            raise EncryptionKeyError(
                f"the repository {self.inner.describe()} is encrypted with key "
                f"{marker.key_id}, and the key given is {self._key.key_id}",
                hint=f"set {_KEY_SETTING} to the file holding the key with id "
                f"{marker.key_id}; without it nothing in this repository can be read",
            )


def _own(name: str) -> None:
    if name == MARKER:
        raise ValueError(f"{name!r} is the encrypted store's own object, not an object name")


class _Sealing:
    """``source`` as the envelope's stored form, sealed block by block as it is read: what
    ``envelope.seal`` gives for the whole, but for the zstd frame, which records no content
    size when the plaintext is compressed here as a stream."""

    def __init__(self, source: ReadableBytes, key: EncryptionKey, name: str) -> None:
        self._source, self._key, self._name = source, key, name
        self._out = bytearray()
        self._encryptor: Any = None
        self._compressor: Any = None
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._done and (size < 0 or len(self._out) < size):
            self._step()
        taken = len(self._out) if size < 0 else min(size, len(self._out))
        data = bytes(self._out[:taken])
        del self._out[:taken]
        return data

    def _step(self) -> None:
        if self._encryptor is None:
            first, ended = self._first()
            self._begin(first.startswith(ZSTD_MAGIC))
            self._feed(first)
            if ended:
                self._finish()
            return
        block = self._source.read(_BLOCK)
        if block:
            self._feed(block)
        else:
            self._finish()

    def _first(self) -> tuple[bytes, bool]:
        """The first bytes, enough to tell compressed data by its magic; and whether the
        source ended there."""
        first = b""
        while len(first) < len(ZSTD_MAGIC):
            block = self._source.read(_BLOCK)
            if not block:
                return first, True
            first += block
        return first, False

    def _begin(self, compressed: bool) -> None:
        nonce = os.urandom(NONCE_SIZE)
        version = STORED if compressed else COMPRESSED
        header = MAGIC + bytes([version]) + bytes.fromhex(self._key.key_id) + nonce
        self._encryptor = Cipher(algorithms.AES(self._key.secret), modes.GCM(nonce)).encryptor()
        self._encryptor.authenticate_additional_data(header + self._name.encode("utf-8"))
        if not compressed:
            self._compressor = zstandard.ZstdCompressor(level=3).compressobj()
        self._out += header

    def _feed(self, plaintext: bytes) -> None:
        body = plaintext if self._compressor is None else self._compressor.compress(plaintext)
        self._out += self._encryptor.update(body)

    def _finish(self) -> None:
        if self._compressor is not None:
            self._out += self._encryptor.update(self._compressor.flush())
        self._out += self._encryptor.finalize() + self._encryptor.tag
        self._done = True


class _Opening(io.RawIOBase):
    """The plaintext of a stored object, opened as it is read from ``raw``: the last
    TAG_SIZE bytes seen are held back, and checked as the tag when ``raw`` ends."""

    def __init__(self, raw: IO[bytes], key: EncryptionKey, name: str) -> None:
        self._raw, self._key, self._name = raw, key, name
        self._pending = memoryview(b"")
        self._held = b""
        self._decryptor: Any = None
        self._decompressor: Any = None
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            self._pending = memoryview(self._pull())
        taken = min(len(buffer), len(self._pending))
        buffer[:taken] = self._pending[:taken]
        self._pending = self._pending[taken:]  # a view: no copy of what is left
        return taken

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def _pull(self) -> bytes:
        if self._decryptor is None:
            self._begin()
        block = self._raw.read(_BLOCK)
        if not block:
            return self._finish()
        data = self._held + block
        self._held = data[-TAG_SIZE:]
        return self._plain(self._decryptor.update(data[:-TAG_SIZE]))

    def _begin(self) -> None:
        header = _read_exactly(self._raw, HEADER_SIZE)
        version = _checked_version(self._key, self._name, header)
        nonce = header[HEADER_SIZE - NONCE_SIZE :]
        cipher = Cipher(algorithms.AES(self._key.secret), modes.GCM(nonce))
        self._decryptor = cipher.decryptor()
        self._decryptor.authenticate_additional_data(header + self._name.encode("utf-8"))
        if version == COMPRESSED:
            self._decompressor = zstandard.ZstdDecompressor().decompressobj()

    def _plain(self, body: bytes) -> bytes:
        if self._decompressor is None or not body:
            return body
        try:
            return bytes(self._decompressor.decompress(body))
        except zstandard.ZstdError:  # unauthenticated bytes, changed: the tag would fail
            raise TamperedObjectError(self._name) from None

    def _finish(self) -> bytes:
        self._done = True
        if len(self._held) < TAG_SIZE:
            raise TamperedObjectError(self._name)
        try:
            self._decryptor.finalize_with_tag(self._held)
        except InvalidTag:
            raise TamperedObjectError(self._name) from None
        if self._decompressor is not None and not self._decompressor.eof:
            raise TamperedObjectError(self._name)  # sealed whole, but not a whole frame
        return b""


def _checked_version(key: EncryptionKey, name: str, header: bytes) -> int:
    """The version byte of a whole header sealed with ``key``; else the envelope's error."""
    sealed = len(header) == HEADER_SIZE and header.startswith(MAGIC)
    version = header[len(MAGIC)] if sealed else None
    if version not in (COMPRESSED, STORED) or key_id_of(header) != key.key_id:
        unseal(key, name, header)  # raises the envelope's own error for this header
    if version is None:  # (not reached: unseal raised; for the type checker)
        raise TamperedObjectError(name)
    return version


def _read_exactly(raw: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size and (block := raw.read(size - len(data))):
        data += block
    return data


_: type[RepositoryStore] = EncryptedStore  # EncryptedStore implements the port (mypy checks)
