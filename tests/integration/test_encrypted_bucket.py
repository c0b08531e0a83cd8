"""An encrypted off-site repository, end to end on a real S3 server (SeaweedFS): the
daemon's replication writes every object sealed (a marker value written into the source is
found in no object of the bucket), a fresh machine with the key restores the source
exactly, and one without the key, or with another key, is refused naming the key id."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from nkdaemon.core.settings import BucketSettings
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.runtime.replicate_loop import sealed
from nkdaemon.services.replicate import Replicator
from tests.helpers import engine_for, run_cli
from tests.integration.test_replicate import drained, spool_for
from tests.natural_content import differences, natural_content
from tests.s3 import S3Server


def _machine(home: Path, server: S3Server, bucket: str, key: Path | None) -> Path:
    home.mkdir()
    config = home / "c.toml"
    line = f'encryption_key_file = "{key}"' if key is not None else ""
    config.write_text(
        textwrap.dedent(
            f"""
            [repository]
            url = "s3://{bucket}/edms"
            endpoint_url = "{server.endpoint}"
            path_style = true
            {line}
            """
        )
    )
    return config


def _client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


def _raw_objects(server: S3Server, bucket: str) -> dict[str, bytes]:
    client = _client(server)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_an_encrypted_bucket_holds_no_plaintext_and_restores_only_with_its_key(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    other = tmp_path / "other-key"
    other.write_bytes(os.urandom(32))
    (tmp_path / "origin").mkdir()
    url, config = spool_for(tmp_path / "origin")
    marker = f"MARKER-{uuid.uuid4().hex}"
    name = s3_server.new_bucket()
    settings = BucketSettings(
        url=f"s3://{name}/edms",
        bucket=name,
        prefix="edms",
        endpoint_url=s3_server.endpoint,
        path_style=True,
        encryption_key_file=key,
    )
    store = S3Store(name, "edms", endpoint_url=s3_server.endpoint, path_style=True)
    replicator = Replicator(spool=tmp_path / "origin" / "repo", bucket=sealed(store, settings))
    drained(url, config, 0, 10)
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("INSERT INTO notes (body) VALUES (:b)"), {"b": marker})
    assert run_cli(config, "snapshot").exit_code == 0  # the marker in a snapshot file too
    drained(url, config, 10, 5)  # and in the log
    replicator.run_once()

    objects = _raw_objects(s3_server, name)
    assert len(objects) > 3
    for object_key, body in objects.items():
        assert marker.encode() not in body, object_key
        if not object_key.endswith("encryption.json"):
            assert body.startswith(b"NKDE"), object_key

    fresh = _machine(tmp_path / "fresh", s3_server, name, key)
    target = tmp_path / "fresh" / "restored.db"
    done = run_cli(
        fresh, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert done.exit_code == 0, done.output
    expected = natural_content(url, tmp_path / "reflect")
    assert differences(natural_content(f"sqlite:///{target}", tmp_path / "r"), expected) == []

    # A changed byte in the bucket is found by verify, named, as a checksum failure is.
    client = _client(s3_server)
    for damaged in (
        next(k for k in objects if "/tables/" in k),
        next(k for k in objects if "/log/" in k and not k.endswith("end.json")),
    ):
        body = bytearray(objects[damaged])
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=name, Key=damaged, Body=bytes(body))
        checked = run_cli(fresh, "verify")
        assert checked.exit_code == 1, checked.output
        assert damaged.rsplit("/", 1)[-1] in checked.output, checked.output
        assert "Traceback" not in checked.output
        client.put_object(Bucket=name, Key=damaged, Body=objects[damaged])

    for home, key_file, says in (
        (tmp_path / "no-key", None, "no encryption key is configured"),
        (tmp_path / "wrong-key", other, "key"),
    ):
        machine = _machine(home, s3_server, name, key_file)
        refused = run_cli(machine, "restore", "--latest", "--target", f"sqlite:///{home / 't.db'}")
        assert refused.exit_code != 0, refused.output
        assert says in refused.output and "Traceback" not in refused.output, refused.output
        assert not (home / "t.db").exists() or (home / "t.db").stat().st_size == 0


def test_the_key_file_is_checked_when_the_configuration_is_read(tmp_path: Path) -> None:
    from nkdaemon.core.errors import ConfigError
    from nkdaemon.runtime.config import parse_settings

    def parse(repository: dict[str, object]) -> object:
        data = {"source": {"url": "sqlite:////var/app.db"}, "repository": repository}
        return parse_settings(data, base_dir=tmp_path)

    bucket = {"url": "s3://backups/edms"}
    with pytest.raises(ConfigError, match="cannot read") as missing:
        parse({**bucket, "encryption_key_file": "absent.key"})
    assert "nothing in the bucket can be read" in (missing.value.hint or "")
    with pytest.raises(ConfigError, match="a local repository is not"):
        parse({"path": "repo", "encryption_key_file": "absent.key"})
    (tmp_path / "k").write_bytes(os.urandom(32))
    settings = parse({**bucket, "encryption_key_file": "k"})
    assert settings.repository.bucket.encryption_key_file == tmp_path / "k"  # type: ignore[attr-defined]
