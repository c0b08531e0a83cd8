"""Content digests of tables in natural-key form: evidence a snapshot records of itself.

A table's digest is its row count and the sum, modulo 2**128, of one 128-bit BLAKE2b hash
per row. A row is hashed in its canonical natural-key form: the JSON array ``[key, row]``
(key and row as a snapshot file and the log hold them, every reference named by the
referenced row's natural key as it is *now*), serialised with sorted object keys. A sum is
independent of row order and, unlike XOR, counts a row that appears twice (keyless tables
are multisets) twice.

The same fold runs wherever a table's rows pass by in that form: over a snapshot's rows
inside the snapshot's own read of the source, over a restored target read back by natural
key, or over a snapshot file. Equal digests mean equal contents, up to a hash collision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

ALGORITHM = "blake2b-128-sum"
_MODULUS = 1 << 128


_SORTED = orjson.OPT_SORT_KEYS
_BLAKE2B_128 = hashlib.blake2b(digest_size=16)  # copied per row: cheaper than a new one


def row_hash(key: Any, row: Any) -> int:
    """The 128-bit hash of one row in canonical natural-key form."""
    return canonical_hash(orjson.dumps([key, row], option=_SORTED))


def canonical_hash(canonical: bytes) -> int:
    """The 128-bit hash of a row's canonical bytes (``[key, row]`` as row_hash dumps it)."""
    hasher = _BLAKE2B_128.copy()
    hasher.update(canonical)
    return int.from_bytes(hasher.digest(), "big")


@dataclass(frozen=True, kw_only=True)
class Digest:
    """A table's row count and content digest (32 hex digits)."""

    rows: int
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "digest": self.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Digest:
        return cls(rows=int(data["rows"]), value=str(data["digest"]))

    def describe(self) -> str:
        return f"{self.rows} rows, digest {self.value[:12]}"


class DigestFold:
    """Folds rows into a Digest, in any order."""

    def __init__(self) -> None:
        self.rows = 0
        self._sum = 0

    def add(self, key: Any, row: Any) -> None:
        self.rows += 1
        self._sum += row_hash(key, row)  # reduced once, in result()

    def add_canonical(self, canonical: bytes) -> None:
        """Fold in a row already serialised as row_hash serialises it (saves a dumps)."""
        self.rows += 1
        self._sum += canonical_hash(canonical)

    def add_all(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        for key, row in pairs:
            self.add(key, row)

    def passing(self, pairs: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """The pairs unchanged, each folded in as it passes (for a stream read once)."""
        for key, row in pairs:
            self.add(key, row)
            yield key, row

    def result(self) -> Digest:
        return Digest(rows=self.rows, value=f"{self._sum % _MODULUS:032x}")


def digest_of(pairs: Iterable[tuple[Any, Any]]) -> Digest:
    """The digest of (natural key, row) pairs."""
    fold = DigestFold()
    fold.add_all(pairs)
    return fold.result()
