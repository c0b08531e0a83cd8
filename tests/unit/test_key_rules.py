"""The key rules (nkdaemon.core.key_rules): which tables, which natural key, how keys nest.

Pure: tables are described as TableShape values, as the source's reflection would give
them, so every rule is checked without a database. Generated reference graphs prove the
registry builds exactly when no natural key contains (through others) its own.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.errors import SchemaError
from nkdaemon.core.key_rules import (
    NoKey,
    TableShape,
    assign_numbers,
    build_registry,
    key_parts,
    natural_key_columns,
    no_key_error,
    select_tables,
)
from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, TableSpec
from nkdaemon.core.settings import TableSettings


def column(name: str, *, nullable: bool = False, logical_type: str = "text") -> ColumnSpec:
    return ColumnSpec(name=name, logical_type=logical_type, nullable=nullable)


def table(
    name: str,
    columns: tuple[str, ...] = ("id", "code"),
    *,
    nullable: tuple[str, ...] = (),
    pk: tuple[str, ...] = ("id",),
    uniques: tuple[tuple[str, ...], ...] = (("code",),),
    fks: tuple[ForeignKeySpec, ...] = (),
    generated_key: bool = True,
) -> TableShape:
    return TableShape(
        name=name,
        columns=tuple(column(c, nullable=c in nullable) for c in columns),
        primary_key=pk,
        foreign_keys=fks,
        uniques=tuple((f"uq_{name}_{'_'.join(u)}", u) for u in uniques),
        generated_key=generated_key,
    )


def fk(
    columns: tuple[str, ...], ref: str, ref_columns: tuple[str, ...] = ("id",)
) -> ForeignKeySpec:
    return ForeignKeySpec(columns=columns, ref_table=ref, ref_columns=ref_columns)


def registry(*shapes: TableShape, **settings: TableSettings) -> dict[str, TableSpec]:
    built = build_registry({s.name: s for s in shapes}, settings, schema=None, numbers={})
    return {spec.name: spec for spec in built.tables.values()}


# --- table selection ------------------------------------------------------------------------


NAMES = st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), unique=True, max_size=8)


@given(available=NAMES, patterns=st.lists(st.sampled_from(["*", "a*", "?b*", "[ab]*"])))
def test_selected_tables_are_available_unique_and_not_excluded(
    available: list[str], patterns: list[str]
) -> None:
    chosen = select_tables(available, patterns, exclude=["b*"])
    assert set(chosen) <= set(available)
    assert len(chosen) == len(set(chosen))
    assert not any(name.startswith("b") for name in chosen)


def test_a_missing_table_named_without_a_glob_is_refused_with_the_tables_there() -> None:
    with pytest.raises(SchemaError, match="'nope' does not exist") as raised:
        select_tables(["b", "a"], ["nope"], [])
    assert raised.value.hint == "tables there: a, b"


def test_a_glob_that_matches_nothing_selects_nothing() -> None:
    assert select_tables(["a"], ["z*"], []) == []


@given(
    names=NAMES,
    known=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(1, 50)),
)
def test_known_tables_keep_their_numbers_and_new_ones_get_unused_ones(
    names: list[str], known: dict[str, int]
) -> None:
    assigned = assign_numbers(names, known)
    assert set(assigned) == set(names)
    for name in names:
        if name in known:
            assert assigned[name] == known[name]
        else:
            assert assigned[name] > max([0, *known.values()])
    new = [assigned[n] for n in names if n not in known]
    assert len(new) == len(set(new))


# --- choosing a natural key -----------------------------------------------------------------


def _key(shape: TableShape, settings: TableSettings | None = None) -> tuple[str, ...]:
    return natural_key_columns(
        shape, settings or TableSettings(), {c.name: c for c in shape.columns}
    )


def test_the_shortest_unique_constraint_of_not_null_columns_is_the_key() -> None:
    shape = table("t", ("id", "a", "b", "c"), nullable=("c",), uniques=(("a", "b"), ("c",), ("b",)))
    assert _key(shape) == ("b",)


def test_a_primary_key_the_application_chose_is_the_key() -> None:
    shape = table("t", ("code", "x"), pk=("code",), uniques=(), generated_key=False)
    assert _key(shape) == ("code",)


@pytest.mark.parametrize(
    ("pk", "why"),
    [(("id",), "is an id the database generates"), ((), "it has no primary key")],
)
def test_a_table_without_a_meaningful_key_is_reported(pk: tuple[str, ...], why: str) -> None:
    with pytest.raises(NoKey) as raised:
        _key(table("t", ("id", "x"), pk=pk, uniques=()))
    assert why in raised.value.why


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (("nope",), "column 'nope' does not exist"),
        (("note",), "allows NULL"),
        (("x",), r"\(x\) is not unique"),
    ],
)
def test_a_declared_key_is_checked(declared: tuple[str, ...], message: str) -> None:
    shape = table("t", ("id", "code", "x", "note"), nullable=("note",))
    with pytest.raises(SchemaError, match=message):
        _key(shape, TableSettings(natural_key=declared))


def test_a_declared_key_covering_a_unique_constraint_is_taken_as_declared() -> None:
    shape = table("t", ("id", "code", "x"))
    assert _key(shape, TableSettings(natural_key=("x", "code"))) == ("x", "code")


def test_every_keyless_table_is_named_in_one_error_with_its_fix() -> None:
    error = no_key_error([NoKey("a", "why a"), NoKey("odd name", "why b")])
    assert "2 tables have no natural key" in error.message
    assert '[tables."odd name"]' in (error.hint or "")
    assert 'identity = "full"' in (error.hint or "")


def test_keyless_tables_are_all_reported_before_install() -> None:
    with pytest.raises(SchemaError, match="2 tables have no natural key"):
        registry(table("a", uniques=()), table("b", uniques=()), table("c"))


# --- nesting and references -----------------------------------------------------------------


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5, unique=True))
def test_key_parts_cover_every_key_column_once(key: list[str]) -> None:
    fks = [fk(("b", "c"), "other", ("x", "y")), fk(("e",), "third")]
    parts = key_parts(key, fks)
    covered: list[str] = []
    for part in parts:
        if part.foreign_key is not None:
            assert set(part.foreign_key.columns) <= set(key)  # only a whole reference nests
            covered.extend(part.foreign_key.columns)
        else:
            assert part.column is not None
            covered.append(part.column)
    assert sorted(covered) == sorted(key)


def test_a_reference_to_a_table_not_captured_is_refused() -> None:
    child = table("child", ("id", "code", "p"), fks=(fk(("p",), "parent"),))
    with pytest.raises(SchemaError, match="'parent', which is not captured"):
        registry(child)


def test_a_reference_to_a_natural_key_is_named_by_that_key() -> None:
    parent = table("parent")
    child = table("child", ("id", "code", "p"), fks=(fk(("p",), "parent", ("code",)),))
    specs = registry(parent, child)
    (reference,) = specs["child"].foreign_keys
    assert reference.by_natural_key
    assert not specs["parent"].referenced


def test_a_reference_to_a_generated_id_makes_the_drain_index_its_table() -> None:
    specs = registry(
        table("parent"), table("child", ("id", "code", "p"), fks=(fk(("p",), "parent"),))
    )
    assert specs["parent"].referenced
    assert not specs["child"].referenced


def test_a_reference_to_neither_key_is_refused_with_the_declaration_that_fixes_it() -> None:
    parent = table("parent", ("id", "code", "x"))
    child = table("child", ("id", "code", "p"), fks=(fk(("p",), "parent", ("x",)),))
    with pytest.raises(SchemaError, match="neither its primary key nor its natural key") as raised:
        registry(parent, child)
    assert "natural_key = ['x']" in (raised.value.hint or "")


# --- generated reference graphs ---------------------------------------------------------------


@st.composite
def reference_graphs(draw: st.DrawFn) -> dict[str, set[str]]:
    """Tables t0..tn, and for each the tables its natural key contains (self excluded)."""
    size = draw(st.integers(1, 6))
    names = [f"t{i}" for i in range(size)]
    return {
        name: set(draw(st.lists(st.sampled_from(names), max_size=3))) - {name} for name in names
    }


def _shapes(graph: dict[str, set[str]]) -> tuple[list[TableShape], dict[str, TableSettings]]:
    shapes: list[TableShape] = []
    settings: dict[str, TableSettings] = {}
    for name, refs in graph.items():
        ref_columns = tuple(f"{r}_id" for r in sorted(refs))
        shapes.append(
            table(
                name,
                ("id", "code", *ref_columns),
                fks=tuple(fk((f"{r}_id",), r) for r in sorted(refs)),
            )
        )
        settings[name] = TableSettings(natural_key=("code", *ref_columns))
    return shapes, settings


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    left = {name: set(refs) for name, refs in graph.items()}
    while True:
        leaves = {name for name, refs in left.items() if not refs}
        if not leaves:
            return bool(left)
        left = {name: refs - leaves for name, refs in left.items() if name not in leaves}


@settings(max_examples=80)
@given(graph=reference_graphs())
def test_the_registry_builds_exactly_when_no_key_contains_its_own(
    graph: dict[str, set[str]],
) -> None:
    shapes, table_settings = _shapes(graph)
    if _has_cycle(graph):
        with pytest.raises(SchemaError, match="natural keys refer to each other in a cycle"):
            registry(*shapes, **table_settings)
        return
    specs = registry(*shapes, **table_settings)
    numbers = [spec.number for spec in specs.values()]
    assert sorted(numbers) == list(range(1, len(graph) + 1))
    referenced = set().union(*graph.values())
    for name, refs in graph.items():
        spec = specs[name]
        nested = {p.foreign_key.ref_table for p in spec.key_parts if p.foreign_key}
        assert nested == refs  # each reference inside the key nests the other table's key
        assert spec.referenced == (name in referenced)
