"""Prometheus metrics of one daemon (its own registry, rendered on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_logged = Counter(
            "nkdaemon_events_logged_total",
            "Change events appended to the log",
            registry=self.registry,
        )
        self.transactions_logged = Counter(
            "nkdaemon_transactions_logged_total",
            "Source transactions logged",
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "nkdaemon_lag_seconds",
            "Age of the oldest committed change not yet in the log (0 when none waits)",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "nkdaemon_queue_depth",
            "Captured changes waiting in the source queue",
            registry=self.registry,
        )
        self.snapshot_age = Gauge(
            "nkdaemon_snapshot_age_seconds", "Age of the newest snapshot", registry=self.registry
        )
        self.snapshot_duration = Histogram(
            "nkdaemon_snapshot_duration_seconds",
            "Time taken by scheduled snapshots",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800),
        )
        self.snapshots = Counter(
            "nkdaemon_snapshots_total", "Snapshots taken by the daemon", registry=self.registry
        )
        self.restores = Counter(
            "nkdaemon_restores_total", "Restores run by this process", registry=self.registry
        )
        self.errors = Counter(
            "nkdaemon_errors_total", "Errors by kind", ["kind"], registry=self.registry
        )
        self.drain_passes = Counter(
            "nkdaemon_drain_passes_total",
            "Drain passes completed (at most one per [capture] min_pass_interval)",
            registry=self.registry,
        )
        self.last_drain = Gauge(
            "nkdaemon_last_drain_timestamp_seconds",
            "When the last drain pass finished",
            registry=self.registry,
        )

        self.replication_lag_seconds = Gauge(
            "nkdaemon_replication_lag_seconds",
            "How long the bucket has lacked durable bytes of the spool (0 when caught up)",
            registry=self.registry,
        )
        self.replication_lag_bytes = Gauge(
            "nkdaemon_replication_lag_bytes",
            "Durable bytes of the spool (log and snapshots) not yet in the bucket",
            registry=self.registry,
        )
        self.replicated_lsn = Gauge(
            "nkdaemon_replicated_lsn",
            "The last transaction of the log the bucket holds",
            registry=self.registry,
        )
        self.spool_bytes = Gauge(
            "nkdaemon_spool_bytes", "Size of the local spool", registry=self.registry
        )
        self.uploaded_bytes = Counter(
            "nkdaemon_uploaded_bytes_total",
            "Bytes uploaded to the bucket, each confirmed by the store's checksum",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
