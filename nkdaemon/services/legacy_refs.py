"""The import's references: a fixture value as a reference, resolved through the spill.

A reference is staged as ``["p", pk text]`` (a fixture without natural keys) or
``["n", natural key text]`` (``--natural-foreign``), and resolved in batches to the
referenced object's natural key, or to a Problem for the reconciliation report.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import orjson

from nkdaemon.core.keys import ForeignKeySpec, TableSpec
from nkdaemon.core.legacy import Convert, nest_key
from nkdaemon.services.legacy_spill import M2MOwner, Ref, Spill, Staged, StagedObject, pk_text

Found = dict[tuple[str, str, str], tuple[object, str]]
"""(table, kind, text) of a reference -> (its natural key or None, why not)."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One line of the reconciliation report."""

    model: str
    pk: object
    field: str
    reason: str

    def line(self) -> str:
        pk = "(natural key)" if self.pk is None else f"pk {self.pk}"
        return f"{self.model} {pk} {self.field}: {self.reason}"


class Reconciliation(Protocol):
    """Where resolving rows reports its problems (the import's report)."""

    problems: list[Problem]
    nulled: list[Problem]


def ref_of(
    fk: ForeignKeySpec, value: object, specs: Mapping[str, TableSpec], convert: Convert
) -> Ref | None:
    """A fixture's foreign-key value as a staged reference."""
    if value is None:
        return None
    ref_spec = specs[fk.ref_table]
    if isinstance(value, list):
        key = nest_key(ref_spec, specs, value, convert)
    elif fk.by_natural_key:
        key = {c: convert(ref_spec, c, value) for c in fk.ref_columns}
    else:
        return ["p", pk_text(value) or ""]
    return ["n", orjson.dumps(key).decode()]


class RefResolver:
    """Resolves staged references in batches against the spilled natural-key index."""

    def __init__(self, spill: Spill, specs: Mapping[str, TableSpec], allow_dangling: bool) -> None:
        self.spill = spill
        self.specs = specs
        self.allow_dangling = allow_dangling

    def _lookup(self, wanted: Mapping[str, set[tuple[str, str]]]) -> Found:
        """(table, kind, text) -> (natural key or None, why not)."""
        out: Found = {}
        for table, refs in wanted.items():
            number = self.specs[table].number
            pks = {text for kind, text in refs if kind == "p"}
            keys = {text for kind, text in refs if kind == "n"}
            by_pk = self.spill.keys_by_pk(number, pks) if pks else {}
            for pk in pks:
                found = by_pk.get(pk, [])
                out[(table, "p", pk)] = _one(found, f"{table} pk {pk}")
            known = self.spill.known_keys(number, keys) if keys else {}
            for key in keys:
                count = known.get(key, 0)
                out[(table, "n", key)] = _one([key] * count, f"{table} {key}")
        return out

    def _wanted(
        self, batch: Sequence[StagedObject], fks: Sequence[ForeignKeySpec]
    ) -> dict[str, set[tuple[str, str]]]:
        wanted: dict[str, set[tuple[str, str]]] = {}
        for item in batch:
            refs = item[2]["f"]
            for fk in fks:
                ref = refs.get(fk.part_name)
                if ref is not None:
                    wanted.setdefault(fk.ref_table, set()).add((ref[0], ref[1]))
        return wanted

    # --- natural keys ---------------------------------------------------------------------

    def keys(
        self,
        spec: TableSpec,
        label: str,
        batch: Sequence[StagedObject],
        problems: list[Problem],
    ) -> list[tuple[int, str | None, str, int]]:
        """Index entries (table, pk, key text, seq) for a batch; problems for the rest."""
        key_fks = [p.foreign_key for p in spec.key_parts if p.foreign_key is not None]
        found = self._lookup(self._wanted(batch, key_fks))
        entries = []
        for seq, pk, data, _key in batch:
            key: dict[str, object] = {}
            for part in spec.key_parts:
                fk = part.foreign_key
                if fk is None:
                    column = part.column
                    value = data["r"].get(column) if column is not None else None
                    why = "" if value is not None else f"key column {part.column} is null"
                else:
                    value, why = self._resolved(fk, data["f"].get(fk.part_name), found)
                if why:
                    problem = Problem(model=label, pk=data["pk"], field=part.name, reason=why)
                    problems.append(problem)
                    break
                key[part.name] = value
            else:
                entries.append((spec.number, pk, orjson.dumps(key).decode(), seq))
        return entries

    def _resolved(self, fk: ForeignKeySpec, ref: Ref | None, found: Found) -> tuple[object, str]:
        if ref is None:
            return None, f"key reference {fk.part_name} is null"
        return found[(fk.ref_table, ref[0], ref[1])]

    # --- rows -----------------------------------------------------------------------------

    def rows(
        self, spec: TableSpec, label: str, batch: Sequence[StagedObject], report: Reconciliation
    ) -> Iterator[dict[str, object]]:
        """Snapshot rows {"k", "r", "s"} of a batch; objects without a key are skipped
        (their problem is reported already)."""
        key_parts = {p.name for p in spec.key_parts if p.foreign_key is not None}
        other_fks = [fk for fk in spec.foreign_keys if fk.part_name not in key_parts]
        found = self._lookup(self._wanted(batch, other_fks))
        fk_columns = {c for fk in spec.foreign_keys for c in fk.columns}
        plain = [
            c
            for c in spec.columns
            if c.name not in fk_columns and c.name not in spec.surrogate_columns
        ]
        for _seq, _pk, data, key_text in batch:
            if key_text is None and not spec.full_row_identity:
                continue
            key = orjson.loads(key_text) if key_text is not None else None
            row: dict[str, object] = {}
            for column in plain:
                row[column.name] = data["r"].get(column.name)
                if row[column.name] is None and not column.nullable:
                    report.problems.append(
                        Problem(
                            model=label,
                            pk=data["pk"],
                            field=column.name,
                            reason="missing or null, and the column is NOT NULL",
                        )
                    )
            for fk in spec.foreign_keys:
                if key is not None and fk.part_name in key_parts:
                    row[fk.part_name] = key[fk.part_name]
                else:
                    row[fk.part_name] = self._reference(spec, fk, data, found, label, report)
            yield {"k": key if key is not None else row, "r": row, "s": data["pk"]}

    def _reference(
        self,
        spec: TableSpec,
        fk: ForeignKeySpec,
        data: Staged,
        found: Found,
        label: str,
        report: Reconciliation,
    ) -> object:
        ref = data["f"].get(fk.part_name)
        if ref is None:
            return None
        value, why = found[(fk.ref_table, ref[0], ref[1])]
        if not why:
            return value
        problem = Problem(model=label, pk=data["pk"], field=fk.part_name, reason=why)
        nullable = all(spec.column(c).nullable for c in fk.columns)
        if self.allow_dangling and nullable:
            report.nulled.append(problem)
        else:
            if self.allow_dangling:
                problem = Problem(
                    model=label, pk=data["pk"], field=fk.part_name, reason=why + " (NOT NULL)"
                )
            report.problems.append(problem)
        return None

    def through_rows(
        self,
        spec: TableSpec,
        label: str,
        name: str,
        owner_fk: ForeignKeySpec,
        target_fk: ForeignKeySpec,
        batch: Sequence[M2MOwner],
        report: Reconciliation,
    ) -> Iterator[dict[str, object]]:
        """Rows of a many-to-many field's through table, from its owners' lists."""
        wanted: dict[str, set[tuple[str, str]]] = {}
        for _pk, data, _key in batch:
            for ref in data["m"].get(name, []):
                if ref is not None:
                    wanted.setdefault(target_fk.ref_table, set()).add((ref[0], ref[1]))
        found = self._lookup(wanted)
        for _pk, data, owner_key in batch:
            # A null in a many-to-many list is skipped above but not here, where it fails
            # with TypeError as it always has; the cast keeps that behaviour unchanged.
            for ref in cast(list[Ref], data["m"].get(name, [])):
                value, why = found[(target_fk.ref_table, ref[0], ref[1])]
                if why:
                    report.problems.append(
                        Problem(model=label, pk=data["pk"], field=name, reason=why)
                    )
                    continue
                row: dict[str, object] = {
                    column.name: None
                    for column in spec.columns
                    if column.name not in spec.surrogate_columns
                    and not any(column.name in fk.columns for fk in spec.foreign_keys)
                }
                refs = {owner_fk.part_name: orjson.loads(owner_key), target_fk.part_name: value}
                for fk in spec.foreign_keys:
                    row[fk.part_name] = refs.get(fk.part_name)
                key = {p.name: row.get(p.name) for p in spec.key_parts}
                yield {"k": key, "r": row, "s": None}


def _one(found: list[str], what: str) -> tuple[object, str]:
    if not found:
        return None, f"{what} is not in the file"
    if len(found) > 1:
        return None, f"{what} matches {len(found)} rows"
    return orjson.loads(found[0]), ""
