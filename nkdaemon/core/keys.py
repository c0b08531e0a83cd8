"""Table specifications and natural keys.

A natural key names a row by meaning. It is an ordered mapping of *parts*: a plain column
(``"username": "alice"``) or a foreign key standing for the referenced row's own natural
key (``"user_id": {"username": "alice"}``), so keys nest as deep as the schema does.

Inside the drain, keys are kept *shallow*: a reference part holds a :class:`Ref` to the
referenced row's source identity instead of its key, and is resolved when an event is
written. That way renaming a workflow renames, for free, the key of every state whose key
contains it, exactly as the source database sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Sid = Any
"""A row's source identity: its primary-key value, or a tuple for a composite key."""

NaturalKey = dict[str, Any]
"""A resolved natural key: part name -> canonical value or nested natural key."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ColumnSpec:
    """One column of a captured table."""

    name: str
    logical_type: str
    nullable: bool
    sql_type: str = ""
    generic_type: str = ""
    default: str | None = None  # the default's SQL text, in the source's dialect
    identity: str = ""  # "always" or "by default" for an identity column


@dataclass(frozen=True, kw_only=True, slots=True)
class ForeignKeySpec:
    """A foreign key of a captured table onto another captured table.

    ``by_natural_key`` is true when the foreign key points at the referenced table's
    natural-key columns themselves (the value already means something); otherwise it
    points at the referenced primary key and is resolved through the key index.
    """

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    by_natural_key: bool = False
    on_delete: str = ""  # the referential actions, e.g. "CASCADE"; "" for none
    on_update: str = ""

    @property
    def part_name(self) -> str:
        return ",".join(self.columns)


@dataclass(frozen=True, kw_only=True, slots=True)
class IndexSpec:
    """A secondary index (or unique constraint other than the key) the application has."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckSpec:
    """A CHECK constraint, as SQL text in the source's dialect."""

    name: str
    sql: str


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyPart:
    """One part of a natural key: a plain column, or a foreign key."""

    name: str
    column: str | None = None
    foreign_key: ForeignKeySpec | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TableSpec:
    """Everything the drain and restore need to know about one captured table."""

    number: int
    name: str
    schema: str | None
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    key_parts: tuple[KeyPart, ...]
    foreign_keys: tuple[ForeignKeySpec, ...]
    full_row_identity: bool = False
    referenced: bool = False
    indexes: tuple[IndexSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    column_index: Mapping[str, ColumnSpec] = field(default_factory=dict, compare=False)
    derived: _Derived = field(default_factory=lambda: _Derived(), compare=False)

    @property
    def surrogate_columns(self) -> frozenset[str]:
        """Primary-key columns that carry no meaning (not part of the natural key)."""
        return self.derived.surrogate

    @property
    def key_column_names(self) -> tuple[str, ...]:
        return self.derived.key_columns

    def column(self, name: str) -> ColumnSpec:
        return self.column_index[name]


@dataclass(frozen=True, slots=True)
class _Derived:
    """Facts computed once from a TableSpec's fields (hot paths ask for them per row)."""

    key_columns: tuple[str, ...] = ()
    surrogate: frozenset[str] = frozenset()


def make_table_spec(**fields: Any) -> TableSpec:
    """Build a TableSpec with its column index and derived facts filled in."""
    columns: Sequence[ColumnSpec] = fields["columns"]
    key_columns: list[str] = []
    for part in fields["key_parts"]:
        if part.column is not None:
            key_columns.append(part.column)
        elif part.foreign_key is not None:
            key_columns.extend(part.foreign_key.columns)
    derived = _Derived(
        key_columns=tuple(key_columns),
        surrogate=frozenset(c for c in fields["primary_key"] if c not in set(key_columns)),
    )
    return TableSpec(**fields, column_index={c.name: c for c in columns}, derived=derived)


def replace_spec(spec: TableSpec, **changes: Any) -> TableSpec:
    """A copy of a TableSpec with some fields changed (and its column index rebuilt)."""
    fields = {
        "number": spec.number,
        "name": spec.name,
        "schema": spec.schema,
        "columns": spec.columns,
        "primary_key": spec.primary_key,
        "key_parts": spec.key_parts,
        "foreign_keys": spec.foreign_keys,
        "full_row_identity": spec.full_row_identity,
        "referenced": spec.referenced,
        "indexes": spec.indexes,
        "checks": spec.checks,
    }
    fields.update(changes)
    return make_table_spec(**fields)


def key_references(spec: TableSpec) -> dict[str, str]:
    """Key part -> referenced table, for the parts that stand for another row's key.

    A foreign key onto the referenced table's natural-key columns is left out: its value
    already is that key, and it changes with it (the source cascades the rename)."""
    return {
        p.name: p.foreign_key.ref_table
        for p in spec.key_parts
        if p.foreign_key is not None and not p.foreign_key.by_natural_key
    }


def row_references(spec: TableSpec) -> dict[str, str]:
    """Row field -> referenced table, for the references that name another row's key."""
    return {fk.part_name: fk.ref_table for fk in spec.foreign_keys if not fk.by_natural_key}


@dataclass(frozen=True, slots=True)
class Ref:
    """A shallow reference to another captured row, by table number and source identity."""

    table: int
    sid: Sid


def key_from_dict(parts: Mapping[str, Any]) -> NaturalKey:
    return dict(parts)


def key_matches(key: Any, wanted: Mapping[str, Any]) -> bool:
    """Does a resolved natural key match a (possibly dotted, partial) selector?

    ``wanted`` maps dotted paths (``"workflow_id.name"``) to values compared as text, so a
    command-line ``KEY=VALUE`` can select a row whatever the value's type.
    """
    for path, value in wanted.items():
        node = key
        for step in path.split("."):
            if not isinstance(node, dict) or step not in node:
                return False
            node = node[step]
        if isinstance(node, dict) or _as_text(node) != value:
            return False
    return True


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
