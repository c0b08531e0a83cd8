"""Django fixtures <-> tables: which table a model label names, which column a field is,
and natural keys as Django writes them (flat lists) <-> nkdaemon's nested keys.

A Django ``natural_key()`` is a tuple; by the convention nkdaemon reads and writes, it
holds the parts of the table's configured natural key in order, a reference part as the
referenced model's own ``natural_key()`` either spliced in (``("standard", "draft")``, as
the Django documentation does it) or as a nested list. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nkdaemon.core.errors import UsageError
from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, TableSpec

Convert = Callable[[TableSpec, str, Any], Any]
"""Turns a fixture value of (table, column) into its canonical form."""


class KeyShapeError(ValueError):
    """A natural-key list does not have the shape of the table's key."""


@dataclass(frozen=True, kw_only=True)
class ModelMap:
    """Model labels (``app.model``; ``app.model.field`` for a many-to-many field's
    through table) to table names: ``[legacy.models]`` first, then Django's defaults
    (``app_model``; ``<model's table>_<field>`` for an auto-created through table)."""

    explicit: Mapping[str, str] = field(default_factory=dict)

    def table(self, label: str, tables: Collection[str]) -> str | None:
        label = label.lower()
        if label in self.explicit:
            return self.explicit[label]
        default = label.replace(".", "_", 1)
        return default if default in tables else None

    def through(self, label: str, name: str, owner: str, tables: Collection[str]) -> str | None:
        explicit = self.explicit.get(f"{label.lower()}.{name}")
        if explicit is not None:
            return explicit
        default = f"{owner}_{name}"
        return default if default in tables else None

    def label(self, table: str) -> str:
        """The model label a table is exported as."""
        for label, name in self.explicit.items():
            if name == table and label.count(".") == 1:
                return label
        app, sep, model = table.partition("_")
        if not sep or not model:
            raise UsageError(
                f"table {table} has no Django model label",
                hint=f'name it in the configuration: [legacy.models] "app.model" = "{table}"',
            )
        return f"{app}.{model}"

    def m2m_fields(self) -> dict[str, tuple[str, str]]:
        """Through table -> (owner model label, field name), for the mapped ones."""
        out: dict[str, tuple[str, str]] = {}
        for label, table in self.explicit.items():
            if label.count(".") == 2:
                app, model, name = label.split(".")
                out[table] = (f"{app}.{model}", name)
        return out


@dataclass(frozen=True, kw_only=True)
class FieldPlan:
    """How one model's fixture fields land in its table."""

    spec: TableSpec
    plain: Mapping[str, str]  # field name -> column
    refs: Mapping[str, ForeignKeySpec]  # field name -> single-column foreign key
    pk_column: str | None  # the column "pk" fills when the primary key means something

    @classmethod
    def of(cls, spec: TableSpec) -> FieldPlan:
        fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
        plain = {
            c.name: c.name
            for c in spec.columns
            if c.name not in fk_columns and c.name not in spec.surrogate_columns
        }
        refs: dict[str, ForeignKeySpec] = {}
        for fk in spec.foreign_keys:
            if len(fk.columns) == 1:
                column = fk.columns[0]
                refs[column] = fk
                refs[field_name(column)] = fk
        natural_pk = len(spec.primary_key) == 1 and not spec.surrogate_columns
        return cls(
            spec=spec,
            plain=plain,
            refs=refs,
            pk_column=spec.primary_key[0] if natural_pk else None,
        )


def field_name(column: str) -> str:
    """Django's field name for a foreign-key column (``author_id`` -> ``author``)."""
    return column[:-3] if column.endswith("_id") and len(column) > 3 else column


def key_width(spec: TableSpec, specs: Mapping[str, TableSpec]) -> int:
    """How many values the table's natural key has once nested keys are spliced in."""
    width = 0
    for part in spec.key_parts:
        fk = part.foreign_key
        if fk is None or fk.by_natural_key:
            width += 1 if fk is None else len(fk.ref_columns)
        else:
            width += key_width(specs[fk.ref_table], specs)
    return width


def nest_key(
    spec: TableSpec, specs: Mapping[str, TableSpec], values: Sequence[Any], convert: Convert
) -> NaturalKey:
    """A Django natural-key list (flat or nested) as the table's nested natural key."""
    key, rest = _nest(spec, specs, list(values), convert)
    if rest:
        raise KeyShapeError(
            f"{len(values)} values for the key of {spec.name}, which has {key_width(spec, specs)}"
        )
    return key


def _nest(
    spec: TableSpec, specs: Mapping[str, TableSpec], values: list[Any], convert: Convert
) -> tuple[NaturalKey, list[Any]]:
    key: NaturalKey = {}
    for part in spec.key_parts:
        if not values:
            raise KeyShapeError(f"too few values for the key of {spec.name}")
        fk = part.foreign_key
        if fk is None:
            assert part.column is not None
            key[part.name] = convert(spec, part.column, values.pop(0))
        elif fk.by_natural_key:
            ref = specs[fk.ref_table]
            key[part.name] = {c: convert(ref, c, values.pop(0)) for c in fk.ref_columns}
        elif isinstance(values[0], list):
            key[part.name] = nest_key(specs[fk.ref_table], specs, values.pop(0), convert)
        else:
            key[part.name], values = _nest(specs[fk.ref_table], specs, values, convert)
    return key, values


def flatten_key(
    spec: TableSpec, specs: Mapping[str, TableSpec], key: NaturalKey, convert: Convert
) -> list[Any]:
    """A nested natural key as Django's flat natural-key list, each plain value passed
    through ``convert`` (canonical -> fixture form)."""
    out: list[Any] = []
    for part in spec.key_parts:
        value = key.get(part.name)
        fk = part.foreign_key
        if fk is None:
            assert part.column is not None
            out.append(convert(spec, part.column, value))
        elif fk.by_natural_key:
            ref = specs[fk.ref_table]
            out.extend(convert(ref, c, (value or {}).get(c)) for c in fk.ref_columns)
        else:
            out.extend(flatten_key(specs[fk.ref_table], specs, value or {}, convert))
    return out


def key_dependency_order(specs: Collection[TableSpec]) -> list[TableSpec]:
    """Tables ordered so that a table comes after every table its natural key names."""
    by_name = {s.name: s for s in specs}
    done: dict[str, TableSpec] = {}

    def visit(spec: TableSpec, depth: int) -> None:
        if spec.name in done or depth > len(by_name):
            return
        for part in spec.key_parts:
            fk = part.foreign_key
            if fk is not None and fk.ref_table in by_name and fk.ref_table != spec.name:
                visit(by_name[fk.ref_table], depth + 1)
        done[spec.name] = spec

    for spec in specs:
        visit(spec, 0)
    return list(done.values())


def through_sides(
    through: TableSpec, owner: str, target: str | None = None
) -> tuple[ForeignKeySpec, ForeignKeySpec] | None:
    """(owner side, target side) foreign keys of a many-to-many through table; Django
    names the sides of a self-relation ``from_<model>_id`` and ``to_<model>_id``."""
    fks = [fk for fk in through.foreign_keys if len(fk.columns) == 1]
    if len(fks) != 2:
        return None
    first, second = fks
    if first.ref_table == second.ref_table == owner:
        if second.columns[0].startswith("from_"):
            first, second = second, first
        return first, second
    if second.ref_table == owner:
        first, second = second, first
    if first.ref_table != owner or (target is not None and second.ref_table != target):
        return None
    return first, second
