"""``buildstudio submit|watch|diff|cancel``: BuildDispatches for cluster users (kubeconfig).

The formatting is pure (``dispatch_manifest``, ``progress_line``, ``summary_line``); the
commands are thin loops over ``buildstudio.kube`` with explicit timeouts and bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from buildstudio.kube import Kube, KubeError
from buildstudio.pins import API_GROUP, API_VERSION

TERMINAL = ("Succeeded", "Failed", "Cancelled")


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


async def _watch(kube: Kube, name: str, namespace: str, out: TextIO, *, bound: float, interval: float) -> int:
    """Print progress lines until a terminal phase (exit 0 Succeeded, 1 otherwise) or ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    last = ""
    while True:
        obj = await kube.get("BuildDispatch", name, namespace)
        if obj is None:
            print(f"buildstudio: BuildDispatch {namespace}/{name} not found", file=sys.stderr)
            return 2
        status = obj.get("status") or {}
        line = progress_line(status)
        if line != last:
            out.write(line + "\n")
            out.flush()
            last = line
        if status.get("phase") in TERMINAL:
            out.write(summary_line(status) + "\n")
            return 0 if status.get("phase") == "Succeeded" else 1
        if loop.time() >= deadline:
            print(f"buildstudio: still {status.get('phase')} after {bound:.0f}s", file=sys.stderr)
            return 3
        await asyncio.sleep(interval)


async def _submit(args: argparse.Namespace) -> int:
    kube = Kube.from_config(args.kubeconfig)
    try:
        created, _ = await kube.create(dispatch_manifest(args))
        name = created["metadata"]["name"]
        print(f"builddispatch.{API_GROUP}/{name} created")
        if args.watch:
            return await _watch(kube, name, args.namespace, sys.stdout, bound=args.timeout, interval=1.0)
        return 0
    finally:
        kube.close()


async def _watch_cmd(args: argparse.Namespace) -> int:
    kube = Kube.from_config(args.kubeconfig)
    try:
        return await _watch(kube, args.name, args.namespace, sys.stdout, bound=args.timeout, interval=1.0)
    finally:
        kube.close()


async def _diff(args: argparse.Namespace) -> int:
    kube = Kube.from_config(args.kubeconfig)
    try:
        obj = await kube.get("BuildDispatch", args.name, args.namespace)
        if obj is None:
            print(f"buildstudio: BuildDispatch {args.namespace}/{args.name} not found", file=sys.stderr)
            return 2
        status = obj.get("status") or {}
        cm_name = status.get("patchConfigMap")
        if args.full and cm_name:
            cm = await kube.get("ConfigMap", cm_name, args.namespace)
            data = ((cm or {}).get("binaryData") or {}).get("patch.gz")
            if data:
                sys.stdout.write(gzip.decompress(base64.b64decode(data)).decode("utf-8", "replace"))
                return 0
            print(f"buildstudio: the whole patch is not available in {cm_name}; showing the excerpt", file=sys.stderr)
        sys.stdout.write(status.get("diff") or "")
        return 0
    finally:
        kube.close()


async def _cancel(args: argparse.Namespace) -> int:
    kube = Kube.from_config(args.kubeconfig)
    try:
        await kube.merge_patch("BuildDispatch", args.name, args.namespace, {"spec": {"cancel": True}})
        print(f"builddispatch.{API_GROUP}/{args.name} cancel requested")
        return 0
    except KubeError as exc:
        print(f"buildstudio: {exc}", file=sys.stderr)
        return 2
    finally:
        kube.close()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("submit", help="create a BuildDispatch in the cluster")
    p.add_argument("prompt", help="the task, given to the engine verbatim")
    p.add_argument("--repo", help="git URL to work in")
    p.add_argument("--ref", default="main", help="branch, tag or commit (default main)")
    p.add_argument("--model", help="model id (default: the engine's strong model)")
    p.add_argument("--engine", help="BuildEngine name (default: auto-detected)")
    p.add_argument("--phase", default="build", choices=["ideate", "plan", "build", "review", "ship"])
    p.add_argument("--name", help="object name (default: generated bd-xxxxx)")
    p.add_argument("--ttl", type=int, default=None, help="ttlSecondsAfterFinished")
    p.add_argument("-w", "--watch", action="store_true", help="follow progress until it finishes")
    p.add_argument("--timeout", type=float, default=7200.0, help="watch at most this many seconds")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_submit(a)))

    p = subparsers.add_parser("watch", help="follow a BuildDispatch until it finishes")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=7200.0, help="give up after this many seconds")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_watch_cmd(a)))

    p = subparsers.add_parser("diff", help="print a BuildDispatch's diff")
    p.add_argument("name")
    p.add_argument("--full", action="store_true", help="the whole patch from its ConfigMap, not the excerpt")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_diff(a)))

    p = subparsers.add_parser("cancel", help="cancel a BuildDispatch (keeps the partial diff)")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=lambda a: asyncio.run(_cancel(a)))
