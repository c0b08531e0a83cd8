"""The import's spill-to-disk store: every fixture object, and pk -> natural key per table.

A temporary SQLite file, so a fixture larger than memory is staged, indexed and read back
table by table in bounded memory. Written without a journal or fsync: it is scratch that
dies with the import.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypedDict

import orjson

_SCHEMA = """
CREATE TABLE obj (seq INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, pk TEXT, m2m INTEGER NOT NULL,
                  data BLOB NOT NULL);
CREATE TABLE idx (tbl INTEGER NOT NULL, pk TEXT, key TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX idx_pk ON idx (tbl, pk);
CREATE INDEX idx_key ON idx (tbl, key);
CREATE INDEX idx_seq ON idx (seq);
"""
_IN_CHUNK = 500

Ref = list[str]  # ["p", pk text] or ["n", key text]


class Staged(TypedDict):
    """A staged fixture object: its plain columns' canonical values (``r``), its
    references by key part (``f``), its many-to-many lists by field (``m``) and its pk."""

    r: dict[str, object]
    f: dict[str, Ref | None]
    m: dict[str, list[Ref | None]]
    pk: object


StagedObject = tuple[int, str | None, Staged, str | None]
"""(seq, pk text, data, key text or None) of a staged object."""
M2MOwner = tuple[str | None, Staged, str]
"""(pk text, data, key text) of a staged object that lists many-to-many fields."""


def pk_text(pk: object) -> str | None:
    """A fixture pk as the index stores it (its JSON text; integers and strings differ)."""
    return None if pk is None else orjson.dumps(pk).decode()


class Spill:
    """Staged objects ``(seq, table number, pk, data)`` and the natural-key index."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "import-index.db"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-32768;"
            "PRAGMA temp_store=FILE;"
        )
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._pending: list[tuple[int, str | None, int, bytes]] = []

    def close(self) -> None:
        self._db.close()

    # --- staging ------------------------------------------------------------------------

    def stage(self, table: int, pk: object, data: Staged, *, m2m: bool) -> None:
        self._pending.append((table, pk_text(pk), int(m2m), orjson.dumps(data)))
        if len(self._pending) >= 5000:
            self.flush()

    def flush(self) -> None:
        self._db.executemany(
            "INSERT INTO obj (tbl, pk, m2m, data) VALUES (?, ?, ?, ?)", self._pending
        )
        self._pending = []

    def finish_staging(self) -> None:
        self.flush()
        self._db.execute("CREATE INDEX obj_tbl ON obj (tbl, seq)")

    def count(self, table: int) -> int:
        row = self._db.execute("SELECT count(*) FROM obj WHERE tbl = ?", (table,)).fetchone()
        return int(row[0])

    def objects(self, table: int, *, batch: int = 2000) -> Iterator[list[StagedObject]]:
        """(seq, pk text, data, key text or None) of a table's objects, in file order."""
        cursor = self._db.execute(
            "SELECT o.seq, o.pk, o.data, i.key FROM obj o LEFT JOIN idx i ON i.seq = o.seq "
            "WHERE o.tbl = ? ORDER BY o.seq",
            (table,),
        )
        while rows := cursor.fetchmany(batch):
            yield [(seq, pk, orjson.loads(data), key) for seq, pk, data, key in rows]

    def m2m_owners(self, table: int, *, batch: int = 2000) -> Iterator[list[M2MOwner]]:
        """(pk text, data, key text) of a table's objects that list many-to-many fields."""
        cursor = self._db.execute(
            "SELECT o.pk, o.data, i.key FROM obj o JOIN idx i ON i.seq = o.seq "
            "WHERE o.tbl = ? AND o.m2m = 1 ORDER BY o.seq",
            (table,),
        )
        while rows := cursor.fetchmany(batch):
            yield [(pk, orjson.loads(data), key) for pk, data, key in rows]

    # --- the natural-key index -----------------------------------------------------------

    def index(self, entries: Iterable[tuple[int, str | None, str, int]]) -> None:
        """(table, pk text, natural key text, seq)."""
        self._db.executemany("INSERT INTO idx (tbl, pk, key, seq) VALUES (?, ?, ?, ?)", entries)

    def keys_by_pk(self, table: int, pks: Iterable[str]) -> dict[str, list[str]]:
        """pk text -> the key texts of the objects with that pk (more than one: a
        duplicate pk)."""
        found: dict[str, list[str]] = {}
        for chunk in _chunks(sorted(set(pks))):
            marks = ",".join("?" * len(chunk))
            for pk, key in self._db.execute(
                f"SELECT pk, key FROM idx WHERE tbl = ? AND pk IN ({marks})", (table, *chunk)
            ):
                found.setdefault(pk, []).append(key)
        return found

    def known_keys(self, table: int, keys: Iterable[str]) -> dict[str, int]:
        """key text -> how many objects of the table have it."""
        found: dict[str, int] = {}
        for chunk in _chunks(sorted(set(keys))):
            marks = ",".join("?" * len(chunk))
            for key, count in self._db.execute(
                f"SELECT key, count(*) FROM idx WHERE tbl = ? AND key IN ({marks}) GROUP BY key",
                (table, *chunk),
            ):
                found[key] = count
        return found

    def duplicate_keys(self, table: int) -> Iterator[tuple[str, list[object]]]:
        """(key text, the pks of its objects) for each natural key held by several."""
        for key, pks in self._db.execute(
            "SELECT key, json_group_array(coalesce(pk, 'null')) FROM idx WHERE tbl = ? "
            "GROUP BY key HAVING count(*) > 1",
            (table,),
        ):
            yield key, [orjson.loads(p) for p in orjson.loads(pks)]

    def duplicate_pks(self, table: int) -> Iterator[str]:
        for (pk,) in self._db.execute(
            "SELECT pk FROM idx WHERE tbl = ? AND pk IS NOT NULL GROUP BY pk HAVING count(*) > 1",
            (table,),
        ):
            yield pk


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]
