"""[repository] url and its companions (runtime/config_repository.py), and
[health] max_replication_lag: what a bucket configuration becomes, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkdaemon.core.errors import ConfigError
from nkdaemon.runtime.config import parse_settings

BASE = Path("/etc/nkdaemon")


def parse(repository: dict[str, Any], health: dict[str, Any] | None = None) -> Any:
    data = {"source": {"url": "sqlite:////var/app.db"}, "repository": repository}
    if health is not None:
        data["health"] = health
    return parse_settings(data, base_dir=BASE)


def test_a_bucket_url_makes_path_the_spool_beside_the_config_by_default() -> None:
    settings = parse(
        {
            "url": "s3://backups/edms/prod/",
            "endpoint_url": "http://127.0.0.1:8333",
            "region": "eu-central-1",
            "path_style": True,
            "upload_interval": "2s",
        }
    )
    repository = settings.repository
    assert repository.path == BASE / "nkdaemon-spool"
    assert repository.bucket is not None
    assert (repository.bucket.bucket, repository.bucket.prefix) == ("backups", "edms/prod")
    assert repository.bucket.endpoint_url == "http://127.0.0.1:8333"
    assert repository.bucket.region == "eu-central-1"
    assert repository.bucket.path_style is True
    assert repository.bucket.upload_interval == 2.0
    assert settings.health.max_replication_lag_seconds == 300.0


def test_without_a_url_path_is_the_repository_and_bucket_settings_are_refused() -> None:
    assert parse({"path": "repo"}).repository.bucket is None
    with pytest.raises(ConfigError, match="upload_interval: only means something with a bucket"):
        parse({"path": "repo", "upload_interval": "5s"})


def test_a_named_spool_and_the_replication_lag_limit() -> None:
    settings = parse(
        {"url": "s3://backups", "path": "/var/spool/nk"}, {"max_replication_lag": "1m"}
    )
    assert settings.repository.path == Path("/var/spool/nk")
    assert settings.repository.bucket is not None and settings.repository.bucket.prefix == ""
    assert settings.health.max_replication_lag_seconds == 60.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://backups/x", "is not an s3:// URL"),
        ("s3://Backups_2/x", "is not a bucket name"),
        ("s3://backups/a/../b", "has an empty, '.' or '..' part"),
        ("s3://backups:9000/x", "has parts an s3:// URL does not take"),
        ("s3://backups/x?versionId=1", "has parts an s3:// URL does not take"),
        ("", "must be a non-empty string"),
    ],
)
def test_a_bad_url_is_refused_naming_the_fault(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"url": url})


def test_credentials_in_the_url_are_refused_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"url": "s3://AKIAEXAMPLE:s3cr3tKey@backups/x"})
    text = f"{caught.value.message} {caught.value.hint}"
    assert "must not hold credentials" in text
    assert "s3cr3tKey" not in text and "AKIAEXAMPLE" not in text


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "ftp://host", "http://user:pw@host"])
def test_a_bad_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint_url"):
        parse({"url": "s3://backups", "endpoint_url": endpoint})


@given(st.text(max_size=60))
def test_any_url_is_a_bucket_or_a_config_error_that_does_not_echo_a_secret(url: str) -> None:
    secret = "SECRETxyz"
    written = url.replace("@", f":{secret}@", 1) if "@" in url else url
    try:
        settings = parse({"url": written})
    except ConfigError as exc:
        assert secret not in f"{exc.message} {exc.hint}"
        return
    bucket = settings.repository.bucket
    assert bucket is not None
    assert written.strip().lower().startswith("s3://")
    assert f"s3://{bucket.bucket}" in written
    assert all(
        part and part not in (".", "..") for part in bucket.prefix.split("/") if bucket.prefix
    )
