"""Captured row changes as a source hands them over, before ids become natural keys.

What the log holds (change events named by natural keys, transactions, markers) is in
core/log.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nkdaemon.core.log import Op

# "B": a baseline row (its values now, in ``new``) after a SchemaChange with baseline.
RawOp = Op | Literal["B"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RawChange:
    """One captured row change, its values already in canonical form, ids not yet translated."""

    table: int
    op: RawOp
    old: dict[str, Any] | None
    new: dict[str, Any] | None
