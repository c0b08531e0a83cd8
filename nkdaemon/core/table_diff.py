"""How the rows found in a table differ from the rows the fold of the log expects."""

from __future__ import annotations

from dataclasses import dataclass, field


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
