"""The features generated cases may use, by name; a test switches some off.

Schema features are what ``Schema.features()`` reports; workload and restore features are
switched on or off in the strategies and the case runner. Every name a test passes in its
set of disabled features must be one of these (``check_names``), so a typo cannot
silently leave a feature on.
"""

from __future__ import annotations

from collections.abc import Iterable

ID_FEATURES = frozenset(
    {"serial", "bigserial", "identity", "identity_always", "uuid", "autoincrement"}
    | {"text_pk", "composite_pk"}
)
# natural_fk_key: a key made of a foreign key to a table whose primary key is its natural
# key (text or composite) plus a column; natural_fk: such a foreign key outside a key
KEY_FEATURES = frozenset(
    {"unique_text", "unique_int", "composite_key", "fk_key", "natural_fk_key", "declared_key"}
)
REFERENCE_FEATURES = frozenset(
    {
        "nullable_fk",
        "not_null_fk",
        "natural_fk",
        "on_delete_cascade",
        "on_delete_set_null",
        "on_update_cascade",
        "composite_fk",
        "self_reference",
        "cycle2",
        "cycle3",
        "double_fk",
        "self_ref_in_cycle",  # a self-referencing table in a cycle, or referring to one
        "keyless",
        "quoted_names",
    }
)
SCHEMA_FEATURES = ID_FEATURES | KEY_FEATURES | REFERENCE_FEATURES
WORKLOAD_FEATURES = frozenset(
    {"rename", "repoint", "delete", "delete_reinsert", "rollback", "snapshot_midway"}
)
# restore modes: (a) --create-schema into an empty database, (b) into a pre-seeded target,
# (c) the same restore twice into one target (twice_same_ids: and its ids stay as they
# were), (d) --table of one table that drifted (single_table) or was emptied
# (single_table_empty). matched_deferred: targets of (b) and (d) also hold rows of tables
# that refer to themselves or sit in a cycle, which the restore must match.
# single_table_references: (d) may pick a table that refers to others. preseeded_renamed:
# (b) also seeds rows whose natural key changed after install (the target holds the later
# key; the log renames onto it).
RESTORE_FEATURES = frozenset(
    {"create_schema", "preseeded", "preseeded_renamed", "matched_deferred", "twice"}
    | {"twice_same_ids"}
    | {"single_table", "single_table_empty", "single_table_references"}
)
ALL_FEATURES = SCHEMA_FEATURES | WORKLOAD_FEATURES | RESTORE_FEATURES


DIALECTS = ("postgresql", "sqlite")


def check_names(names: Iterable[str]) -> frozenset[str]:
    """``names`` as a frozenset, refusing any that is not a feature; ``feature@dialect``
    names a feature off on one dialect only."""
    chosen = frozenset(names)
    unknown = {
        n
        for n in chosen
        if n.partition("@")[0] not in ALL_FEATURES or n.partition("@")[2] not in ("", *DIALECTS)
    }
    assert not unknown, f"unknown features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}"
    return chosen


def for_dialect(names: Iterable[str], dialect: str) -> frozenset[str]:
    """The features of ``names`` that are off on ``dialect``."""
    return frozenset(n.partition("@")[0] for n in names if n.partition("@")[2] in ("", dialect))
