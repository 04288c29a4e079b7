"""Pure pod mechanics for the kubelet fixture: containers and their order, volumes, path mapping, env,
identities (uid, groups, fsGroup modes), the isolation wrapper, container and pod statuses."""

from __future__ import annotations

import base64
import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

Body = dict[str, Any]


class ContainerConfigError(Exception):
    """What the kubelet reports as `CreateContainerConfigError` (a missing ConfigMap, key…)."""


def main_container(pod: Mapping[str, Any]) -> Body:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return dict(containers[0])


def init_containers(pod: Mapping[str, Any]) -> list[Body]:
    return [dict(c) for c in (pod.get("spec") or {}).get("initContainers") or []]


def main_containers(pod: Mapping[str, Any]) -> list[Body]:
    return [dict(c) for c in (pod.get("spec") or {}).get("containers") or [{}]]


def is_sidecar(container: Mapping[str, Any]) -> bool:
    """A native sidecar: an init container with `restartPolicy: Always`."""
    return container.get("restartPolicy") == "Always"


Kind = Literal["init", "sidecar", "main"]


def container_kinds(pod: Mapping[str, Any]) -> list[tuple[Kind, Body]]:
    """Every container in start order: init containers (sidecars in their place), then the main ones."""
    kinds: list[tuple[Kind, Body]] = [("sidecar" if is_sidecar(c) else "init", c) for c in init_containers(pod)]
    return kinds + [("main", c) for c in main_containers(pod)]


def default_log_container(pod: Mapping[str, Any]) -> str | None:
    """The container `GET pods/NAME/log` serves without `?container=`: the only main one, else none."""
    mains = main_containers(pod)
    return str(mains[0].get("name", "main")) if len(mains) == 1 else None


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The identity a container's processes get; uid None: the image's user (the fixture's own)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]  # supplementary: fsGroup, then supplementalGroups
    fs_group: int | None


def run_as(pod: Mapping[str, Any], container: Mapping[str, Any]) -> RunAs:
    """Container-level runAsUser/runAsGroup over pod-level ones; fsGroup and supplementalGroups join.

    Without runAsGroup a runtime takes the image's passwd entry, else gid 0: the fixture uses 0 too."""
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    fs_group = pod_ctx.get("fsGroup")
    groups = [int(fs_group)] if fs_group is not None else []
    groups += [int(g) for g in pod_ctx.get("supplementalGroups") or [] if int(g) not in groups]
    if uid is None:
        return RunAs(None, None, tuple(groups), fs_group)
    if (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) and int(uid) == 0):
        raise ContainerConfigError("container's runAsUser breaks non-root policy")
    return RunAs(int(uid), int(gid) if gid is not None else 0, tuple(groups), fs_group)


# --- volumes ------------------------------------------------------------------------------


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's volumes and its containers' env need."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if "configMap" in volume:
            configmaps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
    for _, container in container_kinds(pod):
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


# The kubelet creates emptyDirs world-writable; ConfigMap/Secret directories 0755, files 0644 by default.
EMPTY_DIR_MODE = 0o777
PROJECTED_DIR_MODE = 0o755
PROJECTED_FILE_MODE = 0o644


def volume_file_modes(volume: Mapping[str, Any], paths: Sequence[str]) -> dict[str, int]:
    """Each file's mode in a ConfigMap/Secret volume: `items[].mode`, else `defaultMode`, else 0644."""
    source = volume.get("secret") or volume.get("configMap") or {}
    default = int(source.get("defaultMode", PROJECTED_FILE_MODE))
    by_path = {item["path"]: int(item["mode"]) for item in source.get("items") or [] if "mode" in item}
    return {path: by_path.get(path, default) for path in paths}


def fs_group_mode(mode: int, fs_group: int | None, *, directory: bool, read_only: bool) -> int:
    """What fsGroup ownership adds to a volume's entries (the kubelet's SetVolumeOwnership): group
    read (and write unless the volume is read-only); directories also setgid and group search."""
    if fs_group is None:
        return mode
    mask = 0o440 if read_only else 0o660
    if directory:
        mask |= 0o2000 | 0o110
    return mode | mask


def mounts_of(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> list[tuple[str, str, bool]]:
    """(mountPath, local path, readOnly) per volumeMount, subPath honoured, in the container's order."""
    mounts: list[tuple[str, str, bool]] = []
    for mount in container.get("volumeMounts") or []:
        local = volume_dirs.get(mount["name"])
        if local is None:
            raise ContainerConfigError(f'volume "{mount["name"]}" is not defined in the pod')
        if mount.get("subPath"):
            local = f"{local}/{mount['subPath']}"
        mounts.append((mount["mountPath"].rstrip("/") or "/", local, bool(mount.get("readOnly"))))
    return mounts


def mount_points(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> list[tuple[str, str]]:
    """(mountPath, local path) pairs, subPath honoured, longest mountPath first (for prefix mapping)."""
    mounts = [(path, local) for path, local, _ in mounts_of(container, volume_dirs)]
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


def waiting(reason: str, message: str | None = None) -> Body:
    state: Body = {"reason": reason}
    if message:
        state["message"] = message
    return {"waiting": state}


def running(started_at: str) -> Body:
    return {"running": {"startedAt": started_at}}


def terminated(exit_code: int, started_at: str, finished_at: str, reason: str | None = None,
               message: str | None = None) -> Body:
    state: Body = {"exitCode": exit_code, "reason": reason or exit_reason(exit_code), "startedAt": started_at,
                   "finishedAt": finished_at}
    if message:
        state["message"] = message
    return {"terminated": state}


def container_status(pod: Mapping[str, Any], container: Mapping[str, Any], state: Body, *, ready: bool,
                     started: bool, restart_count: int = 0, last_state: Body | None = None) -> Body:
    uid = (pod.get("metadata") or {}).get("uid", "")
    name = container.get("name", "main")
    return {"name": name, "image": container.get("image", ""), "imageID": "",
            "containerID": f"emulated://{uid}/{name}", "ready": ready, "started": started,
            "restartCount": restart_count, "state": state, "lastState": last_state or {}}


def pod_phase(init: Sequence[tuple[Kind, Body]], main: Sequence[Body], *, evicted: bool = False) -> str:
    """The phase under restartPolicy Never from container statuses, as the kubelet's getPhase: a
    failed init container fails the pod; Pending while an init container or a never-started
    container waits; Running while any main container or sidecar runs; then the main containers'
    exit codes decide (a sidecar's never)."""
    if evicted:
        return "Failed"
    pending = running = 0
    for kind, status in init:
        state, last = status["state"], status.get("lastState") or {}
        if kind == "init":
            if state.get("terminated", {}).get("exitCode", 0) != 0:
                return "Failed"
            pending += "terminated" not in state
        elif "running" in state:
            running += 1
        elif "waiting" in state and "terminated" not in last:
            pending += 1
    if pending or not main or any("waiting" in s["state"] for s in main):
        return "Pending"
    if running or any("running" in s["state"] for s in main):
        return "Running"
    return "Succeeded" if all(s["state"]["terminated"]["exitCode"] == 0 for s in main) else "Failed"


def _listed(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"


def pod_status(now: str, start_time: str, init: Sequence[tuple[Kind, Body]], main: Sequence[Body], *,
               phase: str, reason: str | None = None, message: str | None = None) -> Body:
    """The pod's status from its container statuses (`init`: (kind, status) in spec order)."""
    main_started = any("waiting" not in s["state"] for s in main)
    incomplete = [s["name"] for kind, s in init
                  if (kind == "init" and s["state"].get("terminated", {}).get("exitCode") != 0)
                  or (kind == "sidecar" and "waiting" in s["state"])]
    terminal = phase in ("Succeeded", "Failed")
    unready = [s["name"] for kind, s in init if kind == "sidecar" and not s["ready"]]
    unready += [s["name"] for s in main if not s["ready"]]
    if main_started or not incomplete:
        initialized = _condition("Initialized", True, start_time)
    else:
        initialized = _condition("Initialized", False, now, "ContainersNotInitialized",
                                 f"containers with incomplete status: {_listed(incomplete)}")
    if not unready and not terminal:
        ready = [_condition(kind, True, now) for kind in ("ContainersReady", "Ready")]
    elif terminal:
        ready = [_condition(kind, False, now, "PodCompleted") for kind in ("ContainersReady", "Ready")]
    else:
        ready = [_condition(kind, False, now, "ContainersNotReady",
                            f"containers with unready status: {_listed(unready)}")
                 for kind in ("ContainersReady", "Ready")]
    status: Body = {"phase": phase, "hostIP": "127.0.0.1", "startTime": start_time,
                    "conditions": [_condition("PodScheduled", True, start_time), initialized, *ready],
                    "containerStatuses": list(main)}
    if init:
        status["initContainerStatuses"] = [s for _, s in init]
    if main_started or any("waiting" not in s["state"] for _, s in init):
        status["podIP"] = "127.0.0.1"
        status["podIPs"] = [{"ip": "127.0.0.1"}]
    if reason:
        status["reason"] = reason
        status["message"] = message or reason
    return status


def status_unschedulable(now: str, message: str) -> Body:
    return {"phase": "Pending", "conditions": [_condition("PodScheduled", False, now, "Unschedulable", message)]}


# --- running a container as its own uid ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Isolation:
    """How one container's process is confined when the fixture runs as root: a mount namespace
    that shows only the volumes this container mounts (read-only ones remounted read-only), the
    interpreter reachable even below a directory other uids cannot enter (/root), then its own
    uid, gid and groups, no capabilities, no new privileges."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    volumes_root: str  # the pod's volume directories live below it; hidden but for `binds`
    stage: str  # an empty directory only root can reach, to bind through
    binds: tuple[tuple[str, bool], ...]  # (path below volumes_root, read-only)
    exposures: tuple[tuple[str, tuple[str, ...]], ...]  # (a directory others cannot enter, its children to show)
    cwd: str


def isolation_argv(iso: Isolation, argv: Sequence[str], tools: Mapping[str, str]) -> list[str]:
    """`unshare -m sh -c SCRIPT … setpriv … -- argv`: the script sets up the mounts as root, then
    `setpriv` drops to the container's identity and execs the command (same pid throughout)."""
    q = shlex.quote
    mount, umount, mkdir = q(tools["mount"]), q(tools["umount"]), q(tools["mkdir"])
    root, stage = iso.volumes_root.rstrip("/"), q(iso.stage)
    lines = ["set -eu"]
    if iso.binds:
        # A tmpfs over the volumes root hides the volumes this container does not mount, even from
        # a process that guesses their host paths; the mounted ones are bound back in place.
        lines += [f"{mount} --bind {q(root)} {stage}", f"{mount} -t tmpfs -o mode=0711,size=1m kubelet {q(root)}"]
        for rel, read_only in sorted(set(iso.binds), key=lambda b: (b[0].count("/"), b[0])):
            target = q(f"{root}/{rel}")
            lines += [f"{mkdir} -p {target}", f"{mount} --bind {q(f'{iso.stage}/{rel}')} {target}"]
            if read_only:
                lines.append(f"{mount} -o remount,bind,ro {target}")
        lines.append(f"{umount} -l {stage}")
    for hidden, children in iso.exposures:
        lines += [f"{mount} --bind {q(hidden)} {stage}", f"{mount} -t tmpfs -o mode=0711,size=1m kubelet {q(hidden)}"]
        for child in children:
            source = q(f"{iso.stage}/{Path(child).relative_to(hidden)}")
            lines += [f"{mkdir} -p {q(child)}", f"{mount} --bind {source} {q(child)}",
                      f"{mount} -o remount,bind,ro {q(child)}"]
        lines.append(f"{umount} -l {stage}")
    lines += [f"cd {q(iso.cwd)}", 'exec "$@"']
    groups = ["--groups", ",".join(str(g) for g in iso.groups)] if iso.groups else ["--clear-groups"]
    return [tools["unshare"], "--mount", "--propagation", "private", "--", tools["sh"], "-c", "\n".join(lines),
            "kubelet-container", tools["setpriv"], "--reuid", str(iso.uid), "--regid", str(iso.gid), *groups,
            "--no-new-privs", "--bounding-set", "-all", "--inh-caps", "-all", "--", *argv]


def untraversable(path: Path) -> tuple[Path, Path] | None:
    """The first directory above `path` that others cannot search (e.g. /root, 0700), and its child
    on the way to `path`; None when the whole chain is open."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent, parent / path.relative_to(parent).parts[0]
    return None
