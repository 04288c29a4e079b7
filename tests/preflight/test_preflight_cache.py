"""PreflightCache: coalescing (counted at the server), TTLs, bounds, cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from buildstudio.adapters.modelservice.cache import PreflightCache
from buildstudio.core.observation import Backend, FailureKind, Observation, ProbeTarget
from tests.preflight.scripted import Reply, ServeFn, scenario_routes


async def test_100_simultaneous_lookups_cause_one_request(serve: ServeFn) -> None:
    routes = scenario_routes("vllm", "ready")
    routes["GET /v1/models"].delay = 0.2  # keep the one probe in flight while all 100 arrive
    server = await serve(routes)
    cache = PreflightCache(ttl=60)
    target = ProbeTarget(base_url=server.url + "/v1")

    results = await asyncio.gather(*(cache.get(target, "qwen3-coder") for _ in range(100)))

    assert server.hits["GET /v1/models"] == 1
    assert sum(server.hits.values()) == 1  # vLLM needs no other route
    assert cache.probes_started == 1 and cache.coalesced == 99
    assert all(r is results[0] for r in results)
    assert results[0].context.allocated == 131072
    # Warm: answered from the cache, no new request.
    assert (await cache.get(target, "qwen3-coder")) is results[0]
    assert server.hits["GET /v1/models"] == 1 and cache.hits == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observation(model: str, *, failure: FailureKind | None = None) -> Observation:
    return Observation(
        base_url="http://127.0.0.1:1/v1",
        model=model,
        reachable=failure is None,
        failure=failure,
        backend=None if failure else Backend.VLLM,
        model_present=None if failure else True,
        observed_at=datetime.now(UTC),
    )


class CountingProbe:
    """Stands in for the network only in tests about time and bounds; the real probe is used above."""

    def __init__(self, failure: FailureKind | None = None) -> None:
        self.calls: list[str] = []
        self.failure = failure

    async def __call__(self, target: ProbeTarget, model: str) -> Observation:
        self.calls.append(model)
        await asyncio.sleep(0)
        return observation(model, failure=self.failure)


async def test_ttl_expiry_and_shorter_failure_ttl() -> None:
    clock = FakeClock()
    ok_probe, bad_probe = CountingProbe(), CountingProbe(FailureKind.REFUSED)
    target = ProbeTarget(base_url="http://127.0.0.1:1/v1")
    ok = PreflightCache(ttl=30, failure_ttl=5, probe_fn=ok_probe, clock=clock)
    bad = PreflightCache(ttl=30, failure_ttl=5, probe_fn=bad_probe, clock=clock)
    for cache in (ok, bad):
        await cache.get(target, "m")
    clock.now += 6  # past failure_ttl, within ttl
    for cache in (ok, bad):
        await cache.get(target, "m")
    assert (len(ok_probe.calls), len(bad_probe.calls)) == (1, 2)
    clock.now += 30  # past ttl
    await ok.get(target, "m")
    assert len(ok_probe.calls) == 2


async def test_key_is_base_url_backend_and_model() -> None:
    fake = CountingProbe()
    cache = PreflightCache(probe_fn=fake)
    a = ProbeTarget(base_url="http://127.0.0.1:1/v1")
    await cache.get(a, "m")
    await cache.get(ProbeTarget(base_url="http://127.0.0.1:1/v1/", read_timeout=9), "m")  # same key
    await cache.get(ProbeTarget(base_url="http://127.0.0.1:1/v1", backend=Backend.OLLAMA), "m")
    await cache.get(a, "other")
    assert fake.calls == ["m", "m", "other"]


async def test_size_is_bounded_lru() -> None:
    fake = CountingProbe()
    cache = PreflightCache(max_entries=3, probe_fn=fake)
    target = ProbeTarget(base_url="http://127.0.0.1:1/v1")
    for model in ["a", "b", "c", "a", "d", "e"]:
        await cache.get(target, model)
    assert len(cache) == 3
    await cache.get(target, "a")  # most recently used: still cached
    await cache.get(target, "b")  # evicted: probed again
    assert fake.calls == ["a", "b", "c", "d", "e", "b"]


async def test_cancelled_waiter_does_not_cancel_the_shared_probe(serve: ServeFn) -> None:
    routes = scenario_routes("vllm", "ready")
    routes["GET /v1/models"].delay = 0.2
    server = await serve(routes)
    cache = PreflightCache()
    target = ProbeTarget(base_url=server.url + "/v1")
    first = asyncio.create_task(cache.get(target, "qwen3-coder"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(cache.get(target, "qwen3-coder"))
    await asyncio.sleep(0.05)
    first.cancel()
    obs = await second
    assert obs.model_present is True and server.hits["GET /v1/models"] == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_crashing_probe_is_not_cached() -> None:
    calls = 0

    async def broken(target: ProbeTarget, model: str) -> Observation:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    cache = PreflightCache(probe_fn=broken)
    target = ProbeTarget(base_url="http://127.0.0.1:1/v1")
    outcomes = await asyncio.gather(*(cache.get(target, "m") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes) and calls == 1
    with pytest.raises(RuntimeError):
        await cache.get(target, "m")
    assert calls == 2 and len(cache) == 0


async def test_invalidate_forces_a_new_probe(serve: ServeFn) -> None:
    server = await serve({"GET /v1/models": Reply(status=503, text="loading")})
    cache = PreflightCache(failure_ttl=60)
    target = ProbeTarget(base_url=server.url + "/v1")
    assert (await cache.get(target, "m")).http_status == 503
    cache.invalidate(target, "m")
    await cache.get(target, "m")
    assert server.hits["GET /v1/models"] == 2


async def test_results_are_shared_only_under_the_same_api_key() -> None:
    """Two engines on one service with different keys: one's 200 must not answer for the other."""
    probe = CountingProbe()
    cache = PreflightCache(ttl=60, probe_fn=probe)
    url = "http://127.0.0.1:1/v1"
    for key in ("k1", "k2", None, "k1"):
        await cache.get(ProbeTarget(base_url=url, api_key=key), "m")
    assert len(probe.calls) == 3 and cache.hits == 1
    assert not any("k1" in str(part) for entry in cache._entries for part in entry)  # a digest, not the key
