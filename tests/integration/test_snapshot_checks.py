"""Snapshot files are checked before their rows are used (issue 10, defect 5).

A byte changed anywhere in a snapshot table file is refused before the reader hands out a
single row, whatever zstd makes of it (the compressed stream carries no checksum of its
own, so many flips decode cleanly into a different row); a file changed while it is being
read is refused when the read ends; and `restore` from a damaged snapshot exits 1 and
leaves the target as it was, where it used to commit the altered row.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from nkdaemon.core.errors import RepositoryError
from nkdaemon.repository.snapshots import (
    SnapshotInfo,
    SnapshotWriter,
    TableFile,
    list_snapshots,
    read_table,
    read_table_batches,
)
from nkdaemon.runtime.config import load_settings
from tests.helpers import do_drain, engine_for, run_cli, write_config


def _snapshot(directory: Path, rows: list[dict[str, Any]]) -> tuple[SnapshotInfo, TableFile]:
    writer = SnapshotWriter(directory, time=datetime.now(UTC), position=3)
    writer.write_table(1, "items", iter(rows))
    info = writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])
    table = info.table("items")
    assert table is not None
    return info, table


def _rows(count: int, width: int = 8) -> list[dict[str, Any]]:
    return [
        {"k": {"code": f"c{n}"}, "r": {"code": f"c{n}", "qty": n, "note": os.urandom(width).hex()}}
        for n in range(count)
    ]


def _read_until_refused(info: SnapshotInfo, table: TableFile) -> int:
    """Rows handed out before the reader refused the file (fails if it never does)."""
    handed = 0
    with pytest.raises(RepositoryError, match=r"tables/1\.jsonl\.zst \(items\)"):
        for _row in read_table(info, table):
            handed += 1
    return handed


def test_every_flipped_byte_of_a_table_file_is_refused_before_any_row(tmp_path: Path) -> None:
    info, table = _snapshot(tmp_path, _rows(12))
    path = info.path / table.file
    original = path.read_bytes()
    silently_different = 0
    for offset in range(len(original)):
        damaged = bytearray(original)
        damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        silently_different += _decodes_differently(bytes(damaged), original)
        assert _read_until_refused(info, table) == 0, f"offset {offset}"
    assert silently_different > 0, "the sweep must include flips zstd itself does not notice"
    path.write_bytes(original)
    assert len(list(read_table(info, table))) == 12


def test_a_table_file_cut_short_or_extended_is_refused(tmp_path: Path) -> None:
    info, table = _snapshot(tmp_path, _rows(12))
    path = info.path / table.file
    original = path.read_bytes()
    for length in range(len(original)):
        path.write_bytes(original[:length])
        assert _read_until_refused(info, table) == 0, f"cut at {length}"
    path.write_bytes(original + zstandard.ZstdCompressor().compress(b'{"k":{},"r":{}}\n'))
    assert _read_until_refused(info, table) == 0


def test_a_missing_table_file_is_named(tmp_path: Path) -> None:
    info, table = _snapshot(tmp_path, _rows(3))
    (info.path / table.file).unlink()
    assert _read_until_refused(info, table) == 0


def test_a_file_changed_while_it_is_read_is_refused_at_its_end(tmp_path: Path) -> None:
    """The first pass proves the file whole; the bytes the decoder then reads are hashed
    again, so a change between the two (or a reader that trusted the first pass alone)
    cannot slip a row through."""
    info, table = _snapshot(tmp_path, _rows(12_000, width=48))  # several decoder reads
    path = info.path / table.file
    original = path.read_bytes()
    assert len(original) > 4 * zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE
    offset, mask = _silent_flip(original, start=len(original) - 2000)
    batches: Iterator[list[dict[str, Any]]] = read_table_batches(info, table)
    first = next(batches)  # the first pass is done; the decoder has read the file's start
    with path.open("r+b") as handle:  # the same file, changed in place under the reader
        handle.seek(offset)
        handle.write(bytes([original[offset] ^ mask]))
    with pytest.raises(RepositoryError, match="changed while it was read"):
        for _batch in batches:
            pass
    assert first


def test_restore_refuses_a_damaged_snapshot_and_leaves_the_target_as_it_was(
    tmp_path: Path,
) -> None:
    """Defect 5: a flipped byte in the newest snapshot used to restore one row altered."""
    source = tmp_path / "source.db"
    engine = engine_for(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL UNIQUE, qty int)"
        )
        for n in range(200):
            conn.exec_driver_sql(f"INSERT INTO items (code, qty) VALUES ('item-{n:04}', {n})")
    engine.dispose()
    config = write_config(tmp_path, f"sqlite:///{source}")
    assert run_cli(config, "install").exit_code == 0
    settings = load_settings(config)
    do_drain(settings)
    newest = list_snapshots(settings.repository.path / "snapshots")[-1]
    table = newest.table("items")
    assert table is not None
    path = newest.path / table.file
    original = path.read_bytes()
    path.write_bytes(_flipped(original, *_silent_flip(original, start=len(original) // 3)))

    target = tmp_path / "target.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('here before the restore')")
    before = target.read_bytes()
    result = run_cli(
        config, "restore", "--target", f"sqlite:///{target}", "--latest", "--create-schema"
    )
    assert result.exit_code == 1, result.output
    assert f"snapshot {newest.id}: {table.file} (items)" in result.output
    assert "SHA-256" in result.output
    assert target.read_bytes() == before


def _flipped(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= mask
    return bytes(damaged)


def _decoded(data: bytes) -> bytes | None:
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError:
        return None


def _decodes_differently(damaged: bytes, original: bytes) -> bool:
    text = _decoded(damaged)
    return text is not None and text != _decoded(original)


def _silent_flip(data: bytes, *, start: int) -> tuple[int, int]:
    """(offset, mask): the first byte from ``start`` that, XORed with 0xFF or failing that
    with one bit, still decodes into valid rows with the same keys but another value in
    one of them: damage only a checksum can see, and a target would take."""
    reference = [orjson.loads(line) for line in (_decoded(data) or b"").splitlines()]
    for mask in (0xFF, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80):
        for offset in range(start, len(data)):
            text = _decoded(_flipped(data, offset, mask))
            if text is None:
                continue
            try:
                rows = [orjson.loads(line) for line in text.splitlines()]
            except orjson.JSONDecodeError:
                continue
            if [r.get("k") for r in rows] == [r["k"] for r in reference] and rows != reference:
                return offset, mask
    raise AssertionError("no silent flip found")
