"""The append-only log on real files: order, rolling, rollback, torn tails, corruption.

Invariant 6: written records are never rewritten and each carries a checksum; a torn tail
after a crash is found and cut on recovery; corruption anywhere else is reported with its
place (segment file and byte offset).
"""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nkdaemon.core.errors import LogCorruptionError, RepositoryError
from nkdaemon.core.log import ChangeEvent, Chunk, Commit, Epoch, Gap
from nkdaemon.repository.layout import RepositoryLayout
from nkdaemon.repository.reader import LoggedTransaction, read_log
from nkdaemon.repository.segments import (
    COMPRESS_OVER,
    COMPRESSED,
    FORMAT_VERSION,
    HEADER,
    KIND_COMMIT,
    KIND_GAP,
    MAGIC,
    SUFFIX,
    Record,
    SegmentLog,
    encode_record,
    segment_name,
)
from nkdaemon.runtime.config import Settings, load_settings
from tests.helpers import do_drain, do_install, engine_for, logged, markers, run_cli, write_config

# --- writing transactions straight into a SegmentLog ------------------------------------------


def _events(lsn: int, count: int, tag: str) -> list[ChangeEvent]:
    return [
        ChangeEvent(table="items", op="I", key={"code": f"{tag}{lsn}.{i}"}, row={"note": "n" * 24})
        for i in range(count)
    ]


def _commit(lsn: int, parts: int, n: int, events: list[ChangeEvent]) -> Commit:
    return Commit(
        lsn=lsn,
        position=lsn * 10,
        txid=f"x{lsn}",
        commit_time=datetime(2026, 1, 1, 0, 0, lsn, tzinfo=UTC),
        parts=parts,
        count=n,
        events=tuple(events),
    )


def _chunk(lsn: int, part: int, events: list[ChangeEvent]) -> Chunk:
    return Chunk(lsn=lsn, part=part, events=tuple(events))


def _write_tx(log: SegmentLog, lsn: int, *, chunks: int = 0, tag: str = "e") -> list[ChangeEvent]:
    """One transaction as the drain writes it: chunks, the commit, then a roll if full."""
    assert log.next_lsn == lsn
    written: list[ChangeEvent] = []
    for part in range(chunks):
        events = _events(lsn, 3, f"{tag}c{part}-")
        log.append_chunk(_chunk(lsn, part, events))
        written += events
    tail = _events(lsn, 2, f"{tag}t-")
    log.append_commit(_commit(lsn, chunks, len(written) + len(tail), tail))
    log.roll_if_full()
    return written + tail


def _open(directory: Path, *, segment_bytes: int = 64 << 20) -> SegmentLog:
    log = SegmentLog(directory, segment_bytes=segment_bytes)
    log.recover(durable_segment=None, durable_offset=0)
    return log


def _transactions(directory: Path, **kwargs: Any) -> list[LoggedTransaction]:
    return [
        t for t in read_log(SegmentLog(directory), **kwargs) if isinstance(t, LoggedTransaction)
    ]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _records(directory: Path, name: str) -> list[Record]:
    """The records of one segment (read as if it were the only one)."""
    found = [r for r in SegmentLog(directory).records(strict=True) if r.segment == name]
    assert found, f"{name} holds no records"
    return found


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _header(version: int) -> bytes:
    head = struct.pack("<8sHH", MAGIC, version, 0)
    return head + struct.pack("<I", zlib.crc32(head))


# --- reading back -------------------------------------------------------------------------


def test_records_read_back_in_order_with_chunks_joined_across_segment_rolls(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=700)
    expected: dict[int, list[ChangeEvent]] = {}
    for lsn in range(1, 10):
        expected[lsn] = _write_tx(log, lsn, chunks=lsn % 3)
    # one transaction large enough to be stored compressed
    big = [
        ChangeEvent(table="items", op="I", key={"code": f"big{i}"}, row={"x": "y" * 90})
        for i in range(80)
    ]
    log.append_chunk(_chunk(10, 0, big[:40]))
    log.append_commit(_commit(10, 1, 80, big[40:]))
    log.roll_if_full()
    expected[10] = big
    log.sync()
    log.close()

    names = SegmentLog(directory).segments()
    assert len(names) >= 4, "small segments must have rolled several times"
    stored = [r for r in SegmentLog(directory).records() if r.entry.lsn == 10]
    for record in stored:
        raw = (directory / record.segment).read_bytes()
        assert raw[record.offset + 8] & COMPRESSED, "records over the limit are stored compressed"
        assert record.end - record.offset < COMPRESS_OVER
    for name in names:
        first = _records(directory, name)[0]
        assert int(name[: -len(SUFFIX)]) == first.entry.lsn, "a segment is named by its first lsn"
        assert first.offset == HEADER.size

    txs = _transactions(directory)
    assert [t.lsn for t in txs] == list(range(1, 11))
    for tx in txs:
        assert list(tx.events) == expected[tx.lsn]
        assert tx.position == tx.lsn * 10
        assert tx.txid == f"x{tx.lsn}"
        assert tx.commit_time == datetime(2026, 1, 1, 0, 0, tx.lsn, tzinfo=UTC)

    # the records of one transaction never straddle two segments
    for name in names:
        lsns = [r.entry.lsn for r in _records(directory, name)]
        kinds = [r.kind for r in _records(directory, name)]
        assert kinds[-1] == KIND_COMMIT
        assert lsns == sorted(lsns)

    assert [t.lsn for t in _transactions(directory, from_lsn=6)] == [6, 7, 8, 9, 10]
    assert [t.lsn for t in _transactions(directory, from_lsn=10)] == [10]
    assert _transactions(directory, from_lsn=11) == []


def test_gap_and_epoch_markers_are_read_back_in_their_place(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory)
    log.append_epoch(
        Epoch(lsn=1, position=0, installation="i1", time=datetime(2026, 1, 1, tzinfo=UTC))
    )
    _write_tx(log, 2)
    log.append_gap(Gap(from_lsn=3, to_lsn=5, position=50, reason="lost"))
    assert log.next_lsn == 6
    _write_tx(log, 6)
    log.sync()
    log.close()

    items = list(read_log(SegmentLog(directory)))
    assert [(type(i).__name__, i.lsn) for i in items] == [
        ("Epoch", 1),
        ("LoggedTransaction", 2),
        ("Gap", 3),
        ("LoggedTransaction", 6),
    ]
    gap = items[2]
    assert isinstance(gap, Gap) and gap.kind == "gap"
    assert (gap.from_lsn, gap.to_lsn) == (3, 5)
    reopened = SegmentLog(directory)
    end = reopened.recover(durable_segment=None, durable_offset=0)
    assert (end.last_lsn, end.last_position, reopened.next_lsn) == (6, 60, 7)
    reopened.close()


# --- rollback -----------------------------------------------------------------------------


def test_a_reopened_log_does_not_append_to_a_full_segment(tmp_path: Path) -> None:
    """Each pass of `nkdaemon drain` opens the log anew: segment_bytes must still bound them."""
    directory = tmp_path / "log"
    durable: tuple[str | None, int] = (None, 0)
    for lsn in range(1, 9):  # one process per transaction, as cron-driven drains are
        log = SegmentLog(directory, segment_bytes=600)
        log.recover(durable_segment=durable[0], durable_offset=durable[1])
        _write_tx(log, lsn)
        durable = log.sync()
        log.close()
    names = SegmentLog(directory).segments()
    assert len(names) >= 3, f"eight transactions of ~280 bytes in 600-byte segments: {names}"
    for record in SegmentLog(directory).records(strict=True):
        assert record.offset < 600, "no record is written into a segment that is already full"
    assert [t.lsn for t in _transactions(directory)] == list(range(1, 9))


def test_rollback_forgets_unsynced_writes_including_new_segments(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=1000)
    synced_events = {lsn: _write_tx(log, lsn) for lsn in (1, 2, 3)}
    segment, offset = log.sync()
    before = _files(directory)
    assert len(before[segment]) == offset
    assert offset < 1000, "the synced segment still has room, so the next writes go into it first"

    for lsn in range(4, 12):
        _write_tx(log, lsn, chunks=1, tag="lost")
    log.append_chunk(_chunk(12, 0, _events(12, 3, "lost")))  # a transaction cut off mid-way
    grown = _files(directory)
    assert len(grown) > len(before), "the unsynced writes started new segments"
    assert len(grown[segment]) > offset, "and grew the synced one"

    log.rollback()
    assert _files(directory) == before
    assert log.next_lsn == 4

    again = _write_tx(log, 4, chunks=1, tag="kept")
    log.sync()
    log.close()
    txs = _transactions(directory)
    assert [t.lsn for t in txs] == [1, 2, 3, 4]
    assert [list(t.events) for t in txs[:3]] == [synced_events[n] for n in (1, 2, 3)]
    assert list(txs[3].events) == again
    assert not any("lost" in e.key["code"] for t in txs for e in t.events)


def test_rollback_after_a_roll_at_the_sync_point(tmp_path: Path) -> None:
    """The synced segment was closed full; rollback removes the one the writes started."""
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=200)
    _write_tx(log, 1)
    _write_tx(log, 2)
    log.sync()
    before = _files(directory)
    _write_tx(log, 3, chunks=2, tag="lost")
    assert len(_files(directory)) > len(before)
    log.rollback()
    assert _files(directory) == before
    assert log.next_lsn == 3
    _write_tx(log, 3)
    log.sync()
    log.close()
    assert [t.lsn for t in _transactions(directory)] == [1, 2, 3]


def test_rollback_before_anything_was_synced_leaves_an_empty_log(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=200)
    _write_tx(log, 1)
    _write_tx(log, 2)
    log.rollback()
    assert log.segments() == []
    assert log.next_lsn == 1
    _write_tx(log, 1, tag="again")
    log.sync()
    log.close()
    txs = _transactions(directory)
    assert [t.lsn for t in txs] == [1]
    assert txs[0].events[0].key["code"].startswith("againt-")


# --- recovery: the torn tail --------------------------------------------------------------


def _half_record() -> bytes:
    record = encode_record(_commit(3, 0, 2, _events(3, 2, "torn")))
    return record[: len(record) // 2]


TORN_TAILS = {
    "half of a valid record": _half_record(),
    "a few zero bytes": b"\x00" * 5,
    "a zero-length frame": b"\x00" * 12,
    "a whole chunk then half a commit": encode_record(_chunk(3, 0, _events(3, 3, "torn")))
    + _half_record(),
}


@pytest.mark.parametrize("tail", list(TORN_TAILS.values()), ids=list(TORN_TAILS))
def test_recover_cuts_a_torn_tail_after_the_durable_point(tmp_path: Path, tail: bytes) -> None:
    directory = tmp_path / "log"
    log = _open(directory)
    _write_tx(log, 1)
    _write_tx(log, 2, chunks=2)
    segment, offset = log.sync()
    log.close()  # the process dies here; the bytes below are a write it had not finished
    assert segment is not None
    path = directory / segment
    durable = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(tail)

    reopened = SegmentLog(directory)
    end = reopened.recover(durable_segment=segment, durable_offset=offset)
    assert (end.segment, end.offset, end.last_lsn, end.last_position) == (segment, offset, 2, 20)
    assert end.last_commit_time == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
    assert path.read_bytes() == durable, "cut exactly where the last whole transaction ended"
    assert reopened.next_lsn == 3

    _write_tx(reopened, 3, chunks=1)
    reopened.sync()
    reopened.close()
    assert [t.lsn for t in _transactions(directory)] == [1, 2, 3]
    assert len(list(SegmentLog(directory).records(strict=True))) == 1 + 3 + 2


def test_recover_without_a_checkpoint_cuts_a_torn_tail_too(tmp_path: Path) -> None:
    """A crash before the first checkpoint: nothing is durable yet, so nothing is damage."""
    directory = tmp_path / "log"
    log = _open(directory)
    _write_tx(log, 1)
    log.sync()
    log.close()
    (name,) = SegmentLog(directory).segments()
    whole = (directory / name).read_bytes()
    with (directory / name).open("ab") as handle:
        handle.write(_half_record())
    reopened = SegmentLog(directory)
    end = reopened.recover(durable_segment=None, durable_offset=0)
    assert end.last_lsn == 1 and (directory / name).read_bytes() == whole
    reopened.close()


def test_recover_removes_a_new_segment_that_holds_no_whole_transaction(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=200)
    _write_tx(log, 1)
    _write_tx(log, 2)
    segment, offset = log.sync()
    durable = _files(directory)
    log.append_chunk(_chunk(3, 0, _events(3, 3, "torn")))  # starts a new segment, then the crash
    log.close()
    assert len(_files(directory)) == len(durable) + 1

    reopened = SegmentLog(directory, segment_bytes=200)
    end = reopened.recover(durable_segment=segment, durable_offset=offset)
    assert _files(directory) == durable
    assert (end.segment, end.offset, end.last_lsn) == (segment, offset, 2)
    _write_tx(reopened, 3)
    _write_tx(reopened, 4)
    reopened.sync()
    reopened.close()
    assert [t.lsn for t in _transactions(directory)] == [1, 2, 3, 4]


def test_recover_removes_a_new_segment_whose_header_was_cut_short(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory)
    _write_tx(log, 1)
    segment, offset = log.sync()
    log.close()
    durable = _files(directory)
    (directory / segment_name(2)).write_bytes(_header(FORMAT_VERSION)[:7])

    reopened = SegmentLog(directory)
    end = reopened.recover(durable_segment=segment, durable_offset=offset)
    assert _files(directory) == durable
    assert end.last_lsn == 1 and reopened.next_lsn == 2
    reopened.close()


# --- corruption -----------------------------------------------------------------------------


def _middle_of(record: Record) -> int:
    return record.offset + (record.end - record.offset) // 2


@pytest.mark.parametrize("where", ["length", "checksum", "body"])
def test_recover_reports_a_damaged_record_before_the_durable_point(
    tmp_path: Path, where: str
) -> None:
    directory = tmp_path / "log"
    log = _open(directory)
    for lsn in range(1, 7):
        _write_tx(log, lsn, chunks=lsn % 2)
    segment, offset = log.sync()
    log.close()
    assert segment is not None
    records = _records(directory, segment)
    damaged = records[3]
    assert len(records) - 4 >= 3, "several whole records follow the damaged one"
    byte = {
        "length": damaged.offset + 1,
        "checksum": damaged.offset + 5,
        "body": _middle_of(damaged),
    }
    _flip(directory / segment, byte[where])
    before = _files(directory)

    reopened = SegmentLog(directory)
    with pytest.raises(LogCorruptionError) as caught:
        reopened.recover(durable_segment=segment, durable_offset=offset)
    error = caught.value
    assert error.segment == segment
    assert error.offset == damaged.offset
    assert segment in str(error) and f"byte offset {damaged.offset}" in str(error)
    assert _files(directory) == before, "damage is reported, never cut away"

    with pytest.raises(LogCorruptionError) as strict:
        list(SegmentLog(directory).records(strict=True))
    assert (strict.value.segment, strict.value.offset) == (segment, damaged.offset)


def test_reading_reports_a_damaged_record_in_a_segment_that_is_not_the_last(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    log = _open(directory, segment_bytes=600)
    for lsn in range(1, 13):
        _write_tx(log, lsn)
    log.sync()
    log.close()
    names = SegmentLog(directory).segments()
    assert len(names) >= 3
    victim = names[1]
    records = _records(directory, victim)
    assert len(records) >= 2
    damaged = records[0]
    _flip(directory / victim, _middle_of(damaged))

    for read in (
        lambda: list(SegmentLog(directory).records()),
        lambda: list(read_log(SegmentLog(directory))),
        lambda: list(read_log(SegmentLog(directory), from_lsn=damaged.entry.lsn)),
    ):
        with pytest.raises(LogCorruptionError) as caught:
            read()
        assert (caught.value.segment, caught.value.offset) == (victim, damaged.offset)
        assert victim in str(caught.value) and f"byte offset {damaged.offset}" in str(caught.value)
    # reading from a later segment on does not touch the damaged one
    later = int(names[2][: -len(SUFFIX)])
    assert [t.lsn for t in _transactions(directory, from_lsn=later)] == list(range(later, 13))


def test_a_segment_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = _open(directory)
    _write_tx(log, 1)
    segment, offset = log.sync()
    log.close()
    newer = directory / segment_name(2)
    newer.write_bytes(_header(FORMAT_VERSION + 1) + encode_record(_commit(2, 0, 0, [])))
    before = _files(directory)

    with pytest.raises(RepositoryError) as reading:
        list(SegmentLog(directory).records())
    with pytest.raises(RepositoryError) as recovering:
        SegmentLog(directory).recover(durable_segment=segment, durable_offset=offset)
    for caught in (reading, recovering):
        message = str(caught.value)
        assert newer.name in message
        assert f"format version {FORMAT_VERSION + 1}" in message
        assert f"reads up to {FORMAT_VERSION}" in message
        assert "upgrade nkdaemon" in message
    assert _files(directory) == before, "a newer segment is never cut or removed"


# --- end to end: the real drain on both dialects ------------------------------------------

_metadata = sa.MetaData()
items = sa.Table(
    "items",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("code", sa.String(40), nullable=False, unique=True),
    sa.Column("note", sa.Text),
)


def _setup(db_url: str, tmp_path: Path, extra: str = "") -> tuple[sa.Engine, Path, Settings]:
    engine = engine_for(db_url)
    _metadata.create_all(engine)
    config = write_config(tmp_path, db_url, extra)
    settings = load_settings(config)
    do_install(settings)
    return engine, config, settings


def _insert(engine: sa.Engine, *codes: str) -> None:
    """One source transaction per code."""
    for code in codes:
        with engine.begin() as conn:
            conn.execute(items.insert().values(code=code, note=f"note of {code}"))


def _logged_codes(settings: Settings) -> list[str]:
    return [e.key["code"] for tx in logged(settings) for e in tx.events if e.table == "items"]


def _assert_whole_and_ordered(settings: Settings) -> list[int]:
    txs = logged(settings)
    lsns = [t.lsn for t in txs]
    assert lsns == sorted(set(lsns)), "lsns rise and never repeat"
    positions = [t.position for t in txs]
    assert positions == sorted(set(positions)), "each source position is logged once"
    list(SegmentLog(RepositoryLayout(settings.repository.path).log_dir).records(strict=True))
    return lsns


def _log_dir(settings: Settings) -> Path:
    return RepositoryLayout(settings.repository.path).log_dir


def _last_segment(settings: Settings) -> Path:
    return _log_dir(settings) / SegmentLog(_log_dir(settings)).segments()[-1]


def test_drain_cuts_garbage_left_by_a_crash_mid_append(db_url: str, tmp_path: Path) -> None:
    engine, config, settings = _setup(db_url, tmp_path, "segment_size = 600\n")
    for code in ("a1", "a2", "a3"):
        _insert(engine, code)
        do_drain(settings)
    last = _last_segment(settings)
    durable = last.read_bytes()
    record = [r for r in SegmentLog(_log_dir(settings)).records() if r.segment == last.name][-1]
    whole = durable[record.offset : record.end]
    with last.open("ab") as handle:
        handle.write(whole[: len(whole) // 2])
    _insert(engine, "a4", "a5")

    out = run_cli(config, "drain")
    assert out.exit_code == 0, out.output
    assert last.read_bytes()[: len(durable)] == durable
    assert _logged_codes(settings) == ["a1", "a2", "a3", "a4", "a5"]
    lsns = _assert_whole_and_ordered(settings)
    assert lsns == list(range(lsns[0], lsns[0] + len(lsns))), "no gap: nothing durable was lost"
    assert [m.kind for m in markers(settings)] == ["epoch"]

    _insert(engine, "a6")
    assert run_cli(config, "drain").exit_code == 0
    assert _logged_codes(settings) == ["a1", "a2", "a3", "a4", "a5", "a6"]


def test_drain_passes_honour_the_segment_size(db_url: str, tmp_path: Path) -> None:
    engine, _config, settings = _setup(db_url, tmp_path, "segment_size = 600\n")
    codes = [f"s{i}" for i in range(8)]
    for code in codes:  # one drain pass (one process) per transaction
        _insert(engine, code)
        do_drain(settings)
    assert _logged_codes(settings) == codes
    names = SegmentLog(_log_dir(settings)).segments()
    assert len(names) >= 3, f"eight drained transactions in 600-byte segments: {names}"
    for record in SegmentLog(_log_dir(settings)).records(strict=True):
        assert record.offset < 600, "no record is written into a segment that is already full"


def test_drain_records_a_gap_when_a_durable_record_was_torn(db_url: str, tmp_path: Path) -> None:
    engine, config, settings = _setup(db_url, tmp_path)
    for code in ("b1", "b2", "b3", "b4"):
        _insert(engine, code)
        do_drain(settings)
    txs = logged(settings)
    lost = txs[-1]
    assert [e.key["code"] for e in lost.events] == ["b4"]
    last = _last_segment(settings)
    record = [r for r in SegmentLog(_log_dir(settings)).records() if r.segment == last.name][-1]
    assert record.entry.lsn == lost.lsn
    prefix = last.read_bytes()[: record.offset]
    with last.open("r+b") as handle:  # the disk lost the end of a record already made durable
        handle.truncate(_middle_of(record))
    _insert(engine, "b5")

    out = run_cli(config, "drain")
    assert out.exit_code == 1, out.output
    assert f"log transactions {lost.lsn}..{lost.lsn}" in out.output
    assert "snapshot" in out.output
    gaps = [m for m in markers(settings) if m.kind == "gap"]
    assert [(g.from_lsn, g.to_lsn) for g in gaps] == [(lost.lsn, lost.lsn)]
    assert last.read_bytes()[: record.offset] == prefix, "the whole records before it stay"
    records = [
        r for r in SegmentLog(_log_dir(settings)).records(strict=True) if r.segment == last.name
    ]
    cut = next(i for i, r in enumerate(records) if r.offset == record.offset)
    assert records[cut].kind == KIND_GAP, "the torn record is cut and the gap written in its place"
    assert records[cut + 1].kind == KIND_COMMIT and records[cut + 1].entry.lsn == lost.lsn + 1
    assert _logged_codes(settings) == ["b1", "b2", "b3", "b5"]
    assert logged(settings)[-1].lsn == lost.lsn + 1, "new transactions go after the gap"

    _insert(engine, "b6")
    again = run_cli(config, "drain")
    assert again.exit_code == 0, again.output
    assert _logged_codes(settings) == ["b1", "b2", "b3", "b5", "b6"]
    assert [t.lsn for t in logged(settings)][-2:] == [lost.lsn + 1, lost.lsn + 2]
    _assert_whole_and_ordered(settings)


def test_drain_refuses_a_log_damaged_before_its_end(db_url: str, tmp_path: Path) -> None:
    engine, config, settings = _setup(db_url, tmp_path)
    for code in ("c1", "c2", "c3", "c4", "c5", "c6"):
        _insert(engine, code)
        do_drain(settings)
    (segment,) = SegmentLog(_log_dir(settings)).segments()
    records = _records(_log_dir(settings), segment)
    damaged = records[2]
    assert len(records) - 3 >= 3, "several records follow the damaged one"
    original = _files(_log_dir(settings))
    _flip(_log_dir(settings) / segment, _middle_of(damaged))
    flipped = _files(_log_dir(settings))
    _insert(engine, "c7")

    out = run_cli(config, "drain")
    assert out.exit_code == 1, out.output
    assert segment in out.output
    assert f"byte offset {damaged.offset}" in out.output
    assert _files(_log_dir(settings)) == flipped, "nothing appended, nothing cut"

    # the damage is repaired from a copy: the change that waited in the queue is not lost
    for name, data in original.items():
        (_log_dir(settings) / name).write_bytes(data)
    fixed = run_cli(config, "drain")
    assert fixed.exit_code == 0, fixed.output
    assert _logged_codes(settings) == ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    _assert_whole_and_ordered(settings)


def test_drain_refuses_a_segment_of_a_newer_format(sqlite_url: str, tmp_path: Path) -> None:
    engine, config, settings = _setup(sqlite_url, tmp_path)
    _insert(engine, "d1")
    do_drain(settings)
    nxt = logged(settings)[-1].lsn + 1
    newer = _log_dir(settings) / segment_name(nxt)
    newer.write_bytes(_header(FORMAT_VERSION + 1))
    _insert(engine, "d2")

    out = run_cli(config, "drain")
    assert out.exit_code == 1, out.output
    assert newer.name in out.output and f"format version {FORMAT_VERSION + 1}" in out.output
    assert "upgrade nkdaemon" in out.output
    assert newer.read_bytes() == _header(FORMAT_VERSION + 1), "refused, never cut or removed"

    newer.unlink()  # the operator puts back the release that wrote it, or removes it
    assert _logged_codes(settings) == ["d1"]
    assert run_cli(config, "drain").exit_code == 0
    assert _logged_codes(settings) == ["d1", "d2"]
