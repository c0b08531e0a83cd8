"""Table definitions as stored with snapshots: TableSpec <-> JSON.

A restore needs them to know each table's key, references and column types without the
source (and `--create-schema` builds tables from them).
"""

from __future__ import annotations

from typing import Any

from nkdaemon.core.keys import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    KeyPart,
    TableSpec,
    make_table_spec,
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
        "key": [
            {"column": p.column}
            if p.column is not None
            else {"foreign_key": list(p.foreign_key.columns)}  # type: ignore[union-attr]
            for p in spec.key_parts
        ],
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
            parts.append(KeyPart(name=part["column"], column=part["column"]))
        else:
            fk = next(f for f in fks if list(f.columns) == part["foreign_key"])
            parts.append(KeyPart(name=fk.part_name, foreign_key=fk))
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
