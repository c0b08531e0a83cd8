"""Rows read back from a target compared with what the fold of the log expects."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fold calls in here; only its type is needed
    from nkdaemon.core.fold import LogFold

Pairs = Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]


class Unresolved(Exception):
    """A reference names a row the fold does not hold (the message names it)."""


def key_text(value: Any) -> str:
    """The canonical text of a natural key or row (stable: sorted object keys)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class TableDiff:
    table: str
    expected: int
    actual: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not (self.missing or self.unexpected or self.differing) and self.expected == self.actual
        )

    def summary(self, limit: int = 3) -> str:
        parts = [f"{self.table}: expected {self.expected} rows, found {self.actual}"]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("different", self.differing),
        ):
            if items:
                shown = "; ".join(items[:limit]) + (
                    f"; and {len(items) - limit} more" if len(items) > limit else ""
                )
                parts.append(f"{label}: {shown}")
        return " — ".join(parts)


def compare_rows(fold: LogFold, table: str, actual: Pairs) -> TableDiff:
    """Compare (natural key, row) pairs read back from the target (refs as natural keys).

    Consumes the table's expected rows (each matched row is dropped as it is seen, so a
    million-row table is not held twice); compare each table once."""
    diff = TableDiff(table=table, expected=fold.count(table))
    if fold.keyless(table):
        return _compare_multiset(fold, table, diff, actual)
    remaining = fold.expected(table)
    for key, row in actual:
        diff.actual += 1
        try:
            text = fold.entity_key(table, key)
            digest = fold.row_digest(table, row)
        except Unresolved as missing:
            diff.unexpected.append(f"{key_text(key)} (refers to {missing})")
            continue
        expected = remaining.pop(text, None)
        if expected is None:  # not expected, or a second row with the same key
            diff.unexpected.append(key_text(key))
        elif expected != digest:
            diff.differing.append(key_text(key))
    diff.missing.extend(remaining)
    remaining.clear()
    return diff


def _compare_multiset(fold: LogFold, table: str, diff: TableDiff, actual: Pairs) -> TableDiff:
    """Rows without a key are compared as a multiset: each target row takes one equal
    expected row; what is left over on either side is unexpected or missing."""
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for _key, row in actual:
        diff.actual += 1
        try:
            text = str(fold.row_digest(table, row))
        except Unresolved as missing:
            text = f"? {key_text(row)} (refers to {missing})"
        counts[text] = counts.get(text, 0) + 1
        shown.setdefault(text, key_text(row))
    expected = fold.expected(table)
    for text, count in counts.items():
        diff.unexpected.extend([shown[text]] * max(0, count - expected.get(text, 0)))
    for text, count in expected.items():
        short = count - counts.get(text, 0)
        diff.missing.extend([f"a whole row with digest {int(text):x}"] * max(0, short))
    return diff
