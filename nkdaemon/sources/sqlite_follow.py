"""SQLite capture follows the captured tables' shapes (issue 12).

SQLite has no DDL hook, and a capture trigger's column list is fixed when it is created. So
on every drain pass (cheaply: only when ``PRAGMA schema_version`` moved) capture compares
each captured table with the columns it records, inside one write transaction so that no
write slips between the look and the new triggers. What changed is queued among the row
changes: an op 'S' entry (its details in _nkd_schema_changes) and, where values may have
changed unseen, every row of the table as op 'B' entries.

What is noticed, and how:

- a column added, dropped or renamed (ALTER TABLE): the columns differ ("altered"). SQLite
  vouches for no rename, so a rename is a drop and an add, with a baseline. SQLite's own
  ``ALTER TABLE ... DROP COLUMN`` is refused while a capture trigger names the column; the
  usual rebuild recipe works.
- a table rebuilt under its name (create new, copy, drop old, rename new to old: the recipe
  for dropping a column or changing a type) lost its triggers ("recaptured").
- a captured table gone, or renamed away ("dropped"): its number is retired, never reused;
  its queued changes stay readable until drained. A rename's new name is a new table.
- a table ``[capture]`` selects, not captured yet ("created"), with its rows as a baseline.
  Virtual tables and their shadow tables are never picked.
- an index made or dropped: "altered" with the same columns and no baseline (the log's
  definition lists the table's indexes; the rows keep the key they had).

Generated columns are captured like the others (reflection lists them too): their values
are what the application reads. Writes made between the DDL and the pass are captured with
the triggers of the old shape (an added column's values are missing from them, a renamed
column's values carry its old name); the baseline gives every row's values after the pass.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Sequence

import orjson

from nkdaemon.core.errors import SourceError
from nkdaemon.core.ports import CaptureSelector, SchemaChange
from nkdaemon.sources.sqlite_capture import (
    capture_table,
    drop_triggers,
    has_table,
    queue_position,
    quote,
    record_layout,
    retire,
)

INTERNAL_PREFIXES = ("_nkd_", "sqlite_")


def follow(conn: sqlite3.Connection, selects: CaptureSelector) -> list[SchemaChange]:
    """Inside the caller's write transaction: bring capture in line with the tables now
    and queue what changed, in the order dropped, altered or recaptured, created."""
    captured = {
        str(name): (int(number), list(orjson.loads(columns)), indexes)
        for name, number, columns, indexes in conn.execute(
            "SELECT table_name, number, columns, indexes FROM _nkd_tables ORDER BY number"
        )
    }
    present = _source_tables(conn)
    queued: list[SchemaChange] = []
    for name, (number, _, _) in captured.items():
        if name not in present:
            queued.append(_dropped(conn, number, name))
    for name, (number, recorded, indexes) in captured.items():
        if name in present:
            change = _changed(conn, number, name, recorded, indexes)
            if change is not None:
                queued.append(change)
    candidates = [n for n in present if n not in captured]
    chosen = set(selects(candidates)) & set(candidates)
    # A captured table nothing referred to has no rows in the drain's key index: one a new
    # table refers to is queued first with a baseline that only seeds it ("referenced").
    referred = {t for n in captured if n in present for t in _references(conn, n)}
    for name in (n for n in candidates if n in chosen):
        for target in _references(conn, name):
            if target in captured and target in present and target not in referred:
                referred.add(target)
                columns = table_columns(conn, target)
                queued.append(_queue(conn, captured[target][0], target, columns, kind="referenced"))
                _baseline(conn, captured[target][0], target, columns)
        queued.append(_created(conn, name))
    return queued


def _references(conn: sqlite3.Connection, name: str) -> set[str]:
    """The tables ``name``'s foreign keys refer to."""
    return {str(row[2]) for row in conn.execute(f"PRAGMA foreign_key_list({quote(name)})")}


def _source_tables(conn: sqlite3.Connection) -> list[str]:
    """The application's ordinary tables. Virtual tables (FTS, R*Tree) and their shadow
    tables are left out: no trigger can be made on the former, and the latter hold what
    the former derive from other tables."""
    # PRAGMA table_list (SQLite 3.37) tells them apart; an older SQLite ignores the pragma.
    listed = conn.execute("PRAGMA main.table_list").fetchall()
    if listed:
        names = sorted(str(r[1]) for r in listed if r[2] == "table")
    else:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name"
            )
        ]
    return [n for n in names if not n.startswith(INTERNAL_PREFIXES)]


def table_columns(conn: sqlite3.Connection, name: str) -> list[str]:
    """The table's columns as reflection lists them (generated ones too, not the hidden
    columns of a virtual table)."""
    rows = conn.execute(f"PRAGMA table_xinfo({quote(name)})").fetchall()
    return [str(r[1]) for r in rows if r[6] != 1]


def _has_triggers(conn: sqlite3.Connection, number: int, name: str) -> bool:
    wanted = [f"_nkd_{number}_{op}" for op in ("I", "U", "D")]
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
        "AND name IN (?, ?, ?)",
        (name, *wanted),
    ).fetchone()
    return int(row[0]) == len(wanted)


def _changed(
    conn: sqlite3.Connection, number: int, name: str, recorded: list[str], indexes: str | None
) -> SchemaChange | None:
    now = table_columns(conn, name)
    indexes_now = table_indexes(conn, name)
    if not _has_triggers(conn, number, name):
        kind = "recaptured"
    elif now != recorded:
        kind = "altered"
    elif indexes not in (None, indexes_now):
        # An index made or dropped: the definition changes, no value does (no baseline).
        _record(conn, number, now, indexes_now)
        return _queue(conn, number, name, now, kind="altered", baseline=False)
    else:
        if indexes is None:  # recorded by a capture schema before version 3: note it now
            _record(conn, number, now, indexes_now)
        return None
    drop_triggers(conn, number)
    change = _queue(conn, number, name, now, kind=kind)
    _capture(conn, number, name, now, since=_seq_of(conn))
    _record(conn, number, now, indexes_now)
    _baseline(conn, number, name, now)
    return change


def table_indexes(conn: sqlite3.Connection, name: str) -> str:
    """The table's indexes (name, columns, unique, partial) as JSON, for the definition."""
    found = []
    for _, index, unique, _, partial in conn.execute(f"PRAGMA index_list({quote(name)})"):
        info = conn.execute(f"PRAGMA index_info({quote(str(index))})").fetchall()
        found.append([str(index), [r[2] for r in info], bool(unique), bool(partial)])
    return orjson.dumps(sorted(found)).decode()


def _record(conn: sqlite3.Connection, number: int, columns: list[str], indexes: str) -> None:
    conn.execute(
        "UPDATE _nkd_tables SET columns = ?, indexes = ? WHERE number = ?",
        (_json(columns), indexes, number),
    )


def _dropped(conn: sqlite3.Connection, number: int, name: str) -> SchemaChange:
    # A table renamed away keeps its triggers (SQLite renames them along): they go, and
    # the new name, if [capture] selects it, is captured under a new number.
    drop_triggers(conn, number)
    change = _queue(conn, number, name, None, kind="dropped")
    conn.execute("DELETE FROM _nkd_tables WHERE number = ?", (number,))
    retire(conn, number, name)
    return change


def _created(conn: sqlite3.Connection, name: str) -> SchemaChange:
    number = next_table_number(conn)
    columns = table_columns(conn, name)
    change = _queue(conn, number, name, columns, kind="created")
    _capture(conn, number, name, columns, since=_seq_of(conn))
    conn.execute(
        "INSERT INTO _nkd_tables (number, table_name, columns, indexes) VALUES (?, ?, ?, ?)",
        (number, name, _json(columns), table_indexes(conn, name)),
    )
    _baseline(conn, number, name, columns)
    return change


def next_table_number(conn: sqlite3.Connection) -> int:
    """A number no table has ever had in this capture: above every captured, retired and
    recorded one."""
    row = conn.execute(
        "SELECT max(n) FROM (SELECT max(number) AS n FROM _nkd_tables "
        "UNION ALL SELECT max(number) FROM _nkd_retired "
        "UNION ALL SELECT max(number) FROM _nkd_layouts)"
    ).fetchone()
    return int(row[0] or 0) + 1


def _capture(
    conn: sqlite3.Connection, number: int, name: str, columns: list[str], *, since: int
) -> None:
    capture_table(conn, number, name, columns)
    record_layout(conn, number, since, columns)


def _queue(
    conn: sqlite3.Connection,
    number: int,
    name: str,
    columns: list[str] | None,
    *,
    kind: str,
    baseline: bool = True,
) -> SchemaChange:
    """The op 'S' queue entry of a schema change noticed now (``baseline``: every row
    follows it; never for a dropped table)."""
    change = SchemaChange(
        table=number,
        name=name,
        columns=None if columns is None else tuple(columns),
        kind=kind,
        baseline=baseline and columns is not None,
        command="detected",
    )
    cursor = conn.execute("INSERT INTO _nkd_changes (tbl, op) VALUES (?, 'S')", (number,))
    conn.execute(
        "INSERT INTO _nkd_schema_changes "
        "(seq, number, name, kind, columns, renamed, baseline, command) "
        "VALUES (?, ?, ?, ?, ?, '[]', ?, ?)",
        (
            cursor.lastrowid,
            number,
            name,
            kind,
            None if columns is None else _json(columns),
            int(change.baseline),
            change.command,
        ),
    )
    return change


def _seq_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT max(seq) FROM _nkd_changes").fetchone()[0])


def _baseline(conn: sqlite3.Connection, number: int, name: str, columns: list[str]) -> None:
    """Every row of the table now, as op 'B' entries right after its schema change.

    In two statements (the write lock is held meanwhile): the queue entries, whose seqs
    are consecutive since nothing else writes, then the rows' values under those seqs."""
    start = queue_position(conn)
    table = quote(name)
    cursor = conn.execute(
        f"INSERT INTO _nkd_changes (tbl, op) SELECT ?, 'B' FROM {table}", (number,)
    )
    if queue_position(conn) != start + cursor.rowcount:
        raise SourceError(
            f"the change list's seqs for the baseline of {name!r} are not consecutive"
        )
    slots = ", ".join(f"n{i}" for i in range(len(columns)))
    selected = ", ".join(quote(c) for c in columns)
    conn.execute(
        f"INSERT INTO {quote(f'_nkd_rows_{number}')} (seq, {slots}) "
        f"SELECT ? + row_number() OVER (), {selected} FROM {table}",
        (start,),
    )


def _json(columns: Sequence[str]) -> str:
    return orjson.dumps(list(columns)).decode()


# --- reading the queue back ---------------------------------------------------------------


class Layouts:
    """Which columns a table's queued changes hold, by the seq they were queued at."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._since: dict[int, list[int]] = {}
        self._columns: dict[int, list[list[str]]] = {}
        if has_table(conn, "_nkd_layouts"):
            query = "SELECT number, since_seq, columns FROM _nkd_layouts ORDER BY number, since_seq"
        else:  # capture schema version 2: one layout per table, as installed
            query = "SELECT number, 0, columns FROM _nkd_tables ORDER BY number"
        for number, since, columns in conn.execute(query):
            self._since.setdefault(int(number), []).append(int(since))
            self._columns.setdefault(int(number), []).append(list(orjson.loads(columns)))

    def knows(self, number: int) -> bool:
        return number in self._since

    def at(self, number: int, seq: int) -> list[str]:
        """The layout in force when change ``seq`` was queued: the last one before it."""
        since = self._since[number]
        index = max(bisect.bisect_left(since, seq) - 1, 0)
        return self._columns[number][index]


def schema_changes(conn: sqlite3.Connection, low: int, high: int) -> dict[int, SchemaChange]:
    """The queued schema changes with low < seq <= high, by seq."""
    if not has_table(conn, "_nkd_schema_changes"):
        return {}
    rows = conn.execute(
        "SELECT seq, number, name, kind, columns, renamed, baseline, command "
        "FROM _nkd_schema_changes WHERE seq > ? AND seq <= ?",
        (low, high),
    )
    return {
        int(seq): SchemaChange(
            table=int(number),
            name=str(name),
            columns=None if columns is None else tuple(orjson.loads(columns)),
            kind=str(kind),
            renamed=tuple((str(a), str(b)) for a, b in orjson.loads(renamed)),
            baseline=bool(baseline),
            command=str(command),
        )
        for seq, number, name, kind, columns, renamed, baseline, command in rows
    }


def forget_through(conn: sqlite3.Connection, upto: int) -> None:
    """After the queue's rows at or below ``upto`` were deleted: the schema changes and
    superseded layouts they needed, and the shadow tables of tables retired by then."""
    if not has_table(conn, "_nkd_layouts"):
        return
    conn.execute("DELETE FROM _nkd_schema_changes WHERE seq <= ?", (upto,))
    conn.execute(
        "DELETE FROM _nkd_layouts WHERE since_seq < (SELECT max(m.since_seq) FROM _nkd_layouts "
        "AS m WHERE m.number = _nkd_layouts.number AND m.since_seq <= ?)",
        (upto,),
    )
    retired = [
        int(r[0])
        for r in conn.execute("SELECT number FROM _nkd_retired WHERE since_seq <= ?", (upto,))
    ]
    for number in retired:
        conn.execute(f"DROP TABLE IF EXISTS {quote(f'_nkd_rows_{number}')}")
        conn.execute("DELETE FROM _nkd_layouts WHERE number = ?", (number,))


def retired_numbers(conn: sqlite3.Connection) -> set[int]:
    if not has_table(conn, "_nkd_retired"):
        return set()
    return {int(r[0]) for r in conn.execute("SELECT number FROM _nkd_retired")}
