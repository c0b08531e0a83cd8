"""The repository's state database: the id -> natural key index and the drain checkpoint.

One SQLite file (``state.db``). Both change only inside the drain's batch transaction,
which is committed after the log records it covers are fsynced and before the source
queue rows are removed, so the index always matches a prefix of the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson
from cachetools import LRUCache

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.keys import Ref, Sid

ShallowKey = tuple[Any, ...]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    tbl INTEGER NOT NULL,
    sid BLOB NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (tbl, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_MISSING = object()


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """What the repository has made durable: log end and the source position it covers."""

    lsn: int = 0
    position: int = 0
    segment: str | None = None
    offset: int = 0
    commit_time: str | None = None
    # The source had no transaction committed at or before this time that the log does
    # not hold (the start of the last drain pass that read up to its fence).
    complete_through: str | None = None


@dataclass(kw_only=True, slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0


def _encode_sid(sid: Sid) -> bytes:
    return orjson.dumps(sid)


def _encode_key(key: ShallowKey) -> bytes:
    return orjson.dumps([{"@": [p.table, p.sid]} if isinstance(p, Ref) else p for p in key])


def _decode_key(raw: bytes) -> ShallowKey:
    return tuple(
        Ref(p["@"][0], p["@"][1]) if isinstance(p, dict) and "@" in p else p
        for p in orjson.loads(raw)
    )


class StateStore:
    """Key index with an LRU cache in front, plus the checkpoint. Not thread-safe.

    ``read_only``: never create or change the file (commands that only read the
    repository, which may be a read-only copy); writes then fail.
    """

    def __init__(self, path: Path, *, cache_size: int = 100_000, read_only: bool = False) -> None:
        if read_only:
            self._db = _open_read_only(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the checkpoint must be on disk before the source queue rows are deleted.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        self._cache: LRUCache[tuple[int, Any], Any] = LRUCache(maxsize=cache_size)
        self.stats = CacheStats()
        self._in_batch = False

    def close(self) -> None:
        self._db.close()

    # --- batches ---------------------------------------------------------------------

    def begin(self) -> None:
        if not self._in_batch:
            self._db.execute("BEGIN")
            self._in_batch = True

    def commit(self, checkpoint: Checkpoint | None = None) -> None:
        if checkpoint is not None:
            self.begin()
            self._write_checkpoint(checkpoint)
        if self._in_batch:
            self._db.execute("COMMIT")
            self._in_batch = False

    def rollback(self) -> None:
        if self._in_batch:
            self._db.execute("ROLLBACK")
            self._in_batch = False
        self._cache.clear()

    # --- checkpoint ------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        if "checkpoint" not in rows:
            return Checkpoint()
        return _decode_checkpoint(rows["checkpoint"])

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        value = orjson.dumps(
            {
                "lsn": checkpoint.lsn,
                "position": checkpoint.position,
                "segment": checkpoint.segment,
                "offset": checkpoint.offset,
                "commit_time": checkpoint.commit_time,
                "complete_through": checkpoint.complete_through,
            }
        ).decode()
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES ('checkpoint', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (value,),
        )

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # --- the key index (KeyLookup) ---------------------------------------------------

    def get(self, table: int, sid: Sid) -> ShallowKey | None:
        cache_key = (table, _hashable(sid))
        found = self._cache.get(cache_key, _MISSING)
        if found is not _MISSING:
            self.stats.hits += 1
            return found  # type: ignore[no-any-return]
        self.stats.misses += 1
        row = self._db.execute(
            "SELECT key FROM keys WHERE tbl = ? AND sid = ?", (table, _encode_sid(sid))
        ).fetchone()
        key = None if row is None else _decode_key(row[0])
        self._cache[cache_key] = key
        return key

    def prefetch(self, table: int, sids: Iterable[Sid]) -> None:
        """Load the keys of many rows in a few queries (a cold cache, a large batch)."""
        wanted = [
            s
            for s in {_hashable(s): s for s in sids}.values()
            if (table, _hashable(s)) not in self._cache
        ]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            encoded = {_encode_sid(s): s for s in chunk}
            marks = ",".join("?" * len(encoded))
            found = dict(
                self._db.execute(
                    f"SELECT sid, key FROM keys WHERE tbl = ? AND sid IN ({marks})",
                    (table, *encoded),
                ).fetchall()
            )
            for raw_sid, sid in encoded.items():
                raw_key = found.get(raw_sid)
                self._cache[(table, _hashable(sid))] = (
                    None if raw_key is None else _decode_key(raw_key)
                )

    def put(self, table: int, sid: Sid, key: ShallowKey) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO keys(tbl, sid, key) VALUES (?, ?, ?) "
            "ON CONFLICT(tbl, sid) DO UPDATE SET key = excluded.key",
            (table, _encode_sid(sid), _encode_key(key)),
        )
        self._cache[(table, _hashable(sid))] = key

    def put_many(self, table: int, items: Iterable[tuple[Sid, ShallowKey]]) -> None:
        self.begin()
        rows = ((table, _encode_sid(sid), _encode_key(key)) for sid, key in items)
        self._db.executemany(
            "INSERT INTO keys(tbl, sid, key) VALUES (?, ?, ?) "
            "ON CONFLICT(tbl, sid) DO UPDATE SET key = excluded.key",
            rows,
        )

    def delete(self, table: int, sid: Sid) -> None:
        self.begin()
        self._db.execute("DELETE FROM keys WHERE tbl = ? AND sid = ?", (table, _encode_sid(sid)))
        self._cache[(table, _hashable(sid))] = None

    def clear_table(self, table: int) -> None:
        self.begin()
        self._db.execute("DELETE FROM keys WHERE tbl = ?", (table,))
        self._cache.clear()

    def entries(self, table: int) -> Iterator[tuple[Sid, ShallowKey]]:
        """Every (source id, shallow key) of a table: read whole first, since the caller
        may change the index while it walks them."""
        rows = self._db.execute("SELECT sid, key FROM keys WHERE tbl = ?", (table,)).fetchall()
        for raw_sid, raw_key in rows:
            yield orjson.loads(raw_sid), _decode_key(raw_key)

    def clear_all(self) -> None:
        """Forget every key (a new baseline replaces them)."""
        self.begin()
        self._db.execute("DELETE FROM keys")
        self._cache.clear()

    def count(self, table: int | None = None) -> int:
        if table is None:
            return int(self._db.execute("SELECT count(*) FROM keys").fetchone()[0])
        return int(
            self._db.execute("SELECT count(*) FROM keys WHERE tbl = ?", (table,)).fetchone()[0]
        )


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The state database without writing anything, even where the folder is read-only.

    A WAL database needs its -shm file, which a reader may have to create; in a folder it
    cannot write, and with no -wal file (the last writer checkpointed and closed), the
    file alone is the whole state and is opened as immutable. A missing file is an empty
    state (a repository copied without it), as a writer would create it."""
    if not path.exists():
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        return db
    try:
        return _connect_uri(path, "mode=ro")
    except sqlite3.OperationalError as exc:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise RepositoryError(
                f"cannot read {path}: {exc} (its {wal.name} holds changes that a reader can "
                f"only apply with write access to {path.parent})",
                hint="copy the repository (with its state.db-wal) to a folder this user may "
                "write, or run the command as a user who may write this one",
            ) from None
        return _connect_uri(path, "immutable=1")


def _connect_uri(path: Path, options: str) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?{options}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM meta").fetchone()  # opening is lazy: fail here
    except sqlite3.Error:
        db.close()
        raise
    return db


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint of a state.db, read without creating one; None when there is none
    (a repository copied without its state)."""
    if not path.exists():
        return None
    db = _open_read_only(path)  # a mounted, read-only copy is read too
    try:
        row = db.execute("SELECT value FROM meta WHERE name = 'checkpoint'").fetchone()
    except sqlite3.OperationalError:  # a state.db without the table: nothing recorded
        return None
    finally:
        db.close()
    return None if row is None else _decode_checkpoint(row[0])


def _decode_checkpoint(raw: str) -> Checkpoint:
    data = orjson.loads(raw)
    known = {f.name: data[f.name] for f in fields(Checkpoint) if f.name in data}
    return Checkpoint(**known)


def _hashable(sid: Sid) -> Any:
    return tuple(sid) if isinstance(sid, list) else sid
