"""Prometheus metrics of the operator (served on ``/metrics`` when a port is configured).

Names follow Prometheus' conventions (``buildstudio_`` prefix, ``_total`` counters, base units);
docs/observability.md lists them, and the chart's dashboard and alerts query only these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    "Dispatches refused by the model-service preflight, by engine and verdict reason.",
    ["engine", "reason"],
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "buildstudio_queue_length",
    "Dispatches admitted by the gate and waiting for a free slot.",
    registry=REGISTRY,
)
RUNNING = Gauge(
    "buildstudio_dispatches_running",
    "Dispatches holding one of their engine's slots (admitted, launching or running, not finished), by engine.",
    ["engine"],
    registry=REGISTRY,
)
RELAY_TOOL_CALLS = Counter(
    "buildstudio_relay_tool_calls_total",
    "Text-format tool calls the repair relay handled in finished dispatches, by engine, model and result: "
    "repaired (turned into API tool calls) or unrepaired (the relay's errors: left as text, never executed).",
    ["engine", "model", "result"],
    registry=REGISTRY,
)
KUBE_API_ERRORS = Counter(
    "buildstudio_kube_api_errors_total",
    "Kubernetes API calls of the operator's own client that failed, by verb, resource and HTTP status code "
    "(connection and timeout when no answer came).",
    ["verb", "resource", "code"],
    registry=REGISTRY,
)


def record_finished(engine: str, model: str, outcome: str, duration_seconds: float | None) -> None:
    DISPATCHES.labels(engine=engine or "unknown", model=model or "unknown", outcome=outcome).inc()
    if duration_seconds is not None and duration_seconds >= 0:
        DURATION.observe(duration_seconds)


def record_relay(engine: str, model: str, summary: Mapping[str, Any] | None) -> None:
    """A finished dispatch's relay counters, from its status summary (nothing when the relay was off)."""
    summary = summary or {}
    for result, key in (("repaired", "repairedToolCalls"), ("unrepaired", "unrepairedToolCalls")):
        count = summary.get(key)
        if type(count) is int and count > 0:
            RELAY_TOOL_CALLS.labels(engine=engine or "unknown", model=model or "unknown", result=result).inc(count)


def record_preflight_failure(reason: str, engine: str = "") -> None:
    PREFLIGHT_FAILURES.labels(engine=engine or "unknown", reason=reason).inc()


def record_kube_error(verb: str, resource: str, code: int | str) -> None:
    KUBE_API_ERRORS.labels(verb=verb, resource=resource, code=str(code)).inc()


class RunningDispatch:
    """One dispatch's share of ``buildstudio_dispatches_running``: counted once, under the engine it
    runs on, while its daemon sees it admitted and unfinished; released when it finishes or the daemon
    ends (a restarted operator counts its dispatches again from their status)."""

    def __init__(self) -> None:
        self.engine: str | None = None

    def sync(self, engine: str, running: bool) -> None:
        engine = engine or "unknown"
        if self.engine is not None and (not running or engine != self.engine):
            RUNNING.labels(engine=self.engine).dec()
            self.engine = None
        if running and self.engine is None:
            RUNNING.labels(engine=engine).inc()
            self.engine = engine


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread (prometheus_client's own)."""
    start_http_server(port, addr=addr, registry=REGISTRY)
