"""Every way a model service can hang is judged within the probe's 2.5 s bound (issue #18).

Bounded, not timed: each case must end under `total_timeout` plus scheduling slack; the reason
and the message must say what happened.
"""

from __future__ import annotations

import time

import pytest

from buildstudio.adapters.modelservice.probe import probe
from buildstudio.core.observation import FailureKind, ProbeTarget
from buildstudio.core.preflight import Reason, decide
from tests.preflight.hangs import HANG_CASES, hung_endpoint

BOUND = ProbeTarget(base_url="x").total_timeout
SLACK = 0.5

EXPECTED = {  # failure kind, words the verdict message must hold
    "refused": (FailureKind.REFUSED, "refused"),
    "syn-blackhole": (FailureKind.TIMEOUT, "timeout"),
    "accept-silent": (FailureKind.TIMEOUT, "timeout"),
    "tls-silent": (FailureKind.TIMEOUT, "timeout"),
    "headers-then-stall": (FailureKind.TIMEOUT, "timeout"),
    "drip": (FailureKind.TIMEOUT, "timeout"),
    "dns": (FailureKind.DNS, "dns"),
}


def test_the_default_bound_is_the_goal() -> None:
    t = ProbeTarget(base_url="x")
    assert t.total_timeout == 2.5 and t.connect_timeout < t.total_timeout and t.read_timeout < t.total_timeout


@pytest.mark.parametrize("case", HANG_CASES)
async def test_hung_endpoint_is_judged_within_the_bound(case: str) -> None:
    async with hung_endpoint(case) as url:
        started = time.monotonic()
        obs = await probe(ProbeTarget(base_url=url), "qwen3-coder")
        elapsed = time.monotonic() - started
    verdict = decide(obs)
    kind, word = EXPECTED[case]
    assert elapsed <= BOUND + SLACK, (case, elapsed)
    assert (obs.failure, obs.reachable) == (kind, False), obs.detail
    assert verdict.reason is Reason.ENDPOINT_UNREACHABLE and not verdict.admit
    assert verdict.message.startswith(f"{url} unreachable ({kind.value}): GET {url}/models: {word}"), verdict.message


async def test_the_whole_probe_shares_one_bound_with_slow_aux_routes() -> None:
    """A listing that answers, then context routes that hang: still one bound, the listing kept."""
    from tests.preflight.scripted import Reply, ScriptedServer, scenario_routes

    routes = scenario_routes("ollama", "unknown")
    routes["GET /v1/models"].delay = 1.0
    routes["GET /api/ps"].delay = 30.0
    routes["POST /api/show"].delay = 30.0
    assert isinstance(routes["GET /v1/models"], Reply)
    server = await ScriptedServer(routes).start()
    try:
        started = time.monotonic()
        obs = await probe(ProbeTarget(base_url=server.url + "/v1"), "qwen3-coder")
        elapsed = time.monotonic() - started
    finally:
        await server.stop()
    assert elapsed <= BOUND + SLACK, elapsed
    assert obs.failure is None and obs.model_present and obs.notes
    assert decide(obs).reason is Reason.CONTEXT_UNKNOWN
