"""``[retention]``: how long restore points are kept (split from config.py, which calls
``parse_retention`` with the whole file's tables).

The policy is checked here, when the configuration is read, by the same rule prune
applies (core/retention.RetentionPolicy), so a daemon never starts with one that prune
would refuse. ``[snapshots] keep`` is the older, snapshots-only rule; with ``[retention]``
it would delete snapshots the policy keeps, so the two together are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from nkdaemon.core.errors import ConfigError, UsageError
from nkdaemon.core.retention import RetentionPolicy
from nkdaemon.core.settings import RetentionSettings

RETENTION_KEYS = ("keep_snapshots", "keep_days")


def parse_retention(top: Mapping[str, object]) -> RetentionSettings:
    """The ``[retention]`` section of the file's tables ``top`` (absent: none configured)."""
    section = top.get("retention")
    if section is None:
        return RetentionSettings()
    if not isinstance(section, dict):
        raise ConfigError(f"[retention]: expected a table, got {section!r}")
    for key in section:
        if key not in RETENTION_KEYS:
            raise ConfigError(
                f"[retention] {key}: unknown setting", hint="known keys: keep_snapshots, keep_days"
            )
    settings = RetentionSettings(
        keep_snapshots=_whole(section.get("keep_snapshots")),
        keep_days=_days(section.get("keep_days")),
    )
    _check_policy(settings)
    _check_snapshots_keep(top)
    return settings


def _whole(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ConfigError(
        f"[retention] keep_snapshots: {value!r} must be a whole number",
        hint="keep_snapshots = N keeps the newest N snapshots and the log after the oldest",
    )


def _days(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(
        f"[retention] keep_days: {value!r} must be a number of days",
        hint="keep_days = 30 keeps every instant of the last 30 days restorable",
    )


def _check_policy(settings: RetentionSettings) -> None:
    try:
        RetentionPolicy(keep_snapshots=settings.keep_snapshots, keep_days=settings.keep_days)
    except UsageError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


def _check_snapshots_keep(top: Mapping[str, object]) -> None:
    snapshots = top.get("snapshots")
    if isinstance(snapshots, dict) and "keep" in snapshots:
        raise ConfigError(
            "[snapshots] keep: with [retention] it would delete snapshots retention keeps",
            hint="remove [snapshots] keep; [retention] keep_snapshots = N keeps the newest N",
        )
