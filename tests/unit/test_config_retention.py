"""[retention] (runtime/config_retention.py): what it becomes, and the errors that name
the setting and the way out, checked when the configuration is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.errors import ConfigError, UsageError
from nkdaemon.runtime.config import parse_settings
from nkdaemon.runtime.retention import retention_policy


def parse(retention: Any = None, snapshots: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "source": {"url": "sqlite:////var/app.db"},
        "repository": {"path": "/var/repo"},
    }
    if retention is not None:
        data["retention"] = retention
    if snapshots is not None:
        data["snapshots"] = snapshots
    return parse_settings(data, base_dir=Path("/etc/nkdaemon"))


@given(st.none() | st.integers(1, 10_000), st.none() | st.integers(1, 3650) | st.floats(0.01, 3650))
def test_a_valid_policy_is_read_as_given(keep: int | None, days: float | None) -> None:
    section = {k: v for k, v in (("keep_snapshots", keep), ("keep_days", days)) if v is not None}
    if not section:
        return
    settings = parse(section)
    assert settings.retention.keep_snapshots == keep
    assert settings.retention.keep_days == (None if days is None else float(days))
    policy = retention_policy(settings)
    assert (policy.keep_snapshots, policy.keep_days) == (keep, settings.retention.keep_days)


def test_without_retention_nothing_is_configured_and_prune_refuses() -> None:
    settings = parse()
    assert not settings.retention.configured
    with pytest.raises(UsageError, match="no retention policy is configured") as caught:
        retention_policy(settings)
    assert caught.value.hint is not None and "keep_snapshots" in caught.value.hint


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "no retention policy is configured"),
        ({"keep_snapshots": 0}, "keep_snapshots = 0: at least 1"),
        ({"keep_days": 0}, "keep_days = 0.0: it must be more than 0"),
        ({"keep_days": -2}, "keep_days = -2.0"),
        ({"keep_snapshots": "7"}, "keep_snapshots: '7' must be a whole number"),
        ({"keep_snapshots": True}, "keep_snapshots: True must be a whole number"),
        ({"keep_days": "30d"}, "keep_days: '30d' must be a number of days"),
        ({"keep_snaphots": 3}, "[retention] keep_snaphots: unknown setting"),
        ("often", "[retention]: expected a table"),
    ],
)
def test_a_bad_policy_is_refused_when_read(section: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(section)
    assert message in caught.value.message


def test_snapshots_keep_beside_retention_is_refused_naming_the_way_out() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"keep_snapshots": 3}, snapshots={"schedule": "1h", "keep": 7})
    assert "[snapshots] keep" in caught.value.message
    assert caught.value.hint is not None and "keep_snapshots" in caught.value.hint
    assert parse({"keep_snapshots": 3}, snapshots={"schedule": "1h"}).snapshots.schedule == "1h"
