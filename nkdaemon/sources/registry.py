"""From SQLAlchemy reflection to the natural-key registry.

Reflects each selected table into a plain :class:`~nkdaemon.core.key_rules.TableShape`
(columns and their logical types, constraints, indexes, whether the primary key is
generated); the rules in ``core/key_rules.py`` then choose keys and refuse what cannot be
captured. The only module that touches SQLAlchemy's inspector and its errors.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import types as sat
from sqlalchemy.dialects import postgresql as pgt
from sqlalchemy.engine import Dialect, Engine, Inspector
from sqlalchemy.engine.interfaces import ReflectedColumn, ReflectedForeignKeyConstraint
from sqlalchemy.types import TypeEngine

from nkdaemon.core.errors import UNAVAILABLE_HINT, SchemaError, SourceError, SourceUnavailable
from nkdaemon.core.key_rules import (
    Registry,
    TableShape,
    build_registry,
    check_table_settings,
    listing,
    select_tables,
)
from nkdaemon.core.keys import CheckSpec, ColumnSpec, ForeignKeySpec, IndexSpec
from nkdaemon.core.settings import Settings

# Registry is the rules' result; named here too for callers that reflect and then use it.
__all__ = ["INTERNAL_PREFIXES", "INTERNAL_SCHEMA", "Registry", "logical_type", "reflect_registry"]

INTERNAL_PREFIXES = ("_nkd_", "sqlite_")
INTERNAL_SCHEMA = "nkdaemon"


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
    check_table_settings(settings.tables, selected, available)
    if not selected:
        raise SchemaError(
            "[capture] tables selects no table of the source",
            hint=f"tables there: {listing(available)}; check [capture] tables and exclude",
        )
    shapes = {name: _reflect(inspector, name, schema, engine.dialect.name) for name in selected}
    return build_registry(shapes, settings.tables, schema=schema, numbers=numbers or {})


def _reflect(inspector: Inspector, name: str, schema: str | None, dialect: str) -> TableShape:
    columns = list(inspector.get_columns(name, schema=schema))
    pk = tuple(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or ())
    uniques, indexes = _uniques_and_indexes(inspector, name, schema, dialect)
    return TableShape(
        name=name,
        columns=tuple(_column_spec(c, dialect) for c in columns),
        primary_key=pk,
        foreign_keys=tuple(_fk_spec(fk) for fk in inspector.get_foreign_keys(name, schema=schema)),
        uniques=tuple(uniques),
        generated_key=_is_surrogate(columns, pk, dialect),
        indexes=tuple(i for i in indexes if set(i.columns) != set(pk)),
        checks=_checks(inspector, name, schema),
    )


def _uniques_and_indexes(
    inspector: Inspector, name: str, schema: str | None, dialect: str
) -> tuple[list[tuple[str, tuple[str, ...]]], list[IndexSpec]]:
    """Unique constraints (with unique indexes over plain columns), and every index."""
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
    return uniques, indexes


def _is_surrogate(columns: list[ReflectedColumn], pk: tuple[str, ...], dialect: str) -> bool:
    """A primary key whose values the database generates (serial, identity, rowid)."""
    if len(pk) != 1:
        return False
    column = next((c for c in columns if c["name"] == pk[0]), None)
    if column is None:  # a key column reflection did not list: nothing says it is generated
        return False
    default = str(column.get("default") or "")
    if "nextval(" in default or column.get("identity") is not None:
        return True
    if dialect == "sqlite" and isinstance(column["type"], sat.Integer):
        return True  # INTEGER PRIMARY KEY is the rowid: SQLite assigns it
    return isinstance(column["type"], sat.Integer) and column.get("autoincrement") in (True, "auto")


def _fk_spec(fk: ReflectedForeignKeyConstraint) -> ForeignKeySpec:
    options = fk.get("options") or {}
    return ForeignKeySpec(
        columns=tuple(fk["constrained_columns"]),
        ref_table=fk["referred_table"],
        ref_columns=tuple(fk["referred_columns"]),
        on_delete=str(options.get("ondelete") or "").upper(),
        on_update=str(options.get("onupdate") or "").upper(),
    )


def _checks(inspector: Inspector, name: str, schema: str | None) -> tuple[CheckSpec, ...]:
    try:
        found = inspector.get_check_constraints(name, schema=schema)
    except NotImplementedError:
        return ()
    return tuple(CheckSpec(name=str(c.get("name") or ""), sql=str(c["sqltext"])) for c in found)


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


def logical_type(col_type: TypeEngine[object], dialect: str) -> str:
    if dialect == "sqlite":
        return _sqlite_logical(col_type)
    if isinstance(col_type, sat.ARRAY):
        inner = logical_type(col_type.item_type, dialect)
        return inner if inner.startswith("array:") else f"array:{inner}"
    return _pg_logical(col_type)


def _pg_logical(col_type: TypeEngine[object]) -> str:
    checks: list[tuple[type | tuple[type, ...], str]] = [
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


def _sqlite_logical(col_type: TypeEngine[object]) -> str:
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


def _compile(col_type: TypeEngine[object], dialect: str) -> str:
    try:
        if dialect == "postgresql":
            dialect_class: type[Dialect] = pgt.dialect
            return str(col_type.compile(dialect=dialect_class()))
        return str(col_type)
    except Exception:  # a type the dialect cannot render: keep its name
        return type(col_type).__name__


def _generic(col_type: TypeEngine[object]) -> str:
    try:
        return repr(col_type.as_generic())
    except NotImplementedError:
        return repr(col_type)
