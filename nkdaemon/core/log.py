"""The log's records as values, and the one place that maps them to and from their JSON.

docs/FORMAT.md specifies the payloads; this module is the only one that knows their keys
(``"lsn"``, ``"pos"``, ``"time"``, an event's ``"t"``, ``"o"``, ``"k"`` ...). Writers build
the values below and call :func:`encode`; readers get them from :func:`decode`. The framing
around a payload (length, checksum, compression) is repository/log_format's business.

Times are timezone-aware ``datetime`` values and compare as such. They are written as ISO
8601 in UTC with microseconds, exactly the text earlier releases wrote, so that the same
transaction gives the same bytes (the encoding is part of the format: version 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from nkdaemon.core.keys import NaturalKey, Sid

Op = Literal["I", "U", "D", "T"]

OP_NAMES: dict[str, str] = {"I": "insert", "U": "update", "D": "delete", "T": "truncate"}

# Record kinds (the low 7 bits of a record's kind byte).
KIND_CHUNK = 1
KIND_COMMIT = 2
KIND_GAP = 3
KIND_EPOCH = 4
KIND_DEFINITION = 5  # format 2 on

# A JSON payload as orjson reads and writes it.
Payload: TypeAlias = dict[str, Any]
# A row as the log holds it: every column but surrogate ids, references as natural keys.
Row: TypeAlias = dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChangeEvent:
    """One row change named by natural keys.

    ``key`` is the row's key after the change (before it, for a delete); ``old_key`` is
    set only when an update changed the key. ``row`` holds the row after an insert or
    update: every column but surrogate ids, foreign keys replaced by the referenced row's
    natural key. ``sid`` is the source's own id, kept for diagnosis and never used to
    restore.
    """

    table: str
    op: Op
    key: NaturalKey | None
    old_key: NaturalKey | None = None
    row: Row | None = None
    sid: Sid = None

    @property
    def previous_key(self) -> NaturalKey | None:
        """The key the row had before the change (``old_key`` for a rename)."""
        return self.old_key or self.key


@dataclass(frozen=True, kw_only=True, slots=True)
class Chunk:
    """The first events of a large transaction (a CHUNK record); ``part`` counts from 0."""

    lsn: int
    part: int
    events: tuple[ChangeEvent, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Commit:
    """A COMMIT record: a transaction's identity and the events no chunk carried.

    ``parts`` is the number of chunks before it, ``count`` the transaction's events in all."""

    lsn: int
    position: int
    txid: str | None
    commit_time: datetime
    parts: int
    count: int
    events: tuple[ChangeEvent, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Gap:
    """A GAP record: transactions ``from_lsn``..``to_lsn`` were made durable and lost."""

    from_lsn: int
    to_lsn: int
    position: int
    reason: str

    kind = "gap"

    @property
    def lsn(self) -> int:
        return self.from_lsn

    @property
    def last_lsn(self) -> int:
        return self.to_lsn


@dataclass(frozen=True, kw_only=True, slots=True)
class Epoch:
    """An EPOCH record: capture (re)started from a baseline at source position ``position``."""

    lsn: int
    position: int
    installation: str
    time: datetime

    kind = "epoch"

    @property
    def last_lsn(self) -> int:
        return self.lsn


@dataclass(frozen=True, kw_only=True, slots=True)
class Definition:
    """A DEFINITION record: from this point of transaction ``lsn`` on, table ``table`` has
    the definition ``definition`` (core/definitions' JSON form; None: the table was dropped).

    Written before its transaction's COMMIT; ``at_event`` is how many of the transaction's
    events came before the change. ``change`` says what happened ("created", "altered",
    "dropped", "recaptured"); ``renamed`` holds (old, new) column names the source vouched
    for as renames; ``command`` is the source's word for the statement, where it has one.
    """

    lsn: int
    table: str
    definition: Payload | None
    change: str
    at_event: int = 0
    renamed: tuple[tuple[str, str], ...] = ()
    command: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's column names after the change (none once dropped)."""
        if self.definition is None:
            return ()
        return tuple(str(c["name"]) for c in self.definition["columns"])


LogMarker: TypeAlias = Gap | Epoch
Entry: TypeAlias = Chunk | Commit | Gap | Epoch | Definition


def is_partial(entry: Entry) -> bool:
    """True for a record that belongs to a transaction its COMMIT has not ended yet (a
    chunk, a definition): a log that ends after one ends inside a transaction."""
    return isinstance(entry, Chunk | Definition)


@dataclass(frozen=True, kw_only=True, slots=True)
class LoggedTransaction:
    """A whole transaction as readers see it: its chunks' events and its commit's, in order."""

    lsn: int
    position: int
    txid: str | None
    commit_time: datetime
    events: tuple[ChangeEvent, ...]
    definitions: tuple[Definition, ...] = ()

    @classmethod
    def joined(
        cls,
        commit: Commit,
        before: Sequence[ChangeEvent] = (),
        definitions: Sequence[Definition] = (),
    ) -> LoggedTransaction:
        events = tuple(before) + commit.events if before else commit.events
        return cls(
            lsn=commit.lsn,
            position=commit.position,
            txid=commit.txid,
            commit_time=commit.commit_time,
            events=events,
            definitions=tuple(definitions),
        )


# --- times --------------------------------------------------------------------------------


def encode_time(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds, as the log and the checkpoint hold times."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(text: str) -> datetime:
    """A time as the log holds it; one without zone (never written so) is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- encoding -----------------------------------------------------------------------------


def encode_event(event: ChangeEvent) -> Payload:
    """The compact JSON form of an event (fields absent where they have no value)."""
    out: Payload = {"t": event.table, "o": event.op}
    if event.key is not None:
        out["k"] = event.key
    if event.old_key is not None:
        out["ok"] = event.old_key
    if event.row is not None:
        out["r"] = event.row
    if event.sid is not None:
        out["s"] = event.sid
    return out


def encode(entry: Entry) -> tuple[int, Payload]:
    """(record kind, JSON payload) of a record; the keys in the order written since
    format 1 (orjson keeps it), so the bytes do not change."""
    if isinstance(entry, Commit):
        return KIND_COMMIT, {
            "lsn": entry.lsn,
            "pos": entry.position,
            "xid": entry.txid,
            "time": encode_time(entry.commit_time),
            "parts": entry.parts,
            "n": entry.count,
            "events": [encode_event(e) for e in entry.events],
        }
    if isinstance(entry, Chunk):
        events = [encode_event(e) for e in entry.events]
        return KIND_CHUNK, {"lsn": entry.lsn, "part": entry.part, "events": events}
    if isinstance(entry, Definition):
        payload: Payload = {
            "lsn": entry.lsn,
            "table": entry.table,
            "definition": entry.definition,
            "change": entry.change,
            "at": entry.at_event,
        }
        if entry.renamed:
            payload["renamed"] = [list(pair) for pair in entry.renamed]
        if entry.command:
            payload["command"] = entry.command
        return KIND_DEFINITION, payload
    if isinstance(entry, Gap):
        return KIND_GAP, {
            "from_lsn": entry.from_lsn,
            "to_lsn": entry.to_lsn,
            "pos": entry.position,
            "reason": entry.reason,
        }
    return KIND_EPOCH, {
        "lsn": entry.lsn,
        "pos": entry.position,
        "installation": entry.installation,
        "time": encode_time(entry.time),
    }


# --- decoding -----------------------------------------------------------------------------


class UnknownRecord(ValueError):
    """A record kind this release does not know (the reader reports where it lies)."""


def decode_event(data: Mapping[str, Any]) -> ChangeEvent:
    return ChangeEvent(
        table=data["t"],
        op=data["o"],
        key=data.get("k"),
        old_key=data.get("ok"),
        row=data.get("r"),
        sid=data.get("s"),
    )


def decode(kind: int, payload: Mapping[str, Any]) -> Entry:
    """The record a payload of ``kind`` holds; fields this release does not know are
    ignored (docs/FORMAT.md: a later release may add them)."""
    if kind == KIND_COMMIT:
        return Commit(
            lsn=int(payload["lsn"]),
            position=int(payload["pos"]),
            txid=payload.get("xid"),
            commit_time=decode_time(payload["time"]),
            parts=int(payload.get("parts", 0)),
            count=int(payload.get("n", len(payload["events"]))),
            events=tuple(decode_event(e) for e in payload["events"]),
        )
    if kind == KIND_CHUNK:
        return Chunk(
            lsn=int(payload["lsn"]),
            part=int(payload.get("part", 0)),
            events=tuple(decode_event(e) for e in payload["events"]),
        )
    if kind == KIND_DEFINITION:
        return Definition(
            lsn=int(payload["lsn"]),
            table=str(payload["table"]),
            definition=payload["definition"],
            change=str(payload.get("change", "altered")),
            at_event=int(payload.get("at", 0)),
            renamed=tuple((str(a), str(b)) for a, b in payload.get("renamed", ())),
            command=str(payload.get("command", "")),
        )
    if kind == KIND_GAP:
        return Gap(
            from_lsn=int(payload["from_lsn"]),
            to_lsn=int(payload["to_lsn"]),
            position=int(payload.get("pos", 0)),
            reason=str(payload.get("reason", "")),
        )
    if kind == KIND_EPOCH:
        return Epoch(
            lsn=int(payload["lsn"]),
            position=int(payload.get("pos", 0)),
            installation=str(payload.get("installation", "")),
            time=decode_time(payload["time"]),
        )
    raise UnknownRecord(f"record kind {kind} is not known to this release")
