"""The operator's own share of apply → pod: kopf's processing of a new dispatch's ADDED event up to
the pod create, in-process, for the Build Studio registry and for a bare kopf create handler.

    .venv/bin/python bench/prepod.py [--dispatches 800]

No emulator and no HTTP: the Kubernetes client is a recorder, and kopf's own write after the
handlers is skipped, so the figure is the CPU path alone (what `bench/reconcile.py` measures
end to end includes the emulator's and the network's share, and their noise). Prints the p50
per stage, in µs after the event entered kopf (``process_resource_event``); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf
from kopf._cogs.structs import bodies, ephemera, references
from kopf._core.actions import application, lifecycles
from kopf._core.engines import indexing, posting
from kopf._core.reactor import inventory, processing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.reconcile import dispatch, engine, present_status  # noqa: E402

from buildstudio.adapters.modelservice.cache import PreflightCache  # noqa: E402
from buildstudio.commands.scripted_server import ScriptedServer  # noqa: E402
from buildstudio.core import manifests as mf  # noqa: E402
from buildstudio.core.settings import SandboxDefaults, Settings  # noqa: E402
from buildstudio.handlers import build_registry, configure  # noqa: E402
from buildstudio.handlers import dispatch as driver  # noqa: E402
from buildstudio.handlers.context import OperatorContext  # noqa: E402

GROUP, VERSION = "buildstudio.dpf.dev", "v1alpha1"
DISPATCHES = references.Resource(
    group=GROUP,
    version=VERSION,
    plural="builddispatches",
    kind="BuildDispatch",
    namespaced=True,
    subresources=frozenset({"status"}),
)
ENGINES = references.Resource(group=GROUP, version=VERSION, plural="buildengines", kind="BuildEngine", namespaced=False)


class Marks:
    """perf_counter marks per dispatch, by stage label."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def mark(self, label: str) -> None:
        if self.rows:
            self.rows[-1].setdefault(label, time.perf_counter())


MARKS = Marks()


class RecordingKube:
    """Answers every call at once; notes when a pod is created."""

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("kind") == "Pod":
            MARKS.mark("pod create")
        return obj

    async def merge_patch(self, kind: str, name: str, namespace: str, patch: dict[str, Any], **_: Any) -> Any:
        return {"status": patch.get("status", patch)}

    async def get(self, *_: Any, **__: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None


def timed(label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        MARKS.mark(f"{label} <")
        try:
            return await fn(*args, **kwargs)
        finally:
            MARKS.mark(f"{label} >")

    return wrapper


def instrument() -> None:
    """Marks at kopf's stages (module attributes, looked up at call time) and at our handler."""

    async def no_write(**_: Any) -> tuple[bool, None, None]:
        return True, None, None  # kopf's own patch after the handlers: not part of this path

    application.apply = no_write  # type: ignore[assignment]
    indexing.index_resource = timed("index", indexing.index_resource)  # type: ignore[assignment]
    processing.process_changing_cause = timed(  # type: ignore[assignment]
        "changing cause", processing.process_changing_cause
    )
    detect = processing._detect_causes

    def detect_marked(**kwargs: Any) -> Any:
        MARKS.mark("detect <")
        try:
            return detect(**kwargs)
        finally:
            MARKS.mark("detect >")

    processing._detect_causes = detect_marked  # type: ignore[assignment]
    enter_once = driver.DispatchDriver.enter_once

    async def enter_marked(self: driver.DispatchDriver, *args: Any, **kwargs: Any) -> None:
        MARKS.mark("our handler <")
        await enter_once(self, *args, **kwargs)

    driver.DispatchDriver.enter_once = enter_marked  # type: ignore[method-assign]


def bare_registry(kube: RecordingKube) -> kopf.OperatorRegistry:
    """The bare handler of bench/reconcile.py, with the recorder for a client."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create(GROUP, VERSION, "builddispatches", registry=registry)
    async def create(name: str, namespace: str, uid: str, spec: kopf.Spec, **_: Any) -> None:
        owner = mf.Owner(name=name, uid=uid, namespace=namespace)
        req = mf.SandboxRequest(
            owner=owner,
            attempt=1,
            engine=mf.EngineRuntime(name="opencode"),
            repo_url=spec["repo"]["url"],
            model_base_url="http://127.0.0.1:1/v1",
        )
        await kube.create(mf.sandbox_pod(req, SandboxDefaults()))

    return registry


async def run(ours: bool, n: int) -> list[dict[str, float]]:
    kube = RecordingKube()
    settings = kopf.OperatorSettings()
    posting.settings_var.set(settings)
    memo = ephemera.Memo()
    logger = logging.getLogger("bench")
    async with ScriptedServer([{"text": "x"}]) as model:
        if ours:
            registry = build_registry(Settings(), namespace="default", seed=False)
            configure(settings)
            memo["ctx"] = OperatorContext(
                kube=kube,  # type: ignore[arg-type]
                settings=Settings(),
                namespace="default",
                preflight=PreflightCache(ttl=300, failure_ttl=5),
            )
        else:
            registry = bare_registry(kube)
        indexers = indexing.OperatorIndexers()
        indexers.ensure(registry._indexing.get_all_handlers())
        eng = engine(model.base_url, 1000)
        eng["metadata"]["uid"] = "engine-uid"
        eng["status"] = present_status()
        await indexing.index_resource(
            indexers=indexers,
            registry=registry,
            settings=settings,
            resource=ENGINES,
            raw_event={"type": "ADDED", "object": eng},
            memory=indexing.IndexingMemory(),
            logger=logger,
            memo=memo,
            body=bodies.Body(eng),
        )
        memories = inventory.ResourceMemories()
        events: asyncio.Queue[Any] = asyncio.Queue()
        MARKS.rows = []
        for i in range(n):
            raw = dispatch(f"d{i}")
            raw["metadata"].update(uid=f"uid-{i}", resourceVersion="1", generation=1)
            raw["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
            MARKS.rows.append({"event": time.perf_counter()})
            await processing.process_resource_event(
                lifecycle=lifecycles.all_at_once,
                indexers=indexers,
                registry=registry,
                settings=settings,
                memories=memories,
                memobase=memo,
                resource=DISPATCHES,
                raw_event={"type": "ADDED", "object": raw},
                event_queue=events,
                no_throttling=True,
            )
            while not events.empty():
                events.get_nowait()  # kopf.event() calls: not posted here
        return MARKS.rows


def report(name: str, rows: list[dict[str, float]]) -> None:
    rows = [r for r in rows[len(rows) // 4 :] if "pod create" in r]  # warm-up excluded
    print(f"{name}: {len(rows)} dispatches, p50 µs after the event entered kopf")
    labels = sorted({k for r in rows for k in r if k != "event"}, key=lambda k: statistics.median(
        (r[k] - r["event"]) * 1e6 for r in rows if k in r
    ))
    for label in labels:
        vals = [(r[label] - r["event"]) * 1e6 for r in rows if label in r]
        if len(vals) == len(rows):
            print(f"  {statistics.median(vals):7.0f}  {label}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dispatches", type=int, default=800, help="at most 1000 (the bench engine's maxRunning)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    instrument()
    for ours in (False, True, False, True):  # alternating: load drifts on a shared machine
        rows = await run(ours, min(args.dispatches, 1000))
        report("Build Studio operator" if ours else "bare kopf handler", rows)


if __name__ == "__main__":
    asyncio.run(main())
