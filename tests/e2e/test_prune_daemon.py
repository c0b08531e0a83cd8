"""The daemon prunes by [retention] after each scheduled snapshot: `nkdaemon run` as a
real subprocess, snapshots every second, keep_snapshots = 1, changes in rounds, on a
local repository and on a spool replicated to a bucket (SeaweedFS). The older snapshots
and the log they hold go (in the bucket too), the source restores exactly afterwards,
and nothing reports a failed prune."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nkdaemon.repository.snapshots import list_snapshots
from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.replicate_loop import bucket_store, sealed
from nkdaemon.services.prune import bucket_side, segment_entries
from tests.daemon_harness import DaemonProcess, daemon_config, wait_caught_up
from tests.helpers import do_install, engine_for, run_cli
from tests.integration.test_prune import change
from tests.natural_content import differences, natural_content
from tests.s3 import S3Server


@pytest.fixture(params=["local", "bucket"])
def repository(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``[repository]`` lines: a local repository, or a spool and a bucket on SeaweedFS."""
    lines = 'segment_size = "4KiB"\n'
    if request.param == "local":
        return lines
    server: S3Server = request.getfixturevalue("s3_server")
    for variable, value in server.environment().items():
        monkeypatch.setenv(variable, value)
    return lines + (
        f'url = "s3://{server.new_bucket()}/edms"\nendpoint_url = "{server.endpoint}"\n'
        'path_style = true\nupload_interval = "200ms"\n'
    )


def test_the_daemon_prunes_after_each_scheduled_snapshot(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], repository: str
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE docs (id integer PRIMARY KEY, code text NOT NULL UNIQUE, body text)"
        )
    engine.dispose()
    config = daemon_config(
        tmp_path, url, '[snapshots]\nschedule = "1s"\n\n[retention]\nkeep_snapshots = 1\n'
    )
    config.write_text(config.read_text().replace("[repository]\n", "[repository]\n" + repository))
    settings = load_settings(config)
    do_install(settings)
    repo = tmp_path / "repo"
    baseline = list_snapshots(repo / "snapshots")[0]
    daemon = daemons(config, env=dict(os.environ))
    daemon.wait_ready()
    for round_ in range(4):
        change(url, round_, lambda: None)
        wait_caught_up(daemon, config)
        daemon.wait_for(
            f"snapshot {round_ + 1}", lambda n=round_: daemon.metric("nkdaemon_snapshots_total") > n
        )
    pruned = daemon.wait_for(
        "the prune after the last snapshot",
        lambda: (lambda s: s if len(s) == 1 else None)(list_snapshots(repo / "snapshots")),
    )
    assert pruned[0].id != baseline.id
    segments = sorted((repo / "log").glob("*.nkdlog"))
    assert int(segments[0].name.split(".")[0]) > 1, "the log the kept snapshot holds is gone"
    assert int(segments[0].name.split(".")[0]) <= pruned[0].log_lsn + 1
    if settings.repository.bucket is not None:
        bucket = bucket_side(
            sealed(bucket_store(settings.repository.bucket), settings.repository.bucket)
        )
        kept = daemon.wait_for(
            "the bucket pruned to its newest snapshot",
            lambda: (lambda s: s if len(s) == 1 else None)(list_snapshots(bucket.snapshots)),
        )
        assert kept[0].id >= pruned[0].id
        first = segment_entries(bucket)[0].first_lsn
        assert first is not None and 1 < first <= kept[0].log_lsn + 1
    assert "prune" not in daemon.status()["job_errors"]
    assert daemon.metric("nkdaemon_errors_total", kind="prune") == 0
    assert daemon.stop() == 0

    target = tmp_path / "restored.db"
    result = run_cli(
        config, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{target}"
    )
    assert result.exit_code == 0, result.output
    expected = natural_content(url, tmp_path / "reflect")
    assert differences(natural_content(f"sqlite:///{target}", tmp_path / "r"), expected) == []
    before = run_cli(config, "restore", "--at", baseline.time, "--target", f"sqlite:///{target}.2")
    assert before.exit_code != 0 and "the repository covers" in before.output
