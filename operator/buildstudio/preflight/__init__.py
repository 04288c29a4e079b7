"""Model-service preflight: is the endpoint up, is the model there, is its context big enough?

Functional core: `backends` (pure parsing of each server's JSON) and `verdict.decide` (pure).
IO shell: `probe.probe` (bounded httpx requests), `cache.PreflightCache` (one probe per endpoint
at a time), `smoke.tool_call_smoke` (optional), `cli.register` (`buildstudio preflight`).
"""

from __future__ import annotations

from buildstudio.preflight.cache import PreflightCache
from buildstudio.preflight.observation import (
    Backend,
    ContextReport,
    ContextSource,
    FailureKind,
    Observation,
    ProbeTarget,
)
from buildstudio.preflight.probe import probe
from buildstudio.preflight.smoke import SmokeResult, SmokeStatus, tool_call_smoke
from buildstudio.preflight.verdict import ConditionStatus, Reason, Verdict, decide

__all__ = [
    "Backend",
    "ConditionStatus",
    "ContextReport",
    "ContextSource",
    "FailureKind",
    "Observation",
    "PreflightCache",
    "ProbeTarget",
    "Reason",
    "SmokeResult",
    "SmokeStatus",
    "Verdict",
    "decide",
    "probe",
    "tool_call_smoke",
]
