"""`import-legacy`: a Django fixture (dumpdata JSON) into the repository as a snapshot.

Three passes, in bounded memory whatever the file's size:

1. stream the file (ijson) and stage every object, its values already in canonical form,
   into a temporary SQLite file (legacy_spill);
2. give every object its natural key, tables in the order their keys nest, through the
   spilled pk -> key index (a fixture without natural keys names references by pk), and
   find duplicate natural keys and pks;
3. write each table through the snapshot writer with every reference named by natural
   key, listing each reference that does not resolve.

The snapshot is written under its temporary name and committed only when the
reconciliation report is clean (or ``allow_dangling`` let nullable references become
NULL); otherwise it is removed and ImportRefused carries the report.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import ijson
import orjson
import structlog

from nkdaemon.core.definitions import spec_to_json
from nkdaemon.core.errors import NkdError, UsageError
from nkdaemon.core.keys import ForeignKeySpec, TableSpec
from nkdaemon.core.legacy import (
    FieldPlan,
    KeyShapeError,
    ModelMap,
    key_dependency_order,
    through_sides,
)
from nkdaemon.core.legacy_values import ValueShapeError, canonical_converter
from nkdaemon.repository.snapshots import SnapshotInfo, SnapshotWriter, list_snapshots
from nkdaemon.services.fixture_io import open_fixture
from nkdaemon.services.legacy_refs import Problem, RefResolver, ref_of
from nkdaemon.services.legacy_spill import Ref, Staged

log = structlog.get_logger("nkdaemon.legacy_import")

Progress = Callable[[str, int, int | None], None]
"""(stage, how many more done, total if known)."""


class ImportRefused(NkdError):
    """The fixture's references do not reconcile; nothing was written."""

    kind = "import_refused"

    def __init__(self, report: ImportReport) -> None:
        super().__init__(
            f"{report.file}: {report.problem_count} problems; nothing was imported",
            hint="fix the fixture, or pass --allow-dangling to import nullable references "
            "to missing rows as NULL (duplicate keys and required references still refuse)",
        )
        self.report = report


@dataclass(kw_only=True)
class ImportReport:
    file: str
    at: datetime
    models: dict[str, tuple[str, int]] = field(default_factory=dict)  # label -> (table, rows)
    problems: list[Problem] = field(default_factory=list)
    nulled: list[Problem] = field(default_factory=list)
    empty_tables: list[str] = field(default_factory=list)
    snapshot: SnapshotInfo | None = None
    objects: int = 0
    seconds: float = 0.0

    @property
    def problem_count(self) -> int:
        return len(self.problems)

    def counts(self, problems: list[Problem]) -> dict[str, int]:
        out: dict[str, int] = {}
        for problem in problems:
            out[problem.model] = out.get(problem.model, 0) + 1
        return out


@dataclass(frozen=True, kw_only=True)
class ImportSettings:
    specs: Mapping[int, TableSpec]
    dialect: str
    model_map: ModelMap
    allow_dangling: bool = False


def import_fixture(
    *,
    path: Path,
    at: datetime,
    snapshots_dir: Path,
    work_dir: Path,
    settings: ImportSettings,
    progress: Progress | None = None,
) -> ImportReport:
    """Import ``path`` as a snapshot at ``at``; raises ImportRefused with the report."""
    started = time.monotonic()
    if any(s.moment == at for s in list_snapshots(snapshots_dir)):
        raise UsageError(
            f"the repository already holds a snapshot at {at.isoformat()}",
            hint="choose another instant with --at",
        )
    report = ImportReport(file=path.name, at=at)
    scratch = Path(tempfile.mkdtemp(prefix=".import-", dir=work_dir))
    try:
        run = _Import(settings, report, scratch, progress or (lambda stage, n, total: None))
        run.stage(path)
        run.index_keys()
        run.write(path, snapshots_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = time.monotonic() - started
    log.info("import.done", file=path.name, objects=report.objects, seconds=report.seconds)
    return report


class _Import:
    def __init__(
        self, settings: ImportSettings, report: ImportReport, scratch: Path, progress: Progress
    ) -> None:
        from nkdaemon.services.legacy_spill import Spill

        self.settings = settings
        self.report = report
        self.progress = progress
        self.spill = Spill(scratch)
        self.specs = {s.name: s for s in settings.specs.values()}
        self.plans = {name: FieldPlan.of(spec) for name, spec in self.specs.items()}
        self.labels: dict[str, str] = {}  # table -> the label the fixture gave it
        self.m2m: dict[str, list[tuple[str, str, ForeignKeySpec, ForeignKeySpec]]] = {}
        self._refused: list[str] = []
        self._converters: dict[tuple[str, str], Callable[[object], object]] = {}
        self.resolver = RefResolver(self.spill, self.specs, settings.allow_dangling)

    # --- pass 1: stage --------------------------------------------------------------------

    def stage(self, path: Path) -> None:
        size = path.stat().st_size
        with open_fixture(path) as (stream, counter):
            seen = 0
            try:
                for number, obj in enumerate(ijson.items(stream, "item"), start=1):
                    self._stage_one(number, obj)
                    if number % 5000 == 0:
                        self.progress("read", counter.count - seen, size)
                        seen = counter.count
            except ijson.JSONError as exc:
                raise UsageError(
                    f"{path}: not a Django fixture (JSON list of objects): {exc}",
                    hint="give the file `manage.py dumpdata` wrote (or its .gz/.bz2/.xz/.zst)",
                ) from None
            self.progress("read", counter.count - seen, size)
        if self._refused:
            shown = "\n  ".join(self._refused[:20])
            raise UsageError(
                f"{path.name} does not fit the tables' definitions:\n  {shown}",
                hint="map model labels to tables with [legacy.models] in the configuration; "
                "a field must be a column of its table (a foreign key: <field>_id)",
            )
        self.spill.finish_staging()

    def _stage_one(self, number: int, obj: object) -> None:
        self.report.objects += 1
        if not isinstance(obj, dict) or "model" not in obj:
            self._refuse(f"object {number} is not a fixture object (no 'model')")
            return
        label = str(obj["model"]).lower()
        table = self.settings.model_map.table(label, self.specs)
        if table is None or table not in self.specs:
            self._refuse(f"model {label} maps to no captured table ({table or 'no default'})")
            return
        self.labels.setdefault(table, label)
        plan = self.plans[table]
        fields = obj.get("fields") or {}
        pk = obj.get("pk")
        data: Staged = {"r": {}, "f": {}, "m": {}, "pk": pk}
        for name, value in fields.items():
            self._stage_field(table, label, plan, data, name, value)
        if plan.pk_column is not None and pk is not None:
            data["r"].setdefault(plan.pk_column, self._canonical(plan.spec, plan.pk_column, pk))
        self.spill.stage(plan.spec.number, pk, data, m2m=bool(data["m"]))

    def _stage_field(
        self, table: str, label: str, plan: FieldPlan, data: Staged, name: str, value: object
    ) -> None:
        spec = plan.spec
        if name in plan.plain:
            data["r"][plan.plain[name]] = self._canonical(spec, plan.plain[name], value)
        elif name in plan.refs:
            fk = plan.refs[name]
            data["f"][fk.part_name] = self._ref(fk, value, f"{label}.{name}")
        elif isinstance(value, list) and (through := self._through(table, label, name)):
            target_fk = through[3]
            data["m"][name] = [self._ref(target_fk, v, f"{label}.{name}") for v in value]
        else:
            columns = ", ".join(c.name for c in spec.columns)
            self._refuse(f"{label}.{name}: table {table} has no such column ({columns})")

    def _through(
        self, table: str, label: str, name: str
    ) -> tuple[str, str, ForeignKeySpec, ForeignKeySpec] | None:
        for entry in self.m2m.get(table, []):
            if entry[1] == name:
                return entry
        through = self.settings.model_map.through(label, name, table, self.specs)
        if through is None or through not in self.specs:
            return None
        sides = through_sides(self.specs[through], table)
        if sides is None:
            return None
        entry = (through, name, *sides)
        self.m2m.setdefault(table, []).append(entry)
        return entry

    def _ref(self, fk: ForeignKeySpec, value: object, where: str) -> Ref | None:
        try:
            return ref_of(fk, value, self.specs, self._convert)
        except (KeyShapeError, ValueShapeError) as exc:
            self._refuse(f"{where}: {value!r} is not a reference to {fk.ref_table} ({exc})")
            return None

    def _convert(self, spec: TableSpec, column: str, value: object) -> object:
        convert = self._converters.get((spec.name, column))
        if convert is None:
            convert = canonical_converter(spec, spec.column(column), self.settings.dialect)
            self._converters[(spec.name, column)] = convert
        return convert(value)

    def _canonical(self, spec: TableSpec, column: str, value: object) -> object:
        try:
            return self._convert(spec, column, value)
        except ValueShapeError as exc:
            self._refuse(f"{spec.name}.{column}: {exc}")
            return None

    def _refuse(self, line: str) -> None:
        if line not in self._refused:
            self._refused.append(line)

    # --- pass 2: natural keys -------------------------------------------------------------

    def index_keys(self) -> None:
        keyed = [s for s in self.specs.values() if not s.full_row_identity]
        total = sum(self.spill.count(s.number) for s in keyed)
        for spec in key_dependency_order(keyed):
            label = self.labels.get(spec.name, spec.name)
            for batch in self.spill.objects(spec.number):
                entries = self.resolver.keys(spec, label, batch, self.report.problems)
                self.spill.index(entries)
                self.progress("keys", len(batch), total)
            for key, pks in self.spill.duplicate_keys(spec.number):
                self.report.problems.append(
                    Problem(
                        model=label,
                        pk=pks[0],
                        field="(natural key)",
                        reason=f"natural key {key} is also that of pk {pks[1]}"
                        + (f" and {len(pks) - 2} more" if len(pks) > 2 else ""),
                    )
                )
            for pk in self.spill.duplicate_pks(spec.number):
                self.report.problems.append(
                    Problem(model=label, pk=orjson.loads(pk), field="pk", reason="appears twice")
                )

    # --- pass 3: write --------------------------------------------------------------------

    def write(self, path: Path, snapshots_dir: Path) -> None:
        snapshots_dir.mkdir(parents=True, exist_ok=True)
        writer = SnapshotWriter(snapshots_dir, time=self.report.at, position=0)
        total = self.report.objects
        try:
            for spec in self.settings.specs.values():
                rows = writer.write_table(spec.number, spec.name, self._rows(spec, total))
                if rows == 0:
                    self.report.empty_tables.append(spec.name)
            if self.report.problems:
                raise ImportRefused(self.report)
            self.report.snapshot = writer.commit(
                installation="imported",
                log_lsn=0,
                dialect=self.settings.dialect,
                definitions=[spec_to_json(s) for s in self.settings.specs.values()],
                imported={
                    "file": path.name,
                    "format": "django",
                    "objects": self.report.objects,
                    "dangling_set_null": len(self.report.nulled),
                },
            )
        except BaseException:
            writer.abort()
            raise

    def _rows(self, spec: TableSpec, total: int) -> Iterator[dict[str, object]]:
        label = self.labels.get(spec.name, spec.name)
        count = 0
        for batch in self.spill.objects(spec.number):
            for row in self.resolver.rows(spec, label, batch, self.report):
                count += 1
                yield row
            self.progress("write", len(batch), total)
        if spec.name in self.labels:
            self.report.models[label] = (spec.name, count)
        for owner, entries in self.m2m.items():
            for through, name, owner_fk, target_fk in entries:
                if through == spec.name:
                    yield from self._through_rows(spec, owner, name, owner_fk, target_fk)

    def _through_rows(
        self,
        spec: TableSpec,
        owner: str,
        name: str,
        owner_fk: ForeignKeySpec,
        target_fk: ForeignKeySpec,
    ) -> Iterator[dict[str, object]]:
        label = f"{self.labels.get(owner, owner)}.{name}"
        count = 0
        for batch in self.spill.m2m_owners(self.specs[owner].number):
            for row in self.resolver.through_rows(
                spec, label, name, owner_fk, target_fk, batch, self.report
            ):
                count += 1
                yield row
        self.report.models[label] = (spec.name, count)
