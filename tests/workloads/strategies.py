"""hypothesis strategies: random schemas, workloads and whole cases, minus disabled features.

``cases(dialect, disabled=...)`` draws a :class:`~tests.workloads.case.Case`: a schema of
3-7 tables (see schema.py for the rules every one keeps) and a workload over it. A feature
in ``disabled`` is never drawn; ones that could only emerge from a combination (a
self-reference that lands inside a cycle, two foreign keys to one table) are filtered out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st

from tests.workloads.case import Case
from tests.workloads.schema import ID_KINDS, Column, ForeignKey, Schema, Table
from tests.workloads.workload import Marker, Op, Tx, Workload

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]

PLAIN_TABLES = ("customers", "orders", "items", "teams", "employees", "parts", "regions")
QUOTED_TABLES = ("Line Items", "Order", "user", "select", "group", "Größe", "pièces", "客户")
ID_NAMES = (("id",), ("ID", "Id Nr", "numéro"))
TEXT_KEY_NAMES = (("code",), ("Code", "the code", "clé"))
INT_KEY_NAMES = (("num",), ("Number", "nº", "order"))
PAYLOAD_NAMES = (("note", "qty"), ("Note Text", "Menge", "select", "ünit"))


@dataclass
class _Draft:
    """A table while its foreign keys are still being added."""

    name: str
    id_kind: str
    columns: list[Column]
    primary_key: tuple[str, ...]
    key: tuple[str, ...]
    plain_key: tuple[str, ...]
    unique: tuple[str, ...]
    keyless: bool = False
    declare_key: bool = False
    foreign_keys: list[ForeignKey] = field(default_factory=list)

    def fresh(self, name: str) -> str:
        taken = {c.name.casefold() for c in self.columns}
        out, n = name, 2
        while out.casefold() in taken:
            out, n = f"{name}_{n}", n + 1
        return out

    def freeze(self) -> Table:
        return Table(
            name=self.name,
            id_kind=self.id_kind,
            columns=tuple(self.columns),
            primary_key=self.primary_key,
            key=self.key,
            plain_key=self.plain_key,
            unique=self.unique,
            foreign_keys=tuple(self.foreign_keys),
            keyless=self.keyless,
            declare_key=self.declare_key,
        )


class _Builder:
    def __init__(self, draw: Draw[Any], dialect: str, disabled: Collection[str]) -> None:
        self.draw = draw
        self.dialect = dialect
        self.disabled = disabled
        self.quoted = self.on("quoted_names")
        self.drafts: list[_Draft] = []

    def on(self, feature: str) -> bool:
        return feature not in self.disabled

    def pick(self, options: Collection[T]) -> T:
        return self.draw(st.sampled_from(list(options)))

    def chance(self, feature: str = "", p: float = 0.5) -> bool:
        if feature and not self.on(feature):
            return False
        return self.draw(st.integers(0, 99)) < int(p * 100)

    def name(self, pools: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
        return self.pick(pools[0] + pools[1]) if self.quoted else pools[0][0]

    # --- tables -------------------------------------------------------------------------

    def table(self, name: str) -> _Draft:
        kinds = [k for k in ("unique_text", "unique_int", "composite_key", "fk_key") if self.on(k)]
        parents = [d for d in self.drafts if self.referable(d, in_key=True)]
        if not parents or not self.on("not_null_fk"):
            kinds = [k for k in kinds if k != "fk_key"]
        key_kind = self.pick(kinds or ["unique_text"])
        ids = [k for k in ID_KINDS[self.dialect] if self.on(k)]
        ids = [
            k
            for k in ids
            if (k != "text_pk" or key_kind == "unique_text")
            and (k != "composite_pk" or key_kind in ("composite_key", "fk_key"))
        ]
        id_kind = self.pick(ids or ["serial"])
        draft = _Draft(name, id_kind, [], (), (), (), ())
        surrogate = id_kind not in ("text_pk", "composite_pk")
        if surrogate:
            kind = {"bigserial": "bigint", "uuid": "uuid"}.get(id_kind, "int")
            draft.columns.append(Column(name=self.name(ID_NAMES), kind=kind, nullable=False))
            draft.primary_key = (draft.columns[0].name,)
        key: list[str] = []
        if key_kind == "fk_key":
            parent = self.pick(parents)
            on_delete = self.pick(["", "CASCADE"] if self.on("on_delete_cascade") else [""])
            key += self.reference(draft, parent, nullable=False, on_delete=on_delete)
        if key_kind in ("unique_text", "composite_key"):
            key.append(self.column(draft, TEXT_KEY_NAMES, "text"))
        if key_kind in ("unique_int", "composite_key", "fk_key"):
            key.append(self.column(draft, INT_KEY_NAMES, "int"))
        draft.key = tuple(key)
        fk_columns = {c for fk in draft.foreign_keys for c in fk.columns}
        draft.plain_key = tuple(c for c in key if c not in fk_columns)
        if surrogate:
            draft.unique = draft.key
        else:
            draft.primary_key = draft.key
        draft.declare_key = self.chance("declared_key", 0.3)
        for _ in range(self.draw(st.integers(0, 2))):
            self.column(draft, PAYLOAD_NAMES, self.pick(["int", "text"]), nullable=True)
        return draft

    def keyless(self, name: str) -> _Draft:
        draft = _Draft(name, "none", [], (), (), (), (), keyless=True)
        if self.chance(p=0.5) and self.on("serial"):
            draft.id_kind = "serial"
            draft.columns.append(Column(name=self.name(ID_NAMES), kind="int", nullable=False))
            draft.primary_key = (draft.columns[0].name,)
        for _ in range(self.draw(st.integers(1, 2))):
            self.column(draft, PAYLOAD_NAMES, self.pick(["int", "text"]), nullable=True)
        return draft

    def column(
        self,
        draft: _Draft,
        pools: tuple[tuple[str, ...], tuple[str, ...]],
        kind: str,
        *,
        nullable: bool = False,
    ) -> str:
        name = draft.fresh(self.name(pools))
        draft.columns.append(Column(name=name, kind=kind, nullable=nullable))
        return name

    # --- references ---------------------------------------------------------------------

    def reference(
        self, draft: _Draft, target: _Draft, *, nullable: bool, on_delete: str = ""
    ) -> list[str]:
        """Add a foreign key from ``draft`` to ``target``'s primary key; its columns."""
        base = "parent" if target is draft else target.name
        columns = []
        for ref in target.primary_key:
            kind = target_kind(target, ref)
            suffix = "id" if len(target.primary_key) == 1 else ref
            name = draft.fresh(f"{base}_{suffix}")
            draft.columns.append(Column(name=name, kind=kind, nullable=nullable))
            columns.append(name)
        natural_pk = target.id_kind in ("text_pk", "composite_pk")
        on_update = "CASCADE" if natural_pk and self.chance("on_update_cascade", 0.7) else ""
        draft.foreign_keys.append(
            ForeignKey(
                columns=tuple(columns),
                ref_table=target.name,
                ref_columns=target.primary_key,
                nullable=nullable,
                on_delete=on_delete,
                on_update=on_update,
            )
        )
        return columns

    def on_delete(self, nullable: bool) -> str:
        options = [""]
        if self.on("on_delete_cascade"):
            options.append("CASCADE")
        if nullable and self.on("on_delete_set_null"):
            options.append("SET NULL")
        return self.pick(options)

    def nullability(self) -> bool | None:
        """True: nullable, False: NOT NULL; None when neither may be drawn."""
        options = [n for n, f in ((True, "nullable_fk"), (False, "not_null_fk")) if self.on(f)]
        return self.pick(options) if options else None

    def referable(self, target: _Draft, *, in_key: bool = False) -> bool:
        """Whether a foreign key to ``target`` (inside a natural key) uses only features on."""
        if len(target.primary_key) > 1 and not self.on("composite_fk"):
            return False
        if target.id_kind not in ("text_pk", "composite_pk"):
            return True
        return self.on("natural_fk_key" if in_key else "natural_fk")

    def plain_reference(self, source: _Draft, target: _Draft) -> None:
        if not self.referable(target):
            return
        if any(fk.ref_table == target.name for fk in source.foreign_keys) and not self.on(
            "double_fk"
        ):
            return
        nullable = self.nullability()
        if nullable is not None:
            self.reference(source, target, nullable=nullable, on_delete=self.on_delete(nullable))

    def back_reference(self, source: _Draft, target: _Draft) -> None:
        """A nullable foreign key that may close a cycle (or be a self-reference)."""
        if self.on("nullable_fk") and self.referable(target):
            self.reference(source, target, nullable=True, on_delete=self.on_delete(True))

    def references(self, normal: list[_Draft]) -> None:
        for i, draft in enumerate(normal[1:], start=1):
            for _ in range(self.draw(st.integers(0, 2))):
                self.plain_reference(draft, normal[self.draw(st.integers(0, i - 1))])
        if self.chance("cycle2", 0.4):
            edges = [(i, j) for i, d in enumerate(normal) for j in self.targets(d, normal) if j < i]
            if edges:
                i, j = self.pick(edges)
                self.back_reference(normal[j], normal[i])
        if len(normal) >= 3 and self.chance("cycle3", 0.3):
            a, b, c = sorted(self.draw(st.permutations(range(len(normal))))[:3])
            for source, target in ((c, b), (b, a)):
                if target not in self.targets(normal[source], normal):
                    self.back_reference(normal[source], normal[target])
            self.back_reference(normal[a], normal[c])
        self.self_references(normal)

    def self_references(self, normal: list[_Draft]) -> None:
        schema = _schema(self.dialect, normal)
        for draft in normal:
            inside = schema.behind_cycle(draft.name)
            wanted = (self.chance("self_ref_in_cycle", 0.6) if inside else False) or self.chance(
                "self_reference", 0.25
            )
            if wanted and (not inside or self.on("self_ref_in_cycle")):
                self.back_reference(draft, draft)

    def targets(self, draft: _Draft, normal: list[_Draft]) -> list[int]:
        names = [d.name for d in normal]
        return [names.index(fk.ref_table) for fk in draft.foreign_keys if fk.ref_table in names]


def target_kind(target: _Draft, column: str) -> str:
    kind = next(c.kind for c in target.columns if c.name == column)
    return "int" if kind == "int" else kind


def _schema(dialect: str, drafts: list[_Draft]) -> Schema:
    return Schema(dialect=dialect, tables=tuple(d.freeze() for d in drafts))


@st.composite
def schemas(draw: Draw[Any], dialect: str, disabled: Collection[str] = frozenset()) -> Schema:
    builder = _Builder(draw, dialect, disabled)
    count = draw(st.integers(3, 7))
    pool = PLAIN_TABLES + (QUOTED_TABLES if builder.quoted else ())
    names = draw(
        st.lists(st.sampled_from(pool), min_size=count, max_size=count, unique_by=str.casefold)
    )
    with_keyless = builder.chance("keyless", 0.3)
    normal: list[_Draft] = []
    for name in names[: count - 1] if with_keyless else names:
        builder.drafts = normal
        normal.append(builder.table(name))
    builder.references(normal)
    drafts = list(normal)
    if with_keyless:
        keyless = builder.keyless(names[-1])
        for _ in range(draw(st.integers(0, 2))):
            builder.plain_reference(keyless, builder.pick(normal))
        drafts.append(keyless)
    return _schema(dialect, drafts)


def allowed(schema: Schema, disabled: Collection[str]) -> bool:
    return not (schema.features() & set(disabled))


# --- workloads ----------------------------------------------------------------------------


def operations(disabled: Collection[str]) -> list[str]:
    kinds = ["insert", "insert", "update"]
    kinds += [k for k in ("rename", "repoint", "delete", "delete_reinsert") if k not in disabled]
    return kinds


@st.composite
def workloads(
    draw: Draw[Any],
    disabled: Collection[str] = frozenset(),
    *,
    min_steps: int = 0,
    max_steps: int = 8,
) -> Workload:
    op = st.builds(
        Op,
        kind=st.sampled_from(operations(disabled)),
        table=st.integers(0, 6),
        pick=st.integers(0, 30),
        other=st.integers(0, 30),
    )
    commit = st.just(True) if "rollback" in disabled else st.integers(0, 5).map(bool)
    tx = st.builds(Tx, ops=st.lists(op, min_size=1, max_size=3).map(tuple), commit=commit)
    markers = ["instant", "drain"] + ([] if "snapshot_midway" in disabled else ["snapshot"])
    step = st.one_of(tx, st.sampled_from(markers).map(lambda kind: Marker(kind=kind)))
    steps = draw(st.lists(step, min_size=min_steps, max_size=max_steps))
    return Workload(seed_rows=draw(st.integers(0, 3)), steps=(*steps, Marker(kind="instant")))


@st.composite
def cases(
    draw: Draw[Any],
    dialect: str,
    disabled: Collection[str] = frozenset(),
    *,
    min_steps: int = 0,
    max_steps: int = 8,
) -> Case:
    schema = draw(schemas(dialect, disabled).filter(lambda s: allowed(s, disabled)))
    workload = draw(workloads(disabled, min_steps=min_steps, max_steps=max_steps))
    return Case(schema=schema, workload=workload, seed=draw(st.integers(0, 2**16)))
