"""The typed, frozen settings every layer is configured with.

Plain values only (standard library): `runtime/config.py` reads and validates the TOML file
and builds these, so services and adapters take settings without reaching up into the
runtime that loads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Dialect = Literal["postgresql", "sqlite"]


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    """The source database. The URL is parsed once, by the loader, into the parts the
    layers below need, so none of them parses URLs (or sees the password in a repr)."""

    url: str = field(repr=False)
    dialect: Dialect
    redacted_url: str
    password: str | None = field(default=None, repr=False)
    database: str = ""  # the SQLite file, or PostgreSQL's database name
    schema: str | None = None

    def __repr__(self) -> str:
        return f"SourceSettings(url={self.redacted_url!r}, schema={self.schema!r})"

    @classmethod
    def absent(cls) -> SourceSettings:
        """No [source]: a configuration that names only a bucket, to read it."""
        return cls(url="", dialect="sqlite", redacted_url="(no [source] configured)")

    @property
    def configured(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, kw_only=True)
class BucketSettings:
    """An S3-compatible bucket the repository is replicated to (``[repository] url``).
    Credentials are not settings: boto3 finds them through the standard AWS chain."""

    url: str  # s3://BUCKET/PREFIX, as written
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    upload_interval: float = 10.0
    # every object in the bucket sealed with this key (repository/encrypted_store.py)
    encryption_key_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class RepositorySettings:
    """``path`` is the repository; with a ``bucket`` it is the local spool the daemon
    writes and replicates from, and the bucket is the repository off this machine."""

    path: Path
    segment_bytes: int = 64 << 20
    bucket: BucketSettings | None = None


@dataclass(frozen=True, kw_only=True)
class CaptureSettings:
    tables: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    key_cache_size: int = 100_000
    batch_transactions: int = 1000
    poll_interval: float = 1.0
    min_pass_interval: float = 0.2


@dataclass(frozen=True, kw_only=True)
class TableSettings:
    natural_key: tuple[str, ...] | None = None
    identity: Literal["key", "full"] = "key"


@dataclass(frozen=True, kw_only=True)
class SnapshotSettings:
    schedule: str | None = None
    keep: int = 7


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """``[retention]``: both None when the section is absent (then nothing may be pruned:
    core/retention.RetentionPolicy refuses, naming the settings to add)."""

    keep_snapshots: int | None = None
    keep_days: float | None = None

    @property
    def configured(self) -> bool:
        return self.keep_snapshots is not None or self.keep_days is not None


@dataclass(frozen=True, kw_only=True)
class HealthSettings:
    listen: str = "127.0.0.1:8787"
    max_lag_seconds: float = 60.0
    max_snapshot_age_seconds: float | None = None
    max_replication_lag_seconds: float = 300.0


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, kw_only=True)
class LegacySettings:
    """`import-legacy` / `export`: Django model label (lower case) -> table."""

    models: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Settings:
    source: SourceSettings
    repository: RepositorySettings
    capture: CaptureSettings = CaptureSettings()
    tables: Mapping[str, TableSettings] = field(default_factory=dict)
    snapshots: SnapshotSettings = SnapshotSettings()
    retention: RetentionSettings = RetentionSettings()
    health: HealthSettings = HealthSettings()
    logging: LogSettings = LogSettings()
    legacy: LegacySettings = LegacySettings()
    file: Path | None = None

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never reach output (passwords)."""
        password = self.source.password
        return (password,) if password else ()


def toml_key(name: str) -> str:
    """A TOML key for a table name: bare when it can be, else a quoted string."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_string(name)


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)
