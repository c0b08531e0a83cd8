"""Structural reduction of a failing case: fewer steps, tables, references and columns,
plainer names and ids, as long as it still fails the same way.

hypothesis shrinks the bytes a case was drawn from, which takes hundreds of full runs of
a case of many seconds; this knows the structure and usually needs a few dozen. Use it to
turn a failure into a reproduction::

    smaller = reduce_case(case, lambda c: failure_name(c) == name)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

from tests.workloads.case import Case
from tests.workloads.schema import SURROGATE_KINDS, ForeignKey, Schema, Table
from tests.workloads.workload import Step, Tx, Workload

Candidate = Callable[[Case], Iterator[Case]]


def reduce_case(case: Case, still_fails: Callable[[Case], bool], *, rounds: int = 5) -> Case:
    """The smallest case the passes below reach for which ``still_fails`` holds."""
    passes: list[Candidate] = [
        _fewer_steps,
        _fewer_tables,
        _fewer_references,
        _fewer_columns,
        _plainer,
    ]
    for _ in range(rounds):
        changed = False
        for make in passes:
            progress = True
            while progress:
                progress = False
                for smaller in make(case):
                    if still_fails(smaller):
                        case, progress, changed = smaller, True, True
                        break
        if not changed:
            break
    return case


# --- the workload ---------------------------------------------------------------------------


def _with_steps(case: Case, steps: list[Step], seed_rows: int | None = None) -> Case:
    rows = case.workload.seed_rows if seed_rows is None else seed_rows
    return dataclasses.replace(case, workload=Workload(seed_rows=rows, steps=tuple(steps)))


def _replaced(case: Case, index: int, step: Step | None) -> Case:
    steps = list(case.workload.steps)
    steps[index : index + 1] = [] if step is None else [step]
    return _with_steps(case, steps)


def _fewer_steps(case: Case) -> Iterator[Case]:
    steps = case.workload.steps
    if case.workload.seed_rows:
        yield _with_steps(case, list(steps), case.workload.seed_rows - 1)
    for i in range(len(steps) - 2, -1, -1):  # the last instant stays
        yield _replaced(case, i, None)
    for i, step in enumerate(steps):
        if isinstance(step, Tx):
            for smaller in _smaller_transactions(step):
                yield _replaced(case, i, smaller)


def _smaller_transactions(tx: Tx) -> Iterator[Tx]:
    if not tx.commit:
        yield Tx(ops=tx.ops)
    for j, op in enumerate(tx.ops):
        if len(tx.ops) > 1:
            yield Tx(ops=tx.ops[:j] + tx.ops[j + 1 :], commit=tx.commit)
        for simpler in (dataclasses.replace(op, pick=0), dataclasses.replace(op, other=0)):
            if simpler != op:
                yield Tx(ops=(*tx.ops[:j], simpler, *tx.ops[j + 1 :]), commit=tx.commit)


# --- the schema -------------------------------------------------------------------------------


def _with_tables(case: Case, tables: list[Table]) -> Case:
    schema = Schema(dialect=case.schema.dialect, tables=tuple(tables))
    return dataclasses.replace(case, schema=schema)


def _drop_fk(table: Table, fk: ForeignKey) -> Table | None:
    if set(fk.columns) & set(table.key):
        return None
    return dataclasses.replace(
        table,
        columns=tuple(c for c in table.columns if c.name not in fk.columns),
        foreign_keys=tuple(f for f in table.foreign_keys if f is not fk),
    )


def _without_table(tables: list[Table], gone: Table) -> list[Table] | None:
    kept: list[Table] = []
    for table in tables:
        if table is gone:
            continue
        smaller: Table | None = table
        for fk in [f for f in table.foreign_keys if f.ref_table == gone.name]:
            smaller = _drop_fk(smaller, fk) if smaller is not None else None
        if smaller is None:
            return None  # a key refers to it
        kept.append(smaller)
    return kept


def _fewer_tables(case: Case) -> Iterator[Case]:
    tables = list(case.schema.tables)
    for index, gone in enumerate(tables if len(tables) > 1 else ()):
        kept = _without_table(tables, gone)
        if kept is not None:
            yield _with_steps(_with_tables(case, kept), _steps_without(case, index))


def _steps_without(case: Case, index: int) -> list[Step]:
    """The workload's steps with the operations on table ``index`` left out and the others
    pointed at the same tables as before."""
    count = len(case.schema.tables)
    steps: list[Step] = []
    for step in case.workload.steps:
        if not isinstance(step, Tx):
            steps.append(step)
            continue
        ops = tuple(
            dataclasses.replace(op, table=op.table % count - (op.table % count > index))
            for op in step.ops
            if op.table % count != index
        )
        if ops:
            steps.append(Tx(ops=ops, commit=step.commit))
    return steps


def _fewer_references(case: Case) -> Iterator[Case]:
    tables = list(case.schema.tables)
    for i, table in enumerate(tables):
        for fk in table.foreign_keys:
            smaller = _drop_fk(table, fk)
            if smaller is not None:
                yield _with_tables(case, [*tables[:i], smaller, *tables[i + 1 :]])
            for plainer in (
                dataclasses.replace(fk, on_delete="", on_update=fk.on_update),
                dataclasses.replace(fk, on_update=""),
            ):
                if plainer != fk:
                    keys = tuple(plainer if f is fk else f for f in table.foreign_keys)
                    changed = dataclasses.replace(table, foreign_keys=keys)
                    yield _with_tables(case, [*tables[:i], changed, *tables[i + 1 :]])


def _fewer_columns(case: Case) -> Iterator[Case]:
    tables = list(case.schema.tables)
    for i, table in enumerate(tables):
        for name in table.payload:
            if table.keyless and len(table.payload) == 1:
                continue
            columns = tuple(c for c in table.columns if c.name != name)
            smaller = dataclasses.replace(table, columns=columns)
            yield _with_tables(case, [*tables[:i], smaller, *tables[i + 1 :]])
        if table.declare_key:
            plain = dataclasses.replace(table, declare_key=False)
            yield _with_tables(case, [*tables[:i], plain, *tables[i + 1 :]])


def _plainer(case: Case) -> Iterator[Case]:
    tables = list(case.schema.tables)
    taken = {t.name.casefold() for t in tables}
    for i, table in enumerate(tables):
        if table.id_kind in SURROGATE_KINDS and table.id_kind != "serial":
            yield _with_tables(case, _serial(tables, i))
        if not re.fullmatch(r"t\d+", table.name):
            plain = next(n for n in (f"t{k}" for k in range(1, 30)) if n not in taken)
            yield _with_tables(case, _renamed(tables, i, plain))
        names = {c.name.casefold() for c in table.columns}
        for column in table.columns:
            if not re.fullmatch(r"c\d+", column.name):
                plain = next(n for n in (f"c{k}" for k in range(1, 30)) if n not in names)
                yield _with_tables(case, _column_renamed(tables, i, column.name, plain))


def _serial(tables: list[Table], index: int) -> list[Table]:
    """Table ``index`` with a plain integer id (references to it follow)."""
    table = tables[index]
    id_name = table.primary_key[0]
    columns = tuple(
        dataclasses.replace(c, kind="int") if c.name == id_name else c for c in table.columns
    )
    out = list(tables)
    out[index] = dataclasses.replace(table, id_kind="serial", columns=columns)
    for k, other in enumerate(out):
        refs = {c for fk in other.foreign_keys if fk.ref_table == table.name for c in fk.columns}
        if refs:
            out[k] = dataclasses.replace(
                out[k],
                columns=tuple(
                    dataclasses.replace(c, kind="int") if c.name in refs else c
                    for c in out[k].columns
                ),
            )
    return out


def _renamed(tables: list[Table], index: int, name: str) -> list[Table]:
    old = tables[index].name
    out = []
    for table in tables:
        keys = tuple(
            dataclasses.replace(fk, ref_table=name) if fk.ref_table == old else fk
            for fk in table.foreign_keys
        )
        out.append(
            dataclasses.replace(
                table, name=name if table.name == old else table.name, foreign_keys=keys
            )
        )
    return out


def _column_renamed(tables: list[Table], index: int, old: str, new: str) -> list[Table]:
    def names(columns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(new if n == old else n for n in columns)

    table = tables[index]
    out = list(tables)
    out[index] = dataclasses.replace(
        table,
        columns=tuple(
            dataclasses.replace(c, name=new) if c.name == old else c for c in table.columns
        ),
        primary_key=names(table.primary_key),
        key=names(table.key),
        plain_key=names(table.plain_key),
        unique=names(table.unique),
        foreign_keys=tuple(
            dataclasses.replace(fk, columns=names(fk.columns)) for fk in table.foreign_keys
        ),
    )
    for k, other in enumerate(out):
        out[k] = dataclasses.replace(
            other,
            foreign_keys=tuple(
                dataclasses.replace(fk, ref_columns=names(fk.ref_columns))
                if fk.ref_table == table.name
                else fk
                for fk in other.foreign_keys
            ),
        )
    return out
