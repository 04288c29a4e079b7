"""kopf handlers of the Build Studio operator, registered into a registry of the caller's choice.

``build_registry()`` returns a fresh ``kopf.OperatorRegistry`` (tests start several
operators, each with its own); ``buildstudio operator`` runs it. The handlers are module-level
functions (BuildDispatch: ``handlers/dispatch.py``, BuildEngine: ``handlers/engine.py``,
BuildPipeline: ``handlers/pipeline.py``); each reads, calls ``buildstudio.core`` and writes.

Where kopf keeps its own state: annotations, never ``status`` (the CRD's status schema is
structural and would prune kopf's fields): progress and the diff-base both live in
``buildstudio.dpf.dev/*`` annotations, and the finalizer is ``buildstudio.dpf.dev/finalizer``
(daemons need one so that they are stopped before the object goes).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kopf

from buildstudio.adapters.kube import Kube
from buildstudio.adapters.metrics import serve
from buildstudio.adapters.modelservice.cache import PreflightCache
from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.core import names
from buildstudio.core.finalizer import FINALIZER, finalizers_with_ours
from buildstudio.core.settings import Settings, from_env
from buildstudio.handlers.context import OperatorContext
from buildstudio.handlers.dispatch import (
    admit,
    dispatch_queue,
    drive,
    needs_daemon,
    pod_changed,
    readmit,
    sandbox_pods,
    spec_changed,
)
from buildstudio.handlers.engine import engine_daemon, engines_index, seed_engines
from buildstudio.handlers.pipeline import register_pipeline

Logger = logging.Logger | logging.LoggerAdapter[Any]
SANDBOX_LABELS = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_COMPONENT: "sandbox"}
DISPATCHES = (API_GROUP, API_VERSION, "builddispatches")
ENGINES = (API_GROUP, API_VERSION, "buildengines")
DIFFBASE_KEY = "last-handled-configuration"
DIFFBASE_ANNOTATION = f"{API_GROUP}/{DIFFBASE_KEY}"

__all__ = [
    "DIFFBASE_ANNOTATION",
    "DIFFBASE_KEY",
    "FINALIZER",
    "GC_THRESHOLDS",
    "SpecDiffBaseStorage",
    "Startup",
    "build_registry",
    "configure",
    "finalizers_with_ours",
    "needs_daemon",
    "run_operator",
    "tune_gc",
]


class SpecDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, built without deep-copying what it throws away.

    kopf builds an object's essence on every watch event of every watched kind, deep-copying
    the whole body and then dropping ``status`` and most of ``metadata``. For a dispatch the
    status is most of the body; a sandbox pod's essence (its whole spec) is never used at all,
    since pods have no change handlers or daemons here. So: our own kinds get exactly kopf's
    essence, built from a body without the parts it drops; other kinds an empty one."""

    def __init__(self, *, tracked_kinds: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracked_kinds = frozenset(tracked_kinds)
        # uid -> (what the essence depends on, the essence): most events of a dispatch are its
        # status writes, whose essence is the one built for the event before.
        self._built: dict[str, tuple[tuple[Any, ...], kopf.BodyEssence]] = {}

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler tracks extra (maybe status) fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        if body.get("kind") not in self.tracked_kinds:
            return kopf.BodyEssence()
        meta = body.get("metadata") or {}
        uid, generation = meta.get("uid"), meta.get("generation")
        # The spec changes only with the generation; labels and annotations are compared whole.
        key = (generation, _items(meta.get("labels")), _items(meta.get("annotations")))
        known = self._built.get(uid) if uid and generation is not None else None
        if known is not None and known[0] == key:
            return known[1]  # kopf only reads an essence (diffs it, stores it as JSON)
        slim: dict[str, Any] = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        slim["metadata"] = {key: meta[key] for key in ("name", "namespace", "labels", "annotations") if key in meta}
        essence = super().build(body=kopf.Body(cast(kopf.RawBody, slim)), extra_fields=extra_fields)
        if uid and generation is not None:
            if len(self._built) >= ESSENCES_KEPT:
                del self._built[next(iter(self._built))]  # the oldest entry
            self._built.pop(uid, None)
            self._built[uid] = (key, essence)
        return essence


ESSENCES_KEPT = 10_000  # one per live dispatch or engine; a deleted object's entry ages out


def _items(mapping: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items())) if mapping else ()


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator relies on (also applied by tests that build their own)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = SpecDiffBaseStorage(
        prefix=API_GROUP, key=DIFFBASE_KEY, tracked_kinds=("BuildDispatch", "BuildEngine")
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    # Watch only our sandbox pods (server-side selector), not every pod of the cluster.
    settings.watching.label_selectors["v1", "pods"] = ",".join(f"{k}={v}" for k, v in SANDBOX_LABELS.items())


@dataclass(frozen=True)
class Startup:
    """What the startup handler builds the operator's context from (``OperatorContext``)."""

    settings: Settings
    namespace: str = "default"  # the operator's own: probe pods, engine credential Secrets
    registry_path: Path | None = None  # the engine registry file seeded from
    kubeconfig: str | None = None
    metrics_port: int | None = None
    seed: bool = True  # create the registry's bakeInDefault engines

    @classmethod
    def from_env(
        cls,
        settings: Settings | None = None,
        *,
        namespace: str | None = None,
        registry_path: Path | None = None,
        kubeconfig: str | None = None,
        metrics_port: int | None = None,
        seed: bool = True,
    ) -> Startup:
        """Arguments given win; the rest from the environment."""
        env_registry = os.environ.get("BUILDSTUDIO_ENGINE_REGISTRY")
        port = metrics_port
        if port is None and os.environ.get("BUILDSTUDIO_METRICS_PORT"):
            port = int(os.environ["BUILDSTUDIO_METRICS_PORT"])
        return cls(
            settings=settings or from_env(),
            namespace=namespace or os.environ.get("BUILDSTUDIO_NAMESPACE") or "default",
            registry_path=registry_path or (Path(env_registry) if env_registry else None),
            kubeconfig=kubeconfig,
            metrics_port=port,
            seed=seed,
        )


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    return info


async def startup(config: Startup, settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    configure(settings)
    ctx = OperatorContext(
        kube=Kube.from_config(config.kubeconfig),
        settings=config.settings,
        namespace=config.namespace,
        preflight=PreflightCache(ttl=config.settings.preflight_interval, failure_ttl=5.0),
        registry_path=config.registry_path,
    )
    memo["ctx"] = ctx
    if config.seed:
        await seed_engines(ctx, logger)
    if config.metrics_port:
        serve(config.metrics_port)


async def cleanup(memo: Any, **_: Any) -> None:
    ctx = memo.get("ctx")
    if isinstance(ctx, OperatorContext):
        await ctx.kube.aclose()


async def queued_probe(memo: Any, **_: Any) -> int:
    ctx = memo.get("ctx")
    return ctx.board.waiting if ctx else 0


def build_registry(
    settings: Settings | None = None,
    *,
    namespace: str | None = None,
    registry_path: Path | None = None,
    kubeconfig: str | None = None,
    metrics_port: int | None = None,
    seed: bool = True,
) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator. Arguments default to the environment.

    Every handler is async: kopf runs a sync one in a thread pool, a hop per watch event."""
    registry = kopf.OperatorRegistry()
    config = Startup.from_env(
        settings,
        namespace=namespace,
        registry_path=registry_path,
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        seed=seed,
    )
    on = kopf.on
    on.login(registry=registry, id="buildstudio-login", errors=kopf.ErrorsMode.IGNORED)(login)
    on.startup(registry=registry, id="startup")(functools.partial(startup, config))
    on.cleanup(registry=registry, id="cleanup")(cleanup)
    on.probe(registry=registry, id="dispatchesQueued")(queued_probe)
    kopf.index(*ENGINES, registry=registry, id="engines")(engines_index)
    # A dispatch without conditions is neither waiting nor running; kopf checks the field before
    # it runs the handler machinery, so a new dispatch reaches its create handler sooner.
    kopf.index(*DISPATCHES, registry=registry, id="dispatch_queue", field="status.conditions")(dispatch_queue)
    kopf.index("v1", "pods", registry=registry, id="sandbox_pods", labels=SANDBOX_LABELS)(sandbox_pods)
    on.create(*DISPATCHES, registry=registry, id="admit")(admit)
    on.resume(*DISPATCHES, registry=registry, id="readmit")(readmit)
    kopf.daemon(
        *DISPATCHES,
        registry=registry,
        id="dispatch",
        annotations={DIFFBASE_ANNOTATION: kopf.PRESENT},  # see needs_daemon
        when=needs_daemon,
        backoff=2.0,
        cancellation_backoff=1.0,
        cancellation_timeout=5.0,
    )(drive)
    on.event("v1", "pods", registry=registry, id="pod_changed", labels=SANDBOX_LABELS)(pod_changed)
    on.update(*DISPATCHES, registry=registry, id="spec_changed")(spec_changed)
    kopf.daemon(
        *ENGINES, registry=registry, id="engine", backoff=5.0, cancellation_backoff=1.0, cancellation_timeout=5.0
    )(engine_daemon)
    register_pipeline(registry)
    return registry


GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collector settings for the operator process, once the imports are done.

    Every watch event makes thousands of short-lived containers (kopf's bodies, views, causes),
    and the long-lived set grows with the objects kopf remembers. Freezing what the imports left
    (modules, classes, schemas: never garbage) keeps it out of every later collection, and a
    larger first threshold makes collections rarer. The measured effect (``bench/reconcile.py``)
    is in ``bench/README.md``, "The operator's collector settings"."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_operator(
    *,
    namespaces: list[str] | None = None,
    standalone: bool = True,
    liveness: str | None = None,
    peering: str | None = None,
    priority: int = 0,
) -> None:
    """``buildstudio operator``: kopf with this package's registry (blocks until stopped).

    Standalone unless a peering name is given (kopf peering: several replicas, one active).
    """
    registry = build_registry()
    tune_gc()
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        standalone=standalone and peering is None,
        peering_name=peering,
        priority=priority,
        liveness_endpoint=liveness,
    )
