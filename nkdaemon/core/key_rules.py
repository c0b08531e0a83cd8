"""The rules that turn a described schema and the configuration into the key registry.

Pure (standard library only): the source adapter reflects each table into a
:class:`TableShape`; these rules choose which tables are captured, each table's natural key
(declared, or the first all-NOT-NULL unique constraint), how its key nests other tables'
keys, how each foreign key is named, and which tables the drain must index. Anything that
cannot be captured faithfully is refused here, before a trigger exists, with a message that
says how to fix it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from nkdaemon.core.errors import SchemaError, SourceError
from nkdaemon.core.keys import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    KeyPart,
    TableSpec,
    make_table_spec,
    replace_spec,
)
from nkdaemon.core.settings import TableSettings, toml_key


@dataclass(frozen=True, kw_only=True)
class Registry:
    """The captured tables, by number and by name."""

    tables: Mapping[int, TableSpec]

    def by_name(self, name: str) -> TableSpec:
        for spec in self.tables.values():
            if spec.name == name:
                return spec
        raise KeyError(name)

    def names(self) -> list[str]:
        return [spec.name for spec in self.tables.values()]


@dataclass(frozen=True, kw_only=True)
class TableShape:
    """One table as the source describes it, before any key is chosen."""

    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKeySpec, ...]
    uniques: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (constraint name, columns)
    # The primary key is an id the database generates (serial, identity, rowid): it means
    # nothing in another database, so it is never chosen as the natural key.
    generated_key: bool = False
    indexes: tuple[IndexSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()


# --- which tables -------------------------------------------------------------------------


def select_tables(
    available: Sequence[str], patterns: Iterable[str], exclude: Iterable[str]
) -> list[str]:
    """The tables ``[capture] tables`` selects, in pattern order, less the excluded ones."""
    chosen: list[str] = []
    for pattern in patterns:
        matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not matches and not _is_glob(pattern):
            raise SchemaError(
                f"[capture] tables: table {pattern!r} does not exist in the source",
                hint=f"tables there: {listing(available)}",
            )
        chosen.extend(m for m in matches if m not in chosen)
    excluded = {n for n in chosen for pattern in exclude if fnmatch.fnmatchcase(n, pattern)}
    return [n for n in chosen if n not in excluded]


def capture_selector(
    patterns: Sequence[str], exclude: Sequence[str]
) -> Callable[[Sequence[str]], list[str]]:
    """``[capture]``'s choice among table names as they are now: unlike select_tables it
    does not insist that a named table exists (it may just have been dropped), and it
    never picks capture's own tables."""

    def selects(available: Sequence[str]) -> list[str]:
        own = [n for n in available if n.startswith(("_nkd_", "sqlite_"))]
        names = [n for n in available if n not in own]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        return [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]

    return selects


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def listing(names: Sequence[str]) -> str:
    """Table names for a message: sorted, or "(none)"."""
    return ", ".join(sorted(names)) if names else "(none)"


def check_table_settings(
    tables: Mapping[str, TableSettings], selected: Sequence[str], available: Sequence[str]
) -> None:
    """Every [tables.NAME] section names a table that exists and is captured."""
    for name in tables:
        if name not in available:
            raise SchemaError(
                f"[tables.{name}]: table {name!r} does not exist in the source",
                hint=f"tables there: {listing(available)}",
            )
        if name not in selected:
            raise SchemaError(
                f"[tables.{name}]: table {name!r} is configured but not captured",
                hint="add it to [capture] tables, or remove its [tables] section",
            )


# --- the registry -------------------------------------------------------------------------


def build_registry(
    shapes: Mapping[str, TableShape],
    table_settings: Mapping[str, TableSettings],
    *,
    schema: str | None,
    numbers: Mapping[str, int],
) -> Registry:
    """The registry of ``shapes``: table numbers kept where ``numbers`` knows them."""
    assigned = assign_numbers(list(shapes), numbers)
    specs: dict[str, TableSpec] = {}
    keyless: list[NoKey] = []
    for name, table in shapes.items():
        try:
            specs[name] = _table_spec(
                table, table_settings.get(name, TableSettings()), shapes, schema, assigned[name]
            )
        except NoKey as missing:  # go on: the user fixes every table in one go
            keyless.append(missing)
    if keyless:
        raise no_key_error(keyless)
    specs = resolve_foreign_keys(specs)
    check_key_cycles(specs)
    return Registry(tables={spec.number: spec for spec in specs.values()})


def assign_numbers(names: Sequence[str], known: Mapping[str, int]) -> dict[str, int]:
    """Known tables keep their numbers; new ones get numbers never used before."""
    out = {n: known[n] for n in names if n in known}
    next_number = max([0, *known.values()]) + 1
    for name in names:
        if name not in out:
            out[name] = next_number
            next_number += 1
    return out


def _table_spec(
    table: TableShape,
    settings: TableSettings,
    shapes: Mapping[str, TableShape],
    schema: str | None,
    number: int,
) -> TableSpec:
    by_name = {c.name: c for c in table.columns}
    key_columns: tuple[str, ...] = ()
    full = settings.identity == "full"
    if not full:
        key_columns = natural_key_columns(table, settings, by_name)
    fks = tuple(_captured_reference(table.name, fk, shapes) for fk in table.foreign_keys)
    return make_table_spec(
        number=number,
        name=table.name,
        schema=schema,
        columns=table.columns,
        primary_key=table.primary_key,
        key_parts=key_parts(key_columns, fks),
        foreign_keys=fks,
        full_row_identity=full,
        indexes=table.indexes,
        checks=table.checks,
    )


def natural_key_columns(
    table: TableShape, settings: TableSettings, columns: Mapping[str, ColumnSpec]
) -> tuple[str, ...]:
    """The declared key, checked; else the shortest unique constraint of NOT NULL columns;
    else a primary key the application chose. Raises NoKey when none names a row."""
    if settings.natural_key is not None:
        _check_declared_key(table, settings.natural_key, columns)
        return settings.natural_key
    candidates = sorted(
        (u for u in table.uniques if all(not columns[c].nullable for c in u[1])),
        key=lambda u: (len(u[1]), u[0]),
    )
    if candidates:
        return candidates[0][1]
    if table.primary_key and not table.generated_key:
        return table.primary_key
    if table.primary_key:
        why = (
            f"its primary key ({table.primary_key[0]}) is an id the database generates, "
            "which means nothing in another database"
        )
    else:
        why = "it has no primary key"
    raise NoKey(table.name, f"no unique constraint made only of NOT NULL columns, and {why}")


def _check_declared_key(
    table: TableShape, key: tuple[str, ...], columns: Mapping[str, ColumnSpec]
) -> None:
    where = f"[tables.{table.name}] natural_key"
    for column in key:
        if column not in columns:
            raise SchemaError(
                f"{where}: column {column!r} does not exist in table {table.name!r}",
                hint=f"columns: {', '.join(columns)}",
            )
        if columns[column].nullable:
            raise SchemaError(
                f"{where}: column {column!r} of {table.name!r} allows NULL, and NULLs never "
                "compare equal, so two rows could share the key",
                hint=f"make it NOT NULL, or choose other columns (NOT NULL columns: "
                f"{', '.join(c for c in columns if not columns[c].nullable)})",
            )
    unique_sets = [set(cols) for _, cols in table.uniques]
    if table.primary_key:
        unique_sets.append(set(table.primary_key))
    if not any(u <= set(key) for u in unique_sets):
        cols = ", ".join(key)
        index = quote_sql(f"uq_{table.name}_{'_'.join(key)}"[:63])
        quoted = ", ".join(quote_sql(c) for c in key)
        raise SchemaError(
            f"{where}: ({cols}) is not unique in table {table.name!r}: no unique constraint "
            "or index covers it, so two rows could share it",
            hint=f"add one: CREATE UNIQUE INDEX {index} ON {quote_sql(table.name)} "
            f"({quoted}); or choose columns that are unique ({_describe_uniques(table)})",
        )


class NoKey(Exception):
    """A table nothing names a row of (collected, so that install reports them all)."""

    def __init__(self, table: str, why: str) -> None:
        super().__init__(table)
        self.table = table
        self.why = why


def no_key_error(keyless: Sequence[NoKey]) -> SchemaError:
    """One error for every keyless table, with the configuration that would fix each."""
    if len(keyless) == 1:
        message = f"table {keyless[0].table!r} has no natural key: {keyless[0].why}"
    else:
        message = f"{len(keyless)} tables have no natural key:" + "".join(
            f"\n  {k.table!r}: {k.why}" for k in keyless
        )
    sections = [f"      [tables.{toml_key(k.table)}]\n" for k in keyless]
    return SchemaError(
        message,
        hint=(
            "declare each one's key in the configuration:\n"
            + "".join(
                s
                + '      natural_key = ["col1", "col2"]   # unique, NOT NULL columns naming a row\n'
                for s in sections
            )
            + "    or, for a table whose rows have no identity of their own, capture whole rows:\n"
            + "\n".join(s + '      identity = "full"' for s in sections)
        ),
    )


def _describe_uniques(table: TableShape) -> str:
    found = [f"({', '.join(cols)})" for _, cols in table.uniques]
    return "unique: " + (", ".join(found) if found else "none")


def quote_sql(identifier: str) -> str:
    """A double-quoted SQL identifier, for the statements suggested in hints."""
    return '"' + identifier.replace('"', '""') + '"'


# --- references -----------------------------------------------------------------------------


def _captured_reference(
    table: str, fk: ForeignKeySpec, shapes: Mapping[str, TableShape]
) -> ForeignKeySpec:
    if fk.ref_table not in shapes:
        raise SchemaError(
            f"table {table!r}: foreign key ({', '.join(fk.columns)}) refers to table "
            f"{fk.ref_table!r}, which is not captured, so its rows could not be named by key",
            hint=f"add {fk.ref_table!r} to [capture] tables (or remove it from exclude), or "
            f"exclude {table!r} as well",
        )
    return fk


def key_parts(key_columns: Sequence[str], fks: Sequence[ForeignKeySpec]) -> tuple[KeyPart, ...]:
    """The key's parts in column order: a foreign key wholly inside the key becomes one
    part standing for the referenced row's key (so keys nest); other columns stay plain."""
    parts: list[KeyPart] = []
    used: set[str] = set()
    key_set = set(key_columns)
    for column in key_columns:
        if column in used:
            continue
        fk = next((f for f in fks if column in f.columns and set(f.columns) <= key_set), None)
        if fk is not None:
            parts.append(KeyPart(name=fk.part_name, foreign_key=fk))
            used.update(fk.columns)
        else:
            parts.append(KeyPart(name=column, column=column))
            used.add(column)
    return tuple(parts)


def resolve_foreign_keys(specs: Mapping[str, TableSpec]) -> dict[str, TableSpec]:
    """Decide how each foreign key is named, and mark the tables the drain must index."""
    referenced: set[str] = set()
    out: dict[str, TableSpec] = {}
    for name, spec in specs.items():
        fks = []
        for fk in spec.foreign_keys:
            named_by_key = _reference_kind(name, fk, specs[fk.ref_table])
            if named_by_key:
                fks.append(dataclasses.replace(fk, by_natural_key=True))
            else:
                referenced.add(fk.ref_table)
                fks.append(fk)
        parts = tuple(
            KeyPart(
                name=p.name, foreign_key=next(f for f in fks if f.columns == p.foreign_key.columns)
            )
            if p.foreign_key is not None
            else p
            for p in spec.key_parts
        )
        out[name] = replace_spec(spec, foreign_keys=tuple(fks), key_parts=parts)
    return {n: replace_spec(s, referenced=n in referenced) for n, s in out.items()}


def _reference_kind(name: str, fk: ForeignKeySpec, target: TableSpec) -> bool:
    """True when ``fk`` holds the target's natural key itself; False when it holds the
    target's primary key (resolved through the key index); an error when neither."""
    if set(fk.ref_columns) == set(target.primary_key) and target.surrogate_columns:
        return False
    if (
        not target.full_row_identity
        and all(p.column is not None for p in target.key_parts)
        and set(fk.ref_columns) == set(target.key_column_names)
    ):
        return True
    if set(fk.ref_columns) == set(target.primary_key):
        return False
    raise SchemaError(
        f"table {name!r}: foreign key ({', '.join(fk.columns)}) refers to "
        f"{fk.ref_table}({', '.join(fk.ref_columns)}), which is neither its primary "
        "key nor its natural key",
        hint=f"declare [tables.{fk.ref_table}] natural_key = "
        f"{list(fk.ref_columns)!r} if those columns name its rows",
    )


def check_key_cycles(specs: Mapping[str, TableSpec]) -> None:
    """A natural key may contain other tables' keys, but never (through them) its own."""
    graph = {
        name: [p.foreign_key.ref_table for p in spec.key_parts if p.foreign_key is not None]
        for name, spec in specs.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = " -> ".join([*path[path.index(node) :], node])
            raise SchemaError(
                f"natural keys refer to each other in a cycle: {cycle}",
                hint="declare for one of these tables a natural_key made of its own columns",
            )
        state[node] = 1
        for nxt in graph[node]:
            visit(nxt, [*path, node])
        state[node] = 2

    for name in graph:
        visit(name, [])


def refuse_retired_numbers(
    tables: Mapping[int, TableSpec], installed: Mapping[str, int], retired: Collection[int]
) -> None:
    """Install never gives a table a number capture retired: the key index and the log
    know tables by number, and the retired table's history would become this one's."""
    reused = sorted(n for n, s in tables.items() if n in retired and installed.get(s.name) != n)
    if reused:
        names = ", ".join(f"{tables[n].name} ({n})" for n in reused)
        raise SourceError(
            f"table numbers retired by capture would be given again: {names}",
            hint="the repository's table numbers are behind the source's; drain first, "
            "then run `nkdaemon install` again",
        )
