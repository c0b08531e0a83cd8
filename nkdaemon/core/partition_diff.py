"""Comparing two streams of rows too large to hold: digests per hash partition of the
natural key, then, for the partitions whose digests differ, their rows, to name them.

Each side is a stream of (natural key, row) in canonical natural-key form (references named
by natural key), read once to fold each partition's row count and the sum of its rows'
hashes (order does not matter; a row twice counts twice, so keyless tables compare as
multisets). Equal partitions are done with. The rows of the differing ones are read again
and held, a bounded number of rows at a time, to say which key is missing, unexpected or
different, as core/table_diff.py says it. A sound restore reads each side once and holds
two lists of ``partitions`` integers.

The per-row hash is Python's (SipHash of the canonical bytes): both sides are hashed in one
process, and it costs a tenth of BLAKE2b. The digest a snapshot records (core/digest.py)
is folded from the same bytes when a witness is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from nkdaemon.core.digest import DigestFold
from nkdaemon.core.overlay_parts import form_bytes
from nkdaemon.core.table_diff import TableDiff, key_text

Pairs = Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]
Stream = Callable[[], Pairs]
"""Starts a fresh read of one side (the second pass reads the differing partitions again)."""

PARTITIONS = 4096
HELD_ROWS = 1_000_000  # rows of differing partitions held at once while naming them
_SORTED = orjson.OPT_SORT_KEYS


def _partition(key: Mapping[str, Any], partitions: int) -> int:
    """The partition of a natural key: equal keys (equal canonical bytes) share one."""
    return hash(orjson.dumps(key, option=_SORTED)) % partitions


def _fold(pairs: Pairs, partitions: int, witness: DigestFold | None) -> tuple[list[int], list[int]]:
    """(rows, sum of row hashes) per partition of one side, read once."""
    counts, sums = [0] * partitions, [0] * partitions
    dumps = orjson.dumps
    for key, row in pairs:
        # the bytes row_hash would dump, built from the key's own (hashed for the partition)
        key_bytes = dumps(key, option=_SORTED)
        canonical = b"[" + key_bytes + b"," + dumps(row, option=_SORTED) + b"]"
        p = hash(key_bytes) % partitions
        counts[p] += 1
        sums[p] += hash(canonical)
        if witness is not None:
            witness.add_canonical(canonical)
    return counts, sums


def compare_partitioned(
    table: str,
    *,
    keyless: bool,
    expected: Stream,
    actual: Stream,
    partitions: int = PARTITIONS,
    held_rows: int = HELD_ROWS,
    witness: DigestFold | None = None,
) -> TableDiff:
    """Compare the rows ``expected`` yields with those ``actual`` yields (``witness``,
    if given, folds the actual rows' digest on the way)."""
    want_counts, want_sums = _fold(expected(), partitions, None)
    got_counts, got_sums = _fold(actual(), partitions, witness)
    diff = TableDiff(table=table, expected=sum(want_counts), actual=sum(got_counts))
    differing = [
        p
        for p in range(partitions)
        if want_counts[p] != got_counts[p] or want_sums[p] != got_sums[p]
    ]
    for group in _groups(differing, want_counts, got_counts, held_rows):
        name = _name_multiset if keyless else _name_keyed
        name(diff, expected(), actual(), set(group), partitions)
    if differing and diff.ok:  # cannot happen short of a changing target: do not pass it
        diff.differing.append(f"{len(differing)} hash partitions differ, no row found")
    return diff


def _groups(
    differing: list[int], want: list[int], got: list[int], held_rows: int
) -> Iterable[list[int]]:
    """The differing partitions in groups whose rows fit in ``held_rows`` (at least one)."""
    group: list[int] = []
    held = 0
    for p in differing:
        rows = want[p] + got[p]
        if group and held + rows > held_rows:
            yield group
            group, held = [], 0
        group.append(p)
        held += rows
    if group:
        yield group


def _name_keyed(diff: TableDiff, expected: Pairs, actual: Pairs, wanted: set[int], n: int) -> None:
    held: dict[bytes, tuple[int, Mapping[str, Any]]] = {}
    for key, row in expected:
        if _partition(key, n) in wanted:
            held[form_bytes(key)] = (_hash(key, row), key)  # held: a copy of its size
    for key, row in actual:
        if _partition(key, n) not in wanted:
            continue
        found = held.pop(form_bytes(key), None)
        if found is None:  # not expected, or a second row with the same key
            diff.unexpected.append(_described(key, row))
        elif found[0] != _hash(key, row):
            diff.differing.append(_described(key, row))
    diff.missing.extend(key_text(key) for _hash_value, key in held.values())


def _name_multiset(
    diff: TableDiff, expected: Pairs, actual: Pairs, wanted: set[int], n: int
) -> None:
    """Rows without a key: each target row takes one equal expected row; what is left
    over on either side is unexpected or missing, named by its content."""
    held: dict[bytes, int] = {}
    shown: dict[bytes, Mapping[str, Any]] = {}
    for key, row in expected:
        if _partition(key, n) in wanted:
            canonical = form_bytes(row)
            held[canonical] = held.get(canonical, 0) + 1
            shown.setdefault(canonical, row)
    for key, row in actual:
        if _partition(key, n) not in wanted:
            continue
        canonical = orjson.dumps(row, option=_SORTED)
        if held.get(canonical, 0):
            held[canonical] -= 1
        else:
            diff.unexpected.append(_described(row, row))
    for canonical, count in held.items():
        diff.missing.extend([key_text(shown[canonical])] * count)


def _hash(key: Mapping[str, Any], row: Mapping[str, Any]) -> int:
    return hash(orjson.dumps([key, row], option=_SORTED))


def _described(key: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """A row named by its key, and a reference of it that names no row, if there is one
    (a target reads such a reference back as ``{"$missing": address}``)."""
    for value in (*key.values(), *row.values()):
        if isinstance(value, dict) and "$missing" in value:
            return f"{key_text(key)} (refers to a row that does not exist: {key_text(value)})"
    return key_text(key)
