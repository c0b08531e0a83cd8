"""The insert order defers only references that sit on a cycle (core/restore_plan.py).

A table that merely refers into a cycle waits for it; deferring its reference instead (the
planner did, for a table whose name sorted first) made restore write those rows with the
reference unset and set it afterwards, which failed for rows captured whole: `KeyError:
'rowid'`, or "refers to ..., which does not exist" (found by the generated restores).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, TableSpec, make_table_spec
from nkdaemon.core.restore_plan import insert_order


def _spec(number: int, name: str, fks: list[tuple[str, str, bool]]) -> TableSpec:
    columns = [ColumnSpec(name="id", logical_type="int", nullable=False)]
    columns.append(ColumnSpec(name="code", logical_type="text", nullable=False))
    columns += [ColumnSpec(name=c, logical_type="int", nullable=n) for c, _r, n in fks]
    return make_table_spec(
        number=number,
        name=name,
        schema=None,
        columns=tuple(columns),
        primary_key=("id",),
        key_parts=(KeyPart(name="code", column="code"),),
        foreign_keys=tuple(
            ForeignKeySpec(columns=(c,), ref_table=r, ref_columns=("id",)) for c, r, _n in fks
        ),
    )


def test_a_table_that_refers_into_a_cycle_is_not_deferred() -> None:
    behind = _spec(1, "a_behind", [("t1_id", "t1", True)])  # sorts before the cycle
    t1 = _spec(2, "t1", [("t2_id", "t2", True)])
    t2 = _spec(3, "t2", [("t1_id", "t1", True)])
    order = insert_order([behind, t1, t2])
    assert "a_behind" not in order.deferred
    assert order.tables.index("a_behind") > order.tables.index("t1")
    assert sum(len(v) for v in order.deferred.values()) == 1  # one reference breaks it


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return False


@st.composite
def reference_graphs(draw: st.DrawFn) -> list[TableSpec]:
    names = [f"t{i}" for i in range(draw(st.integers(1, 6)))]
    specs = []
    for number, name in enumerate(names, start=1):
        targets = draw(st.lists(st.sampled_from(names), max_size=3))
        fks = [(f"r{i}_{t}", t, True) for i, t in enumerate(targets)]
        specs.append(_spec(number, name, fks))
    return specs


@given(reference_graphs())
def test_every_deferred_reference_is_on_a_cycle(specs: list[TableSpec]) -> None:
    graph = {s.name: {fk.ref_table for fk in s.foreign_keys} for s in specs}
    order = insert_order(specs)
    for name, deferred in order.deferred.items():
        for fk in deferred:
            assert fk.ref_table == name or _reaches(graph, fk.ref_table, name), (name, fk)
    placed = {n: i for i, n in enumerate(order.tables)}
    for spec in specs:  # every other reference points backwards
        for fk in spec.foreign_keys:
            if fk not in order.deferred.get(spec.name, ()):
                assert placed[fk.ref_table] < placed[spec.name], (spec.name, fk)
