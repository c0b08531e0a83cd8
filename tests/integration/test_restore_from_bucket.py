"""Restore on a "fresh machine": a new working directory holding only a configuration that
names the bucket (no [source], no spool), reading the bucket on a real S3 server
(SeaweedFS) that a spool was replicated to; the result equals the source at the instants
chosen: the latest, and one between two drains (its last transactions in pieces of the
open segment, its snapshot uploaded before them).
"""

from __future__ import annotations

import json
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.repository.s3_store import S3Store
from nkdaemon.services.replicate import Replicator
from tests.helpers import engine_for, run_cli
from tests.integration.test_replicate import drained, spool_for
from tests.natural_content import differences, natural_content
from tests.s3 import S3Server


def fresh_machine(tmp_path: Path, server: S3Server, bucket: str) -> Path:
    home = tmp_path / "fresh"
    home.mkdir()
    config = home / "c.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [repository]
            url = "s3://{bucket}/edms"
            endpoint_url = "{server.endpoint}"
            path_style = true
            """
        )
    )
    return config


def test_restore_reads_the_bucket_with_nothing_but_its_configuration(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    (tmp_path / "origin").mkdir()
    url, config = spool_for(tmp_path / "origin")
    name = s3_server.new_bucket()
    replicator = Replicator(
        spool=tmp_path / "origin" / "repo",
        bucket=S3Store(name, "edms", endpoint_url=s3_server.endpoint, path_style=True),
    )
    for round_ in range(3):
        drained(url, config, round_ * 10, 10)
    assert run_cli(config, "snapshot").exit_code == 0
    drained(url, config, 30, 5)
    replicator.run_once()
    time.sleep(0.01)
    then = datetime.now(UTC)
    expected_then = natural_content(url, tmp_path / "reflect")
    time.sleep(0.01)
    drained(url, config, 100, 5)
    replicator.run_once()
    expected_now = natural_content(url, tmp_path / "reflect")

    fresh = fresh_machine(tmp_path, s3_server, name)
    for at, expected in (
        (("--latest",), expected_now),
        (("--at", then.isoformat()), expected_then),
    ):
        target = fresh.parent / f"restored-{len(at)}.db"
        result = run_cli(
            fresh, "restore", *at, "--create-schema", "--target", f"sqlite:///{target}"
        )
        assert result.exit_code == 0, result.output
        assert differences(natural_content(f"sqlite:///{target}", tmp_path / "r"), expected) == []
    verified = run_cli(fresh, "verify")
    assert verified.exit_code == 0, verified.output
    assert "snapshots: 2" in verified.output  # install's and the one taken here
    with engine_for(url).connect() as conn:
        body = conn.execute(sa.text("SELECT body FROM notes ORDER BY id LIMIT 1")).scalar_one()
    history = run_cli(fresh, "history", "notes", f"body={body}", "--json")
    assert history.exit_code == 0, history.output
    (row,) = json.loads(history.output)
    assert [entry["op"] for entry in row] == ["I"], row
    assert sorted(p.name for p in fresh.parent.iterdir()) == [
        "c.toml",
        "restored-1.db",
        "restored-2.db",
    ], "nothing is copied to the fresh machine: no spool, no download"


def test_a_bucket_only_configuration_cannot_capture_and_says_why(
    tmp_path: Path, s3_server: S3Server
) -> None:
    fresh = fresh_machine(tmp_path, s3_server, "no-such-bucket")
    result = run_cli(fresh, "drain")  # status reads the bucket (test_bucket_only_commands)
    assert result.exit_code != 0
    assert "[source] url: missing" in result.output
