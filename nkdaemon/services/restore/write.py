"""Writing rows into the target by natural key: references resolved to addresses, new rows
inserted, known rows updated, references that wait for their row set once it exists.

A reference may have to wait: a cycle breaker or self-reference (the insert order defers
it), or a forward reference whose row a later event inserts. The writer owns those:
``late`` references are found per call, for the rows in hand, and become ``deferred`` as
soon as their own row has an address; ``apply_deferred`` sets the deferred ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic

from nkdaemon.core.keys import ForeignKeySpec, NaturalKey, TableSpec
from nkdaemon.core.ports import Address, Converter, RestoreTarget, TableT
from nkdaemon.core.restore_runs import Row, fk_values, in_column_order, show_key, value_columns
from nkdaemon.services.restore.plan import RestoreError
from nkdaemon.services.restore.resolve import Resolver, canonical_text
from nkdaemon.targets.table import same_value

Late = dict[int, list[tuple[ForeignKeySpec, NaturalKey]]]
"""References still unset, by row (``id`` of the row's payload in the call in hand)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeferredRef:
    """A reference to set on a row that exists (``address`` in ``table``) once the row it
    names (``key`` in ``fk.ref_table``) does."""

    table: str
    address: Address
    fk: ForeignKeySpec
    key: NaturalKey


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedRefs:
    """The foreign-key column values of each row (``values``, in spec.foreign_keys column
    order, None where a reference waits) and the references that wait (``late``)."""

    values: list[list[object]]
    late: Late


class RowWriter(Generic[TableT]):
    """Inserts and updates rows of the target; see the module docstring.

    ``referenced``: tables whose rows other tables refer to (their addresses are worth
    remembering); ``written``: for tables that held rows before, the address of every row
    this restore wrote (filled here, read by --prune-target)."""

    def __init__(
        self,
        *,
        target: RestoreTarget[TableT],
        tables: Mapping[str, TableT],
        resolver: Resolver[TableT],
        referenced: set[str],
        written: dict[str, set[Address]],
    ) -> None:
        self.target = target
        self.tables = tables
        self.resolver = resolver
        self.referenced = referenced
        self.written = written
        self.deferred: list[DeferredRef] = []
        self._converter_cache: dict[tuple[str, tuple[str, ...]], list[tuple[str, Converter]]] = {}

    # --- inserting and updating ---------------------------------------------------------

    def write(
        self,
        table: TableT,
        items: Sequence[tuple[NaturalKey, Row]],
        *,
        match: bool,
        deferred: Sequence[ForeignKeySpec] = (),
        late_refs: bool = False,
        update_existing: bool = True,
    ) -> None:
        """Insert rows (or update the rows matched by key) for (key, payload) pairs;
        ``update_existing`` false: rows the target has are left as they are."""
        name = table.spec.name
        plain, fk_cols = value_columns(table.spec)
        refs = self.resolve_refs(table.spec, [row for _, row in items], deferred, late_refs)
        existing: dict[str, Address | None] = {}
        if match:
            existing = self.resolver.resolve(name, [k for k, _ in items])
            new_rows = [
                (k, r, refs.values[i])
                for i, (k, r) in enumerate(items)
                if existing.get(canonical_text(k)) is None
            ]
        else:  # a snapshot into an empty table: every row is new
            new_rows = [(k, r, refs.values[i]) for i, (k, r) in enumerate(items)]
        generated = bool(table.spec.surrogate_columns) and table.generated
        ids = self.target.allocate(table, len(new_rows)) if generated and new_rows else []
        convert = self.converters(table, plain)
        inserts = self._insert_values(new_rows, plain, convert, bool(fk_cols), ids, generated)
        columns = plain + fk_cols + (list(table.spec.surrogate_columns) if generated else [])
        self.target.insert(table, columns, inserts)
        if existing and update_existing:
            self._update_existing(table, items, existing, convert, refs)
        if not (name in self.referenced or name in self.written or refs.late):
            return
        for i, (key, row, _refs) in enumerate(new_rows):
            if not (name in self.referenced or name in self.written or id(row) in refs.late):
                continue
            address = (ids[i],) if generated else _address_of(table, inserts[i], plain + fk_cols)
            self._placed(name, key, address, refs.late.pop(id(row), []))
        if existing and name in self.written:
            self.written[name].update(a for a in existing.values() if a is not None)

    def _insert_values(
        self,
        new_rows: Sequence[tuple[NaturalKey, Row, list[object]]],
        plain: list[str],
        convert: list[tuple[str, Converter]],
        has_refs: bool,
        ids: Sequence[object],
        generated: bool,
    ) -> Sequence[Sequence[object]]:
        """The values to insert for new rows: plain columns, references, the drawn id."""
        as_is = all(f is same_value for _c, f in convert)
        if as_is and not has_refs and not generated:  # values straight from the row
            return in_column_order([row for _key, row, _refs in new_rows], plain)
        built: list[list[object]] = []
        for i, (_key, row, ref_values) in enumerate(new_rows):
            get = row.get
            values = [get(c) for c in plain] if as_is else [f(get(c)) for c, f in convert]
            values += ref_values
            if generated:
                values.append(ids[i])
            built.append(values)
        return built

    def _update_existing(
        self,
        table: TableT,
        items: Sequence[tuple[NaturalKey, Row]],
        existing: Mapping[str, Address | None],
        convert: list[tuple[str, Converter]],
        refs: ResolvedRefs,
    ) -> None:
        """Update the rows the target holds already to their payloads."""
        name = table.spec.name
        plain, fk_cols = value_columns(table.spec)
        updates = []
        for i, (key, row) in enumerate(items):
            address = existing.get(canonical_text(key))
            if address is not None:
                values = [f(row.get(c)) for c, f in convert] + refs.values[i]
                updates.append([*values, *address])
                for fk, ref_key in refs.late.pop(id(row), []):  # set once its row exists
                    self.deferred.append(
                        DeferredRef(table=name, address=address, fk=fk, key=ref_key)
                    )
        self.target.update(table, plain + fk_cols, updates)

    def _placed(
        self,
        name: str,
        key: NaturalKey,
        address: Address,
        late: Iterable[tuple[ForeignKeySpec, NaturalKey]],
    ) -> None:
        """A new row has its address: remember it, and its references may be set now."""
        if name in self.referenced:
            self.resolver.remember(name, key, address)
        if name in self.written:
            self.written[name].add(address)
        for fk, ref_key in late:
            self.deferred.append(DeferredRef(table=name, address=address, fk=fk, key=ref_key))

    def update_many(
        self,
        table: TableT,
        items: Sequence[tuple[NaturalKey, Row]],
        old_key: NaturalKey | None = None,
    ) -> None:
        """Update rows in place to (key, row); ``old_key``: the one row's key before a rename."""
        spec = table.spec
        name = spec.name
        olds = [old_key] if old_key is not None else [key for key, _ in items]
        found = self.resolver.resolve(name, olds)
        plain, fk_columns = value_columns(spec)
        convert = self.converters(table, plain)
        refs = self.resolve_refs(spec, [row for _, row in items], (), True)
        rows: list[list[object]] = []
        addresses: list[Address] = []
        for (_key, row), old, ref_values in zip(items, olds, refs.values, strict=True):
            address = found.get(canonical_text(old))
            if address is None:
                raise RestoreError(
                    f"the log updates {name} {show_key(old)}, which the target does not hold"
                )
            values = [f(row.get(c)) for c, f in convert] + ref_values
            rows.append([*values, *address])
            if not spec.surrogate_columns:
                address = _address_of(table, values, plain + fk_columns)
            addresses.append(address)
        self.target.update(table, plain + fk_columns, rows)
        for (key, row), address in zip(items, addresses, strict=True):
            self.resolver.remember(name, key, address)
            for fk, ref_key in refs.late.pop(id(row), []):
                self.deferred.append(DeferredRef(table=name, address=address, fk=fk, key=ref_key))
        if self.deferred:  # a reference to these rows' keys can be set right away
            self.apply_deferred(partial=True)

    def converters(self, table: TableT, columns: list[str]) -> list[tuple[str, Converter]]:
        """Each column with the function that makes its values parameters (cached)."""
        key = (table.spec.name, tuple(columns))
        found = self._converter_cache.get(key)
        if found is None:
            found = [(c, self.target.converter(table, c)) for c in columns]
            self._converter_cache[key] = found
        return found

    def as_is(self, table: TableT, columns: list[str]) -> bool:
        """True when the values of these columns go to the target unconverted."""
        return all(f is same_value for _c, f in self.converters(table, columns))

    # --- references ---------------------------------------------------------------------

    def resolve_refs(
        self,
        spec: TableSpec,
        rows: Sequence[Row],
        deferred: Sequence[ForeignKeySpec],
        late_refs: bool,
    ) -> ResolvedRefs:
        """The foreign-key column values of each row, and the references left to wait:
        those of ``deferred`` foreign keys, and (``late_refs``) nullable ones whose row the
        target does not hold yet. Any other reference to a missing row is refused."""
        late: Late = {}
        if not spec.foreign_keys:
            return ResolvedRefs(values=[[]] * len(rows), late=late)  # nothing extends these
        out: list[list[object]] = [[] for _ in rows]
        for fk in spec.foreign_keys:
            keys = [row.get(fk.part_name) for row in rows]
            wanted = [k for k in keys if k is not None]
            found = (
                {} if fk in deferred or not wanted else self.resolver.reference_values(fk, wanted)
            )
            for i, key in enumerate(keys):
                if key is None:
                    out[i].extend([None] * len(fk.columns))
                    continue
                values = self._ref_values(spec, fk, key, found, fk in deferred, late_refs)
                if values is None:  # waits for its row: NULL until then
                    out[i].extend([None] * len(fk.columns))
                    late.setdefault(id(rows[i]), []).append((fk, key))
                else:
                    out[i].extend(values)
        return ResolvedRefs(values=out, late=late)

    def _ref_values(
        self,
        spec: TableSpec,
        fk: ForeignKeySpec,
        key: NaturalKey,
        found: Mapping[str, list[object] | None],
        deferred: bool,
        late_refs: bool,
    ) -> list[object] | None:
        """One reference's column values, or None when it is to wait for its row."""
        if deferred:  # a cycle breaker, even when its values are the key
            return None
        held = found.get(canonical_text(key))
        if held is not None:
            return held
        if late_refs and all(spec.column(c).nullable for c in fk.columns):
            return None
        raise RestoreError(
            f"{spec.name} refers to {fk.ref_table} {show_key(key)}, which "
            "neither the backup nor the target holds",
            hint=f"restore {fk.ref_table} too (drop --table), or create that row "
            "in the target first",
        )

    def apply_deferred(self, *, partial: bool = False) -> None:
        """Set references that waited for their row. ``partial``: those whose row exists
        now, keeping the rest (called after every run of events, so a reference is set
        before a later event can rename or delete the row it names); otherwise all."""
        pending, self.deferred = self.deferred, []
        by_target: dict[tuple[str, int], list[DeferredRef]] = {}
        for ref in pending:
            by_target.setdefault((ref.table, id(ref.fk)), []).append(ref)
        for (name, _), entries in by_target.items():
            fk = entries[0].fk
            found = self.resolver.resolve(fk.ref_table, [ref.key for ref in entries])
            rows = []
            for ref in entries:
                address = found.get(canonical_text(ref.key))
                if address is None:
                    if partial:
                        self.deferred.append(ref)
                        continue
                    raise RestoreError(
                        f"{name} refers to {fk.ref_table} {show_key(ref.key)}, which does not exist"
                    )
                rows.append([*self._set_values(fk, ref.key, address), *ref.address])
            self.target.update(self.tables[name], list(fk.columns), rows)

    def _set_values(self, fk: ForeignKeySpec, key: NaturalKey, address: Address) -> list[object]:
        """The column values of a waiting reference whose row (at ``address``) exists now."""
        if fk.by_natural_key:
            values = self.resolver.natural_reference_values(fk, [key])[0]
            assert values is not None  # the row it names was just found
            return values
        return fk_values(fk, self.tables[fk.ref_table].primary_key, address)

    def discard_pending(self) -> None:
        """Forget the references waiting to be set (their writes were rolled back)."""
        self.deferred = []


def _address_of(table: TableT, values: Sequence[object], columns: list[str]) -> Address:
    """A row's address from the values it was written with (its primary key among them)."""
    by_column = dict(zip(columns, values, strict=False))
    return tuple(by_column[c] for c in table.primary_key)
