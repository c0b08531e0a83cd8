"""The typed log model (core/log.py) and the one fold of the log (core/fold.py).

Pure and fast: no database, files only for the fixture segment. The log format must not
change: a segment written by the release before the model (tests/fixtures/format1_log,
written by the dict-building code) reads back and re-encodes to the same bytes, and
generated transactions encode exactly as that code encoded them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.fold import LogFold, ReplayError
from nkdaemon.core.keys import (
    ColumnSpec,
    ForeignKeySpec,
    KeyPart,
    TableSpec,
    make_table_spec,
)
from nkdaemon.core.log import (
    KIND_CHUNK,
    KIND_COMMIT,
    KIND_EPOCH,
    KIND_GAP,
    ChangeEvent,
    Chunk,
    Commit,
    Epoch,
    Gap,
    LoggedTransaction,
    decode,
    decode_event,
    decode_time,
    encode,
    encode_event,
    encode_time,
)
from nkdaemon.core.replay import fold_state, natural_state
from nkdaemon.repository.log_format import encode_record, read_segment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "format1_log" / "0000000000000001.nkdlog"

# --- the encoding as the release before the model wrote it (services/drain.py,
# core/events.event_to_dict, SegmentLog.append_*): the reference for byte identity -------


def _old_event(event: ChangeEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"t": event.table, "o": event.op}
    if event.key is not None:
        out["k"] = event.key
    if event.old_key is not None:
        out["ok"] = event.old_key
    if event.row is not None:
        out["r"] = event.row
    if event.sid is not None:
        out["s"] = event.sid
    return out


def _old_commit_payload(commit: Commit) -> dict[str, Any]:
    return {
        "lsn": commit.lsn,
        "pos": commit.position,
        "xid": commit.txid,
        "time": commit.commit_time.astimezone(UTC).isoformat(timespec="microseconds"),
        "parts": commit.parts,
        "n": commit.count,
        "events": [_old_event(e) for e in commit.events],
    }


# --- generated values -------------------------------------------------------------------

_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_key = st.dictionaries(st.text(min_size=1, max_size=5), _json, min_size=1, max_size=3)
_row = st.dictionaries(st.text(min_size=1, max_size=5), _json, max_size=4)


@st.composite
def _events(draw: st.DrawFn) -> ChangeEvent:
    op = draw(st.sampled_from(["I", "U", "D", "T"]))
    table = draw(st.text(min_size=1, max_size=6))
    if op == "T":
        return ChangeEvent(table=table, op="T", key=None)
    return ChangeEvent(
        table=table,
        op=op,
        key=draw(_key),
        old_key=draw(st.none() | _key) if op == "U" else None,
        row=draw(_row) if op in ("I", "U") else None,
        sid=draw(
            st.none()
            | st.integers(min_value=0, max_value=2**40)
            | st.lists(st.integers(0, 9), min_size=1, max_size=2)
        ),
    )


_times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@st.composite
def _commits(draw: st.DrawFn) -> Commit:
    events = tuple(draw(st.lists(_events(), max_size=5)))
    return Commit(
        lsn=draw(st.integers(1, 2**40)),
        position=draw(st.integers(0, 2**62)),
        txid=draw(st.none() | st.text(max_size=6)),
        commit_time=draw(_times),
        parts=draw(st.integers(0, 4)),
        count=draw(st.integers(0, 10_000)),
        events=events,
    )


# --- the model: round trips and byte identity -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(_events())
def test_an_event_encodes_as_before_and_decodes_to_itself(event: ChangeEvent) -> None:
    assert orjson.dumps(encode_event(event)) == orjson.dumps(_old_event(event))
    assert decode_event(encode_event(event)) == event


@settings(max_examples=60, deadline=None)
@given(_commits())
def test_a_commit_record_is_byte_identical_to_the_old_encoding(commit: Commit) -> None:
    kind, payload = encode(commit)
    assert kind == KIND_COMMIT
    assert orjson.dumps(payload) == orjson.dumps(_old_commit_payload(commit))
    decoded = decode(kind, orjson.loads(orjson.dumps(payload)))
    assert decoded == commit  # datetimes compare as instants, whatever their zone
    assert isinstance(decoded, Commit) and decoded.commit_time.tzinfo is not None
    assert encode_record(decoded) == encode_record(commit)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2**40), st.integers(0, 3), st.lists(_events(), max_size=5))
def test_a_chunk_record_is_byte_identical_to_the_old_encoding(
    lsn: int, part: int, events: list[ChangeEvent]
) -> None:
    chunk = Chunk(lsn=lsn, part=part, events=tuple(events))
    kind, payload = encode(chunk)
    old = {"lsn": lsn, "part": part, "events": [_old_event(e) for e in events]}
    assert (kind, orjson.dumps(payload)) == (KIND_CHUNK, orjson.dumps(old))
    assert decode(kind, payload) == chunk


def test_markers_encode_as_before() -> None:
    gap = Gap(from_lsn=4, to_lsn=6, position=12, reason="lost")
    assert encode(gap) == (KIND_GAP, {"from_lsn": 4, "to_lsn": 6, "pos": 12, "reason": "lost"})
    when = datetime(2026, 11, 26, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    epoch = Epoch(lsn=1, position=0, installation="i", time=when)
    kind, payload = encode(epoch)
    assert kind == KIND_EPOCH
    assert list(payload) == ["lsn", "pos", "installation", "time"]
    assert payload["time"] == "2026-11-26T09:30:00.123456+00:00"
    assert decode(KIND_GAP, encode(gap)[1]) == gap and decode(kind, payload) == epoch
    assert (gap.kind, gap.lsn, gap.last_lsn, epoch.kind, epoch.last_lsn) == (
        "gap",
        4,
        6,
        "epoch",
        1,
    )


def test_times_are_written_in_utc_with_microseconds_and_compared_as_times() -> None:
    later = decode_time("2026-11-26T09:30:00.000001+00:00")
    earlier_text_but_later = decode_time("2026-11-26T10:00:00.000000+01:00")  # 09:00 UTC
    assert earlier_text_but_later < later
    assert encode_time(earlier_text_but_later) == "2026-11-26T09:00:00.000000+00:00"
    assert decode_time("2026-11-26T09:30:00").tzinfo is UTC


def test_a_segment_written_before_the_model_reads_and_re_encodes_to_the_same_bytes() -> None:
    data = FIXTURE.read_bytes()
    records = [r for r in read_segment(FIXTURE) if not isinstance(r, Exception)]
    assert [r.kind for r in records] == [
        KIND_EPOCH,
        KIND_COMMIT,
        KIND_CHUNK,
        KIND_COMMIT,
        KIND_GAP,
        KIND_COMMIT,
    ]
    for record in records:
        assert encode_record(record.entry) == data[record.offset : record.end]
    commit = records[1].entry
    assert isinstance(commit, Commit)
    assert commit.commit_time == datetime(2026, 11, 26, 9, 31, 0, 1, tzinfo=UTC)
    rename = records[3].entry.events[-3]  # type: ignore[union-attr]
    assert (rename.op, rename.old_key, rename.key) == (
        "U",
        {"username": "alice"},
        {"username": "alice2"},
    )
    joined = LoggedTransaction.joined(records[3].entry, records[2].entry.events)  # type: ignore[arg-type, union-attr]
    assert len(joined.events) == 123 and joined.lsn == 3


# --- the fold ---------------------------------------------------------------------------


def _specs() -> list[TableSpec]:
    users = make_table_spec(
        number=1,
        name="users",
        schema=None,
        columns=(
            ColumnSpec(name="id", logical_type="int", nullable=False),
            ColumnSpec(name="username", logical_type="text", nullable=False),
        ),
        primary_key=("id",),
        key_parts=(KeyPart(name="username", column="username"),),
        foreign_keys=(),
    )
    fk = ForeignKeySpec(columns=("author_id",), ref_table="users", ref_columns=("id",))
    docs = make_table_spec(
        number=2,
        name="docs",
        schema=None,
        columns=(
            ColumnSpec(name="id", logical_type="int", nullable=False),
            ColumnSpec(name="number", logical_type="text", nullable=False),
            ColumnSpec(name="author_id", logical_type="int", nullable=True),
        ),
        primary_key=("id",),
        key_parts=(KeyPart(name="number", column="number"),),
        foreign_keys=(fk,),
    )
    notes = make_table_spec(
        number=3,
        name="notes",
        schema=None,
        columns=(ColumnSpec(name="body", logical_type="text", nullable=False),),
        primary_key=(),
        key_parts=(),
        foreign_keys=(),
        full_row_identity=True,
    )
    return [users, docs, notes]


def _ev(table: str, op: str, key: Any = None, row: Any = None, old: Any = None) -> ChangeEvent:
    return ChangeEvent(table=table, op=op, key=key, row=row, old_key=old)  # type: ignore[arg-type]


ALICE, ALICE2 = {"username": "alice"}, {"username": "alice2"}


def _history(fold: LogFold) -> LogFold:
    fold.load("users", ALICE, ALICE)
    fold.load("docs", {"number": "D1"}, {"number": "D1", "author_id": ALICE})
    fold.load("notes", {"body": "x"}, {"body": "x"})
    fold.finish_load()
    fold.apply_transaction(
        [
            # a reference to a row inserted later in the same transaction
            _ev("docs", "I", {"number": "D2"}, {"number": "D2", "author_id": {"username": "bo"}}),
            _ev("users", "I", {"username": "bo"}, {"username": "bo"}),
            _ev("notes", "I", {"body": "x"}, {"body": "x"}),
        ]
    )
    fold.apply_transaction([_ev("users", "U", ALICE2, ALICE2, old=ALICE)])
    return fold


def test_the_fold_follows_a_rename_into_the_rows_that_refer_to_it() -> None:
    fold = _history(LogFold(_specs(), keep_rows=True))
    state = fold.comparable()
    assert state["docs"]['{"number":"D1"}'] == {"number": "D1", "author_id": ALICE2}
    assert state["notes"] == {'{"body":"x"}': {"row": {"body": "x"}, "count": 2}}
    assert fold.referenced_closure(["docs"]) == {
        "users": [({"username": "bo"}, {"username": "bo"}), (ALICE2, ALICE2)]
    } or fold.referenced_closure(["docs"]) == {
        "users": [(ALICE2, ALICE2), ({"username": "bo"}, {"username": "bo"})]
    }


def test_the_lean_fold_and_the_full_fold_agree_on_what_a_target_must_hold() -> None:
    lean, full = _history(LogFold(_specs())), _history(LogFold(_specs(), keep_rows=True))
    rows = [(key, row) for key, row, _count in full.rendered("docs")]
    assert lean.compare("docs", rows).ok
    with pytest.raises(TypeError):
        list(lean.rendered("docs"))


def test_a_copy_is_independent() -> None:
    fold = _history(LogFold(_specs(), keep_rows=True))
    twin = fold.copy()
    twin.apply_transaction([_ev("docs", "D", {"number": "D1"})])
    assert "docs" in fold.comparable() and len(fold.comparable()["docs"]) == 2
    assert len(twin.comparable()["docs"]) == 1


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (_ev("users", "I", ALICE, ALICE), "insert of users .* which exists"),
        (_ev("users", "D", {"username": "zed"}), "delete of users .* which does not exist"),
        (_ev("users", "U", ALICE, ALICE, old={"username": "zed"}), "update of users"),
        (
            _ev("docs", "I", {"number": "D9"}, {"number": "D9", "author_id": {"username": "zed"}}),
            "refers to users",
        ),
        (_ev("notes", "D", {"body": "nope"}), "row that does not exist"),
    ],
)
def test_the_fold_refuses_a_log_that_contradicts_the_state(
    event: ChangeEvent, message: str
) -> None:
    fold = LogFold(_specs(), keep_rows=True)
    fold.load("users", ALICE, ALICE)
    fold.finish_load()
    with pytest.raises(ReplayError, match=message):
        fold.apply_transaction([event])


def test_fold_state_and_natural_state_reach_the_same_state() -> None:
    specs = _specs()
    tx = LoggedTransaction(
        lsn=2,
        position=2,
        txid=None,
        commit_time=datetime(2026, 1, 1, tzinfo=UTC),
        events=(_ev("users", "U", ALICE2, ALICE2, old=ALICE),),
    )
    folded = fold_state(
        specs,
        [("docs", {"number": "D1"}, {"number": "D1", "author_id": ALICE}), ("users", ALICE, ALICE)],
        [tx],
    )
    whole = natural_state(
        {s.number: s for s in specs},
        {
            1: [{"id": 7, "username": "alice2"}],
            2: [{"id": 1, "number": "D1", "author_id": 7}],
            3: [],
        },
    )
    assert folded.comparable() == whole.comparable()
    assert json.loads(next(iter(whole.comparable()["users"]))) == ALICE2


def test_a_row_captured_whole_may_refer_to_a_row_later_in_its_transaction() -> None:
    """As a keyed row may (deferred references); the demo's and the tests' view of a
    database inserts every row in one transaction, in no particular order."""
    fk = ForeignKeySpec(columns=("user_id",), ref_table="users", ref_columns=("id",))
    likes = make_table_spec(
        number=4,
        name="likes",
        schema=None,
        columns=(ColumnSpec(name="user_id", logical_type="int", nullable=True),),
        primary_key=(),
        key_parts=(),
        foreign_keys=(fk,),
        full_row_identity=True,
    )
    fold = LogFold([_specs()[0], likes], keep_rows=True)
    like = {"user_id": {"username": "cy"}}
    fold.apply_transaction(
        [_ev("likes", "I", like, like), _ev("users", "I", {"username": "cy"}, {"username": "cy"})]
    )
    assert list(fold.rendered("likes")) == [(like, like, 1)]
    with pytest.raises(ReplayError, match="likes refers to users"):
        fold.apply_transaction([_ev("likes", "I", {"user_id": ALICE}, {"user_id": ALICE})])
