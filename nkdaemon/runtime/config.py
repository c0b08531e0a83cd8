"""The TOML configuration, loaded once into typed, frozen settings and validated eagerly.

Every error names the key, the bad value and the fix, and is a ConfigError (exit code 2).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from nkdaemon.core.errors import ConfigError
from nkdaemon.core.settings import (
    BucketSettings,
    CaptureSettings,
    HealthSettings,
    LegacySettings,
    LogSettings,
    RepositorySettings,
    Settings,
    SnapshotSettings,
    SourceSettings,
    TableSettings,
    toml_key,
    toml_string,
)
from nkdaemon.runtime.config_repository import REPOSITORY_KEYS, parse_repository
from nkdaemon.runtime.config_retention import parse_retention

# The settings types live in core (below every layer that takes them); they are named here
# too for the callers that load a file and use what it holds.
__all__ = [
    "DEFAULT_FILE",
    "ENV_VAR",
    "BucketSettings",
    "CaptureSettings",
    "HealthSettings",
    "LegacySettings",
    "LogSettings",
    "RepositorySettings",
    "Settings",
    "SnapshotSettings",
    "SourceSettings",
    "TableSettings",
    "canonical_url",
    "find_config",
    "load_settings",
    "parse_duration",
    "parse_settings",
    "parse_size",
    "redact_url",
    "toml_key",
    "toml_string",
    "validate_schedule",
]

Choice = TypeVar("Choice", bound=str)

ENV_VAR = "NKDAEMON_CONFIG"
DEFAULT_FILE = "nkdaemon.toml"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***; unparseable URLs are hidden whole."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable url>"


# --- parsing helpers ----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_duration(value: object, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ConfigError(
            f"{key}: {value!r} is not a duration",
            hint="write a number of seconds or a number with a unit: "
            '"250ms", "30s", "5m", "6h", "1d"',
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: object, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{key}: {value!r} is not a size", hint='write e.g. "64MiB" or 67108864')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


class _Section:
    """Typed access to one TOML table that reports unknown keys with a suggestion."""

    def __init__(self, name: str, data: object, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}]: expected a table, got {data!r}")
        self.name = name
        self.data: dict[str, object] = data
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
                raise ConfigError(f"[{name}] {key}: unknown setting", hint=hint)

    def key(self, key: str) -> str:
        return f"[{self.name}] {key}"

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise ConfigError(
                    f"{self.key(key)}: missing", hint=f'add {key} = "..." under [{self.name}]'
                )
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.key(key)}: {value!r} must be a non-empty string")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"{self.key(key)}: {value!r} must be a list of strings",
                hint=f'write {key} = ["a", "b"]',
            )
        return tuple(value)

    def positive_int(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{self.key(key)}: {value!r} must be a positive whole number")
        return value

    def choice(self, key: str, default: Choice, choices: tuple[Choice, ...]) -> Choice:
        value = self.data.get(key, default)
        for choice in choices:  # the choice itself, typed as the choices are
            if value == choice:
                return choice
        raise ConfigError(
            f"{self.key(key)}: {value!r} is not one of {', '.join(map(repr, choices))}"
        )


# --- loading ---------------------------------------------------------------------------

SECTIONS = (
    "source",
    "repository",
    "capture",
    "tables",
    "snapshots",
    "retention",
    "health",
    "log",
    "legacy",
)


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """--config, else $NKDAEMON_CONFIG, else ./nkdaemon.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(DEFAULT_FILE)


def load_settings(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {path} does not exist",
            hint=f"create one with `nkdaemon init`, or pass --config PATH (or set ${ENV_VAR})",
        ) from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_settings(data, base_dir=path.parent, file=path)


def parse_settings(
    data: Mapping[str, object], *, base_dir: Path, file: Path | None = None
) -> Settings:
    top = _Section("top level", dict(data), SECTIONS)
    repository = _parse_repository(
        _Section("repository", top.get("repository", {}), REPOSITORY_KEYS), base_dir
    )
    source = (
        SourceSettings.absent()  # a bucket read on another machine: restore, verify, history
        if "source" not in data and repository.bucket is not None
        else _parse_source(_Section("source", top.get("source", {}), ("url", "schema")))
    )
    return Settings(
        source=source,
        repository=repository,
        capture=_parse_capture(
            _Section(
                "capture",
                top.get("capture", {}),
                (
                    "tables",
                    "exclude",
                    "key_cache_size",
                    "batch_transactions",
                    "poll_interval",
                    "min_pass_interval",
                ),
            )
        ),
        tables=_parse_tables(top.get("tables", {})),
        snapshots=_parse_snapshots(
            _Section("snapshots", top.get("snapshots", {}), ("schedule", "keep"))
        ),
        retention=parse_retention(data),
        health=_parse_health(
            _Section(
                "health",
                top.get("health", {}),
                ("listen", "max_lag", "max_snapshot_age", "max_replication_lag"),
            )
        ),
        logging=_parse_logging(_Section("log", top.get("log", {}), ("level", "format"))),
        legacy=_parse_legacy(_Section("legacy", top.get("legacy", {}), ("models",))),
        file=file,
    )


def canonical_url(url: str) -> str:
    """A database URL with the driver nkdaemon uses: ``postgres://`` and ``postgresql://``
    (libpq's and many platforms' spelling) become ``postgresql+psycopg://``."""
    for scheme in ("postgres://", "postgresql://"):
        if url[: len(scheme)].lower() == scheme:
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _parse_source(section: _Section) -> SourceSettings:
    raw = section.get("url")
    if raw is None:
        raise ConfigError("[source] url: missing", hint='add url = "..." under [source]')
    if not isinstance(raw, str) or not raw.strip():
        # Never echo the value: it may hold a password.
        raise ConfigError(
            "[source] url: must be a non-empty string",
            hint='write e.g. url = "postgresql+psycopg://app@127.0.0.1:5432/edms"',
        )
    url = canonical_url(raw)
    try:
        parsed = make_url(url)
        _ = parsed.port  # a port that is not a number fails only when read
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"[source] url: {redact_url(url)} is not a database URL",
            hint='write e.g. "postgresql+psycopg://app@127.0.0.1:5432/edms" or "sqlite:///var/edms.db"',
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"[source] url: database {backend!r} is not supported",
            hint="nkdaemon captures PostgreSQL (postgresql+psycopg://...) and SQLite (sqlite:///path)",
        )
    if backend == "postgresql" and parsed.get_driver_name() not in ("psycopg", "psycopg2", ""):
        raise ConfigError(
            f"[source] url: driver {parsed.get_driver_name()!r} is not supported",
            hint="use postgresql+psycopg://",
        )
    database = parsed.database or ""
    if backend == "sqlite" and _in_memory(parsed):
        raise ConfigError(
            "[source] url: an in-memory SQLite database cannot be backed up",
            hint='name a file: "sqlite:///path/to/app.db"',
        )
    return SourceSettings(
        url=url,
        dialect="postgresql" if backend == "postgresql" else "sqlite",
        redacted_url=redact_url(url),
        password=parsed.password,
        database=database,
        schema=section.string("schema"),
    )


def _in_memory(parsed: URL) -> bool:
    database = parsed.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or "mode=memory" in database
        or parsed.query.get("mode") == "memory"
    )


def _parse_repository(section: _Section, base_dir: Path) -> RepositorySettings:
    return parse_repository(
        section.data, base_dir, parse_size=parse_size, parse_duration=parse_duration
    )


def _parse_capture(section: _Section) -> CaptureSettings:
    poll_interval = parse_duration(section.get("poll_interval", 1.0), section.key("poll_interval"))
    min_pass_interval = parse_duration(
        section.get("min_pass_interval", min(0.2, poll_interval)),
        section.key("min_pass_interval"),
    )
    if min_pass_interval > poll_interval:
        raise ConfigError(
            f"{section.key('min_pass_interval')}: {min_pass_interval:g}s is longer than "
            f"{section.key('poll_interval')} ({poll_interval:g}s)",
            hint="make min_pass_interval at most poll_interval (default 200ms)",
        )
    return CaptureSettings(
        tables=section.strings("tables", ("*",)),
        exclude=section.strings("exclude", ()),
        key_cache_size=section.positive_int("key_cache_size", 100_000),
        batch_transactions=section.positive_int("batch_transactions", 1000),
        poll_interval=poll_interval,
        min_pass_interval=min_pass_interval,
    )


def _parse_tables(data: object) -> dict[str, TableSettings]:
    if not isinstance(data, dict):
        raise ConfigError(f"[tables]: expected tables like [tables.documents], got {data!r}")
    out: dict[str, TableSettings] = {}
    for name, body in data.items():
        section = _Section(f"tables.{toml_key(name)}", body, ("natural_key", "identity"))
        identity: Literal["key", "full"] = section.choice("identity", "key", ("key", "full"))
        key: tuple[str, ...] | None = None
        if section.get("natural_key") is not None:
            key = section.strings("natural_key", ())
            if not key:
                raise ConfigError(
                    f"{section.key('natural_key')}: an empty list names no key",
                    hint='list the columns, e.g. natural_key = ["code"]',
                )
            if identity == "full":
                raise ConfigError(
                    f"[tables.{toml_key(name)}]: natural_key and "
                    'identity = "full" exclude each other',
                    hint="keep natural_key for a table that has one; "
                    'identity = "full" is for keyless tables',
                )
        out[name] = TableSettings(natural_key=key, identity=identity)
    return out


def _parse_snapshots(section: _Section) -> SnapshotSettings:
    schedule = section.string("schedule")
    if schedule is not None:
        validate_schedule(schedule, section.key("schedule"))
    return SnapshotSettings(schedule=schedule, keep=section.positive_int("keep", 7))


def validate_schedule(schedule: str, key: str) -> None:
    """A schedule is a 5-field cron expression or an interval such as "6h"."""
    if _DURATION.match(schedule):
        if parse_duration(schedule, key) <= 0:
            raise ConfigError(f"{key}: {schedule!r} is not a positive interval")
        return
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(schedule, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(
            f"{key}: {schedule!r} is neither a cron expression nor an interval ({exc})",
            hint='write e.g. "0 3 * * *" (03:00 UTC daily) or "6h"',
        ) from None


def _parse_health(section: _Section) -> HealthSettings:
    listen = section.string("listen", "127.0.0.1:8787")
    assert listen is not None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(
            f"{section.key('listen')}: {listen!r} is not HOST:PORT",
            hint='write e.g. "127.0.0.1:8787"',
        )
    age = section.get("max_snapshot_age")
    return HealthSettings(
        listen=listen,
        max_lag_seconds=parse_duration(section.get("max_lag", 60), section.key("max_lag")),
        max_snapshot_age_seconds=None
        if age is None
        else parse_duration(age, section.key("max_snapshot_age")),
        max_replication_lag_seconds=parse_duration(
            section.get("max_replication_lag", 300), section.key("max_replication_lag")
        ),
    )


def _parse_logging(section: _Section) -> LogSettings:
    return LogSettings(
        level=section.choice("level", "info", ("debug", "info", "warning", "error")),
        format=section.choice("format", "auto", ("auto", "json", "console")),
    )


def _parse_legacy(section: _Section) -> LegacySettings:
    models = section.get("models", {})
    if not isinstance(models, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in models.items()
    ):
        raise ConfigError(
            f"{section.key('models')}: expected model labels mapped to table names",
            hint='write e.g. [legacy.models] "edms.document" = "documents"',
        )
    bad = [k for k in models if k.count(".") not in (1, 2)]
    if bad:
        raise ConfigError(
            f"{section.key('models')}: {bad[0]!r} is not a model label (app.model) or a "
            "many-to-many field (app.model.field)"
        )
    return LegacySettings(models={k.lower(): v for k, v in models.items()})
