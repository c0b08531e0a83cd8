"""Any database's content by natural key (ids left out), and how two contents differ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nkdaemon.core.replay import natural_state
from nkdaemon.sources.factory import make_engine, open_source
from nkdaemon.sources.registry import Registry, reflect_registry
from tests.helpers import (
    settings_for,
)

Content = dict[str, dict[str, Any]]


def natural_content(url: str, directory: Path, registry: Registry | None = None) -> Content:
    """A database's content by natural key, ids left out; needs no capture installed.

    ``registry``: the reflection of a database with the very same schema, to save time.
    """
    directory.mkdir(parents=True, exist_ok=True)
    registry = registry or reflected(url, directory)
    source = open_source(settings_for(directory, url).source)
    try:
        rows = {number: source.read_rows(spec) for number, spec in registry.tables.items()}
    finally:
        source.close()
    return natural_state(registry.tables, rows).comparable()


def reflected(url: str, directory: Path) -> Registry:
    directory.mkdir(parents=True, exist_ok=True)
    settings = settings_for(directory, url)
    engine = make_engine(settings.source)
    try:
        return reflect_registry(engine, settings)
    finally:
        engine.dispose()


def differences(actual: Content, expected: Content) -> list[str]:
    """Per table, which natural keys are missing, extra or different (for failure messages)."""
    out = []
    for table in sorted(set(actual) | set(expected)):
        got, want = actual.get(table, {}), expected.get(table, {})
        if got == want:
            continue
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        changed = [k for k in sorted(set(got) & set(want)) if got[k] != want[k]][:2]
        detail = [f"{table}: {len(got)} rows, expected {len(want)}"]
        detail += [f"  missing {k}" for k in missing] + [f"  extra {k}" for k in extra]
        detail += [f"  {k}: {got[k]} != {want[k]}" for k in changed]
        out.append("\n".join(detail))
    return out


def leave_millisecond(moment: datetime) -> None:
    """Return once the clock has left ``moment``'s millisecond.

    SQLite stamps a log transaction with its last change's time in milliseconds; once the
    clock is past T's millisecond, no change made later can carry a stamp at or before T
    (the documented resolution; see docs/FORMAT.md).
    """
    boundary = moment.replace(microsecond=moment.microsecond // 1000 * 1000) + timedelta(
        milliseconds=1
    )
    while datetime.now(UTC) < boundary:
        pass
