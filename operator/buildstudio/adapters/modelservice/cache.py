"""A coalescing TTL cache in front of `probe`: one probe per endpoint+model at a time.

100 dispatches arriving together for one endpoint await ONE in-flight probe (an asyncio task
shared through `asyncio.shield`, so a cancelled waiter does not cancel it for the others).
Results expire after `ttl`; failures and missing models after the shorter `failure_ttl`, so a
fix on the server side is noticed soon. The cache holds at most `max_entries` keys (LRU).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from buildstudio.adapters.modelservice.probe import probe
from buildstudio.core.observation import Backend, Observation, ProbeTarget

ProbeFn = Callable[[ProbeTarget, str], Awaitable[Observation]]
CacheKey = tuple[str, Backend, str, str]


@dataclass
class _Entry:
    task: asyncio.Task[Observation] | None = None
    result: Observation | None = None
    expires: float = 0.0


def cache_key(target: ProbeTarget, model: str) -> CacheKey:
    # Two engines may share a service with different keys: a result is only shared by the same
    # key (kept as a digest, so the key itself sits in no cache structure).
    key_id = hashlib.sha256(target.api_key.encode()).hexdigest()[:16] if target.api_key else ""
    return (target.base_url.rstrip("/"), target.backend, model, key_id)


class PreflightCache:
    def __init__(
        self,
        *,
        ttl: float = 60.0,
        failure_ttl: float = 10.0,
        max_entries: int = 256,
        client: httpx.AsyncClient | None = None,
        probe_fn: ProbeFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self._client = client
        self._probe_fn = probe_fn
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._running: set[asyncio.Task[Observation]] = set()  # strong refs: evicted tasks still finish
        self.probes_started = 0  # counters for metrics and the bench
        self.hits = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def _run_probe(self, target: ProbeTarget, model: str) -> Observation:
        if self._probe_fn is not None:
            return await self._probe_fn(target, model)
        return await probe(target, model, client=self._client)

    def _ttl_for(self, obs: Observation) -> float:
        return self.failure_ttl if obs.failure is not None or not obs.model_present else self.ttl

    def _settle(self, key: CacheKey, entry: _Entry, task: asyncio.Task[Observation]) -> None:
        if self._entries.get(key) is not entry:
            return  # evicted or invalidated while in flight
        if task.cancelled() or task.exception() is not None:
            del self._entries[key]  # never cache a crash; the next caller probes again
            return
        entry.result = task.result()
        entry.expires = self._clock() + self._ttl_for(entry.result)
        entry.task = None

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.task is None and e.expires <= now]:
            del self._entries[key]
        while len(self._entries) > self.max_entries:
            settled = next((k for k, e in self._entries.items() if e.task is None), None)
            # Dropping an in-flight entry only loses coalescing for it; its waiters still get the result.
            del self._entries[settled if settled is not None else next(iter(self._entries))]

    async def get(self, target: ProbeTarget, model: str) -> Observation:
        key = cache_key(target, model)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            if entry.task is not None:
                self.coalesced += 1
                return await asyncio.shield(entry.task)
            if entry.result is not None and entry.expires > self._clock():
                self.hits += 1
                return entry.result
        entry = _Entry()
        task = asyncio.create_task(self._run_probe(target, model), name=f"preflight {key[0]} {model}")
        entry.task = task
        self._entries[key] = entry
        self.probes_started += 1
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(lambda done: self._settle(key, entry, done))
        self._evict()
        return await asyncio.shield(task)

    def invalidate(self, target: ProbeTarget, model: str) -> None:
        """Forget a result (e.g. after the user fixed the server); an in-flight probe keeps running."""
        self._entries.pop(cache_key(target, model), None)
