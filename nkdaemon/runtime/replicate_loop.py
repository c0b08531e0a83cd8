"""The daemon's replication job: the spool to the bucket, a round every upload_interval.

A round that fails (the store down, throttling past botocore's retries, a conflict) is
logged once, counted and shown in health, and retried after a delay that doubles up to
MAX_BACKOFF; capture and the spool go on meanwhile, and the backlog goes up with the
first round that succeeds. Readiness turns on the lag (health.py), not on one failure.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from nkdaemon.core.errors import NkdError
from nkdaemon.core.ports import RepositoryStore
from nkdaemon.core.settings import BucketSettings
from nkdaemon.repository.encrypted_store import EncryptedStore, refuse_plaintext
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.metrics import Metrics
from nkdaemon.services.replicate import Replicator
from nkdaemon.services.replication_status import replication_status

log = structlog.get_logger("nkdaemon.replicate")

MAX_BACKOFF = 30.0


def sealed(store: S3Store, bucket: BucketSettings) -> RepositoryStore:
    """The bucket as the repository reads and writes it: with ``encryption_key_file``,
    every object sealed with the key (a wrong key is refused, naming key ids); without,
    refused if the repository was created encrypted (it must never get a plaintext
    object, and nothing in it reads without the key). Reads the bucket's marker."""
    if bucket.encryption_key_file is not None:
        return EncryptedStore(store, bucket.encryption_key_file)
    refuse_plaintext(store)
    return store


def bucket_store(bucket: BucketSettings) -> S3Store:
    """The bucket as a store; credentials from the standard AWS chain (boto3's)."""
    return S3Store(
        bucket.bucket,
        bucket.prefix,
        endpoint_url=bucket.endpoint_url,
        region=bucket.region,
        path_style=bucket.path_style,
    )


class ReplicationLoop:
    """Runs replication rounds in its own thread from ``start`` until ``stop``."""

    def __init__(
        self, spool: Path, bucket: BucketSettings, health: HealthState, metrics: Metrics
    ) -> None:
        self._spool = spool
        self._settings = bucket
        self._store = bucket_store(bucket)
        self._health = health
        self._metrics = metrics
        self._replicator: Replicator | None = None
        self._checked = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._uploaded = 0
        self.error: str | None = None
        self.backoff = 0.0
        self._thread = threading.Thread(target=self._run, name="replicate", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("replicate.started", bucket=self._settings.url)

    def stop(self, timeout: float) -> None:
        """Signal the job to stop after one last round (when the store answered the last
        one), and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        """Run a round now rather than at the next interval."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The replication part of /status, read afresh, with the last round's error."""
        try:
            found = replication_status(self._spool, bucket=self._settings.url)
        except (OSError, NkdError) as exc:
            found = {"bucket": self._settings.url, "lag_seconds": None, "status_error": str(exc)}
        return {**found, "error": self.error, "retry_in": self.backoff or None}

    def _run(self) -> None:
        ended = "stopped"
        try:
            while not self._stop.is_set():
                self.run_round()
                self._wake.wait(self.backoff or self._settings.upload_interval)
                self._wake.clear()
            if self.error is None:  # the store answered: what the drain flushed goes too
                self.run_round()
        except BaseException as exc:
            ended = f"crashed: {type(exc).__name__}: {exc}"
            raise
        finally:
            log.info("replicate.stopped", how=ended)

    def run_round(self) -> None:
        """One round; a failure is reported and sets the backoff, never raised."""
        try:
            if self._replicator is None:
                self._replicator = Replicator(spool=self._spool, bucket=self._store)
            self._replicator.note_backlog()  # the lag counts even if the store never answers
            if not self._checked:  # a server that ignores If-None-Match is refused first
                self._store.check_conditional_writes()
                self._replicator.bucket = sealed(self._store, self._settings)
                self._checked = True
            progress = self._replicator.run_once()
        except Exception as exc:  # a round's failure must not end the job (nor the daemon)
            self._failed(exc)
        else:
            if self.error is not None:
                log.info("replicate.recovered", bucket=self._settings.url)
            self.error, self.backoff = None, 0.0
            self._metrics.uploaded_bytes.inc(max(0, progress.uploaded_bytes - self._uploaded))
            self._uploaded = progress.uploaded_bytes
        self._observe()

    def _failed(self, exc: Exception) -> None:
        message = exc.message if isinstance(exc, NkdError) else f"{type(exc).__name__}: {exc}"
        self.backoff = min(MAX_BACKOFF, max(1.0, self.backoff * 2))
        self._metrics.errors.labels(kind="replication").inc()
        if message != self.error:  # once per fault, not once per retry
            log.warning("replicate.failed", error=message, retry_in=self.backoff)
        self.error = message

    def _observe(self) -> None:
        status = self.status()
        self._health.update(replication_error=self.error)
        if status.get("lag_seconds") is None:
            return
        self._metrics.replication_lag_seconds.set(status["lag_seconds"])
        self._metrics.replication_lag_bytes.set(status["lag_bytes"])
        self._metrics.replicated_lsn.set(status["replicated_lsn"])
        self._metrics.spool_bytes.set(status["spool_bytes"])
