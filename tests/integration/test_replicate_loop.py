"""The daemon's replication job in process (runtime/replicate_loop.py), against SeaweedFS
behind a FaultProxy: a server that ignores If-None-Match is refused before anything is
uploaded, and readiness turns on the replication lag, naming the last error, and back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nkdaemon.core.settings import BucketSettings, HealthSettings
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.runtime.replicate_loop import ReplicationLoop
from tests.integration.test_replicate import drained, spool_for
from tests.s3 import FaultProxy, S3Server, fault_proxy


@pytest.fixture
def proxy(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    with fault_proxy(s3_server) as proxy:
        yield proxy


def job(tmp_path: Path, server: S3Server, proxy: FaultProxy) -> tuple[ReplicationLoop, HealthState]:
    url, config = spool_for(tmp_path)
    drained(url, config, 0, 10)
    bucket = BucketSettings(
        url="s3://x/p",
        bucket=server.new_bucket(),
        prefix="p",
        endpoint_url=proxy.endpoint,
        path_style=True,
    )
    health = HealthState(HealthSettings(max_replication_lag_seconds=0.3), {})
    loop = ReplicationLoop(tmp_path / "repo", bucket, health, Metrics())
    health.add_live(lambda: {"replication": loop.status()})
    return loop, health


def replication_reasons(health: HealthState) -> list[str]:
    return [r for r in health.readiness() if "replication" in r]


def test_a_server_that_ignores_if_none_match_is_refused_before_anything_goes_up(
    tmp_path: Path, s3_server: S3Server, proxy: FaultProxy
) -> None:
    loop, _health = job(tmp_path, s3_server, proxy)
    proxy.pretend_puts = True
    loop.run_round()
    assert loop.error is not None and "If-None-Match" in loop.error
    puts = [e.path for e in proxy.requests("PUT")]
    assert puts and all("/.nkd-probe-" in p for p in puts), puts


def test_readiness_turns_on_the_lag_names_the_error_and_recovers(
    tmp_path: Path, s3_server: S3Server, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # a round against a store that is down ends fast
    loop, health = job(tmp_path, s3_server, proxy)
    proxy.throttle = 10**9  # down: every request answered 503 SlowDown
    loop.run_round()
    assert loop.error is not None and loop.backoff >= 1.0
    time.sleep(0.4)
    (reason,) = replication_reasons(health)
    assert "exceeds max_replication_lag" in reason and "SlowDown" in reason, reason
    assert health.document()["replication"]["lag_bytes"] > 0
    proxy.throttle = 0
    loop.run_round()
    assert (loop.error, loop.backoff) == (None, 0.0)
    assert replication_reasons(health) == []
    assert health.document()["replication"]["lag_bytes"] == 0
