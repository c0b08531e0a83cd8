"""Point-in-time restore into any database, all or nothing, in stages.

plan (which snapshot, which part of the log, which tables) -> load the snapshot and replay
the log inside one target transaction, reconnecting every reference by natural key ->
compare per-table counts and content with what the log says -> commit, or roll back and
say what differed. Rows are matched by natural key, so a target whose ids differ (or
whose reference data was seeded in another order) receives the right references.

Modules: ``plan`` (snapshot, log range, report), ``resolve`` (natural key -> address),
``write`` (rows and their references), ``load`` (the starting state), ``replay`` (the log),
``validate`` (the check before commit), ``restorer`` (the stages in one transaction).
"""

from nkdaemon.core.restore_runs import referenced_tables
from nkdaemon.services.restore.plan import (
    Progress,
    RestoreError,
    RestorePlan,
    RestoreReport,
    fold_state,
    plan_restore,
    replay_range,
)
from nkdaemon.services.restore.restorer import Restorer, open_restore_target

__all__ = [
    "Progress",
    "RestoreError",
    "RestorePlan",
    "RestoreReport",
    "Restorer",
    "fold_state",
    "open_restore_target",
    "plan_restore",
    "referenced_tables",
    "replay_range",
]
