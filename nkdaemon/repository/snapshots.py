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

from nkdaemon.core.errors import RepositoryError
from nkdaemon.repository.files import fsync_dir

SNAPSHOT_FORMAT = 1
MANIFEST = "manifest.json"


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
    # set for a snapshot made by `import-legacy` from an older backup: what it came from
    imported: dict[str, Any] | None = None

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.time)

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

    def write_table(self, number: int, name: str, rows: Iterator[dict[str, Any]]) -> int:
        relative = f"tables/{number}.jsonl.zst"
        path = self._tmp / relative
        digest = hashlib.sha256()
        count = 0
        with path.open("wb") as raw:
            hashing = _HashingWriter(raw, digest)
            with zstandard.ZstdCompressor(level=3).stream_writer(
                hashing,  # type: ignore[arg-type]  # a raw writer is what it takes
                closefd=False,
            ) as out:
                buffer = io.BytesIO()
                for row in rows:
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
        tables=tuple(TableFile(**t) for t in manifest["tables"]),
        definitions=tuple(manifest["definitions"]),
        imported=manifest.get("imported"),
    )


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
    """The rows of one snapshot table, streamed."""
    for batch in read_table_batches(snapshot, table):
        yield from batch


def read_table_batches(snapshot: SnapshotInfo, table: TableFile) -> Iterator[list[dict[str, Any]]]:
    """The rows of one snapshot table, streamed in lists of about a megabyte of text.

    A block of lines is parsed as one JSON array, which costs a third of parsing line by
    line (orjson never writes a raw newline inside a value, so lines are whole rows)."""
    path = snapshot.path / table.file
    with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
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


def file_checksum(snapshot: SnapshotInfo, table: TableFile) -> str:
    digest = hashlib.sha256()
    with (snapshot.path / table.file).open("rb") as handle:
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
