"""Snapshot table files read back exactly: rows cross the reader's block boundaries, values
hold newlines, quotes and every kind of character, and an empty table reads as empty."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nkdaemon.repository.snapshots import SnapshotWriter, read_table, read_table_batches


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "k": {"code": f"row-{n}"},
            "r": {
                "code": f"row-{n}",
                "text": f'line one\nline two, "quoted", ü 🧾 \\ {n}' * (1 + n % 7),
                "number": n * 1.5,
                "none": None,
                "list": [n, "a\nb", {"nested": True}],
            },
        }
        for n in range(count)
    ]


def test_a_snapshot_table_reads_back_row_for_row(tmp_path: Path) -> None:
    rows = _rows(20_000)  # several megabytes of text: many reader blocks
    writer = SnapshotWriter(tmp_path, time=datetime.now(UTC), position=7)
    assert writer.write_table(1, "big", iter(rows)) == len(rows)
    assert writer.write_table(2, "empty", iter([])) == 0
    snapshot = writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])

    big, empty = snapshot.table("big"), snapshot.table("empty")
    assert big is not None and empty is not None
    assert list(read_table(snapshot, big)) == rows
    batches = list(read_table_batches(snapshot, big))
    assert len(batches) > 1, "the table should span more than one block"
    assert [row for batch in batches for row in batch] == rows
    assert list(read_table(snapshot, empty)) == []
