"""`export`: the state at a time as a Django fixture that `manage.py loaddata` accepts.

The state is read the way a restore validates it: the chosen snapshot, and the log after
it up to the time folded over it (core.replay.fold_state; core.shapes.fold_in_shape when
tables changed shape on the way: the rows come in the shape they had at the time,
renamed columns under their names then, dropped ones gone). When no logged change
follows the snapshot, its tables are streamed as they are, without a fold. Objects carry
natural foreign keys and natural primary keys (no ``pk``: loaddata finds or creates each
row by its natural key), models come parents first (restore_plan.insert_order; a cycle's
nullable back-reference is loaded by loaddata's forward references), and the output is
written as it is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from nkdaemon.core.fold import LogFold
from nkdaemon.core.keys import NaturalKey, TableSpec
from nkdaemon.core.legacy import FieldPlan, ModelMap, field_name, flatten_key, through_sides
from nkdaemon.core.legacy_values import RawJson, fixture_converter
from nkdaemon.core.replay import fold_state
from nkdaemon.core.restore_plan import insert_order
from nkdaemon.core.shapes import fold_in_shape
from nkdaemon.core.table_diff import key_text
from nkdaemon.repository.segments import SegmentLog
from nkdaemon.repository.snapshots import read_table
from nkdaemon.services.restore import RestorePlan, replay_range

Progress = Callable[[int], object]
_PASS = orjson.OPT_PASSTHROUGH_DATACLASS  # RawJson goes to _raw_json, not as an object
Rows = Iterator[tuple[Any, dict[str, Any]]]  # (natural key, row), references as keys


@dataclass(kw_only=True)
class ExportReport:
    models: dict[str, tuple[str, int]] = field(default_factory=dict)  # label -> (table, rows)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(rows for _table, rows in self.models.values())


@dataclass(frozen=True, kw_only=True)
class _M2M:
    owner: str  # the owner model's table
    name: str  # the field
    owner_part: str
    target_part: str
    target: str  # the target model's table


def export_fixture(
    *,
    plan: RestorePlan,
    log_store: SegmentLog,
    model_map: ModelMap,
    out: IO[bytes],
    progress: Progress | None = None,
) -> ExportReport:
    """Write the plan's state as a Django fixture into ``out``."""
    started = time.monotonic()
    exporter = _Exporter(plan, log_store, model_map, progress or (lambda n: None))
    report = exporter.write(out)
    report.seconds = time.monotonic() - started
    return report


class _Exporter:
    def __init__(
        self, plan: RestorePlan, log_store: SegmentLog, model_map: ModelMap, progress: Progress
    ) -> None:
        self.plan = plan
        self.log_store = log_store
        self.model_map = model_map
        self.progress = progress
        self.dialect = plan.snapshot.dialect
        self.specs = {s.name: s for s in plan.context}
        self.selected = {s.name for s in plan.tables}
        self.m2m = self._m2m_fields()
        self._state: LogFold | None = None
        self._converters: dict[tuple[str, str], Callable[[Any], Any]] = {}
        # no logged change after the snapshot: stream its files, no fold needed
        self._straight = plan.transactions == 0

    def _m2m_fields(self) -> dict[str, _M2M]:
        """Through tables exported as a many-to-many field of their owner model."""
        found: dict[str, _M2M] = {}
        for through, (owner_label, name) in self.model_map.m2m_fields().items():
            owner = self.model_map.table(owner_label, self.specs)
            spec = self.specs.get(through)
            if owner is None or spec is None or owner not in self.selected:
                continue
            sides = through_sides(spec, owner)
            if sides is not None:
                found[through] = _M2M(
                    owner=owner,
                    name=name,
                    owner_part=sides[0].part_name,
                    target_part=sides[1].part_name,
                    target=sides[1].ref_table,
                )
        return found

    def write(self, out: IO[bytes]) -> ExportReport:
        report = ExportReport()
        lists = {m.owner: m for m in self.m2m.values()}
        members = {m.owner: self._members(through, m) for through, m in self.m2m.items()}
        out.write(b"[")
        first = True
        for name in insert_order(list(self.specs.values())).tables:
            if name not in self.selected or name in self.m2m:
                continue
            label = self.model_map.label(name)
            count = 0
            for obj in self._objects(label, self.specs[name], lists.get(name), members.get(name)):
                out.write(b"\n" if first else b",\n")
                out.write(orjson.dumps(obj, default=_raw_json, option=_PASS))
                first = False
                count += 1
                if count % 1000 == 0:
                    self.progress(1000)
            self.progress(count % 1000)
            report.models[label] = (name, count)
        for through, m2m in self.m2m.items():
            rows = sum(len(v) for v in members[m2m.owner].values())
            report.models[f"{self.model_map.label(m2m.owner)}.{m2m.name}"] = (through, rows)
        out.write(b"\n]\n")
        return report

    def _rows(self, name: str) -> Rows:
        if self._straight:
            file = self.plan.snapshot.table(name)
            if file is not None:
                for item in read_table(self.plan.snapshot, file):
                    yield item["k"], item["r"]
            return
        if self._state is None:
            self._state = self._fold()
        for key, row, count in self._state.rendered(name):
            for _ in range(count):
                yield key, row

    def _fold(self) -> LogFold:
        """The state at T; in T's shape when tables changed shape on the way (a column
        the log gave no value is exported as null, as a restore writes it)."""
        transactions = replay_range(self.log_store, self.plan.snapshot, self.plan.at)
        if self.plan.shapes is None or not self.plan.shapes.changed:
            return fold_state(self.plan.context, self._snapshot_rows(), transactions)
        shapes = self.plan.shapes
        state, _walk = fold_in_shape(
            shapes, self._snapshot_rows(shapes.start), transactions, fill_lacking=True
        )
        return state

    def _snapshot_rows(
        self, tables: Iterable[str] | None = None
    ) -> Iterator[tuple[str, NaturalKey, dict[str, Any]]]:
        """The snapshot's rows of ``tables`` (those of the plan's context by default)."""
        snapshot = self.plan.snapshot
        names = [s.name for s in self.plan.context] if tables is None else list(tables)
        for name in names:
            file = snapshot.table(name)
            if file is not None:
                for item in read_table(snapshot, file):
                    yield name, item["k"], item["r"]

    def _members(self, through: str, m2m: _M2M) -> dict[str, list[Any]]:
        """Owner key text -> the target keys of its many-to-many field, as fixture lists."""
        out: dict[str, list[Any]] = {}
        target = self.specs[m2m.target]
        for _key, row in self._rows(through):
            owner, member = row.get(m2m.owner_part), row.get(m2m.target_part)
            if owner is not None and member is not None:
                flat = flatten_key(target, self.specs, member, self._value)
                out.setdefault(key_text(owner), []).append(flat)
        return out

    def _value(self, spec: TableSpec, column: str, value: Any) -> Any:
        convert = self._converters.get((spec.name, column))
        if convert is None:
            convert = fixture_converter(spec, spec.column(column), self.dialect)
            self._converters[(spec.name, column)] = convert
        return convert(value)

    def _objects(
        self,
        label: str,
        spec: TableSpec,
        m2m: _M2M | None,
        members: Mapping[str, list[Any]] | None,
    ) -> Iterator[dict[str, Any]]:
        plan = FieldPlan.of(spec)
        plain = [c for c in plan.plain.values() if c != plan.pk_column]
        for key, row in self._rows(spec.name):
            fields = {c: self._value(spec, c, row.get(c)) for c in plain}
            for fk in spec.foreign_keys:
                value = row.get(fk.part_name)
                ref = self.specs[fk.ref_table]
                fields[field_name(fk.columns[0]) if len(fk.columns) == 1 else fk.part_name] = (
                    None if value is None else flatten_key(ref, self.specs, value, self._value)
                )
            if m2m is not None and members is not None:
                fields[m2m.name] = members.get(key_text(key), [])
            obj: dict[str, Any] = {"model": label}
            if plan.pk_column is not None:
                obj["pk"] = self._value(spec, plan.pk_column, row.get(plan.pk_column))
            obj["fields"] = fields
            yield obj


def _raw_json(value: Any) -> Any:
    if isinstance(value, RawJson):
        return orjson.Fragment(value.text)
    raise TypeError(f"cannot write {type(value).__name__} into a fixture")
