"""Snapshot files: one zstd-compressed JSON-lines file per table, and a manifest.

A snapshot is written into a temporary folder, each file fsynced, the manifest last, and
the folder then renamed into place: a snapshot either exists whole or not at all. The
manifest records the source position it contains (every source transaction at or below
it, none above), its time, per-table row counts and SHA-256 checksums of the files, and
the table definitions. See docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from nkdaemon.core.digest import ALGORITHM, Digest, DigestFold
from nkdaemon.core.errors import RepositoryError
from nkdaemon.repository.files import fsync_dir

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
    """A snapshot's manifest, and where it lives."""

    id: str
    path: Path
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


class SnapshotWriter:
    """Writes one snapshot; ``commit`` makes it visible, ``abort`` removes every trace."""

    def __init__(self, directory: Path, *, time: datetime, position: int) -> None:
        self.directory = directory
        self.id = f"{time.strftime('%Y%m%dT%H%M%S%fZ')}-{position}"
        self.time = time
        self.position = position
        self._tmp = directory / f".tmp-{self.id}"
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        (self._tmp / "tables").mkdir(parents=True)
        self._tables: list[TableFile] = []
        self._digests: dict[str, Digest] = {}

    def write_table(self, number: int, name: str, rows: Iterator[dict[str, Any]]) -> int:
        """Write one table's rows ({"k", "r", "s"}), folding its content digest on the way."""
        relative = f"tables/{number}.jsonl.zst"
        path = self._tmp / relative
        digest = hashlib.sha256()
        content = DigestFold()
        count = 0
        with path.open("wb") as raw:
            hashing = _HashingWriter(raw, digest)
            with zstandard.ZstdCompressor(level=3).stream_writer(
                hashing,  # type: ignore[arg-type]  # a raw writer is what it takes
                closefd=False,
            ) as out:
                buffer = io.BytesIO()
                for row in rows:
                    content.add(row["k"], row["r"])
                    buffer.write(orjson.dumps(row))
                    buffer.write(b"\n")
                    count += 1
                    if buffer.tell() > 1 << 20:
                        out.write(buffer.getvalue())
                        buffer = io.BytesIO()
                out.write(buffer.getvalue())
            raw.flush()
            os.fsync(raw.fileno())
        self._tables.append(
            TableFile(
                number=number, name=name, file=relative, rows=count, sha256=digest.hexdigest()
            )
        )
        self._digests[name] = content.result()
        return count

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
        manifest_path = self._tmp / MANIFEST
        with manifest_path.open("wb") as handle:
            handle.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self._tmp / "tables")
        fsync_dir(self._tmp)
        final = self.directory / self.id
        self._tmp.rename(final)
        fsync_dir(self.directory)
        return _info(final, manifest)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


class _HashingWriter(io.RawIOBase):
    def __init__(self, target: IO[bytes], digest: Any) -> None:
        self._target = target
        self._digest = digest

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._digest.update(data)
        return self._target.write(data)


def _info(path: Path, manifest: dict[str, Any]) -> SnapshotInfo:
    if int(manifest.get("format", 0)) > SNAPSHOT_FORMAT:
        raise RepositoryError(
            f"snapshot {path.name} has format {manifest['format']}; this release reads up to "
            f"{SNAPSHOT_FORMAT}",
            hint="upgrade nkdaemon",
        )
    return SnapshotInfo(
        id=manifest["id"],
        path=path,
        time=manifest["time"],
        position=int(manifest["position"]),
        installation=manifest["installation"],
        log_lsn=int(manifest.get("log_lsn", 0)),
        dialect=manifest.get("dialect", ""),
        tables=tuple(_table_file(t) for t in manifest["tables"]),
        definitions=tuple(manifest["definitions"]),
        digests=_digests(path, manifest.get("digests")),
        checked=_checked(path, int(manifest["position"])),
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


def _digests(path: Path, recorded: dict[str, Any] | None) -> dict[str, Digest] | None:
    if recorded is None:
        return None
    if recorded.get("algorithm") != ALGORITHM:
        raise RepositoryError(
            f"snapshot {path.name} records digests made with {recorded.get('algorithm')!r}; "
            f"this release knows {ALGORITHM!r}",
            hint="upgrade nkdaemon",
        )
    return {name: Digest.from_json(d) for name, d in recorded["tables"].items()}


def _checked(path: Path, position: int) -> str:
    """The time recorded by confirm_unchanged, if any (a damaged note is ignored: it only
    ever moves a snapshot's freshness forward)."""
    try:
        note = orjson.loads((path / CHECKED).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return ""
    if not isinstance(note, dict) or note.get("position") != position:
        return ""
    return str(note.get("time", ""))


def confirm_unchanged(snapshot: SnapshotInfo, time: datetime) -> None:
    """Record that the source, read at ``time``, still held exactly this snapshot's
    contents (same position): freshness for health checks, no new copy of the data."""
    note = {"time": time.isoformat(timespec="microseconds"), "position": snapshot.position}
    tmp = snapshot.path / f".{CHECKED}.tmp"
    with tmp.open("wb") as handle:
        handle.write(orjson.dumps(note))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(snapshot.path / CHECKED)
    fsync_dir(snapshot.path)


def list_snapshots(directory: Path) -> list[SnapshotInfo]:
    """Every whole snapshot, oldest first (half-written ones have no manifest and are skipped)."""
    if not directory.exists():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        manifest = path / MANIFEST
        if path.name.startswith(".") or not manifest.exists():
            continue
        try:
            found.append(_info(path, orjson.loads(manifest.read_bytes())))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"snapshot {path.name} has an unreadable manifest ({exc})",
                hint="run `nkdaemon verify`; remove the snapshot folder if it is damaged",
            ) from None
    return sorted(found, key=lambda s: (s.time, s.position))


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
        return (snapshot.path / table.file).open("rb")
    except FileNotFoundError:
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


def prune_snapshots(directory: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` snapshots; the only place snapshots are deleted.
    Imported snapshots are not counted nor removed: the repository is their only copy."""
    snapshots = [s for s in list_snapshots(directory) if s.imported is None]
    doomed = snapshots[: max(0, len(snapshots) - keep)]
    for snapshot in doomed:
        shutil.rmtree(snapshot.path)
    if doomed:
        fsync_dir(directory)
    return [s.id for s in doomed]
