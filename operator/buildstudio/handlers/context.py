"""The operator's per-process state, built once at start-up and kept in kopf's ``memo``.

Nothing here is a source of truth: every decision reads Kubernetes objects (directly or
through kopf's indexes); the queue board only closes the gap between a status patch and
the index seeing it, so two dispatches cannot both take the last slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from buildstudio.adapters.kube import Kube, KubeError
from buildstudio.adapters.modelservice.cache import PreflightCache
from buildstudio.core import manifests as mf
from buildstudio.core.admission import Entry, Key, Limits, Plan, Tally, order, plan
from buildstudio.core.gate import EngineState
from buildstudio.core.modelservice import probe_target
from buildstudio.core.observation import ProbeTarget
from buildstudio.core.settings import Settings


class QueueBoard:
    """The admission plan over all live dispatches.

    A full plan reads kopf's index (merged with ``overlay``: what this operator wrote and the
    index may not show yet) and is recomputed when something it counted changes, or after
    ``max_age`` seconds. A new dispatch at the tail of the queue (the usual case: it is the
    newest) is placed on the current plan in O(1), exactly where a new plan would put it, so
    admitting a dispatch does not cost a pass over every live one."""

    def __init__(self, max_age: float = 0.5) -> None:
        self.overlay: dict[Key, Entry] = {}
        self.max_age = max_age
        self._at = 0.0
        self._dirty = True
        self._freed = asyncio.Event()
        # The current plan, kept mutable so that a tail placement can extend it.
        self._seen: dict[Key, Entry] = {}  # every entry the plan counted
        self._admit: set[Key] = set()
        self._positions: dict[Key, int] = {}
        self._waiting = 0
        self._tally = Tally()
        self._tail: tuple[str, Key] | None = None
        self._limits: dict[str, Limits] = {}

    def put(self, entry: Entry) -> None:
        old = self.overlay.get(entry.key)
        if old == entry:
            return
        self.overlay[entry.key] = entry
        if entry.state == "other" and (old is None or old.state != "other"):
            self._notify()  # a slot or a place in the queue was freed
        if not self._accounted(entry):
            self._dirty = True

    def _accounted(self, entry: Entry) -> bool:
        """Whether the current plan already counts ``entry`` as it now is, or can at its tail."""
        if self._dirty:
            return False
        seen = self._seen.get(entry.key)
        if seen == entry:
            return True
        if seen is not None:
            # Admitted by this plan and now running: its slot was counted when it was admitted.
            admitted = seen.state == "waiting" and entry.state == "running" and entry.key in self._admit
            if admitted and (seen.engine, seen.model) == (entry.engine, entry.model):
                self._seen[entry.key] = entry
                return True
            return False
        if entry.state == "other":
            return True  # not queued, not running: nothing to count
        if entry.state != "waiting" or (self._tail is not None and order(entry) <= self._tail):
            return False
        pos = self._tally.place(entry, self._limits.get(entry.engine, Limits()))
        if pos is None:
            self._admit.add(entry.key)
        else:
            self._positions[entry.key] = pos
            self._waiting += 1
        self._seen[entry.key] = entry
        self._tail = order(entry)
        return True

    def forget(self, key: Key) -> None:
        """A finished dispatch holds no slot. It stays in the overlay as such until the index drops
        it too (``_refresh``): dropped at once, a lagging index would count it as running again and
        keep its slot from the queue for as long as the lag (seconds with 200 running)."""
        entry = self.overlay.get(key)
        if entry is None:
            return
        if entry.state != "other":
            self.overlay[key] = replace(entry, state="other")
        self._dirty = True
        self._notify()

    def _notify(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    def freed(self) -> asyncio.Event:
        """Set when a slot or a place in the queue frees next."""
        return self._freed

    def slot(
        self, entry: Entry, indexed: Callable[[], Iterable[Entry]], limits: Mapping[str, Limits]
    ) -> tuple[bool, int | None]:
        """Put ``entry`` on the board; whether it may start now, else its queue position."""
        self.put(entry)
        self._refresh(indexed, limits)
        return entry.key in self._admit, self._positions.get(entry.key)

    def plan(self, indexed: Iterable[Entry], limits: Mapping[str, Limits]) -> Plan:
        """The current plan as a value (refreshed first when stale)."""
        self._refresh(lambda: indexed, limits)
        return Plan(admit=frozenset(self._admit), positions=dict(self._positions), waiting=self._waiting)

    @property
    def waiting(self) -> int:
        """Dispatches waiting for a slot, as of the current plan."""
        return self._waiting

    def _refresh(self, indexed: Callable[[], Iterable[Entry]], limits: Mapping[str, Limits]) -> None:
        now = time.monotonic()
        if not self._dirty and now - self._at < self.max_age and limits == self._limits:
            return
        merged = {e.key: e for e in indexed()}
        # The overlay only bridges the lag of the index: an entry the index now agrees with (or a
        # finished one it has dropped) goes, so the overlay stays as small as the lag.
        for key, entry in list(self.overlay.items()):
            seen = merged.get(key)
            if seen == entry or (seen is None and entry.state == "other"):
                del self.overlay[key]
            else:
                merged[key] = entry
        fresh = plan(merged.values(), limits)
        self._seen = merged
        self._admit = set(fresh.admit)
        self._positions = dict(fresh.positions)
        self._waiting = fresh.waiting
        self._tally = fresh.tally
        self._tail = fresh.tail
        self._limits = dict(limits)
        self._at = now
        self._dirty = False


class Wakeups:
    """One event per dispatch daemon, set by the watch handlers when its dispatch's spec or its
    pod changes: a daemon sleeps until then (or its step's deadline) instead of polling."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}

    def register(self, key: Key) -> asyncio.Event:
        event = self._events[key] = asyncio.Event()
        return event

    def unregister(self, key: Key, event: asyncio.Event) -> None:
        if self._events.get(key) is event:
            del self._events[key]

    def notify(self, key: Key) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()


class ModelKeys:
    """Model service API keys read from Secrets, kept ``ttl`` seconds (a rotated key is picked
    up within that); never logged or written anywhere."""

    def __init__(self, kube: Kube, ttl: float = 60.0) -> None:
        self.kube = kube
        self.ttl = ttl
        self._values: dict[tuple[str, str, str], tuple[float, str | None]] = {}

    async def get(self, name: str, key: str, namespace: str) -> str | None:
        ref = (namespace, name, key)
        cached = self._values.get(ref)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            value = await self.kube.secret_value(name, key, namespace)
        except KubeError:
            value = None  # unreadable: the probe goes without a key and says AuthRequired
        self._values[ref] = (time.monotonic(), value)
        return value


class BaselinePolicies:
    """Makes sure each namespace that runs sandboxes has its deny-all baseline NetworkPolicy.

    Checked once per namespace per ``ttl`` seconds (create; 409 means it is there), with one
    request in flight per namespace however many dispatches ask at once. A baseline deleted by
    hand comes back within ``ttl``; meanwhile each pod still has its own egress policy."""

    def __init__(self, kube: Kube, ttl: float = 300.0) -> None:
        self.kube = kube
        self.ttl = ttl
        self._checked: dict[str, float] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}

    async def ensure(self, namespace: str) -> None:
        at = self._checked.get(namespace)
        if at is not None and time.monotonic() - at < self.ttl:
            return
        task = self._pending.get(namespace)
        if task is None:
            task = asyncio.ensure_future(self._create(namespace))
            self._pending[namespace] = task
            task.add_done_callback(lambda _t: self._pending.pop(namespace, None))
        await asyncio.shield(task)

    async def _create(self, namespace: str) -> None:
        await self.kube.create(mf.baseline_policy(namespace))
        self._checked[namespace] = time.monotonic()


@dataclass
class OperatorContext:
    kube: Kube
    settings: Settings
    namespace: str  # the operator's own namespace: probe pods, engine credential Secrets
    preflight: PreflightCache
    board: QueueBoard = field(default_factory=QueueBoard)
    registry_path: Path | None = None
    baselines: BaselinePolicies = field(init=False)
    model_keys: ModelKeys = field(init=False)
    wakeups: Wakeups = field(default_factory=Wakeups)

    def __post_init__(self) -> None:
        self.baselines = BaselinePolicies(self.kube)
        self.model_keys = ModelKeys(self.kube)


async def model_target(ctx: OperatorContext, engine: EngineState) -> ProbeTarget | None:
    """What the operator probes for ``engine``: its model service, with the API key of
    ``modelService.apiKeySecret`` (read from the operator's namespace) when it has one."""
    ms = engine.spec.model_service
    if ms is None:
        return None
    key = None
    if ms.api_key_secret is not None:
        key = await ctx.model_keys.get(ms.api_key_secret.name, ms.api_key_secret.key, ctx.namespace)
    return probe_target(engine, key)
