"""Prometheus metrics of the operator (served on ``/metrics`` when a port is configured)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

DISPATCHES = Counter(
    "buildstudio_dispatches_total",
    "Dispatches that reached a terminal state, by engine, model and outcome (the Succeeded reason).",
    ["engine", "model", "outcome"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "buildstudio_dispatch_duration_seconds",
    "Time from Running to a terminal state.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=REGISTRY,
)
PREFLIGHT_FAILURES = Counter(
    "buildstudio_preflight_failures_total",
    "Dispatches refused by the model-service preflight, by verdict reason.",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "buildstudio_queue_length",
    "Dispatches admitted by the gate and waiting for a free slot.",
    registry=REGISTRY,
)


def record_finished(engine: str, model: str, outcome: str, duration_seconds: float | None) -> None:
    DISPATCHES.labels(engine=engine or "unknown", model=model or "unknown", outcome=outcome).inc()
    if duration_seconds is not None and duration_seconds >= 0:
        DURATION.observe(duration_seconds)


def record_preflight_failure(reason: str) -> None:
    PREFLIGHT_FAILURES.labels(reason=reason).inc()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread (prometheus_client's own)."""
    start_http_server(port, addr=addr, registry=REGISTRY)
