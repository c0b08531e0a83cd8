"""A table's shape at every point of the log, and the log's rows in the shape of one instant.

A restore to T starts from a snapshot's definitions; each DEFINITION record of the
transactions up to T replaces one table's (docs/FORMAT.md, "a table's shape at an
instant"). :class:`ShapeHistory` records those changes and gives every column an
*identity* that survives renames (a rename the source vouched for keeps it; a column that
vanishes and one that appears are a drop and an add), and every table a *generation* (a
drop ends it; a table created again under the name is another one).

:class:`ShapeWalk` then rewrites the snapshot's rows and the log's events into the shape
at T: a value logged under a column's old name lands under the name it has at T, values of
columns dropped before T go, events of tables that do not exist at T (or of an earlier
table of the same name) are left out. A column added after a row was written is NULL for
it when the column came without a default (that is what the database gave it); with a
default, its value is whatever the baseline after the change logged, and a row no event
gave it to *lacks* it: :func:`missing_values` counts those, so a restore says so instead
of writing a NULL nobody chose. Values an event holds for a column its definition then
did not have are counted as ``unplaced``: they cannot be put anywhere, and are said.

:func:`fold_in_shape` folds a snapshot and the log with core/fold.py into the state at T
in T's shape (optionally projected onto narrower specs: the columns a target has).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nkdaemon.core.definitions import spec_from_json
from nkdaemon.core.errors import NkdError
from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, TableSpec, replace_spec
from nkdaemon.core.log import ChangeEvent, Definition, LoggedTransaction, Row
from nkdaemon.core.restore_plan import insert_order

ColumnRef = tuple[str, str]
"""(table, column) as the report names a column; a reference by its part name (``a,b``)."""


class ShapeError(NkdError):
    """The log's shapes cannot be followed to the instant asked for."""

    kind = "restore"


@dataclass(frozen=True, kw_only=True, slots=True)
class TableShape:
    """One table's definition at a point of the log, its columns' identities and its
    generation (which a drop ends)."""

    spec: TableSpec
    ids: Mapping[str, int]
    generation: int


class ShapeHistory:
    """A snapshot's table definitions, then the log's DEFINITION records in log order
    (``add``); ``final`` is each table's shape after the last one added."""

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        self._counter = 0
        self.start: dict[str, TableShape] = {}
        for spec in specs:
            self.start[spec.name] = self._new_table(spec)
        self.final: dict[str, TableShape] = dict(self.start)
        # (lsn, at_event, table, shape after; None: dropped), in log order
        self.steps: list[tuple[int, int, str, TableShape | None]] = []
        # column identity -> its default when it was added after the snapshot ("" for none)
        self.added: dict[int, str] = {}

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _new_table(self, spec: TableSpec) -> TableShape:
        ids = {c.name: self._next() for c in spec.columns}
        return TableShape(spec=spec, ids=ids, generation=self._next())

    @property
    def changed(self) -> bool:
        """True when some table's shape changed between the snapshot and the instant."""
        return bool(self.steps)

    def add(self, definition: Definition) -> None:
        """The next DEFINITION record of the log (in log order)."""
        before = self.final.get(definition.table)
        shape = None if definition.definition is None else self._after(before, definition)
        self.steps.append((definition.lsn, definition.at_event, definition.table, shape))
        if shape is None:
            self.final.pop(definition.table, None)
        else:
            self.final[definition.table] = shape

    def _after(self, before: TableShape | None, definition: Definition) -> TableShape:
        assert definition.definition is not None
        spec = spec_from_json(definition.definition)
        if spec.name != definition.table:
            spec = _renamed_table(spec, definition.table)
        if before is None:
            shape = self._new_table(spec)
            self.added.update({i: _default(spec, n) for n, i in shape.ids.items()})
            return shape
        renamed = dict((new, old) for old, new in definition.renamed)
        renamed_away = {old for old, _new in definition.renamed}
        ids: dict[str, int] = {}
        for column in spec.columns:
            old = renamed.get(column.name)
            if old is not None and old in before.ids:
                ids[column.name] = before.ids[old]
            elif column.name in before.ids and column.name not in renamed_away:
                ids[column.name] = before.ids[column.name]
            else:
                ids[column.name] = self._next()
                self.added[ids[column.name]] = _default(spec, column.name)
        return TableShape(spec=spec, ids=ids, generation=before.generation)

    def specs_at_end(self) -> list[TableSpec]:
        return [shape.spec for shape in self.final.values()]

    def changes(self) -> Counter[str]:
        """How many definitions changed each table between the snapshot and the instant."""
        return Counter(table for _lsn, _at, table, _shape in self.steps)


def _default(spec: TableSpec, column: str) -> str:
    return spec.column(column).default or ""


def _renamed_table(spec: TableSpec, name: str) -> TableSpec:
    return replace_spec(spec, name=name)


@dataclass(frozen=True, slots=True)
class _Final:
    """What a table looks like at the instant: its plain columns and references by the
    identities of their columns."""

    shape: TableShape
    plain: frozenset[str]
    fks: Mapping[tuple[tuple[int, ...], str], ForeignKeySpec]
    fk_columns: frozenset[str]


class ShapeWalk:
    """Rewrites rows and events into the shape at the end of a ShapeHistory; see the
    module docstring. ``specs``: project rows onto these (a table's columns a target has);
    ``fill_lacking``: write NULL where a row lacks a column (as a target reads it back)."""

    def __init__(
        self,
        history: ShapeHistory,
        *,
        specs: Mapping[str, TableSpec] | None = None,
        fill_lacking: bool = False,
    ) -> None:
        self._history = history
        self._shapes: dict[str, TableShape] = dict(history.start)
        self._step = 0
        self._fill = fill_lacking
        self._names: dict[int, str] = {
            i: name for shape in history.final.values() for name, i in shape.ids.items()
        }
        self._final = {name: _final(shape) for name, shape in history.final.items()}
        self._project = {
            name: _fields(spec) for name, spec in (specs or {}).items() if name in self._final
        }
        self.unplaced: Counter[ColumnRef] = Counter()
        # per shape (by identity; shapes live as long as the history): asked for per row
        self._refs: dict[int, dict[str, ForeignKeySpec]] = {}
        self._known: dict[int, frozenset[int]] = {}

    def _refs_of(self, shape: TableShape) -> dict[str, ForeignKeySpec]:
        found = self._refs.get(id(shape))
        if found is None:
            found = self._refs[id(shape)] = {fk.part_name: fk for fk in shape.spec.foreign_keys}
        return found

    def _known_of(self, shape: TableShape) -> frozenset[int]:
        found = self._known.get(id(shape))
        if found is None:
            found = self._known[id(shape)] = frozenset(shape.ids.values())
        return found

    # --- where the walk is --------------------------------------------------------------

    def _advance(self, lsn: int, event: int | None) -> None:
        """Apply the definitions up to event ``event`` of transaction ``lsn`` (None: all
        of that transaction's)."""
        steps = self._history.steps
        while self._step < len(steps):
            step_lsn, at, table, shape = steps[self._step]
            if step_lsn > lsn or (step_lsn == lsn and event is not None and at > event):
                return
            if shape is None:
                self._shapes.pop(table, None)
            else:
                self._shapes[table] = shape
            self._step += 1

    def transaction(self, tx: LoggedTransaction) -> list[ChangeEvent]:
        """A transaction's events in the instant's shape (those of tables it lacks left out)."""
        out = []
        for index, event in enumerate(tx.events):
            self._advance(tx.lsn, index)
            translated = self.event(event)
            if translated is not None:
                out.append(translated)
        self._advance(tx.lsn, None)
        return out

    def snapshot_row(self, table: str, key: NaturalKey, row: Row) -> tuple[NaturalKey, Row] | None:
        """A snapshot row in the instant's shape; None when its table is not there then."""
        shape = self._history.start.get(table)
        if shape is None or not self._survives(table, shape):
            return None
        new_row = self._row(table, shape, row)
        if self._final[table].shape.spec.full_row_identity:
            return new_row, new_row
        return self._key(table, shape, key), new_row

    # --- translating --------------------------------------------------------------------

    def event(self, event: ChangeEvent) -> ChangeEvent | None:
        """One event in the instant's shape, read in the shape its table has now."""
        table = event.table
        shape = self._shapes.get(table)
        if shape is None or not self._survives(table, shape):
            return None
        if event.op == "T":
            return event
        whole = self._final[table].shape.spec.full_row_identity
        key = event.key
        old = event.old_key
        if whole:  # a keyless table's "key" is the row itself
            key = None if key is None else self._row(table, shape, key, count=False)
            old = None if old is None else self._row(table, shape, old, count=False)
        else:
            key = None if key is None else self._key(table, shape, key)
            old = None if old is None else self._key(table, shape, old)
        row = None if event.row is None else self._row(table, shape, event.row)
        return ChangeEvent(table=table, op=event.op, key=key, old_key=old, row=row, sid=event.sid)

    def _survives(self, table: str, shape: TableShape) -> bool:
        final = self._final.get(table)
        return final is not None and final.shape.generation == shape.generation

    def _row(self, table: str, shape: TableShape, row: Row, *, count: bool = True) -> Row:
        final = self._final[table]
        refs = self._refs_of(shape)
        out: Row = {}
        for field, value in row.items():
            fk = refs.get(field)
            if fk is not None:
                later = final.fks.get(_fk_ident(shape, fk))
                if later is not None:
                    out[later.part_name] = None if value is None else self._nested(fk, value)
            elif field in shape.ids:
                name = self._names.get(shape.ids[field])
                if name is not None and name in final.plain:
                    out[name] = value
            elif count and value is not None:
                self.unplaced[(table, field)] += 1
        self._complete(table, shape, out)
        fields = self._project.get(table)
        return out if fields is None else {f: v for f, v in out.items() if f in fields}

    def _complete(self, table: str, shape: TableShape, out: Row) -> None:
        """NULL for the columns added (without a default) after this row's shape, or for
        every column the row lacks with ``fill_lacking``."""
        final = self._final[table]
        known = self._known_of(shape)
        for name in final.plain:
            if name in out:
                continue
            ident = final.shape.ids[name]
            if self._fill or (ident not in known and not self._history.added.get(ident)):
                out[name] = None
        for fk in final.shape.spec.foreign_keys:
            if fk.part_name in out:
                continue
            idents = [final.shape.ids[c] for c in fk.columns]
            new = all(i not in known and not self._history.added.get(i) for i in idents)
            if self._fill or new:
                out[fk.part_name] = None

    def _key(self, table: str, shape: TableShape, key: NaturalKey) -> NaturalKey:
        """A natural key in the parts (and nested keys) the table has at the instant."""
        final = self._final[table]
        out: NaturalKey = {}
        # A key part may keep the name it had when capture began across a rename of its
        # column (the drain names a row the same way before and after): the parts are in
        # key order, so a part not found by name is the value in its place.
        by_place = list(key.values()) if len(key) == len(shape.spec.key_parts) else []
        for place, part in enumerate(shape.spec.key_parts):
            found = part.name in key or not by_place
            value = key.get(part.name) if found else by_place[place]
            if part.column is not None:
                name = self._names.get(shape.ids[part.column])
                if name is not None:
                    out[name] = value
                continue
            assert part.foreign_key is not None
            later = final.fks.get(_fk_ident(shape, part.foreign_key))
            if later is not None:
                nested = None if value is None else self._nested(part.foreign_key, value)
                out[later.part_name] = nested
        wanted = [p.name for p in final.shape.spec.key_parts]
        if sorted(out) != sorted(wanted):
            raise ShapeError(
                f"the natural key of {table} changed between the snapshot and the restore "
                f"time (from {', '.join(p.name for p in shape.spec.key_parts)} to "
                f"{', '.join(wanted)}); its rows cannot be followed across the change",
                hint="restore to a time before the change, or from a snapshot taken after it",
            )
        return {name: out[name] for name in wanted}

    def _nested(self, fk: ForeignKeySpec, value: Any) -> Any:
        """A referenced row's key (the value of a reference) in the instant's shape."""
        shape = self._shapes.get(fk.ref_table)
        if shape is None or not self._survives(fk.ref_table, shape) or not isinstance(value, dict):
            return value  # a table outside the restore: named as it was
        if fk.by_natural_key:  # the referenced columns' values by column name
            return {self._column_name(shape, name): item for name, item in value.items()}
        return self._key(fk.ref_table, shape, value)

    def _column_name(self, shape: TableShape, name: str) -> str:
        ident = shape.ids.get(name)
        found = None if ident is None else self._names.get(ident)
        return name if found is None else found


def _fk_ident(shape: TableShape, fk: ForeignKeySpec) -> tuple[tuple[int, ...], str]:
    return tuple(shape.ids[c] for c in fk.columns), fk.ref_table


def _final(shape: TableShape) -> _Final:
    spec = shape.spec
    fk_columns = frozenset(c for fk in spec.foreign_keys for c in fk.columns)
    plain = frozenset(
        c.name
        for c in spec.columns
        if c.name not in spec.surrogate_columns and c.name not in fk_columns
    )
    fks = {_fk_ident(shape, fk): fk for fk in spec.foreign_keys}
    return _Final(shape=shape, plain=plain, fks=fks, fk_columns=fk_columns)


def _fields(spec: TableSpec) -> frozenset[str]:
    """The fields of a logged row that a spec's table holds: its plain columns and its
    references' part names."""
    fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
    plain = {
        c.name
        for c in spec.columns
        if c.name not in spec.surrogate_columns and c.name not in fk_columns
    }
    return frozenset(plain | {fk.part_name for fk in spec.foreign_keys})


def project_row(spec: TableSpec, row: Row) -> Row:
    """A row with only the fields ``spec``'s table holds."""
    fields = _fields(spec)
    return {f: v for f, v in row.items() if f in fields}


# --- folding ----------------------------------------------------------------------------


def fold_in_shape(
    history: ShapeHistory,
    snapshot_rows: Iterable[tuple[str, NaturalKey, Row]],
    transactions: Iterable[LoggedTransaction],
    *,
    specs: Sequence[TableSpec] | None = None,
    keep_rows: bool = True,
    fill_lacking: bool = False,
) -> tuple[LogFold, ShapeWalk]:
    """The state at the end of ``history`` in its shape: a snapshot's rows, (table, key,
    row) in the snapshot's shape, and the log after it. ``specs``: fold only these tables,
    their rows projected onto their columns (a target's narrower tables)."""
    chosen = list(specs) if specs is not None else history.specs_at_end()
    walk = ShapeWalk(
        history,
        specs={s.name: s for s in chosen} if specs is not None else None,
        fill_lacking=fill_lacking,
    )
    state = LogFold(chosen, keep_rows=keep_rows)
    rank = {name: i for i, name in enumerate(insert_order(chosen).tables)}
    by_table: dict[str, list[tuple[NaturalKey, Row]]] = {}
    for table, key, row in snapshot_rows:
        if table in rank:
            translated = walk.snapshot_row(table, key, row)
            if translated is not None:
                by_table.setdefault(table, []).append(translated)
    for name in sorted(by_table, key=lambda n: rank[n]):
        for key, row in by_table[name]:
            state.load(name, key, row)
    state.finish_load()
    for tx in transactions:
        state.apply_transaction(walk.transaction(tx), where=f"log transaction {tx.lsn}: ")
    return state, walk


def missing_values(
    state: LogFold, specs: Iterable[TableSpec], columns: Mapping[str, Sequence[str]]
) -> tuple[Counter[ColumnRef], Counter[ColumnRef]]:
    """(lacking, held) over a kept-rows state: how many rows of each table lack a value
    of a column of ``specs`` (the log never gave it), and how many non-NULL values each
    of ``columns`` (by table) holds (those a narrower target leaves out)."""
    lacking: Counter[ColumnRef] = Counter()
    held: Counter[ColumnRef] = Counter()
    for spec in specs:
        fields = _fields(spec)
        counted = list(_counted_fields(spec, columns.get(spec.name, ())))
        for _key, row, count in state.rendered(spec.name):
            for field in fields:
                if field not in row:
                    lacking[(spec.name, field)] += count
            for field, column in counted:
                if row.get(field) is not None:
                    held[(spec.name, column)] += count
    return lacking, held


def _counted_fields(spec: TableSpec, columns: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(row field, column) for each column of ``columns``: a reference's column is held
    in the reference's field."""
    by_column = {c: fk.part_name for fk in spec.foreign_keys for c in fk.columns}
    for column in columns:
        yield by_column.get(column, column), column
