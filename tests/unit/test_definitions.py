"""Table definitions as stored with snapshots (core/definitions.py).

A restore, `--create-schema` and `nkdaemon history` know a table only from the definition
stored with a snapshot, so TableSpec -> JSON -> TableSpec must give back the very same
spec, also after the JSON went through a real encoder (tuples come back as lists).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.definitions import spec_from_json, spec_to_json
from nkdaemon.core.keys import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    KeyPart,
    TableSpec,
    make_table_spec,
)


def _through_json(spec: TableSpec) -> TableSpec:
    return spec_from_json(json.loads(json.dumps(spec_to_json(spec))))


def _documents() -> TableSpec:
    """A table with every kind of field set: composite reference in the key, defaults,
    identity, referential actions, a reference by natural key, indexes and checks."""
    to_folder = ForeignKeySpec(
        columns=("tenant", "folder_id"),
        ref_table="folders",
        ref_columns=("tenant", "id"),
        on_delete="CASCADE",
        on_update="NO ACTION",
    )
    by_name = ForeignKeySpec(
        columns=("kind",), ref_table="kinds", ref_columns=("name",), by_natural_key=True
    )
    return make_table_spec(
        number=7,
        name="documents",
        schema="edms",
        columns=(
            ColumnSpec(
                name="id",
                logical_type="integer",
                nullable=False,
                sql_type="bigint",
                generic_type="integer",
                identity="by default",
            ),
            ColumnSpec(name="tenant", logical_type="integer", nullable=False),
            ColumnSpec(name="folder_id", logical_type="integer", nullable=False),
            ColumnSpec(name="kind", logical_type="text", nullable=True),
            ColumnSpec(
                name="doc_no",
                logical_type="text",
                nullable=False,
                sql_type="varchar(20)",
                generic_type="text",
                default="'draft'::text",
            ),
        ),
        primary_key=("id",),
        key_parts=(
            KeyPart(name=to_folder.part_name, foreign_key=to_folder),
            KeyPart(name="doc_no", column="doc_no"),
        ),
        foreign_keys=(to_folder, by_name),
        referenced=True,
        indexes=(IndexSpec(name="documents_kind", columns=("kind", "doc_no"), unique=True),),
        checks=(CheckSpec(name="doc_no_set", sql="doc_no <> ''"),),
    )


def test_a_spec_with_every_field_set_comes_back_equal_after_json() -> None:
    spec = _documents()
    back = _through_json(spec)
    assert back == spec
    assert back.surrogate_columns == spec.surrogate_columns == frozenset({"id"})
    assert back.key_column_names == ("tenant", "folder_id", "doc_no")
    assert back.column("doc_no").default == "'draft'::text"


def test_a_key_reference_comes_back_as_the_same_foreign_key_object_as_the_table_has() -> None:
    back = _through_json(_documents())
    assert back.key_parts[0].foreign_key is back.foreign_keys[0]


def test_a_table_without_key_comes_back_as_identified_by_its_whole_row() -> None:
    spec = make_table_spec(
        number=3,
        name="log_lines",
        schema=None,
        columns=(ColumnSpec(name="line", logical_type="text", nullable=True),),
        primary_key=(),
        key_parts=(),
        foreign_keys=(),
        full_row_identity=True,
    )
    back = _through_json(spec)
    assert back == spec
    assert back.full_row_identity is True and back.schema is None


def test_empty_defaults_and_actions_are_left_out_of_the_json() -> None:
    data = spec_to_json(_documents())
    id_column = data["columns"][0]
    assert "default" not in id_column and id_column["identity"] == "by default"
    assert "identity" not in data["columns"][4]
    assert "on_delete" not in data["foreign_keys"][1]


def test_a_definition_written_before_indexes_and_checks_existed_still_reads() -> None:
    data = spec_to_json(_documents())
    for optional in ("indexes", "checks", "full_row_identity", "referenced", "schema"):
        del data[optional]
    back = spec_from_json(data)
    assert (back.indexes, back.checks, back.referenced, back.schema) == ((), (), False, None)
    assert back.key_parts == _documents().key_parts


# --- generated specs -------------------------------------------------------------------

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
TEXT = st.text(max_size=12)


@st.composite
def table_specs(draw: st.DrawFn) -> TableSpec:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    columns = tuple(
        ColumnSpec(
            name=name,
            logical_type=draw(st.sampled_from(["integer", "text", "numeric", "json", "bytes"])),
            nullable=draw(st.booleans()),
            sql_type=draw(TEXT),
            generic_type=draw(TEXT),
            default=draw(st.none() | TEXT),
            identity=draw(st.sampled_from(["", "always", "by default"])),
        )
        for name in names
    )
    fk_columns = draw(
        st.lists(
            st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True).map(tuple),
            max_size=3,
            unique=True,
        )
    )
    fks = tuple(
        ForeignKeySpec(
            columns=cols,
            ref_table=draw(NAMES),
            ref_columns=tuple(draw(NAMES) for _ in cols),
            by_natural_key=draw(st.booleans()),
            on_delete=draw(st.sampled_from(["", "CASCADE", "SET NULL", "RESTRICT"])),
            on_update=draw(st.sampled_from(["", "CASCADE"])),
        )
        for cols in fk_columns
    )
    full_row = draw(st.booleans())
    parts: list[KeyPart] = []
    if not full_row:
        for choice in draw(st.lists(st.sampled_from([*names, *fks]), max_size=3, unique=True)):
            if isinstance(choice, str):
                parts.append(KeyPart(name=choice, column=choice))
            else:
                parts.append(KeyPart(name=choice.part_name, foreign_key=choice))
    return make_table_spec(
        number=draw(st.integers(0, 2**31)),
        name=draw(NAMES),
        schema=draw(st.none() | NAMES),
        columns=columns,
        primary_key=tuple(draw(st.lists(st.sampled_from(names), max_size=2, unique=True))),
        key_parts=tuple(parts),
        foreign_keys=fks,
        full_row_identity=full_row,
        referenced=draw(st.booleans()),
        indexes=tuple(
            IndexSpec(name=draw(NAMES), columns=tuple(cols), unique=draw(st.booleans()))
            for cols in draw(st.lists(st.lists(st.sampled_from(names), min_size=1), max_size=2))
        ),
        checks=tuple(
            CheckSpec(name=draw(NAMES), sql=draw(TEXT)) for _ in range(draw(st.integers(0, 2)))
        ),
    )


@settings(max_examples=60)
@given(table_specs())
def test_any_spec_comes_back_equal_with_the_same_derived_facts_and_json(spec: TableSpec) -> None:
    data: dict[str, Any] = json.loads(json.dumps(spec_to_json(spec)))
    back = spec_from_json(data)
    assert back == spec
    assert back.surrogate_columns == spec.surrogate_columns
    assert back.key_column_names == spec.key_column_names
    assert dict(back.column_index) == dict(spec.column_index)
    assert spec_to_json(back) == data


@pytest.mark.parametrize("field", ["number", "name", "columns", "primary_key", "key"])
def test_a_definition_missing_a_required_field_fails_loudly(field: str) -> None:
    data = spec_to_json(_documents())
    del data[field]
    with pytest.raises(KeyError):
        spec_from_json(data)
