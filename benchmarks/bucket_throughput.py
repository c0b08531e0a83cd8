"""The off-site repository: upload throughput to a local S3 server (SeaweedFS), and restore
from the bucket beside restore from the directory, in the same run.

pgbench at --scale (10: 1,000,000 accounts) is installed (its baseline snapshot), a pgbench
run is captured and drained, then one replication round uploads the whole repository
(segments, snapshot files) to a fresh bucket: MB/s of what was uploaded. Then
`restore --latest --create-schema` runs into two empty PostgreSQL databases, once from the
repository folder and once from a configuration that names only the bucket (another
folder, no spool), each in its own process: seconds and the ratio.

    python benchmarks/bucket_throughput.py [--scale 10] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import admin, db_url, nkdaemon, nkdaemon_config, pgbench, pgbench_init

from nkdaemon.repository.s3_store import S3Store
from nkdaemon.services.replicate import Replicator
from tests.s3 import seaweedfs

SOURCE = "nkd_bench_bucket_src"
TARGETS = ("nkd_bench_bucket_dir", "nkd_bench_bucket_s3")
CONFIG = """
[capture]
tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
[tables.pgbench_history]
identity = "full"
"""


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_restore(config: Path, target: str, env: dict[str, str]) -> float:
    admin(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{target}"')
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), "restore", "--latest",
         "--create-schema", "--target", db_url(target, "postgresql+psycopg")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"restore from {config} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    pgbench_init(SOURCE, args.scale)
    with nkdaemon_config(SOURCE, CONFIG) as config, tempfile.TemporaryDirectory() as scratch:
        nkdaemon(config, "install")
        pgbench(SOURCE, "-c", "2", "-T", str(args.seconds))
        nkdaemon(config, "drain")
        repo = config.parent / "repo"
        repository_bytes = folder_bytes(repo)
        with seaweedfs(Path(scratch) / "weed") as server:
            env = {**os.environ, **server.environment()}
            os.environ.update(server.environment())
            uploads: list[float] = []
            for _ in range(args.rounds):
                bucket = server.new_bucket()
                store = S3Store(bucket, "bench", endpoint_url=server.endpoint, path_style=True)
                # what was uploaded is recorded in the spool: forget it, a new bucket each round
                (repo / "replication.json").unlink(missing_ok=True)
                started = time.perf_counter()
                progress = Replicator(spool=repo, bucket=store).run_once()
                uploads.append(time.perf_counter() - started)
            uploaded = progress.uploaded_bytes
            fresh = Path(scratch) / "fresh"
            fresh.mkdir()
            bucket_config = fresh / "c.toml"
            bucket_config.write_text(
                textwrap.dedent(
                    f"""
                    [repository]
                    url = "s3://{bucket}/bench"
                    endpoint_url = "{server.endpoint}"
                    path_style = true
                    [log]
                    level = "warning"
                    """
                )
            )
            from_dir, from_bucket = [], []
            for _ in range(args.rounds):
                from_dir.append(timed_restore(config, TARGETS[0], env))
                from_bucket.append(timed_restore(bucket_config, TARGETS[1], env))
    upload_s = statistics.median(uploads)
    result = {
        "scale": args.scale,
        "repository_bytes": repository_bytes,
        "uploaded_bytes": uploaded,
        "upload_seconds": [round(u, 2) for u in uploads],
        "upload_mb_per_s": round(uploaded / upload_s / 1e6, 1),
        "restore_from_directory_s": [round(t, 2) for t in from_dir],
        "restore_from_bucket_s": [round(t, 2) for t in from_bucket],
        "bucket_over_directory": round(
            statistics.median(from_bucket) / statistics.median(from_dir), 2
        ),
    }
    print(f"upload to SeaweedFS: {uploaded / 1e6:.1f} MB in {upload_s:.2f} s (median of "
          f"{args.rounds}): {result['upload_mb_per_s']} MB/s")  # fmt: skip
    print(f"restore --latest from the directory: {statistics.median(from_dir):.2f} s; "
          f"from the bucket: {statistics.median(from_bucket):.2f} s; "
          f"ratio {result['bucket_over_directory']}")  # fmt: skip
    print(json.dumps(result))
    for target in TARGETS:
        admin(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    admin(f'DROP DATABASE IF EXISTS "{SOURCE}" WITH (FORCE)')


if __name__ == "__main__":
    main()
