"""A small banking schema and concurrent workloads for ordering and crash tests.

Every committed writer transaction inserts exactly one ledger row whose note is a unique
tag, so a log transaction can be matched to the source transaction it came from.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from nkdaemon.core.fold import LogFold, ReplayError
from nkdaemon.runtime.config import Settings
from tests.helpers import logged, replayed, truth

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(40), nullable=False, unique=True),
    sa.Column("balance", sa.Integer, nullable=False),
)
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("note", sa.String(60), nullable=False, unique=True),
    sa.Column("account_id", sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
    sa.Column("amount", sa.Integer, nullable=False),
)

SHARED = [f"acct-{i:02d}" for i in range(12)]


def create(engine: sa.Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"name": n, "balance": 100} for n in ["A", "B", *SHARED]])


@dataclass
class Tally:
    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, tag: str, ok: bool) -> None:
        with self.lock:
            (self.committed if ok else self.rolled_back).append(tag)


def _id(conn: sa.Connection, name: str) -> int | None:
    return conn.execute(sa.select(accounts.c.id).where(accounts.c.name == name)).scalar()


def one_transaction(conn: sa.Connection, rng: random.Random, tag: str, mine: list[str]) -> bool:
    """One random writer transaction; returns whether it should commit."""
    names = sorted(rng.sample(SHARED, 2))  # sorted: no deadlocks between writers
    for name in names:
        conn.execute(
            accounts.update()
            .where(accounts.c.name == name)
            .values(balance=accounts.c.balance + rng.randint(-5, 5))
        )
    choice = rng.random()
    if choice < 0.3:
        name = f"{tag}-new"
        conn.execute(accounts.insert().values(name=name, balance=rng.randint(0, 50)))
        mine.append(name)
    elif choice < 0.45 and mine:
        old = mine.pop(rng.randrange(len(mine)))
        conn.execute(accounts.update().where(accounts.c.name == old).values(name=f"{old}-r"))
        mine.append(f"{old}-r")
    elif choice < 0.55 and mine:
        conn.execute(accounts.delete().where(accounts.c.name == mine.pop(0)))
    target = _id(conn, names[0])
    conn.execute(ledger.insert().values(note=tag, account_id=target, amount=1))
    return rng.random() > 0.2


def writer(engine: sa.Engine, number: int, count: int, tally: Tally, seed: int) -> None:
    rng = random.Random(seed * 1000 + number)
    mine: list[str] = []
    with engine.connect() as conn:
        for i in range(count):
            tag = f"w{number}-{i}"
            snapshot = list(mine)
            for _attempt in range(20):
                tx = conn.begin()
                try:
                    commit = one_transaction(conn, rng, tag, mine)
                    if commit:
                        tx.commit()
                    else:
                        tx.rollback()
                        mine[:] = snapshot
                    tally.add(tag, commit)
                    break
                except DBAPIError:  # SQLite busy, PostgreSQL serialization: try again
                    tx.rollback()
                    mine[:] = snapshot


def problems(settings: Settings, baseline: LogFold, tally: Tally, *, merged: bool) -> list[str]:
    found: list[str] = []
    transactions = logged(settings)
    notes = [
        [e.row["note"] for e in tx.events if e.table == "ledger" and e.op == "I"]
        for tx in transactions
    ]
    flat = [n for tx_notes in notes for n in tx_notes]
    if sorted(flat) != sorted(tally.committed):
        found.append(
            f"ledger rows in the log differ from committed transactions: "
            f"{len(flat)} logged vs {len(tally.committed)} committed"
        )
    if set(flat) & set(tally.rolled_back):
        found.append("rolled-back work reached the log")
    if any(not tx_notes for tx_notes in notes):
        found.append("a log transaction holds no ledger row: a source transaction was split")
    if not merged and any(len(tx_notes) != 1 for tx_notes in notes):
        found.append("a log transaction holds more than one source transaction")
    try:
        state = replayed(settings, baseline)
    except ReplayError as exc:
        found.append(f"replay failed: {exc}")
    else:
        if state.comparable() != truth(settings).comparable():
            found.append("replaying the log does not give the source's final state")
    return found
