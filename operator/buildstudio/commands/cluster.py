"""``buildstudio submit|watch|diff|cancel|logs``: BuildDispatches for cluster users (kubeconfig).

kubectl habits: the kubeconfig's current context and its namespace by default, ``-n/--namespace``,
``--context``, ``--kubeconfig``. ``watch`` is a real watch (no polling): a live line on a
terminal, plain lines otherwise. The formatting is pure (``dispatch_manifest``, ``progress_line``,
``summary_line``, ``context_namespace``); the commands are thin loops over ``buildstudio.adapters.kube``
with explicit timeouts and bounds. Errors reach ``cli.main``, which prints one line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from buildstudio.adapters.kube import Kube, KubeError, kubeconfig_contexts
from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.commands.errors import EXIT_CODES_HELP, EXIT_FAILED, CliError
from buildstudio.protocol import records

TERMINAL = ("Succeeded", "Failed", "Cancelled")
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_SECONDS = 300  # one watch request; the server ends it, then it is resumed
MAX_WATCH_LINE = 4 * 1024 * 1024  # a BuildDispatch stays under 1.5 MiB (etcd's limit)


def dispatch_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """The BuildDispatch ``submit`` creates (``generateName`` when no name is given)."""
    spec: dict[str, Any] = {"prompt": args.prompt, "phase": args.phase}
    if args.repo:
        spec["repo"] = {"url": args.repo, "ref": args.ref}
    for key, value in (("model", args.model), ("engine", args.engine), ("ttlSecondsAfterFinished", args.ttl)):
        if value is not None:
            spec[key] = value
    meta: dict[str, Any] = {"namespace": args.namespace}
    if args.name:
        meta["name"] = args.name
    else:
        meta["generateName"] = "bd-"
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "BuildDispatch", "metadata": meta, "spec": spec}


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """What the apiserver would say of this BuildDispatch (the models, then the CRD's CEL rules),
    checked before anything is sent; plus a prompt with no text, which the CRD lets through."""
    from pydantic import ValidationError

    from buildstudio.api import BuildDispatch
    from buildstudio.api.crdgen import dispatch_spec_schema
    from buildstudio.core.cel import cel_violations

    if not str(manifest["spec"].get("prompt", "")).strip():
        return ["spec.prompt: the task has no text"]
    try:
        BuildDispatch.model_validate(manifest)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return [str(v) for v in cel_violations(dispatch_spec_schema(), manifest["spec"], path="spec")]


def progress_line(status: Mapping[str, Any]) -> str:
    """One line in the style of ``run --local``: phase, stage, counters, last tool."""
    phase = status.get("phase") or "Pending"
    prog = status.get("progress") or {}
    parts = [f"[{phase}]"]
    if phase == "Queued" and status.get("queuePosition"):
        parts.append(f"queue position {status['queuePosition']}")
    if prog:
        parts.append(
            f"{prog.get('stage', '')} · steps {prog.get('steps', 0)} · tool calls {prog.get('toolCalls', 0)}"
            f" · tokens {prog.get('tokens', 0)}"
        )
        if prog.get("lastTool"):
            parts.append(f"· last: {prog['lastTool']}")
    elif status.get("message"):
        parts.append(str(status["message"]))
    return " ".join(parts)


def summary_line(status: Mapping[str, Any]) -> str:
    reason = status.get("reason") or ""
    stat = status.get("diffSummary") or ""
    return f"{status.get('phase')}: {reason} {stat} — {status.get('message', '')}".replace("  ", " ")


def context_namespace(kubeconfig: Mapping[str, Any], context: str | None) -> str | None:
    """The namespace of ``context`` (default: the current one) in a kubeconfig, as kubectl reads it."""
    name = context or kubeconfig.get("current-context")
    for entry in kubeconfig.get("contexts") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            ns = (entry.get("context") or {}).get("namespace")
            return str(ns) if ns else None
    return None


def record_line(rec: records.ProgressRecord | records.EventRecord | records.ResultRecord) -> str:
    """One line per record of a sandbox's log (``logs``)."""
    if isinstance(rec, records.ProgressRecord):
        last = f" · last: {rec.last_tool}" if rec.last_tool else ""
        return (f"[{rec.stage}] {rec.elapsed_seconds:6.1f}s · steps {rec.steps} · tool calls {rec.tool_calls}"
                f" · tokens {rec.tokens}{last}")  # fmt: skip
    if isinstance(rec, records.EventRecord):
        return f"  {rec.type:<8} {rec.message}"
    return f"result: {rec.outcome.value}: {rec.message}"


# ---------------------------------------------------------------------------- IO


def connect(args: argparse.Namespace) -> Kube:
    """A client for the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) and
    ``--context``, or in-cluster config when there is no kubeconfig at all; sets
    ``args.namespace`` to the context's namespace when ``-n`` was not given. The configuration
    is loaded on the first call (``Kube.from_config``)."""
    path = args.kubeconfig or os.environ.get("KUBECONFIG") or None
    default_file = Path("~/.kube/config").expanduser()
    if path is None and not default_file.exists() and IN_CLUSTER_NAMESPACE.exists() and not args.context:
        args.namespace = args.namespace or IN_CLUSTER_NAMESPACE.read_text(encoding="utf-8").strip()
        return Kube.from_config(in_cluster=True, forbidden_events=False)
    if not args.namespace:
        args.namespace = context_namespace(kubeconfig_contexts(path), args.context) or "default"
    return Kube.from_config(path, context=args.context, in_cluster=False, forbidden_events=False)


async def _get_dispatch(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    obj = await kube.get("BuildDispatch", name, namespace)
    if obj is None:
        raise CliError(f"BuildDispatch {namespace}/{name}", "not found",
                       f"list them with `kubectl get bd -n {namespace}`, or pass -n/--context")  # fmt: skip
    return obj


async def watch_dispatch(kube: Kube, name: str, namespace: str, *, seconds: int) -> AsyncIterator[dict[str, Any]]:
    """The BuildDispatch as it is now, then at each change: a watch from its resourceVersion
    (one request of at most ``seconds``; the caller resumes). Ends when the stream does."""
    obj = await _get_dispatch(kube, name, namespace)
    yield obj
    try:
        async for event in kube.watch(
            "BuildDispatch",
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=str(obj["metadata"].get("resourceVersion", "")),
            timeout_seconds=seconds,
            max_line=MAX_WATCH_LINE,  # one event per line; a line is bounded
        ):
            kind, changed = event.get("type"), event.get("object")
            if kind in ("ADDED", "MODIFIED") and isinstance(changed, dict):
                yield changed
            elif kind == "DELETED":
                raise CliError(f"BuildDispatch {namespace}/{name}", "deleted while watching", code=EXIT_FAILED)
            elif kind == "ERROR":
                return
    except KubeError as exc:
        if exc.status == 410:
            return  # resourceVersion too old: the caller starts again from a fresh read
        raise


class Lines:
    """Progress output: one line rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def show(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        self.out.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.out.flush()

    def final(self, line: str) -> None:
        self.out.write(("\r\x1b[2K" if self.tty else "") + line + "\n")
        self.out.flush()


async def _watch(kube: Kube, name: str, namespace: str, out: TextIO, *, bound: float) -> int:
    """Show progress until a terminal phase (exit 0 Succeeded, 1 otherwise) or ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    lines = Lines(out)

    async def follow() -> int:
        while True:
            seconds = max(1, min(WATCH_SECONDS, int(deadline - loop.time()) + 1))
            async for obj in watch_dispatch(kube, name, namespace, seconds=seconds):
                status = obj.get("status") or {}
                lines.show(progress_line(status))
                if status.get("phase") in TERMINAL:
                    lines.final(summary_line(status))
                    return 0 if status.get("phase") == "Succeeded" else EXIT_FAILED

    try:
        return await asyncio.wait_for(follow(), timeout=max(bound, 0.001))
    except TimeoutError:
        lines.final("")
        raise CliError(f"BuildDispatch {namespace}/{name}", f"not finished after {bound:g} s",
                       "watch again, or raise --timeout", code=EXIT_FAILED) from None  # fmt: skip


async def _submit(args: argparse.Namespace) -> int:
    if args.prompt == "-":
        args.prompt = sys.stdin.read(4 * 262_144 + 1)
    # Checked before the cluster is contacted: the same models and rules as the CRD's.
    errors = manifest_errors(dispatch_manifest(argparse.Namespace(**{**vars(args), "namespace": "x"})))
    if errors:
        raise CliError("invalid BuildDispatch", "; ".join(errors), "fix the arguments")
    kube = connect(args)
    try:
        created, _ = await kube.create(dispatch_manifest(args))
        name = created["metadata"]["name"]
        print(f"builddispatch.{API_GROUP}/{name} created in namespace {args.namespace}")
        if args.watch:
            return await _watch(kube, name, args.namespace, sys.stdout, bound=args.timeout)
        return 0
    finally:
        await kube.aclose()


async def _watch_cmd(args: argparse.Namespace) -> int:
    kube = connect(args)
    try:
        return await _watch(kube, args.name, args.namespace, sys.stdout, bound=args.timeout)
    finally:
        await kube.aclose()


async def _diff(args: argparse.Namespace) -> int:
    """The whole patch from the owned ConfigMap (ready for ``git apply``); ``--excerpt``: the
    bounded excerpt in the status. When the whole patch is not stored, the excerpt is printed,
    stderr says so and the exit code is 1."""
    kube = connect(args)
    try:
        obj = await _get_dispatch(kube, args.name, args.namespace)
        status = obj.get("status") or {}
        if args.excerpt:
            sys.stdout.write(status.get("diff") or "")
            return 0
        cm_name = status.get("patchConfigMap")
        if cm_name:
            cm = await kube.get("ConfigMap", cm_name, args.namespace)
            data = ((cm or {}).get("binaryData") or {}).get("patch.gz")
            if data:
                sys.stdout.write(gzip.decompress(base64.b64decode(data)).decode("utf-8", "replace"))
                return 0
        if not status.get("diff"):
            phase = status.get("phase") or "Pending"
            print(f"buildstudio: BuildDispatch {args.namespace}/{args.name} has no diff ({phase}"
                  f"{': ' + status['reason'] if status.get('reason') else ''})", file=sys.stderr)  # fmt: skip
            return 0 if phase == "Succeeded" else EXIT_FAILED
        sys.stdout.write(status.get("diff") or "")
        where = f"ConfigMap {cm_name} has no patch" if cm_name else "no patch ConfigMap was stored"
        print(f"buildstudio: printed only the status excerpt: {where} (the patch was over the cap, or the run"
              " did not finish)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    finally:
        await kube.aclose()


async def _cancel(args: argparse.Namespace) -> int:
    kube = connect(args)
    try:
        await _get_dispatch(kube, args.name, args.namespace)
        await kube.merge_patch("BuildDispatch", args.name, args.namespace, {"spec": {"cancel": True}})
        print(f"builddispatch.{API_GROUP}/{args.name} cancel requested")
        return 0
    finally:
        await kube.aclose()


async def _logs(args: argparse.Namespace) -> int:
    """The sandbox's records (progress, events, the result), from the agent's then the reporter's log."""
    kube = connect(args)
    try:
        obj = await _get_dispatch(kube, args.name, args.namespace)
        pod = (obj.get("status") or {}).get("podName")
        if not pod:
            raise CliError(f"BuildDispatch {args.namespace}/{args.name}", "it has no sandbox pod yet",
                           "wait for it to run (buildstudio watch)")  # fmt: skip
        for container in ("agent", "reporter"):
            if args.follow:
                async for line in kube.follow_log(args.namespace, pod, container=container, idle_timeout=600):
                    _print_record(line)
            else:
                with contextlib.suppress(KubeError):  # a container that has not started has no log yet
                    for line in (await kube.read_log(args.namespace, pod, container=container)).splitlines():
                        _print_record(line)
        return 0
    finally:
        await kube.aclose()


def _print_record(line: str) -> None:
    rec = records.parse_line(line)
    if rec is not None:
        print(record_line(rec), flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None,
                   help="namespace (default: the kubeconfig context's, else default)")  # fmt: skip
    p.add_argument("--context", default=None, help="kubeconfig context (default: the current context)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    p.epilog = EXIT_CODES_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("submit", help="create a BuildDispatch in the cluster")
    p.add_argument("prompt", help="the task, given to the engine verbatim; `-` reads it from stdin")
    p.add_argument("--repo", help="git URL to work in")
    p.add_argument("--ref", default="main", help="branch, tag or commit (default main)")
    p.add_argument("--model", help="model id (default: the engine's strong model)")
    p.add_argument("--engine", help="BuildEngine name (default: auto-detected)")
    p.add_argument("--phase", default="build", choices=["ideate", "plan", "build", "review", "ship"],
                   help="pipeline phase (default build)")  # fmt: skip
    p.add_argument("--name", help="object name (default: generated bd-xxxxx)")
    p.add_argument("--ttl", type=int, default=None, help="delete the dispatch this many seconds after it finished")
    p.add_argument("-w", "--watch", action="store_true", help="follow progress until it finishes")
    p.add_argument("--timeout", type=float, default=7200.0, help="watch at most this many seconds")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_submit(a)))

    p = subparsers.add_parser("watch", help="follow a BuildDispatch until it finishes (exit 0 succeeded, 1 failed)")
    p.add_argument("name", help="the BuildDispatch's name")
    p.add_argument("--timeout", type=float, default=7200.0, help="give up after this many seconds")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_watch_cmd(a)))

    p = subparsers.add_parser("diff", help="print a BuildDispatch's whole patch (for `git apply`)")
    p.add_argument("name", help="the BuildDispatch's name")
    p.add_argument("--excerpt", action="store_true", help="the bounded excerpt from the status instead")
    p.add_argument("--full", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_diff(a)))

    p = subparsers.add_parser("cancel", help="cancel a BuildDispatch (keeps the partial diff)")
    p.add_argument("name", help="the BuildDispatch's name")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_cancel(a)))

    p = subparsers.add_parser("logs", help="print a BuildDispatch's sandbox records (-f: as they arrive)")
    p.add_argument("name", help="the BuildDispatch's name")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the sandbox ends")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_logs(a)))
