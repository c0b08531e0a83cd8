"""Generated schemas as plain data: tables, keys, foreign keys; their DDL and configuration.

A :class:`Schema` is what a hypothesis strategy draws (see ``strategies.py``) and what a
reproduction test writes down literally. It renders itself as DDL for PostgreSQL or SQLite
and as the ``[tables]`` part of an nkdaemon configuration, and says which features it uses
(``features()``), so a test can leave out the ones known to be broken.

Rules every schema keeps, so that it is capturable and its workload deterministic:

- every table but a keyless one has a natural key with at least one plain column whose
  values are unique across the table on their own (the workload draws them from one
  counter), so rows can be ordered and named without looking at generated ids;
- NOT NULL foreign keys (and so the ones inside natural keys) only point at tables earlier
  in the list, so they form no cycle; cycles and self-references are closed by nullable ones;
- a keyless table (``identity = "full"``) is last and nothing refers to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

ID_KINDS = {
    "postgresql": (
        "serial",
        "bigserial",
        "identity",
        "identity_always",
        "uuid",
        "text_pk",
        "composite_pk",
    ),
    "sqlite": ("serial", "autoincrement", "uuid", "text_pk", "composite_pk"),
}
SURROGATE_KINDS = ("serial", "bigserial", "identity", "identity_always", "uuid", "autoincrement")
KEY_KINDS = ("unique_text", "unique_int", "composite_key", "fk_key")

_BARE = re.compile(r"[a-z_][a-z0-9_]*")
_RESERVED = {"order", "user", "select", "group", "from", "table", "check", "default", "key"}


@dataclass(frozen=True, kw_only=True)
class Column:
    name: str
    kind: str  # int | bigint | text | uuid
    nullable: bool = True


@dataclass(frozen=True, kw_only=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    nullable: bool
    on_delete: str = ""  # "" | "CASCADE" | "SET NULL"
    on_update: str = ""  # "" | "CASCADE"


@dataclass(frozen=True, kw_only=True)
class Table:
    name: str
    id_kind: str  # one of ID_KINDS, or "none" (a keyless table without a primary key)
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    key: tuple[str, ...]  # the natural key's columns; () for a keyless table
    plain_key: tuple[str, ...]  # the key's own columns (not foreign keys); renamed by updates
    unique: tuple[str, ...] = ()  # a unique constraint, when the key is not the primary key
    foreign_keys: tuple[ForeignKey, ...] = ()
    keyless: bool = False
    declare_key: bool = False

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def surrogate(self) -> tuple[str, ...]:
        """Primary-key columns the database generates (left out when copying a row)."""
        return self.primary_key if self.id_kind in SURROGATE_KINDS else ()

    @property
    def payload(self) -> tuple[str, ...]:
        taken = set(self.primary_key) | set(self.key)
        taken |= {c for fk in self.foreign_keys for c in fk.columns}
        return tuple(c.name for c in self.columns if c.name not in taken)

    @property
    def order_by(self) -> tuple[str, ...]:
        """Columns that order the rows the same way in every run (no generated values)."""
        return self.plain_key or self.payload


@dataclass(frozen=True, kw_only=True)
class Schema:
    dialect: str
    tables: tuple[Table, ...]
    _index: dict[str, Table] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({t.name: t for t in self.tables})

    def table(self, name: str) -> Table:
        return self._index[name]

    # --- rendering ----------------------------------------------------------------------

    def ddl(self) -> list[str]:
        """CREATE TABLE statements (PostgreSQL: foreign keys added afterwards)."""
        if self.dialect == "postgresql":
            creates = [_create(t, self.dialect, with_fks=False) for t in self.tables]
            return creates + [_add_fk(t, fk) for t in self.tables for fk in t.foreign_keys]
        return [_create(t, self.dialect, with_fks=True) for t in self.tables]

    def config(self) -> str:
        """The [tables] sections of an nkdaemon configuration."""
        out = []
        for table in self.tables:
            if table.keyless:
                out.append(f'[tables.{toml_string(table.name)}]\nidentity = "full"\n')
            elif table.declare_key:
                out.append(
                    f"[tables.{toml_string(table.name)}]\n"
                    f"natural_key = {json.dumps(list(table.key), ensure_ascii=False)}\n"
                )
        return "\n".join(out)

    # --- analysis -----------------------------------------------------------------------

    def features(self) -> set[str]:
        """Every feature this schema uses (names as in features.py)."""
        found: set[str] = set()
        for table in self.tables:
            found |= _table_features(table, self)
        cycles = [c for c in self.cycles() if len(c) > 1]
        found |= {"cycle2" if len(c) == 2 else "cycle3" for c in cycles}
        if any(_self_referencing(t) for t in self.tables if self.behind_cycle(t.name)):
            found.add("self_ref_in_cycle")
        return found

    def behind_cycle(self, name: str) -> bool:
        """Whether table ``name`` is in a cycle of references between tables, or refers
        (through any chain) to a table that is: a restore can only insert it once the
        cycle is broken."""
        in_cycle = {n for c in self.cycles() if len(c) > 1 for n in c}
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in in_cycle:
                return True
            if current not in seen:
                seen.add(current)
                todo += [fk.ref_table for fk in self.table(current).foreign_keys]
        return False

    def cycles(self) -> list[set[str]]:
        """Strongly connected components of the foreign-key graph (self-loops ignored)."""
        graph = {
            t.name: {fk.ref_table for fk in t.foreign_keys if fk.ref_table != t.name}
            for t in self.tables
        }
        return list(_components(graph))


def _table_features(table: Table, schema: Schema) -> set[str]:
    found = {table.id_kind} if table.id_kind != "none" else set()
    if table.keyless:
        found.add("keyless")
    else:
        found.add(_key_kind(table))
        for fk in table.foreign_keys:
            if schema.table(fk.ref_table).id_kind in ("text_pk", "composite_pk"):
                found.add("natural_fk_key" if set(fk.columns) <= set(table.key) else "natural_fk")
    if any(quoted(n) for n in (table.name, *(c.name for c in table.columns))):
        found.add("quoted_names")
    if table.declare_key:
        found.add("declared_key")
    targets = [fk.ref_table for fk in table.foreign_keys]
    if len(targets) != len(set(targets)):
        found.add("double_fk")
    for fk in table.foreign_keys:
        found.add("nullable_fk" if fk.nullable else "not_null_fk")
        if fk.ref_table == table.name:
            found.add("self_reference")
        if fk.on_delete:
            found.add("on_delete_" + fk.on_delete.lower().replace(" ", "_"))
        if fk.on_update:
            found.add("on_update_cascade")
        if len(fk.columns) > 1:
            found.add("composite_fk")
    return found


def _key_kind(table: Table) -> str:
    fk_columns = {c for fk in table.foreign_keys for c in fk.columns}
    if any(c in fk_columns for c in table.key):
        return "fk_key"
    if len(table.key) > 1:
        return "composite_key"
    return "unique_text" if table.column(table.key[0]).kind == "text" else "unique_int"


def _self_referencing(table: Table) -> bool:
    return any(fk.ref_table == table.name for fk in table.foreign_keys)


def _components(graph: dict[str, set[str]]) -> Iterator[set[str]]:
    """Tarjan's strongly connected components (small graphs: recursion is fine)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[set[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                yield from visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            yield component

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)


# --- DDL --------------------------------------------------------------------------------


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quoted(name: str) -> bool:
    """Whether a name needs quoting (capitals, spaces, non-ASCII, reserved words)."""
    return not _BARE.fullmatch(name) or name in _RESERVED


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _sql_type(kind: str, dialect: str) -> str:
    if dialect == "sqlite":
        return {"int": "INTEGER", "bigint": "INTEGER", "text": "TEXT", "uuid": "TEXT"}[kind]
    return {"int": "integer", "bigint": "bigint", "text": "text", "uuid": "uuid"}[kind]


def _id_column(table: Table, column: Column, dialect: str) -> str:
    name, kind = quote(column.name), table.id_kind
    if dialect == "sqlite":
        if kind == "serial":
            return f"{name} INTEGER PRIMARY KEY"
        if kind == "autoincrement":
            return f"{name} INTEGER PRIMARY KEY AUTOINCREMENT"
        return f"{name} TEXT NOT NULL PRIMARY KEY DEFAULT (lower(hex(randomblob(16))))"
    return {
        "serial": f"{name} serial PRIMARY KEY",
        "bigserial": f"{name} bigserial PRIMARY KEY",
        "identity": f"{name} integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "identity_always": f"{name} integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "uuid": f"{name} uuid PRIMARY KEY DEFAULT gen_random_uuid()",
    }[kind]


def _create(table: Table, dialect: str, *, with_fks: bool) -> str:
    parts = []
    for column in table.columns:
        if column.name in table.surrogate:
            parts.append(_id_column(table, column, dialect))
            continue
        null = "" if column.nullable else " NOT NULL"
        parts.append(f"{quote(column.name)} {_sql_type(column.kind, dialect)}{null}")
    if table.primary_key and not table.surrogate:
        parts.append(f"PRIMARY KEY ({_names(table.primary_key)})")
    if table.unique:
        parts.append(f"UNIQUE ({_names(table.unique)})")
    if with_fks:
        parts += [_references(fk) for fk in table.foreign_keys]
    return f"CREATE TABLE {quote(table.name)} (\n  " + ",\n  ".join(parts) + "\n)"


def _names(columns: tuple[str, ...]) -> str:
    return ", ".join(quote(c) for c in columns)


def _references(fk: ForeignKey) -> str:
    text = (
        f"FOREIGN KEY ({_names(fk.columns)}) REFERENCES {quote(fk.ref_table)} "
        f"({_names(fk.ref_columns)})"
    )
    if fk.on_delete:
        text += f" ON DELETE {fk.on_delete}"
    if fk.on_update:
        text += f" ON UPDATE {fk.on_update}"
    return text


def _add_fk(table: Table, fk: ForeignKey) -> str:
    return f"ALTER TABLE {quote(table.name)} ADD {_references(fk)}"
