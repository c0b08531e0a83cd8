"""Table definitions as stored with snapshots: TableSpec <-> JSON.

A restore needs them to know each table's key, references and column types without the
source (and `--create-schema` builds tables from them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nkdaemon.core.errors import CaptureError
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


def spec_to_json(spec: TableSpec) -> dict[str, Any]:
    return {
        "number": spec.number,
        "name": spec.name,
        "schema": spec.schema,
        "columns": [
            {
                "name": c.name,
                "type": c.logical_type,
                "nullable": c.nullable,
                "sql_type": c.sql_type,
                "generic_type": c.generic_type,
                **({"default": c.default} if c.default is not None else {}),
                **({"identity": c.identity} if c.identity else {}),
            }
            for c in spec.columns
        ],
        "primary_key": list(spec.primary_key),
        "key": [_key_part_json(p) for p in spec.key_parts],
        "foreign_keys": [
            {
                "columns": list(fk.columns),
                "ref_table": fk.ref_table,
                "ref_columns": list(fk.ref_columns),
                "by_natural_key": fk.by_natural_key,
                **({"on_delete": fk.on_delete} if fk.on_delete else {}),
                **({"on_update": fk.on_update} if fk.on_update else {}),
            }
            for fk in spec.foreign_keys
        ],
        "full_row_identity": spec.full_row_identity,
        "referenced": spec.referenced,
        "indexes": [
            {"name": i.name, "columns": list(i.columns), "unique": i.unique} for i in spec.indexes
        ],
        "checks": [{"name": c.name, "sql": c.sql} for c in spec.checks],
    }


def _key_part_json(part: KeyPart) -> dict[str, Any]:
    """A key part by its column(s); its name only where it is not the usual one (it kept
    the name it had when its column was renamed, so the log's keys did not change)."""
    if part.column is not None:
        out: dict[str, Any] = {"column": part.column}
        usual = part.column
    else:
        assert part.foreign_key is not None
        out = {"foreign_key": list(part.foreign_key.columns)}
        usual = part.foreign_key.part_name
    if part.name != usual:
        out["name"] = part.name
    return out


def spec_from_json(data: dict[str, Any]) -> TableSpec:
    fks = tuple(
        ForeignKeySpec(
            columns=tuple(f["columns"]),
            ref_table=f["ref_table"],
            ref_columns=tuple(f["ref_columns"]),
            by_natural_key=bool(f.get("by_natural_key", False)),
            on_delete=str(f.get("on_delete", "")),
            on_update=str(f.get("on_update", "")),
        )
        for f in data["foreign_keys"]
    )
    parts = []
    for part in data["key"]:
        if "column" in part:
            parts.append(KeyPart(name=part.get("name", part["column"]), column=part["column"]))
        else:
            fk = next(f for f in fks if list(f.columns) == part["foreign_key"])
            parts.append(KeyPart(name=part.get("name", fk.part_name), foreign_key=fk))
    return make_table_spec(
        number=int(data["number"]),
        name=data["name"],
        schema=data.get("schema"),
        columns=tuple(
            ColumnSpec(
                name=c["name"],
                logical_type=c["type"],
                nullable=bool(c["nullable"]),
                sql_type=c.get("sql_type", ""),
                generic_type=c.get("generic_type", ""),
                default=c.get("default"),
                identity=str(c.get("identity", "")),
            )
            for c in data["columns"]
        ),
        primary_key=tuple(data["primary_key"]),
        key_parts=tuple(parts),
        foreign_keys=fks,
        full_row_identity=bool(data.get("full_row_identity", False)),
        referenced=bool(data.get("referenced", False)),
        indexes=tuple(
            IndexSpec(name=i["name"], columns=tuple(i["columns"]), unique=bool(i["unique"]))
            for i in data.get("indexes", ())
        ),
        checks=tuple(CheckSpec(name=c["name"], sql=c["sql"]) for c in data.get("checks", ())),
    )


def restricted_spec(spec: TableSpec, columns: Sequence[str]) -> TableSpec:
    """The spec as it was when the table had exactly ``columns`` (in that order): what
    refers to a column it lacked is left out. Raises CaptureError when its primary key or
    natural key needs such a column: capture cannot name its rows then."""
    index = spec.column_index
    unknown = [c for c in columns if c not in index]
    if unknown:
        raise ValueError(f"{spec.name}: columns {unknown} are not in the spec")
    kept = set(columns)
    needed = set(spec.primary_key) | {
        c
        for part in spec.key_parts
        for c in ((part.column,) if part.column is not None else part.foreign_key.columns)  # type: ignore[union-attr]
    }
    lost = sorted(needed - kept)
    if lost:
        raise CaptureError(
            f"table {spec.name!r} lost column(s) {', '.join(lost)} of its primary or natural "
            "key; capture cannot name its rows any more",
            hint=f"declare another natural key for {spec.name} in [tables.{spec.name}] "
            "natural_key, then run `nkdaemon install` (its changes stay queued until then)",
        )
    if kept == set(index) and list(columns) == [c.name for c in spec.columns]:
        return spec
    return replace_spec(
        spec,
        columns=tuple(index[c] for c in columns),
        foreign_keys=tuple(fk for fk in spec.foreign_keys if set(fk.columns) <= kept),
        indexes=tuple(i for i in spec.indexes if set(i.columns) <= kept),
        checks=spec.checks if kept >= set(index) else (),
    )


def spec_after_change(
    previous: TableSpec | None,
    current: TableSpec | None,
    columns: Sequence[str],
    renamed: Sequence[tuple[str, str]] = (),
) -> TableSpec:
    """The spec a table has from a schema change on, when it then had exactly ``columns``.

    ``previous`` is the spec the change's earlier rows were read with (None: new to
    capture), ``current`` the table as reflected now (None: gone since). Columns keep their
    types from ``current`` where it has them (the change may have been a type change),
    else from ``previous``, following ``renamed`` (old, new) pairs; a column neither knows
    is typed 'other'. The natural key and primary key are the ones the rows were named by,
    their columns renamed: a key part keeps its name, so the log names a row the same
    way before and after its key column was renamed. Raises CaptureError when a key
    column is gone, as ``restricted_spec`` does.
    """
    base = current if previous is None else previous
    if base is None:
        raise ValueError("a schema change of a table known neither before nor now")
    rename = dict(renamed)
    known: dict[str, ColumnSpec] = {}
    if previous is not None:
        for column in previous.columns:
            name = rename.get(column.name, column.name)
            known[name] = replace(column, name=name) if name != column.name else column
    if current is not None:
        known.update((c.name, c) for c in current.columns)
    for name in columns:
        known.setdefault(name, ColumnSpec(name=name, logical_type="other", nullable=True))
    later = current if current is not None else base

    def moved(names: Sequence[str]) -> tuple[str, ...]:
        return tuple(rename.get(n, n) for n in names)

    key_parts = tuple(
        KeyPart(
            name=part.name,
            column=None if part.column is None else rename.get(part.column, part.column),
            foreign_key=None
            if part.foreign_key is None
            else replace(part.foreign_key, columns=moved(part.foreign_key.columns)),
        )
        for part in base.key_parts
    )
    candidate = make_table_spec(
        number=base.number,
        name=base.name,
        schema=base.schema,
        columns=tuple(known.values()),
        primary_key=moved(base.primary_key),
        key_parts=key_parts,
        foreign_keys=later.foreign_keys,
        full_row_identity=base.full_row_identity,
        referenced=base.referenced or later.referenced,
        indexes=later.indexes,
        checks=later.checks,
    )
    return restricted_spec(candidate, columns)
