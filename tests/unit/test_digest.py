"""The content digest (core/digest.py): a function of a table's rows as a multiset, in
canonical natural-key form, so a snapshot, a replayed log and a restored target that hold
the same rows in any order, with object keys in any order, fold to the same digest."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nkdaemon.core.digest import Digest, DigestFold, digest_of

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6)
VALUES = (
    SCALARS
    | st.lists(SCALARS, max_size=3)
    | st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)
)
ROWS = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["code", "owner"]), VALUES, min_size=1),
        st.dictionaries(st.sampled_from(["code", "qty", "note", "owner"]), VALUES),
    ),
    max_size=12,
)


def _reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


@settings(deadline=None, max_examples=60)
@given(ROWS, st.randoms(use_true_random=False))
def test_the_digest_ignores_row_order_and_key_order(rows: list[Any], rng: Any) -> None:
    shuffled = [(_reordered(k), _reordered(r)) for k, r in rows]
    rng.shuffle(shuffled)
    assert digest_of(shuffled) == digest_of(rows)
    assert digest_of(rows).rows == len(rows)


@settings(deadline=None, max_examples=60)
@given(ROWS, st.data())
def test_the_digest_changes_when_a_row_is_changed_added_or_repeated(
    rows: list[Any], data: st.DataObject
) -> None:
    before = digest_of(rows)
    assert digest_of([*rows, ({"code": "new"}, {"qty": 1})]) != before
    if rows:
        i = data.draw(st.integers(0, len(rows) - 1))
        key, row = rows[i]
        changed = [*rows[:i], (key, {**row, "qty": ["changed", row.get("qty")]}), *rows[i + 1 :]]
        assert digest_of(changed).value != before.value
        assert digest_of([*rows, rows[i]]) != before  # a multiset: a repeat counts


def test_a_fold_passes_its_rows_through_and_round_trips_through_json() -> None:
    fold = DigestFold()
    rows = [({"code": "a"}, {"code": "a", "qty": 1}), ({"code": "b"}, {"code": "b", "qty": None})]
    assert list(fold.passing(rows)) == rows
    digest = fold.result()
    assert digest == digest_of(rows) and len(digest.value) == 32
    assert Digest.from_json(digest.to_json()) == digest
    assert digest_of([]) == Digest(rows=0, value="0" * 32)
