"""Pure pod mechanics for the kubelet fixture: volumes, path mapping, env, and pod statuses."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Body = dict[str, Any]


class ContainerConfigError(Exception):
    """What the kubelet reports as `CreateContainerConfigError` (a missing ConfigMap, key…)."""


def main_container(pod: Mapping[str, Any]) -> Body:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return dict(containers[0])


# --- volumes ------------------------------------------------------------------------------


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's volumes and main container's env need."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if "configMap" in volume:
            configmaps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
    container = main_container(pod)
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            configmaps.add(source["configMapKeyRef"]["name"])
        if "secretKeyRef" in source:
            secrets.add(source["secretKeyRef"]["name"])
    for env_from in container.get("envFrom") or []:
        if "configMapRef" in env_from:
            configmaps.add(env_from["configMapRef"]["name"])
        if "secretRef" in env_from:
            secrets.add(env_from["secretRef"]["name"])
    return configmaps, secrets


def _decoded(obj: Mapping[str, Any], *, secret: bool) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if secret else str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    for key, value in (obj.get("stringData") or {}).items():  # in case a test stored a Secret as sent
        data[key] = str(value).encode()
    return data


def volume_files(
    volume: Mapping[str, Any], configmaps: Mapping[str, Body], secrets: Mapping[str, Body]
) -> dict[str, bytes] | None:
    """The files of a volume as {relative path: content}; None for a directory volume (emptyDir…)."""
    if "configMap" in volume or "secret" in volume:
        is_secret = "secret" in volume
        source = volume["secret"] if is_secret else volume["configMap"]
        name = source["secretName"] if is_secret else source["name"]
        obj = (secrets if is_secret else configmaps).get(name)
        if obj is None:
            if source.get("optional"):
                return {}
            raise ContainerConfigError(f'{"secret" if is_secret else "configmap"} "{name}" not found')
        data = _decoded(obj, secret=is_secret)
        items = source.get("items")
        if not items:
            return data
        files: dict[str, bytes] = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ContainerConfigError(f'key "{item["key"]}" not found in "{name}"')
            files[item["path"]] = data[item["key"]]
        return files
    return None  # emptyDir and anything else: an empty directory


def mount_points(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> list[tuple[str, str]]:
    """(mountPath, local path) pairs, subPath honoured, longest mountPath first (for prefix mapping)."""
    mounts: list[tuple[str, str]] = []
    for mount in container.get("volumeMounts") or []:
        local = volume_dirs.get(mount["name"])
        if local is None:
            raise ContainerConfigError(f'volume "{mount["name"]}" is not defined in the pod')
        if mount.get("subPath"):
            local = f"{local}/{mount['subPath']}"
        mounts.append((mount["mountPath"].rstrip("/") or "/", local))
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def map_paths(value: str, mounts: Sequence[tuple[str, str]]) -> str:
    """Replace in-container paths under a mountPath with the local directory, wherever they appear
    as a path (`/data/x`, `--config=/etc/bs/c.json`, `a:/data`), not inside other words.

    One pass over the value: a local directory that itself lies under another mountPath (a pod
    mounting /tmp while the test's directories are in /tmp) is not mapped twice."""
    if not mounts:
        return value
    local_of = dict(mounts)
    alternatives = "|".join(re.escape(path) for path, _ in mounts)  # longest first: /data/repo before /data
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[^\w.-])")

    def local(m: re.Match[str]) -> str:
        # A longer path that exists on this machine (the test's interpreter in a checkout under
        # /tmp, while the pod mounts /tmp) is a host path the test put there on purpose: keep it.
        token = _PATH_TOKEN.match(value, m.start())
        path = token.group(0) if token else m.group(1)
        if path != m.group(1) and Path(path).exists():
            return m.group(1)
        return local_of[m.group(1)]

    return pattern.sub(local, value)


_PATH_TOKEN = re.compile(r"[^\s\"'=:,;]+")


# --- env and command ----------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand_refs(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$` escapes, unknown stay."""
    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR_REF.sub(replace, value)


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    values = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
    }
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    return str(values.get(path) or "")


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], configmaps: Mapping[str, Body], secrets: Mapping[str, Body]
) -> dict[str, str]:
    """The container's environment from `envFrom` and `env` (in that order, later wins)."""
    env: dict[str, str] = {}
    for env_from in container.get("envFrom") or []:
        prefix = env_from.get("prefix", "")
        for kind, objs, secret in (("configMapRef", configmaps, False), ("secretRef", secrets, True)):
            if kind in env_from:
                ref = env_from[kind]
                obj = objs.get(ref["name"])
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
                env.update({prefix + k: v.decode() for k, v in _decoded(obj, secret=secret).items()})
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand_refs(str(var.get("value", "")), env)
            continue
        for kind, objs, secret in (("configMapKeyRef", configmaps, False), ("secretKeyRef", secrets, True)):
            if kind in source:
                ref = source[kind]
                obj = objs.get(ref["name"])
                data = _decoded(obj, secret=secret) if obj is not None else {}
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise ContainerConfigError(f'{kind} {ref["name"]}/{ref["key"]} not found')
        if "fieldRef" in source:
            env[var["name"]] = _field_ref(pod, source["fieldRef"]["fieldPath"])
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str],
                   command_override: Sequence[str] | None = None) -> list[str]:
    """`command` + `args` with `$(VAR)` expanded; `command_override` replaces the entrypoint."""
    command = list(command_override) if command_override is not None else list(container.get("command") or [])
    argv = command + list(container.get("args") or [])
    if not argv:
        raise ContainerConfigError("the container has no command: the emulated node has no image entrypoint")
    return [expand_refs(str(a), env) for a in argv]


# --- statuses -----------------------------------------------------------------------------


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def returncode_to_exit_code(returncode: int) -> int:
    """A killed process (negative returncode) exits 128+signal, as a container does."""
    return 128 - returncode if returncode < 0 else returncode


def _condition(kind: str, ok: bool, now: str, reason: str | None = None, message: str | None = None) -> Body:
    cond: Body = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                  "lastTransitionTime": now}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def container_statuses(pod: Mapping[str, Any], state: Body, *, ready: bool, started: bool) -> list[Body]:
    uid = (pod.get("metadata") or {}).get("uid", "")
    return [
        {"name": c.get("name", "main"), "image": c.get("image", ""), "imageID": "",
         "containerID": f"emulated://{uid}/{c.get('name', 'main')}", "ready": ready, "started": started,
         "restartCount": 0, "state": state, "lastState": {}}
        for c in (pod.get("spec") or {}).get("containers") or [{}]
    ]


def status_unschedulable(now: str, message: str) -> Body:
    return {"phase": "Pending", "conditions": [_condition("PodScheduled", False, now, "Unschedulable", message)]}


def status_waiting(pod: Mapping[str, Any], now: str, reason: str, message: str | None = None) -> Body:
    waiting: Body = {"reason": reason}
    if message:
        waiting["message"] = message
    return {
        "phase": "Pending", "hostIP": "127.0.0.1", "startTime": now,
        "conditions": [_condition("PodScheduled", True, now), _condition("Initialized", True, now),
                       _condition("ContainersReady", False, now, "ContainersNotReady"),
                       _condition("Ready", False, now, "ContainersNotReady")],
        "containerStatuses": container_statuses(pod, {"waiting": waiting}, ready=False, started=False),
    }


def status_running(pod: Mapping[str, Any], now: str, started_at: str) -> Body:
    return {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": started_at,
        "podIPs": [{"ip": "127.0.0.1"}],
        "conditions": [_condition("PodScheduled", True, started_at), _condition("Initialized", True, started_at),
                       _condition("ContainersReady", True, now), _condition("Ready", True, now)],
        "containerStatuses": container_statuses(pod, {"running": {"startedAt": started_at}},
                                                ready=True, started=True),
    }


def status_terminated(pod: Mapping[str, Any], now: str, started_at: str, exit_code: int,
                      reason: str | None = None, message: str | None = None,
                      pod_reason: str | None = None) -> Body:
    terminated: Body = {"exitCode": exit_code, "reason": reason or exit_reason(exit_code),
                        "startedAt": started_at, "finishedAt": now}
    if message:
        terminated["message"] = message
    phase = "Succeeded" if exit_code == 0 and pod_reason is None else "Failed"
    status: Body = {
        "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": started_at,
        "conditions": [_condition("PodScheduled", True, started_at), _condition("Initialized", True, started_at),
                       _condition("ContainersReady", False, now, "PodCompleted"),
                       _condition("Ready", False, now, "PodCompleted")],
        "containerStatuses": container_statuses(pod, {"terminated": terminated}, ready=False, started=False),
    }
    if pod_reason:
        status["reason"] = pod_reason
        status["message"] = message or pod_reason
    return status
