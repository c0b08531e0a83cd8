"""Health over HTTP: /healthz (alive), /readyz (the backup is fresh), /metrics, /status.

Readiness means *the data is fresh*, not *the process is up*: the source answers, no
committed change has waited longer than [health] max_lag, the newest snapshot is
younger than max_snapshot_age, and (with a bucket) the bucket has lacked none of the
spool's durable bytes for longer than max_replication_lag. A 503 names the reason.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from nkdaemon.runtime.config import HealthSettings
from nkdaemon.runtime.metrics import Metrics

log = structlog.get_logger("nkdaemon.health")


class HealthState:
    """What the daemon knows about itself; updated by its loop, read by the HTTP threads."""

    def __init__(
        self,
        settings: HealthSettings,
        base_status: dict[str, Any],
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.settings = settings
        # Fields read afresh for every document: what other processes change (the
        # repository's snapshots) must not be a copy the daemon took earlier.
        self._live: list[Callable[[], dict[str, Any]]] = [live or dict]
        self.status: dict[str, Any] = dict(base_status)
        self.status.update(
            {
                "state": "starting",
                "source_error": None,
                "repository_error": None,
                "capture_error": None,
                "config_error": None,
                "job_errors": {},
            }
        )

    def add_live(self, fields: Callable[[], dict[str, Any]]) -> None:
        """Another source of fields read afresh for every document."""
        self._live.append(fields)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.status.update(fields)

    def job_error(self, job: str, message: str | None) -> None:
        with self._lock:
            errors = dict(self.status["job_errors"])
            if message is None:
                errors.pop(job, None)
            else:
                errors[job] = message
            self.status["job_errors"] = errors

    def document(self) -> dict[str, Any]:
        with self._lock:
            status = dict(self.status)
        for live in self._live:
            status.update(live())
        replication = status.get("replication")
        if replication:  # as `status` says it: behind past max_replication_lag is failing
            status["replication"] = {**replication, "failing": bool(self._replication(replication))}
        copy: dict[str, Any] = json.loads(json.dumps(status, default=str))
        return copy

    def readiness(self, now: datetime | None = None) -> list[str]:
        """Reasons the backup is not fresh; empty when ready."""
        now = now or datetime.now(UTC)
        status = self.document()
        reasons = []
        if status["state"] != "running":
            reasons.append(f"daemon is {status['state']}")
        if status.get("source_error"):
            reasons.append(f"source unavailable: {status['source_error']}")
        if status.get("capture_error"):
            reasons.append(status["capture_error"])
        if status.get("repository_error"):
            reasons.append(f"repository: {status['repository_error']}")
        if status.get("snapshots_error"):
            reasons.append(f"snapshots: {status['snapshots_error']}")
        lag = status.get("lag_seconds")
        if lag is not None and lag > self.settings.max_lag_seconds:
            reasons.append(f"lag {lag:.1f} s exceeds max_lag {self.settings.max_lag_seconds:.0f} s")
        limit = self.settings.max_snapshot_age_seconds
        if limit is not None:
            newest = status.get("snapshots", [])[-1:] or None
            if not newest:
                reasons.append("no snapshot yet")
            else:
                current = newest[0].get("current_as_of") or newest[0]["time"]
                age = (now - datetime.fromisoformat(current)).total_seconds()
                if age > limit:
                    reasons.append(
                        f"newest snapshot is {age:.0f} s old (max_snapshot_age {limit:.0f} s)"
                    )
        reasons.extend(self._replication(status.get("replication")))
        for job, message in status.get("job_errors", {}).items():
            reasons.append(f"job {job} failed: {message}")
        return reasons

    def _replication(self, replication: dict[str, Any] | None) -> list[str]:
        if not replication:
            return []
        lag, limit = replication.get("lag_seconds"), self.settings.max_replication_lag_seconds
        if lag is None:
            return [f"replication: {replication.get('status_error')}"]
        if lag <= limit:
            return []
        reason = (
            f"replication lag {lag:.1f} s ({replication['lag_bytes']} bytes) exceeds "
            f"max_replication_lag {limit:.0f} s"
        )
        error = replication.get("error")
        return [f"{reason}; last upload failed: {error}" if error else reason]


class HealthServer:
    def __init__(self, listen: str, state: HealthState, metrics: Metrics) -> None:
        host, _, port = listen.rpartition(":")
        self.state = state
        self.metrics = metrics
        handler = _handler(state, metrics)
        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="health", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()
        log.info("health.listening", address=self.address)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(state: HealthState, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            elif path == "/readyz":
                reasons = state.readiness()
                body = json.dumps({"ready": not reasons, "reasons": reasons}).encode()
                self._send(503 if reasons else 200, "application/json", body)
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render())
            elif path == "/status":
                body = json.dumps(state.document(), indent=2, ensure_ascii=False).encode()
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: try /healthz /readyz /metrics /status\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # requests are not worth a log line each

    return Handler
