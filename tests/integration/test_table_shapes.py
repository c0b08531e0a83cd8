"""The drain's registry remembers vanished tables and columns across restarts.

A table dropped (or a column removed) while changes of it still wait in the source queue
must stay readable by a drain started afterwards: what the drain knows is kept in the
state database, not only in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.core.definitions import spec_from_json, spec_to_json
from nkdaemon.core.keys import TableSpec, replace_spec
from nkdaemon.examples import edms
from nkdaemon.repository.state import StateStore
from nkdaemon.runtime.session import Session
from nkdaemon.services.table_shapes import TableShapes
from nkdaemon.sources.registry import reflect_registry
from tests.helpers import do_drain, do_install, engine_for, settings_for


def _edms_specs(tmp_path: Path) -> dict[int, TableSpec]:
    url = f"sqlite:///{tmp_path / 'edms.db'}"
    engine = sa.create_engine(url)
    edms.create_schema(engine)
    registry = reflect_registry(engine, settings_for(tmp_path, url))
    engine.dispose()
    return dict(registry.tables)


def test_a_definition_round_trips_exactly(tmp_path: Path) -> None:
    for spec in _edms_specs(tmp_path).values():
        assert spec_from_json(spec_to_json(spec)) == spec


def test_vanished_tables_and_columns_survive_a_new_drainer(tmp_path: Path) -> None:
    specs = _edms_specs(tmp_path)
    first, second = sorted(specs)[:2]
    narrowed = replace_spec(specs[first], columns=specs[first].columns[:-1])
    dropped_column = specs[first].columns[-1].name
    today = {n: s for n, s in specs.items() if n != second} | {first: narrowed}

    state = StateStore(tmp_path / "state.db")
    shapes = TableShapes(lambda: dict(specs), state)
    assert shapes.tables == specs
    shapes.refresh(None)  # nothing changed: nothing new to remember
    state.close()

    # A new drainer (a restart) sees only today's source.
    state = StateStore(tmp_path / "state.db")
    restarted = TableShapes(lambda: dict(today), state)
    assert restarted.tables[second] == specs[second]
    assert dropped_column in restarted.tables[first].column_index
    state.close()


def test_a_name_in_use_again_finds_the_live_table(tmp_path: Path) -> None:
    specs = _edms_specs(tmp_path)
    number = min(specs)
    renumbered = replace_spec(specs[number], number=max(specs) + 1)
    today = {n: s for n, s in specs.items() if n != number} | {renumbered.number: renumbered}
    state = StateStore(tmp_path / "state.db")
    source = [specs]
    shapes = TableShapes(lambda: dict(source[0]), state)
    source[0] = today  # the table was dropped and created again under its name
    shapes.refresh(None)
    by_name = {spec.name: n for n, spec in shapes.tables.items()}  # last wins, as Translator
    assert by_name[renumbered.name] == renumbered.number
    assert number in shapes.tables  # the old one is still readable
    state.close()


def test_a_dropped_tables_number_is_never_given_again(tmp_path: Path) -> None:
    """The key index may still hold a dropped table's keys under its number."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE a (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE)")
        conn.exec_driver_sql("CREATE TABLE b (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE)")
    settings = settings_for(tmp_path, url)
    do_install(settings)
    do_drain(settings)
    with Session(settings, writer=False) as s:
        used = dict(s.source.installed_tables())
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE b")
    do_install(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE c (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE)")
    do_install(settings)
    engine.dispose()
    with Session(settings, writer=False) as s:
        numbers = s.source.installed_tables()
    assert numbers["c"] not in used.values(), (numbers, used)


def test_a_change_of_a_table_known_neither_then_nor_now_stops_loudly(tmp_path: Path) -> None:
    from nkdaemon.core.errors import CaptureError
    from nkdaemon.core.ports import SchemaChange

    state = StateStore(tmp_path / "state.db")
    shapes = TableShapes(lambda: {}, state)
    change = SchemaChange(table=9, name="brief", columns=("id",), kind="created", baseline=True)
    with pytest.raises(CaptureError, match="brief"):
        shapes.apply(change)
    state.close()
