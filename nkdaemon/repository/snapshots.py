"""Snapshot files: one zstd-compressed JSON-lines file per table, and a manifest.

A snapshot is a folder of objects in the snapshots' store (core/ports.RepositoryStore):
each table file is written whole, and the manifest last, so a snapshot either exists
whole or not at all (a folder without a manifest is a write that never finished, and is
skipped). Nothing is changed once written but ``checked.json`` (see confirm_unchanged). The
manifest records the source position it contains (every source transaction at or below
it, none above), its time, per-table row counts and SHA-256 checksums of the files, and
the table definitions. See docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from nkdaemon.core.digest import ALGORITHM, Digest, DigestFold
from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.repository.local_store import as_store

SNAPSHOT_FORMAT = 1
MANIFEST = "manifest.json"
CHECKED = "checked.json"


class SnapshotDamagedError(RepositoryError):
    """A snapshot file is missing or does not hold what its manifest recorded."""

    kind = "corruption"


@dataclass(frozen=True, kw_only=True)
class TableFile:
    number: int
    name: str
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class SnapshotInfo:
    """A snapshot's manifest, and where it lives: ``folder`` in ``store`` (``path`` names
    that folder for messages, and is the folder itself in a local store)."""

    id: str
    path: Path
    store: RepositoryStore = field(compare=False, repr=False)
    folder: str
    time: str
    position: int
    installation: str
    log_lsn: int
    dialect: str
    tables: tuple[TableFile, ...]
    definitions: tuple[dict[str, Any], ...]
    # per table name; None for a snapshot written before snapshots recorded digests
    digests: dict[str, Digest] | None = None
    # the last time the source was found unchanged since this snapshot (else its time)
    checked: str = ""
    # set for a snapshot made by `import-legacy` from an older backup: what it came from
    imported: dict[str, Any] | None = None

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.time)

    @property
    def current_as_of(self) -> str:
        """When the source last held exactly this snapshot's contents, as far as known."""
        return self.checked or self.time

    def table(self, name: str) -> TableFile | None:
        return next((t for t in self.tables if t.name == name), None)

    def object(self, file: str) -> str:
        """The store's name for one of this snapshot's files (``tables/1.jsonl.zst``)."""
        return f"{self.folder}/{file}"


class SnapshotWriter:
    """Writes one snapshot into ``directory`` (the snapshots' folder or store); ``commit``
    makes it visible, ``abort`` removes every trace."""

    def __init__(self, directory: Path | RepositoryStore, *, time: datetime, position: int) -> None:
        self.store = as_store(directory)
        self.id = f"{time.strftime('%Y%m%dT%H%M%S%fZ')}-{position}"
        self.time = time
        self.position = position
        self._written: list[str] = []
        self._tables: list[TableFile] = []
        self._digests: dict[str, Digest] = {}
        if f"{self.id}/{MANIFEST}" not in self.store.list(f"{self.id}/{MANIFEST}"):
            for stale in self.store.list(f"{self.id}/"):  # an attempt that never finished
                self.store.delete(stale)

    def write_table(self, number: int, name: str, rows: Iterator[dict[str, Any]]) -> int:
        """Write one table's rows ({"k", "r", "s"}), folding its content digest on the way.

        The rows are pulled through the compressor by the store as it writes, so a table
        is never held in memory."""
        relative = f"tables/{number}.jsonl.zst"
        lines = _RowLines(rows)
        compressor = zstandard.ZstdCompressor(level=3)
        with compressor.stream_reader(
            lines,  # type: ignore[arg-type]  # any object with read() is a source
            read_size=_BLOCK,
            closefd=False,
        ) as compressed:
            hashing = _HashingReader(compressed)
            self.store.write_if_absent(f"{self.id}/{relative}", hashing)
        self._written.append(f"{self.id}/{relative}")
        sha256 = hashing.hexdigest()
        self._tables.append(
            TableFile(number=number, name=name, file=relative, rows=lines.count, sha256=sha256)
        )
        self._digests[name] = lines.content.result()
        return lines.count

    def commit(
        self,
        *,
        installation: str,
        log_lsn: int,
        dialect: str,
        definitions: list[dict[str, Any]],
        imported: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "id": self.id,
            "time": self.time.isoformat(timespec="microseconds"),
            "position": self.position,
            "installation": installation,
            "log_lsn": log_lsn,
            "dialect": dialect,
            "tables": [t.__dict__ for t in self._tables],
            "definitions": definitions,
            "digests": {
                "algorithm": ALGORITHM,
                "tables": {name: d.to_json() for name, d in self._digests.items()},
            },
            **({"imported": imported} if imported is not None else {}),
        }
        # last: every table file is durable before the manifest makes the snapshot visible
        body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        self.store.write_if_absent(f"{self.id}/{MANIFEST}", body)
        self._written = []
        return _info(self.store, self.id, manifest)

    def abort(self) -> None:
        """Remove what this writer wrote (never another's files: the name may be taken)."""
        for name in self._written:
            self.store.delete(name)
        self._written = []


_BLOCK = 1 << 20


class _RowLines:
    """A table's rows as the bytes of JSON lines, read in blocks; counts the rows and
    folds their content digest as they pass."""

    def __init__(self, rows: Iterator[dict[str, Any]]) -> None:
        self._rows = iter(rows)
        self._rest = b""
        self.count = 0
        self.content = DigestFold()

    def read(self, size: int = -1) -> bytes:
        # one buffer, not a list of lines: keeping many small orjson results alive costs
        # several times what encoding them does
        buffer = io.BytesIO(self._rest)
        buffer.seek(0, io.SEEK_END)
        for row in self._rows:
            self.content.add(row["k"], row["r"])
            buffer.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            self.count += 1
            if 0 <= size <= buffer.tell():
                break
        data = buffer.getvalue()
        taken = len(data) if size < 0 else size
        self._rest = data[taken:]
        return data[:taken]


def _info(store: RepositoryStore, folder: str, manifest: dict[str, Any]) -> SnapshotInfo:
    if int(manifest.get("format", 0)) > SNAPSHOT_FORMAT:
        raise RepositoryError(
            f"snapshot {folder} has format {manifest['format']}; this release reads up to "
            f"{SNAPSHOT_FORMAT}",
            hint="upgrade nkdaemon",
        )
    return SnapshotInfo(
        id=manifest["id"],
        path=Path(store.describe(folder)),
        store=store,
        folder=folder,
        time=manifest["time"],
        position=int(manifest["position"]),
        installation=manifest["installation"],
        log_lsn=int(manifest.get("log_lsn", 0)),
        dialect=manifest.get("dialect", ""),
        tables=tuple(_table_file(t) for t in manifest["tables"]),
        definitions=tuple(manifest["definitions"]),
        digests=_digests(folder, manifest.get("digests")),
        checked=_checked(store, folder, int(manifest["position"])),
        imported=manifest.get("imported"),
    )


def _table_file(entry: dict[str, Any]) -> TableFile:
    """A manifest's table entry (fields a later release adds are ignored)."""
    return TableFile(
        number=int(entry["number"]),
        name=entry["name"],
        file=entry["file"],
        rows=int(entry["rows"]),
        sha256=entry["sha256"],
    )


def _digests(folder: str, recorded: dict[str, Any] | None) -> dict[str, Digest] | None:
    if recorded is None:
        return None
    if recorded.get("algorithm") != ALGORITHM:
        raise RepositoryError(
            f"snapshot {folder} records digests made with {recorded.get('algorithm')!r}; "
            f"this release knows {ALGORITHM!r}",
            hint="upgrade nkdaemon",
        )
    return {name: Digest.from_json(d) for name, d in recorded["tables"].items()}


def _checked(store: RepositoryStore, folder: str, position: int) -> str:
    """The time recorded by confirm_unchanged, if any (a damaged note is ignored: it only
    ever moves a snapshot's freshness forward)."""
    try:
        note = orjson.loads(store.read(f"{folder}/{CHECKED}"))
    except (OSError, orjson.JSONDecodeError):  # OSError: none (ObjectMissingError), or unreadable
        return ""
    if not isinstance(note, dict) or note.get("position") != position:
        return ""
    return str(note.get("time", ""))


def confirm_unchanged(snapshot: SnapshotInfo, time: datetime) -> None:
    """Record that the source, read at ``time``, still held exactly this snapshot's
    contents (same position): freshness for health checks, no new copy of the data."""
    note = {"time": time.isoformat(timespec="microseconds"), "position": snapshot.position}
    # the one file of a snapshot that changes: replaced whole (object storage: a new version)
    snapshot.store.replace(snapshot.object(CHECKED), orjson.dumps(note))


def list_snapshots(directory: Path | RepositoryStore) -> list[SnapshotInfo]:
    """Every whole snapshot in ``directory`` (the snapshots' folder or store), oldest first
    (half-written ones have no manifest and are skipped)."""
    store = as_store(directory)
    found = []
    for folder in _folders(store):
        try:
            found.append(_info(store, folder, orjson.loads(store.read(f"{folder}/{MANIFEST}"))))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"snapshot {folder} has an unreadable manifest ({exc})",
                hint="run `nkdaemon verify`; remove the snapshot folder if it is damaged",
            ) from None
    return sorted(found, key=lambda s: (s.time, s.position))


def _folders(store: RepositoryStore) -> list[str]:
    """The folders that hold a manifest (a whole snapshot), sorted."""
    ending = f"/{MANIFEST}"
    return [
        name.removesuffix(ending)
        for name in store.list()
        if name.endswith(ending) and name.count("/") == 1
    ]


def read_table(snapshot: SnapshotInfo, table: TableFile) -> Iterator[dict[str, Any]]:
    """The rows of one snapshot table, streamed and checked (see read_table_batches)."""
    for batch in read_table_batches(snapshot, table):
        yield from batch


def read_table_batches(snapshot: SnapshotInfo, table: TableFile) -> Iterator[list[dict[str, Any]]]:
    """The rows of one snapshot table, streamed in lists of about a megabyte of text.

    Raises SnapshotDamagedError before the first row when the file is missing or fails its
    SHA-256, and at the end when the bytes decoded were not those checked (the file
    changed while it was read) or the rows are not as many as the manifest says: a caller
    that reads to the end and only then commits never commits a damaged row.

    A block of lines is parsed as one JSON array, which costs a third of parsing line by
    line (orjson never writes a raw newline inside a value, so lines are whole rows)."""
    check_table_file(snapshot, table)
    count = 0
    with _open(snapshot, table) as raw:
        hashing = _HashingReader(raw)
        try:
            for batch in _batches(hashing):
                count += len(batch)
                yield batch
            hashing.read_rest()
        except (zstandard.ZstdError, orjson.JSONDecodeError) as exc:
            raise _damaged(snapshot, table, f"cannot be read ({exc})") from None
    if hashing.hexdigest() != table.sha256:
        raise _damaged(snapshot, table, "changed while it was read (fails its SHA-256 now)")
    if count != table.rows:
        raise _damaged(snapshot, table, f"holds {count} rows; the manifest says {table.rows}")


def _batches(raw: Any) -> Iterator[list[dict[str, Any]]]:
    with zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as reader:
        pending = b""
        while block := reader.read(1 << 20):
            data = pending + block
            end = data.rfind(b"\n")
            if end < 0:
                pending = data
                continue
            pending = data[end + 1 :]
            yield orjson.loads(b"[" + data[:end].replace(b"\n", b",") + b"]")
        if pending.strip():
            yield orjson.loads(b"[" + pending + b"]")


class _HashingReader:
    """A binary file that hashes every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        return data

    def read_rest(self) -> None:
        """Hash what the decoder left unread (bytes after the zstd frame)."""
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _open(snapshot: SnapshotInfo, table: TableFile) -> IO[bytes]:
    try:
        return snapshot.store.open(snapshot.object(table.file))
    except FileNotFoundError:  # ObjectMissingError, whatever the store
        raise _damaged(snapshot, table, "is missing") from None


def _damaged(snapshot: SnapshotInfo, table: TableFile, detail: str) -> SnapshotDamagedError:
    return SnapshotDamagedError(
        f"snapshot {snapshot.id}: {table.file} ({table.name}) {detail}",
        hint=f"run `nkdaemon verify`; move the folder {snapshot.path} aside (a restore then "
        "starts from the snapshot before it and replays the log) or put back an intact copy",
    )


def check_table_file(snapshot: SnapshotInfo, table: TableFile) -> None:
    """Raise SnapshotDamagedError unless the file is there and matches its SHA-256."""
    if file_checksum(snapshot, table) != table.sha256:
        raise _damaged(snapshot, table, "fails its SHA-256 checksum")


def file_checksum(snapshot: SnapshotInfo, table: TableFile) -> str:
    digest = hashlib.sha256()
    with _open(snapshot, table) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prune_snapshots(directory: Path | RepositoryStore, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` snapshots; the only place snapshots are deleted.
    Imported snapshots are not counted nor removed: the repository is their only copy."""
    snapshots = [s for s in list_snapshots(directory) if s.imported is None]
    doomed = snapshots[: max(0, len(snapshots) - keep)]
    for snapshot in doomed:
        delete_snapshot(snapshot)
    return [s.id for s in doomed]


def delete_snapshot(snapshot: SnapshotInfo) -> None:
    """Remove one snapshot (for ``prune_snapshots`` and services/prune). The manifest
    first: from then on the snapshot is gone for every reader, and an
    interrupted removal leaves only files no reader looks at."""
    snapshot.store.delete(snapshot.object(MANIFEST))
    for name in snapshot.store.list(f"{snapshot.folder}/"):
        snapshot.store.delete(name)
