"""`nkdaemon prune` on a repository replicated to a real bucket (SeaweedFS): the spool and
the bucket are pruned each by what it holds, the bucket loses exactly the objects of the
released snapshots and segments, and a fresh machine (a configuration naming only the
bucket) restores every recorded instant of the retained window and refuses older ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nkdaemon.repository.s3_store import S3Store
from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.services.replicate import Replicator
from tests.helpers import run_cli
from tests.integration.test_prune import assert_window_restores, build_history, said
from tests.integration.test_restore_from_bucket import fresh_machine
from tests.s3 import S3Server


def test_prune_deletes_in_spool_and_bucket_and_a_fresh_machine_restores_the_window(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    history = build_history(tmp_path / "origin", rounds=6, snapshot_after={1, 3, 4})
    spool, name = tmp_path / "origin" / "repo", s3_server.new_bucket()
    bucket = S3Store(name, "edms", endpoint_url=s3_server.endpoint, path_style=True)
    Replicator(spool=spool, bucket=bucket).run_once()
    config = history.config
    config.write_text(
        config.read_text().replace(
            "[repository]\n",
            f'[repository]\nurl = "s3://{name}/edms"\nendpoint_url = "{s3_server.endpoint}"\n'
            "path_style = true\n",
        )
        + "\n[retention]\nkeep_snapshots = 2\n"
    )
    snapshots = list_snapshots(spool / "snapshots")
    assert len(snapshots) == 4
    gone, kept = snapshots[:2], snapshots[2:]
    objects = set(bucket.list())
    segments = sorted(n for n in objects if n.startswith("log/") and n.endswith(".nkdlog"))
    pieces = {n for n in objects if n.startswith("log/pieces/")}
    assert len(segments) >= 3 and pieces, "the test means closed segments and an open one"

    dry = run_cli(config, "prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert set(bucket.list()) == objects, "--dry-run deletes nothing in the bucket"
    for where in ("spool", "bucket"):
        for snapshot in gone:
            assert f"{where}: would delete snapshot {snapshot.id}" in dry.output

    pruned = run_cli(config, "prune")
    assert pruned.exit_code == 0, pruned.output
    assert said(dry.output, "bucket").replace("would delete", "deleted") == said(
        pruned.output, "bucket"
    )
    left = set(bucket.list())
    deleted = objects - left
    assert not left - objects, "prune writes nothing"
    assert {n.split("/")[1] for n in deleted if n.startswith("snapshots/")} == {s.id for s in gone}
    assert not [n for n in left if any(n.startswith(f"snapshots/{s.id}/") for s in gone)]
    released = {n for n in deleted if n.startswith("log/")}
    assert released and released < set(segments), "only closed segments, and some of them"
    ends = {n for n in objects if n.startswith("log/ends/")}
    assert ends and ends | pieces <= left, "the open segment and the end markers stay"
    assert [s.id for s in list_snapshots(spool / "snapshots")] == [s.id for s in kept]

    fresh = fresh_machine(tmp_path, s3_server, name)
    assert_window_restores(history, fresh, kept[0].moment, tmp_path / "fresh")
    verified = run_cli(fresh, "verify")
    assert verified.exit_code == 0, verified.output
    fresh.write_text(fresh.read_text() + "\n[retention]\nkeep_snapshots = 2\n")
    again = run_cli(fresh, "prune")
    assert again.exit_code == 0, again.output
    assert said(again.output, "bucket").startswith("bucket: deleted 0;"), again.output
    assert "spool:" not in again.output, "a machine with no spool prunes the bucket only"
