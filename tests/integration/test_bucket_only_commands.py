"""`status` and `export` on a "fresh machine": a new working directory holding only a
configuration that names the bucket (no [source], no spool), reading a real bucket
(SeaweedFS) that a spool was replicated to.

- `status` shows what the bucket holds: its snapshots, where its log ends, the position
  it is replicated to, the log's size; the same figures the spool's own status shows.
- `export` writes the same fixture from the bucket as from the spool, at the latest
  instant and at one between two drains.
- Damage the input (the bucket's log ends deleted): status no longer claims a position.
- A bucket that holds no repository, or a bucket that does not exist: a clear message
  saying what is wrong and what to do, exit 1, no traceback.
- And on the daemon's machine, where status reads the spool: a bucket behind it for
  longer than max_replication_lag makes status say replication is failing, exit 1.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nkdaemon.repository.s3_store import S3Store
from nkdaemon.runtime.config import load_settings
from nkdaemon.services.replicate import Replicator
from tests.helpers import do_drain, run_cli
from tests.integration.test_replicate import add_notes, drained, spool_for
from tests.integration.test_restore_from_bucket import fresh_machine
from tests.s3 import S3Server

MODELS = '\n[legacy.models]\n"notes.note" = "notes"\n'


@pytest.fixture
def aws_chain(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The server's credentials in the environment (the standard AWS chain)."""
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    return s3_server.environment()


def replicator(tmp_path: Path, server: S3Server, bucket: str, **options: Any) -> Replicator:
    return Replicator(
        spool=tmp_path / "origin" / "repo",
        bucket=S3Store(bucket, "edms", endpoint_url=server.endpoint, path_style=True),
        **options,
    )


def replicated(tmp_path: Path, server: S3Server) -> tuple[Path, str, datetime]:
    """A spool with three drains, a snapshot and two more drains, replicated after the
    fourth and the fifth; its configuration, the bucket, and an instant between them."""
    (tmp_path / "origin").mkdir()
    url, config = spool_for(tmp_path / "origin")
    bucket = server.new_bucket()
    uploads = replicator(tmp_path, server, bucket)
    for round_ in range(3):
        drained(url, config, round_ * 10, 10)
    assert run_cli(config, "snapshot").exit_code == 0
    drained(url, config, 30, 5)
    uploads.run_once()
    time.sleep(0.01)
    then = datetime.now(UTC)
    time.sleep(0.01)
    drained(url, config, 100, 5)
    uploads.run_once()
    return config, bucket, then


def status_json(config: Path) -> tuple[int, dict[str, object]]:
    done = run_cli(config, "status", "--json")
    return done.exit_code, json.loads(done.stdout)


def test_status_and_export_read_the_bucket_with_nothing_but_its_configuration(
    tmp_path: Path, s3_server: S3Server, aws_chain: dict[str, str]
) -> None:
    origin, bucket, then = replicated(tmp_path, s3_server)
    fresh = fresh_machine(tmp_path, s3_server, bucket)
    for config in (origin, fresh):  # the fixture's model for the table
        config.write_text(config.read_text() + MODELS)

    code, spool = status_json(origin)
    assert code == 0, spool
    code, held = status_json(fresh)
    assert code == 0, held
    assert held["repository"] == f"s3://{bucket}/edms"
    assert held["errors"] == [] and held["queue_depth"] is None
    for field in ("last_lsn", "last_commit_time", "complete_through", "log_segments"):
        assert held[field] == spool[field], field
    assert held["log_bytes"] == spool["log_bytes"] > 0
    assert held["snapshots"] == spool["snapshots"] and len(held["snapshots"]) == 2
    replication = held["replication"]
    assert isinstance(replication, dict)
    assert replication["replicated_lsn"] == spool["last_lsn"]
    text = run_cli(fresh, "status")
    assert text.exit_code == 0, text.output
    assert f"replicated   transaction {spool['last_lsn']}" in text.output
    assert "no [source] in this configuration" in text.output

    for at in (("--latest",), ("--at", then.isoformat())):
        mine, theirs = tmp_path / "from-spool.json", tmp_path / "from-bucket.json"
        done = run_cli(origin, "export", *at, "-o", str(mine))
        assert done.exit_code == 0, done.output
        done = run_cli(fresh, "export", *at, "-o", str(theirs))
        assert done.exit_code == 0, done.output
        assert theirs.read_bytes() == mine.read_bytes(), at
        assert len(json.loads(theirs.read_bytes())) >= (40 if at == ("--at",) else 35)
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["c.toml"], "nothing copied here"

    # damage the input: without the bucket's log end, status no longer claims a position
    # (it reads the bucket, it does not make the figures up)
    held = S3Store(bucket, "edms", endpoint_url=s3_server.endpoint, path_style=True)
    ends = held.list("log/end")  # log/end.json, and the end markers log/ends/... if any
    assert ends
    for name in ends:
        held.delete(name)
    code, after = status_json(fresh)
    assert after["last_lsn"] == 0 and after["log_bytes"] == 0, after


def test_status_on_the_spool_says_replication_is_failing_past_max_replication_lag(
    tmp_path: Path, s3_server: S3Server, aws_chain: dict[str, str]
) -> None:
    """On the daemon's machine status reads the spool: a bucket behind it for longer than
    [health] max_replication_lag (10 minutes here, by the replicator's clock) is a
    problem, exit 1, until a round uploads the backlog."""
    origin, bucket, _then = replicated(tmp_path, s3_server)
    origin.write_text(
        origin.read_text().replace(
            "[repository]\n",
            f'[repository]\nurl = "s3://{bucket}/edms"\nendpoint_url = "{s3_server.endpoint}"\n'
            "path_style = true\n",
            1,
        )
    )
    settings = load_settings(origin)
    code, caught_up = status_json(origin)
    assert code == 0, caught_up
    assert caught_up["replication"]["lag_bytes"] == 0  # type: ignore[index]
    assert caught_up["replication"]["failing"] is False  # type: ignore[index]
    add_notes(settings.source.url, 200, 5)
    do_drain(settings)
    ago = datetime.now(UTC) - timedelta(minutes=10)
    replicator(tmp_path, s3_server, bucket, clock=lambda: ago).note_backlog()
    behind = run_cli(origin, "status")
    assert behind.exit_code == 1, behind.output
    assert "replication is failing" in behind.stderr and "max_replication_lag" in behind.stderr
    assert "behind by 6" in behind.stdout, behind.stdout  # 600 s and more
    replicator(tmp_path, s3_server, bucket).run_once()
    code, after = status_json(origin)
    assert code == 0, after
    assert after["replication"]["failing"] is False  # type: ignore[index]


def test_export_at_a_quiet_instant_the_log_is_complete_through(
    tmp_path: Path, s3_server: S3Server, aws_chain: dict[str, str]
) -> None:
    """A time after the last commit that a drain has since covered (a quiet source) is a
    restore point for export as for restore, from the spool and from the bucket alike."""
    origin, bucket, _then = replicated(tmp_path, s3_server)
    fresh = fresh_machine(tmp_path, s3_server, bucket)
    settings = load_settings(origin)
    add_notes(settings.source.url, 300, 3)
    time.sleep(0.05)
    quiet = datetime.now(UTC).isoformat()  # after the last commit, before the drain
    time.sleep(0.05)
    do_drain(settings)
    replicator(tmp_path, s3_server, bucket).run_once()
    exported = []
    for config in (origin, fresh):
        config.write_text(config.read_text() + MODELS)
        out = tmp_path / f"quiet-{len(exported)}.json"
        done = run_cli(config, "export", "--at", quiet, "-o", str(out))
        assert done.exit_code == 0, done.output
        exported.append(out.read_bytes())
    assert exported[0] == exported[1]
    assert sum(1 for o in json.loads(exported[0]) if o["model"] == "notes.note") == 43


@pytest.mark.parametrize("command", [("status",), ("export", "--latest")])
@pytest.mark.parametrize("which", ["empty", "missing"])
def test_a_bucket_without_a_repository_stops_with_one_clear_line(
    tmp_path: Path,
    s3_server: S3Server,
    aws_chain: dict[str, str],
    command: tuple[str, ...],
    which: str,
) -> None:
    bucket = s3_server.new_bucket() if which == "empty" else "no-such-bucket"
    fresh = fresh_machine(tmp_path, s3_server, bucket)
    done = run_cli(fresh, *command)
    assert done.exit_code == 1, done.output
    said = done.stderr.strip().splitlines()
    assert said, done.output
    assert "unexpected" not in done.output and "Traceback" not in done.output, done.output
    if which == "empty":
        assert any("holds no nkdaemon repository" in line for line in said), said
    else:
        assert any(bucket in line for line in said), said
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["c.toml"]
