"""``[repository]``: the local repository, or a bucket and the local spool it is fed from.

Split from config.py (which checks the section's keys and calls ``parse_repository``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from nkdaemon.core.errors import ConfigError
from nkdaemon.core.settings import BucketSettings, RepositorySettings

REPOSITORY_KEYS = (
    "path",
    "segment_size",
    "url",
    "endpoint_url",
    "region",
    "path_style",
    "upload_interval",
    "encryption_key_file",
)
SPOOL_DEFAULT = "nkdaemon-spool"
_BUCKET_ONLY = ("endpoint_url", "region", "path_style", "upload_interval", "encryption_key_file")
# S3's rule for bucket names (lower case, digits, dots, hyphens; 3 to 63 characters)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_URL_HINT = 'write url = "s3://BUCKET/PREFIX" (the prefix may be empty: "s3://BUCKET")'

Parse = Callable[[object, str], float]


def parse_repository(
    data: Mapping[str, object],
    base_dir: Path,
    *,
    parse_size: Callable[[object, str], int],
    parse_duration: Parse,
) -> RepositorySettings:
    """``data`` is the section (its keys already checked against REPOSITORY_KEYS)."""
    segment = parse_size(data.get("segment_size", 64 << 20), "[repository] segment_size")
    url = data.get("url")
    if url is None:
        given = [k for k in _BUCKET_ONLY if k in data]
        if given:
            why = (
                " (the objects sent off this machine are encrypted; a local repository is not)"
                if given[0] == "encryption_key_file"
                else ""
            )
            raise ConfigError(
                f"[repository] {given[0]}: only means something with a bucket{why}",
                hint=f"add {_URL_HINT}, or remove {given[0]}",
            )
        path = _path(data.get("path"), base_dir, required=True)
        return RepositorySettings(path=path, segment_bytes=segment)
    bucket = _bucket(url, data, parse_duration, base_dir)
    spool = _path(data.get("path", SPOOL_DEFAULT), base_dir, required=False)
    return RepositorySettings(path=spool, segment_bytes=segment, bucket=bucket)


def _path(raw: object, base_dir: Path, *, required: bool) -> Path:
    if raw is None and required:
        raise ConfigError(
            "[repository] path: missing",
            hint='add path = "..." (a folder) or url = "s3://BUCKET/PREFIX" under [repository]',
        )
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"[repository] path: {raw!r} must be a non-empty string")
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path


def _bucket(
    url: object, data: Mapping[str, object], parse_duration: Parse, base_dir: Path
) -> BucketSettings:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"[repository] url: {url!r} must be a non-empty string", hint=_URL_HINT)
    if "@" in url:  # never echoed: it may hold a credential
        raise ConfigError(
            "[repository] url: must not hold credentials",
            hint=f"{_URL_HINT}; credentials come from the standard AWS chain "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance "
            "role), never from this file",
        )
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise ConfigError(
            f"[repository] url: {url!r} is not an s3:// URL",
            hint=f'{_URL_HINT}; for a local folder use path = "..." alone',
        )
    if parts.query or parts.fragment or ":" in parts.netloc:
        raise ConfigError(
            f"[repository] url: {url!r} has parts an s3:// URL does not take",
            hint=f"{_URL_HINT}; the server and its port go in endpoint_url",
        )
    if not _BUCKET_NAME.match(parts.netloc) or ".." in parts.netloc:
        raise ConfigError(
            f"[repository] url: {parts.netloc!r} is not a bucket name",
            hint="bucket names are 3 to 63 lower-case letters, digits, dots and hyphens",
        )
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in prefix.split("/") if prefix):
        raise ConfigError(
            f"[repository] url: the prefix {prefix!r} has an empty, '.' or '..' part",
            hint=_URL_HINT,
        )
    interval = parse_duration(data.get("upload_interval", 10), "[repository] upload_interval")
    if interval <= 0:
        raise ConfigError("[repository] upload_interval: must be longer than 0 s")
    return BucketSettings(
        url=url.strip(),
        bucket=parts.netloc,
        prefix=prefix,
        endpoint_url=_endpoint(data.get("endpoint_url")),
        region=_optional_string(data, "region"),
        path_style=_flag(data, "path_style"),
        upload_interval=interval,
        encryption_key_file=_key_file(data.get("encryption_key_file"), base_dir),
    )


def _key_file(raw: object, base_dir: Path) -> Path | None:
    """The key file, checked now: a daemon must not find out at its first upload."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"[repository] encryption_key_file: {raw!r} must be a file's path")
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"[repository] encryption_key_file: cannot read {path}: {exc.strerror}",
            hint="a file of 32 random bytes (head -c 32 /dev/urandom > KEY) or a passphrase "
            "of 12 characters or more, readable by the daemon's user only; keep a copy "
            "elsewhere: without it nothing in the bucket can be read",
        ) from None
    return path


def _endpoint(raw: object) -> str | None:
    if raw is None:
        return None
    parts = urlsplit(raw) if isinstance(raw, str) else None
    if (
        not isinstance(raw, str)
        or parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
    ):
        raise ConfigError(
            f"[repository] endpoint_url: {raw!r} is not an http(s) URL",
            hint='write e.g. endpoint_url = "https://s3.eu-central-1.example.com" '
            "(leave it out for AWS)",
        )
    if parts.username or parts.password:
        raise ConfigError(
            "[repository] endpoint_url: must not hold credentials",
            hint="credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)",
        )
    return str(raw)


def _optional_string(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[repository] {key}: {value!r} must be a non-empty string")
    return value


def _flag(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"[repository] {key}: {value!r} must be true or false")
    return value
