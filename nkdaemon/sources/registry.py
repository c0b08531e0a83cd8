"""From SQLAlchemy reflection and the configuration to the natural-key registry.

For each captured table: its columns and their logical types, its natural key (declared,
or the first all-NOT-NULL unique constraint), its foreign keys, and which tables are
referenced (so the drain indexes their ids). Anything that cannot be captured faithfully
is refused here, before a trigger exists, with a message that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sat
from sqlalchemy.dialects import postgresql as pgt
from sqlalchemy.engine import Dialect, Engine, Inspector
from sqlalchemy.engine.interfaces import ReflectedColumn, ReflectedForeignKeyConstraint

from nkdaemon.core.errors import UNAVAILABLE_HINT, SchemaError, SourceError, SourceUnavailable
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
from nkdaemon.core.settings import Settings, TableSettings, toml_key

INTERNAL_PREFIXES = ("_nkd_", "sqlite_")
INTERNAL_SCHEMA = "nkdaemon"


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
class _Reflected:
    name: str
    dialect: str
    columns: list[ReflectedColumn]
    primary_key: tuple[str, ...]
    foreign_keys: list[ReflectedForeignKeyConstraint]
    uniques: list[tuple[str, tuple[str, ...]]]
    indexes: tuple[IndexSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()


def reflect_registry(
    engine: Engine, settings: Settings, numbers: Mapping[str, int] | None = None
) -> Registry:
    """Reflect the source and build the registry, refusing what cannot be captured."""
    try:
        return _reflect_registry(engine, settings, numbers)
    except sa.exc.OperationalError as exc:
        raise SourceUnavailable(
            f"the source cannot be read: {_first_line(exc.orig or exc)}",
            hint=UNAVAILABLE_HINT,
        ) from None
    except sa.exc.DBAPIError as exc:
        raise SourceError(
            f"the source refused reflection: {_first_line(exc.orig or exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reflect_registry(
    engine: Engine, settings: Settings, numbers: Mapping[str, int] | None
) -> Registry:
    schema = settings.source.schema
    inspector = sa.inspect(engine)
    available = [
        n for n in inspector.get_table_names(schema=schema) if not n.startswith(INTERNAL_PREFIXES)
    ]
    selected = select_tables(available, settings.capture.tables, settings.capture.exclude)
    _check_table_settings(settings.tables, selected, available)
    if not selected:
        raise SchemaError(
            "[capture] tables selects no table of the source",
            hint=f"tables there: {_listing(available)}; check [capture] tables and exclude",
        )
    reflected = {name: _reflect(inspector, name, schema, engine.dialect.name) for name in selected}
    return build_registry(
        reflected,
        settings.tables,
        dialect=engine.dialect.name,
        schema=schema,
        numbers=numbers or {},
    )


def select_tables(
    available: Sequence[str], patterns: Iterable[str], exclude: Iterable[str]
) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not matches and not _is_glob(pattern):
            raise SchemaError(
                f"[capture] tables: table {pattern!r} does not exist in the source",
                hint=f"tables there: {_listing(available)}",
            )
        chosen.extend(m for m in matches if m not in chosen)
    excluded = {n for n in chosen for pattern in exclude if fnmatch.fnmatchcase(n, pattern)}
    return [n for n in chosen if n not in excluded]


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _listing(names: Sequence[str]) -> str:
    return ", ".join(sorted(names)) if names else "(none)"


def _check_table_settings(
    tables: Mapping[str, TableSettings], selected: Sequence[str], available: Sequence[str]
) -> None:
    for name in tables:
        if name not in available:
            raise SchemaError(
                f"[tables.{name}]: table {name!r} does not exist in the source",
                hint=f"tables there: {_listing(available)}",
            )
        if name not in selected:
            raise SchemaError(
                f"[tables.{name}]: table {name!r} is configured but not captured",
                hint="add it to [capture] tables, or remove its [tables] section",
            )


def _reflect(inspector: Inspector, name: str, schema: str | None, dialect: str) -> _Reflected:
    columns = list(inspector.get_columns(name, schema=schema))
    pk = tuple(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or ())
    uniques = [
        (str(u.get("name") or ""), tuple(u["column_names"]))
        for u in inspector.get_unique_constraints(name, schema=schema)
    ]
    seen = {cols for _, cols in uniques}
    indexes = [IndexSpec(name=n, columns=cols, unique=True) for n, cols in uniques]
    # SQLite keeps inline UNIQUE constraints as automatic indexes, which SQLAlchemy's
    # constraint parser can miss; ask for them as indexes too.
    extra = {"include_auto_indexes": True} if dialect == "sqlite" else {}
    for index in inspector.get_indexes(name, schema=schema, **extra):
        cols = tuple(c for c in index.get("column_names", ()) if c is not None)
        partial = index.get("dialect_options", {}).get("postgresql_where") is not None
        expressions = len(cols) != len(index.get("column_names", ())) or index.get("expressions")
        plain = bool(cols) and not partial and not expressions
        if index.get("unique") and plain and cols not in seen:
            uniques.append((str(index.get("name") or ""), cols))
        if cols not in seen or not plain:
            # an expression or partial index is kept by name only: it cannot be rebuilt
            unique = bool(index.get("unique"))
            name_of = str(index.get("name") or "")
            indexes.append(IndexSpec(name=name_of, columns=cols if plain else (), unique=unique))
        seen.add(cols)
    return _Reflected(
        name=name,
        dialect=dialect,
        columns=columns,
        primary_key=pk,
        foreign_keys=list(inspector.get_foreign_keys(name, schema=schema)),
        uniques=uniques,
        indexes=tuple(i for i in indexes if set(i.columns) != set(pk)),
        checks=_checks(inspector, name, schema),
    )


def _checks(inspector: Inspector, name: str, schema: str | None) -> tuple[CheckSpec, ...]:
    try:
        found = inspector.get_check_constraints(name, schema=schema)
    except NotImplementedError:
        return ()
    return tuple(CheckSpec(name=str(c.get("name") or ""), sql=str(c["sqltext"])) for c in found)


def build_registry(
    reflected: Mapping[str, _Reflected],
    table_settings: Mapping[str, TableSettings],
    *,
    dialect: str,
    schema: str | None,
    numbers: Mapping[str, int],
) -> Registry:
    assigned = _assign_numbers(list(reflected), numbers)
    specs: dict[str, TableSpec] = {}
    keyless: list[_NoKey] = []
    for name, table in reflected.items():
        try:
            specs[name] = _table_spec(
                table,
                table_settings.get(name, TableSettings()),
                reflected,
                dialect,
                schema,
                assigned[name],
            )
        except _NoKey as missing:  # go on: the user fixes every table in one go
            keyless.append(missing)
    if keyless:
        raise _no_key_error(keyless)
    specs = _resolve_foreign_keys(specs, reflected)
    _check_key_cycles(specs)
    return Registry(tables={spec.number: spec for spec in specs.values()})


def _assign_numbers(names: Sequence[str], known: Mapping[str, int]) -> dict[str, int]:
    out = {n: known[n] for n in names if n in known}
    next_number = max([0, *known.values()]) + 1
    for name in names:
        if name not in out:
            out[name] = next_number
            next_number += 1
    return out


def _table_spec(
    table: _Reflected,
    settings: TableSettings,
    reflected: Mapping[str, _Reflected],
    dialect: str,
    schema: str | None,
    number: int,
) -> TableSpec:
    columns = tuple(_column_spec(c, dialect) for c in table.columns)
    by_name = {c.name: c for c in columns}
    key_columns: tuple[str, ...] = ()
    full = settings.identity == "full"
    if not full:
        key_columns = _natural_key_columns(table, settings, by_name)
    fks = tuple(_fk_spec(table.name, fk, reflected) for fk in table.foreign_keys)
    return make_table_spec(
        number=number,
        name=table.name,
        schema=schema,
        columns=columns,
        primary_key=table.primary_key,
        key_parts=_key_parts(key_columns, fks),
        foreign_keys=fks,
        full_row_identity=full,
        indexes=table.indexes,
        checks=table.checks,
    )


def _natural_key_columns(
    table: _Reflected, settings: TableSettings, columns: Mapping[str, ColumnSpec]
) -> tuple[str, ...]:
    where = f"[tables.{table.name}] natural_key"
    if settings.natural_key is not None:
        key = settings.natural_key
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
            index = _quote_sql(f"uq_{table.name}_{'_'.join(key)}"[:63])
            quoted = ", ".join(_quote_sql(c) for c in key)
            raise SchemaError(
                f"{where}: ({cols}) is not unique in table {table.name!r}: no unique constraint "
                "or index covers it, so two rows could share it",
                hint=f"add one: CREATE UNIQUE INDEX {index} ON {_quote_sql(table.name)} "
                f"({quoted}); or choose columns that are unique ({_describe_uniques(table)})",
            )
        return key
    candidates = sorted(
        (u for u in table.uniques if all(not columns[c].nullable for c in u[1])),
        key=lambda u: (len(u[1]), u[0]),
    )
    if candidates:
        return candidates[0][1]
    if table.primary_key and not _is_surrogate(table):
        return table.primary_key
    if table.primary_key:
        why = (
            f"its primary key ({table.primary_key[0]}) is an id the database generates, "
            "which means nothing in another database"
        )
    else:
        why = "it has no primary key"
    raise _NoKey(table.name, f"no unique constraint made only of NOT NULL columns, and {why}")


class _NoKey(Exception):
    """A table nothing names a row of (collected, so that install reports them all)."""

    def __init__(self, table: str, why: str) -> None:
        super().__init__(table)
        self.table = table
        self.why = why


def _no_key_error(keyless: Sequence[_NoKey]) -> SchemaError:
    if len(keyless) == 1:
        message = f"table {keyless[0].table!r} has no natural key: {keyless[0].why}"
    else:
        message = f"{len(keyless)} tables have no natural key:" + "".join(
            f"\n  {k.table!r}: {k.why}" for k in keyless
        )
    sections = [f"      [tables.{_toml_name(k.table)}]\n" for k in keyless]
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


def _describe_uniques(table: _Reflected) -> str:
    found = [f"({', '.join(cols)})" for _, cols in table.uniques]
    return "unique: " + (", ".join(found) if found else "none")


def _toml_name(name: str) -> str:
    return toml_key(name)


def _quote_sql(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _is_surrogate(table: _Reflected) -> bool:
    """A primary key whose values the database generates (serial, identity, rowid)."""
    if len(table.primary_key) != 1:
        return False
    column = next(c for c in table.columns if c["name"] == table.primary_key[0])
    default = str(column.get("default") or "")
    if "nextval(" in default or column.get("identity") is not None:
        return True
    if table.dialect == "sqlite" and isinstance(column["type"], sat.Integer):
        return True  # INTEGER PRIMARY KEY is the rowid: SQLite assigns it
    return isinstance(column["type"], sat.Integer) and column.get("autoincrement") in (True, "auto")


def _fk_spec(
    table: str, fk: ReflectedForeignKeyConstraint, reflected: Mapping[str, _Reflected]
) -> ForeignKeySpec:
    ref_table = fk["referred_table"]
    columns = tuple(fk["constrained_columns"])
    if ref_table not in reflected:
        raise SchemaError(
            f"table {table!r}: foreign key ({', '.join(columns)}) refers to table "
            f"{ref_table!r}, which is not captured, so its rows could not be named by key",
            hint=f"add {ref_table!r} to [capture] tables (or remove it from exclude), or "
            f"exclude {table!r} as well",
        )
    options = fk.get("options") or {}
    return ForeignKeySpec(
        columns=columns,
        ref_table=ref_table,
        ref_columns=tuple(fk["referred_columns"]),
        on_delete=str(options.get("ondelete") or "").upper(),
        on_update=str(options.get("onupdate") or "").upper(),
    )


def _key_parts(key_columns: Sequence[str], fks: Sequence[ForeignKeySpec]) -> tuple[KeyPart, ...]:
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


def _resolve_foreign_keys(
    specs: dict[str, TableSpec], reflected: Mapping[str, _Reflected]
) -> dict[str, TableSpec]:
    """Decide how each foreign key is named, and mark the tables the drain must index."""
    referenced: set[str] = set()
    out: dict[str, TableSpec] = {}
    for name, spec in specs.items():
        fks = []
        for fk in spec.foreign_keys:
            target = specs[fk.ref_table]
            if set(fk.ref_columns) == set(target.primary_key) and target.surrogate_columns:
                referenced.add(fk.ref_table)
                fks.append(fk)
            elif (
                not target.full_row_identity
                and all(p.column is not None for p in target.key_parts)
                and set(fk.ref_columns) == set(target.key_column_names)
            ):
                fks.append(_replace_fk(fk, by_natural_key=True))
            elif set(fk.ref_columns) == set(target.primary_key):
                referenced.add(fk.ref_table)
                fks.append(fk)
            else:
                raise SchemaError(
                    f"table {name!r}: foreign key ({', '.join(fk.columns)}) refers to "
                    f"{fk.ref_table}({', '.join(fk.ref_columns)}), which is neither its primary "
                    "key nor its natural key",
                    hint=f"declare [tables.{fk.ref_table}] natural_key = "
                    f"{list(fk.ref_columns)!r} if those columns name its rows",
                )
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


def _replace_fk(fk: ForeignKeySpec, **changes: Any) -> ForeignKeySpec:
    return dataclasses.replace(fk, **changes)


def _check_key_cycles(specs: Mapping[str, TableSpec]) -> None:
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


# --- logical types --------------------------------------------------------------------------


def _column_spec(column: ReflectedColumn, dialect: str) -> ColumnSpec:
    col_type = column["type"]
    identity = column.get("identity")
    default = column.get("default")
    return ColumnSpec(
        name=column["name"],
        logical_type=logical_type(col_type, dialect),
        nullable=bool(column.get("nullable", True)),
        sql_type=_compile(col_type, dialect),
        generic_type=_generic(col_type),
        default=None if default is None else str(default),
        identity=("always" if identity.get("always") else "by default") if identity else "",
    )


def logical_type(col_type: Any, dialect: str) -> str:
    if dialect == "sqlite":
        return _sqlite_logical(col_type)
    if isinstance(col_type, sat.ARRAY):
        inner = logical_type(col_type.item_type, dialect)
        return inner if inner.startswith("array:") else f"array:{inner}"
    return _pg_logical(col_type)


def _pg_logical(col_type: Any) -> str:
    checks: list[tuple[Any, str]] = [
        (sat.Boolean, "bool"),
        (sat.Integer, "int"),
        (sat.Float, "float"),
        (sat.Numeric, "decimal"),
        ((pgt.JSON, pgt.JSONB, sat.JSON), "json"),
        (sat.Uuid, "uuid"),
        (sat.LargeBinary, "bytes"),
        (sat.Interval, "other"),
        (sat.DateTime, "timestamp"),
        (sat.Date, "date"),
        (sat.Time, "time"),
        (sat.String, "text"),
    ]
    for klass, name in checks:
        if isinstance(col_type, klass):
            if name == "timestamp" and getattr(col_type, "timezone", False):
                return "timestamptz"
            return name
    return "other"


def _sqlite_logical(col_type: Any) -> str:
    """SQLite types values, not columns: follow the declared type's affinity."""
    declared = str(col_type).upper() if not isinstance(col_type, sat.NullType) else ""
    if "BOOL" in declared:
        return "bool"
    if "INT" in declared:
        return "int"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in declared or declared == "":
        return "bytes"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "float"
    if any(word in declared for word in ("DATE", "TIME", "JSON", "UUID")):
        return "text"
    return "decimal"


def _compile(col_type: Any, dialect: str) -> str:
    try:
        if dialect == "postgresql":
            dialect_class: type[Dialect] = pgt.dialect
            return str(col_type.compile(dialect=dialect_class()))
        return str(col_type)
    except Exception:  # a type the dialect cannot render: keep its name
        return type(col_type).__name__


def _generic(col_type: Any) -> str:
    try:
        return repr(col_type.as_generic())
    except NotImplementedError:
        return repr(col_type)
