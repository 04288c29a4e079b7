"""kopf handlers of the Build Studio operator, registered into a registry of the caller's choice.

``build_registry()`` returns a fresh ``kopf.OperatorRegistry`` (tests start several
operators, each with its own); ``buildstudio operator`` runs it. Handlers only read, call
``buildstudio.core`` and write.

Where kopf keeps its own state: annotations, never ``status`` (the CRD's status schema is
structural and would prune kopf's fields): progress and the diff-base both live in
``buildstudio.dpf.dev/*`` annotations, and the finalizer is ``buildstudio.dpf.dev/finalizer``
(daemons need one so that they are stopped before the object goes).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import kopf

from buildstudio.core import machine as m
from buildstudio.core import names
from buildstudio.core.settings import Settings, from_env
from buildstudio.gate import EngineState
from buildstudio.handlers.context import OperatorContext, engine_state, queue_entry
from buildstudio.handlers.dispatch import DispatchDriver, ignored_spec_changes
from buildstudio.handlers.engine import engine_loop, seed_engines
from buildstudio.kube import Kube
from buildstudio.metrics import serve
from buildstudio.pins import API_GROUP, API_VERSION
from buildstudio.preflight.cache import PreflightCache

Logger = logging.Logger | logging.LoggerAdapter[Any]
SANDBOX_LABELS = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_COMPONENT: "sandbox"}
DISPATCHES = (API_GROUP, API_VERSION, "builddispatches")
ENGINES = (API_GROUP, API_VERSION, "buildengines")


FINALIZER = f"{API_GROUP}/finalizer"
DIFFBASE_KEY = "last-handled-configuration"
DIFFBASE_ANNOTATION = f"{API_GROUP}/{DIFFBASE_KEY}"


def needs_daemon(body: kopf.Body, **_: Any) -> bool:
    """Queued and running dispatches, and finished ones waiting for their TTL.

    The daemon also requires kopf's diff-base annotation (a literal annotation filter, checked
    before this callback). kopf writes it with the outcome of the create handler's cycle, in the
    same merge patch as the finalizer (``finalizers_with_ours``), and never removes it. So a brand
    new dispatch costs no call here, and the event of the create handler's own status write, which
    lands before kopf's write, wants no daemon: otherwise kopf would answer it with a JSON patch
    of the finalizer, tested against a resourceVersion its own write is about to change."""
    return daemon_wanted(body.get("spec") or {}, body.get("status") or {})


def daemon_wanted(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    stage = m.stage_of(dict(status))
    if stage == "finished":
        return spec.get("ttlSecondsAfterFinished") is not None
    return stage != "entry"


def finalizers_with_ours(
    finalizers: Sequence[str] | None, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> list[str] | None:
    """The finalizer list to merge-patch along with kopf's own write after the create handler,
    or None to leave it alone.

    kopf adds the finalizer a daemon needs by itself, but as a JSON patch tested against the
    resourceVersion, which the handler's status write has just changed: it fails (422) and is
    retried on a later event — 2 to 4 extra writes per dispatch. Riding on kopf's annotation
    patch costs none. Only while the list is empty, so that a merge patch cannot drop another
    controller's finalizer; otherwise kopf adds ours as usual."""
    if finalizers or not daemon_wanted(spec, status):
        return None
    return [FINALIZER]


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

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler tracks extra (maybe status) fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        if body.get("kind") not in self.tracked_kinds:
            return kopf.BodyEssence()
        meta = body.get("metadata") or {}
        slim: dict[str, Any] = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        slim["metadata"] = {key: meta[key] for key in ("name", "namespace", "labels", "annotations") if key in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, slim)), extra_fields=extra_fields)


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


def build_registry(
    settings: Settings | None = None,
    *,
    namespace: str | None = None,
    registry_path: Path | None = None,
    kubeconfig: str | None = None,
    metrics_port: int | None = None,
    seed: bool = True,
) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator. Arguments default to the environment."""
    registry = kopf.OperatorRegistry()
    op_settings = settings or from_env()
    op_namespace = namespace or os.environ.get("BUILDSTUDIO_NAMESPACE") or "default"
    env_registry = os.environ.get("BUILDSTUDIO_ENGINE_REGISTRY")
    reg_path = registry_path or (Path(env_registry) if env_registry else None)
    port = metrics_port
    if port is None and os.environ.get("BUILDSTUDIO_METRICS_PORT"):
        port = int(os.environ["BUILDSTUDIO_METRICS_PORT"])

    @kopf.on.login(registry=registry, id="buildstudio-login", errors=kopf.ErrorsMode.IGNORED)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the service account; elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config).
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
        configure(settings)
        ctx = OperatorContext(
            kube=Kube.from_config(kubeconfig),
            settings=op_settings,
            namespace=op_namespace,
            preflight=PreflightCache(ttl=op_settings.preflight_interval, failure_ttl=5.0),
            registry_path=reg_path,
        )
        memo["ctx"] = ctx
        if seed:
            await seed_engines(ctx, logger)
        if port:
            serve(port)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        ctx = memo.get("ctx")
        if isinstance(ctx, OperatorContext):
            await ctx.kube.aclose()

    # Every handler is async: kopf runs a sync one in a thread pool, a hop per watch event.
    @kopf.on.probe(registry=registry, id="dispatchesQueued")
    async def queued_probe(memo: Any, **_: Any) -> int:
        ctx = memo.get("ctx")
        return ctx.board.waiting if ctx else 0

    @kopf.index(*ENGINES, registry=registry, id="engines")
    async def engines(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, EngineState] | None:
        state = engine_state(name, dict(spec), dict(status))
        return {name: state} if state is not None else {}  # {} drops a stale entry; None would keep it

    # A dispatch without conditions is neither waiting nor running; kopf checks the field before
    # it runs the handler machinery, so a new dispatch reaches its create handler sooner.
    @kopf.index(*DISPATCHES, registry=registry, id="dispatch_queue", field="status.conditions")
    async def dispatch_queue(
        namespace: str | None, name: str, meta: kopf.Meta, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], Any]:
        # Only what admission counts (waiting and running): the plan's cost stays with the live
        # dispatches, however many finished ones are kept around.
        # The views as they are: copying them into dicts resolves every key (kopf's views are lazy).
        ns = namespace or ""
        entry = queue_entry(ns, name, meta, status)
        return {(ns, name): entry} if entry.state != "other" else {}

    @kopf.index("v1", "pods", registry=registry, id="sandbox_pods", labels=SANDBOX_LABELS)
    async def sandbox_pods(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], m.PodView]:
        return {(namespace or "", name): m.PodView.from_pod(body)}

    @kopf.on.create(*DISPATCHES, registry=registry, id="admit")
    async def admit(body: kopf.Body, memo: Any, logger: Logger, patch: kopf.Patch, **indexes: Any) -> None:
        # No finalizer is needed here, so a new dispatch reaches its pod without waiting for one.
        driver = DispatchDriver(memo["ctx"], body, logger)
        try:
            await driver.enter_once(indexes["engines"], indexes["dispatch_queue"])
        finally:
            finalizers = finalizers_with_ours(body.metadata.get("finalizers"), body.spec, driver.status)
            if finalizers is not None:
                patch.setdefault("metadata", {})["finalizers"] = finalizers

    @kopf.on.resume(*DISPATCHES, registry=registry, id="readmit")
    async def readmit(body: kopf.Body, memo: Any, logger: Logger, **indexes: Any) -> None:
        await DispatchDriver(memo["ctx"], body, logger).enter_once(indexes["engines"], indexes["dispatch_queue"])

    @kopf.daemon(
        *DISPATCHES,
        registry=registry,
        id="dispatch",
        annotations={DIFFBASE_ANNOTATION: kopf.PRESENT},  # see needs_daemon
        when=needs_daemon,
        backoff=2.0,
        cancellation_backoff=1.0,
        cancellation_timeout=5.0,
    )
    async def dispatch(body: kopf.Body, memo: Any, logger: Logger, stopped: kopf.DaemonStopped, **indexes: Any) -> None:
        # Queued, running, or finished with a TTL: the only states that need a loop (and a finalizer).
        # kopf passes each index as a keyword named after its id.
        driver = DispatchDriver(memo["ctx"], body, logger, pods=indexes["sandbox_pods"])
        await driver.run(stopped, indexes["engines"], indexes["dispatch_queue"])

    @kopf.on.event("v1", "pods", registry=registry, id="pod_changed", labels=SANDBOX_LABELS)
    async def pod_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
        # The index already holds the new pod (kopf indexes before it calls event handlers).
        ctx = memo.get("ctx")
        for owner in body.metadata.get("ownerReferences") or ():
            if ctx is not None and owner.get("kind") == "BuildDispatch":
                ctx.wakeups.notify((str(body.metadata.namespace), str(owner.get("name"))))

    @kopf.on.update(*DISPATCHES, registry=registry, id="spec_changed")
    async def spec_changed(body: kopf.Body, diff: kopf.Diff, status: kopf.Status, memo: Any, **_: Any) -> None:
        ctx = memo.get("ctx")
        if ctx is not None:  # cancel or another edit: the daemon looks now, not at its next deadline
            ctx.wakeups.notify((str(body.metadata.namespace), str(body.metadata.name)))
        fields = ignored_spec_changes(diff, m.stage_of(dict(status)))
        if fields:
            kopf.warn(
                body,
                reason="SpecChangeIgnored",
                message=f"spec.{', spec.'.join(fields)} changed after admission; the running attempt keeps "
                "the spec it was admitted with",
            )

    @kopf.daemon(
        *ENGINES, registry=registry, id="engine", backoff=5.0, cancellation_backoff=1.0, cancellation_timeout=5.0
    )
    async def engine(body: kopf.Body, memo: Any, logger: Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await engine_loop(memo["ctx"], body, stopped, logger)

    return registry


GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collector settings for the operator process, once the imports are done.

    Every watch event makes thousands of short-lived containers (kopf's bodies, views, causes),
    and the long-lived set grows with the objects kopf remembers. With Python's defaults the
    collector took 0.7 to 1.4 ms per dispatch in ``bench/reconcile.py``, with full collections
    of 80 to 150 ms. Freezing what the imports left (modules, classes, schemas: never garbage)
    keeps it out of every later collection, and a larger first threshold makes collections rarer:
    about half the collector time, the longest collection 15 to 65 ms."""
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
