"""The BuildDispatch spec of a ``buildstudio run --local`` run: the manifest's, each flag given
filling or overriding its field, checked as the apiserver would (the CRD's models, then its CEL
rules), with errors that name the flag. Pure but for reading the models."""

from __future__ import annotations

import copy
from typing import Any

from buildstudio.api import inputs
from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.commands.errors import CliError

# Where a field of the spec comes from when given on the command line (for error messages).
FLAG_OF = {
    "spec.timeouts.runSeconds": "--timeout",
    "spec.timeouts.idleSeconds": "--idle-timeout",
    "spec.stepBudget": "--step-budget",
    "spec.prompt": "--prompt",
    "spec.model": "--model",
    "spec.engine": "--engine",
    "spec.phase": "--phase",
    "spec.repo.url": "--repo",
    "spec.repo.ref": "--ref",
}
DEFAULT_RUN_SECONDS = 1800
DEFAULT_IDLE_SECONDS = 300
DEFAULT_STEP_BUDGET = 200


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """What the apiserver would say of this BuildDispatch: the models' schema, then the CRD's CEL rules.
    Local mode takes one more thing: a local path or file:// URL as ``spec.repo.url``."""
    from pydantic import ValidationError

    from buildstudio.api import BuildDispatch
    from buildstudio.api.crdgen import dispatch_spec_schema
    from buildstudio.api.dispatch import LOCAL_PATHS
    from buildstudio.core.cel import cel_violations

    try:
        BuildDispatch.model_validate({**manifest, "kind": "BuildDispatch"}, context=LOCAL_PATHS)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    url = (manifest["spec"].get("repo") or {}).get("url")
    local_url = isinstance(url, str) and inputs.local_path(url) is not None
    violations = cel_violations(dispatch_spec_schema(), manifest["spec"], path="spec")
    return [str(v) for v in violations if not (local_url and v.path == "spec.repo.url")]


def repo_problem(fields: dict[str, str]) -> str | None:
    """Why the repo or ref of this local run must not reach git (local paths are fine here)."""
    if "repo" in fields:
        problem = inputs.check_repo_url(fields["repo"], local=True)
        if problem:
            return f"repo {fields['repo']!r}: {problem}"
    if fields.get("ref"):
        problem = inputs.check_ref(fields["ref"])
        if problem:
            return f"ref {fields['ref']!r}: {problem}"
    return None


def spec_fields(spec: dict[str, Any]) -> dict[str, str]:
    """prompt / repo (url) / ref / model / engine / phase of a validated spec, those that are set."""
    raw = spec.get("repo")
    repo: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out = {
        "prompt": spec.get("prompt"),
        "repo": repo.get("url"),
        "ref": repo.get("ref"),
        "model": spec.get("model"),
        "engine": spec.get("engine"),
        "phase": spec.get("phase"),
    }
    return {k: str(v) for k, v in out.items() if v is not None and v != ""}


def dispatch_fields(manifest: Any) -> dict[str, str]:
    """``spec_fields`` of a BuildDispatch manifest (a YAML dict), validated first (ValueError)."""
    if not isinstance(manifest, dict) or manifest.get("kind") not in (None, "BuildDispatch"):
        raise ValueError("expected a BuildDispatch manifest")
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("the manifest has no spec")
    errors = manifest_errors(manifest)
    if errors:
        raise ValueError("invalid BuildDispatch: " + "; ".join(errors))
    return spec_fields(spec)


def local_spec(manifest_spec: dict[str, Any] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The BuildDispatch spec of this run: the manifest's (if any), each flag given filling or
    overriding its field (``--repo`` replaces the whole ``repo``). Pure; validated afterwards."""
    spec = copy.deepcopy(manifest_spec or {})
    for key in ("prompt", "model", "engine", "phase"):
        if flags.get(key) is not None:
            spec[key] = flags[key]
    if flags.get("repo") is not None:
        spec["repo"] = {"url": flags["repo"]}
    if flags.get("ref") is not None:
        raw = spec.get("repo")
        repo: dict[str, Any] = raw if isinstance(raw, dict) else {}
        spec["repo"] = {**repo, "ref": flags["ref"]}
    timeouts = dict(spec["timeouts"]) if isinstance(spec.get("timeouts"), dict) else {}
    if flags.get("timeout") is not None:
        timeouts["runSeconds"] = flags["timeout"]
    if flags.get("idle_timeout") is not None:
        timeouts["idleSeconds"] = flags["idle_timeout"]
    run = timeouts.get("runSeconds")
    if "idleSeconds" not in timeouts and isinstance(run, int) and 10 <= run < DEFAULT_IDLE_SECONDS:
        timeouts["idleSeconds"] = run  # a short run gets an idle limit that fits it
    if timeouts:
        spec["timeouts"] = timeouts
    if flags.get("step_budget") is not None:
        spec["stepBudget"] = flags["step_budget"]
    return spec


def spec_errors(spec: dict[str, Any], *, stand_in_repo: str | None) -> list[str]:
    """What the apiserver would say of this spec (``manifest_errors``), each error naming its flag.
    ``stand_in_repo``: the local repository a build uses when the spec names none (the sample
    repository, or ``--workspace``), so that "build needs spec.repo" holds for it."""
    checked = dict(spec)
    if stand_in_repo is not None and "repo" not in checked:
        checked["repo"] = {"url": stand_in_repo}
    manifest = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "BuildDispatch",
                "metadata": {"name": "local"}, "spec": checked}  # fmt: skip
    out = []
    for err in manifest_errors(manifest):
        path = err.split(":", 1)[0]
        flag = FLAG_OF.get(path)
        out.append(f"{path} ({flag}):{err.split(':', 1)[1]}" if flag else err)
    return out


def replay_phase(replay_meta: dict[str, Any], asked: str | None, name: str) -> str | None:
    """The phase of a run on a replay: the replay declares the phase it recorded; asking for
    another is an error (a plan replay must not silently drive a build)."""
    declared = replay_meta.get("phase")
    if declared is None:
        return asked
    if asked is not None and asked != declared:
        raise CliError(
            f"replay {name}",
            f"it records a {declared} conversation, not {asked}",
            f"drop --phase (or the manifest's spec.phase) or pass --phase {declared}",
        )
    return str(declared)
