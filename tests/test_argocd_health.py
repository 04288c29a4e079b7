"""The Argo CD health checks in charts/build-studio/argocd/, run for real in a Lua 5.1 interpreter (the
`lupa` package; Argo CD's gopher-lua is Lua 5.1) on objects whose status the operator's own state machine
and engine handlers wrote: every stage and every terminal reason (tests/status_samples.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.status_samples import Sample, dispatch_samples, engine_samples

lupa = pytest.importorskip("lupa", reason="the lupa package runs the Lua health checks (pip install lupa)")

REPO_ROOT = Path(__file__).resolve().parents[1]
ARGOCD = REPO_ROOT / "charts" / "build-studio" / "argocd"
DOCS = REPO_ROOT / "docs" / "observability.md"
SCRIPTS = {"BuildDispatch": ARGOCD / "health-builddispatch.lua", "BuildEngine": ARGOCD / "health-buildengine.lua"}
DISPATCHES = dispatch_samples()
ENGINES = engine_samples()
TERMINAL_PHASES = {"Healthy": {"Succeeded"}, "Degraded": {"Failed", "Cancelled"}}


def _runtime() -> Any:
    try:
        from lupa import lua51  # closest to gopher-lua; wheels without it fall back to the default Lua
    except ImportError:
        return lupa.LuaRuntime()
    return lua51.LuaRuntime()


def _to_lua(lua: Any, value: Any) -> Any:
    """As Argo CD hands an object to the script: JSON nulls are absent keys, arrays start at 1."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    lua = _runtime()
    lua.globals().obj = _to_lua(lua, json.loads(json.dumps(obj)))  # the API server's JSON, not Python objects
    result = lua.execute(SCRIPTS[kind].read_text(encoding="utf-8"))
    return {"status": result["status"], "message": result["message"]}


def _reasons(obj: dict[str, Any]) -> set[str]:
    status = obj.get("status") or {}
    return {status.get("reason")} | {c["reason"] for c in status.get("conditions") or []}


@pytest.mark.parametrize("sample", DISPATCHES, ids=[s.name for s in DISPATCHES])
def test_builddispatch_health(sample: Sample) -> None:
    # The sample really is what its name says (else the health check proves nothing about it).
    if sample.reason:
        assert sample.reason in _reasons(sample.obj)
    phase = (sample.obj.get("status") or {}).get("phase")
    assert phase in TERMINAL_PHASES.get(sample.health, {None, "Pending", "Queued", "Running"})

    hs = health("BuildDispatch", sample.obj)
    assert hs["status"] == sample.health, hs
    assert sample.reason in hs["message"], hs


@pytest.mark.parametrize("sample", ENGINES, ids=[s.name for s in ENGINES])
def test_buildengine_health(sample: Sample) -> None:
    if sample.reason:
        assert sample.reason in _reasons(sample.obj)
    hs = health("BuildEngine", sample.obj)
    assert hs["status"] == sample.health, hs
    assert sample.reason in hs["message"], hs


def test_every_health_status_is_reached() -> None:
    """The samples cover each health the scripts can give (a branch no sample reaches is untested)."""
    assert {s.health for s in DISPATCHES} == {"Healthy", "Degraded", "Progressing", "Suspended"}
    assert {s.health for s in ENGINES} == {"Healthy", "Degraded", "Progressing"}


def test_scripts_use_only_what_argocd_gives_them() -> None:
    """Argo CD's sandbox has no os, io, require or debug; a script must end with `return hs`."""
    for path in SCRIPTS.values():
        code = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        assert not re.search(r"\b(os|io|debug|package)\.|\brequire\b|\bloadstring\b|\bgoto\b|//", code), path.name
        assert code.rstrip().endswith("return hs"), path.name


def test_docs_name_the_argocd_cm_keys_and_the_files() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for kind, path in SCRIPTS.items():
        assert f"resource.customizations.health.buildstudio.dpf.dev_{kind}" in text
        assert str(path.relative_to(REPO_ROOT)) in text


READY_BY_HEALTH = {"Healthy": "True", "Degraded": "False", "Progressing": "Unknown", "Suspended": "Unknown"}


@pytest.mark.parametrize("sample", [s for s in DISPATCHES if s.obj.get("status")], ids=lambda s: s.name)
def test_ready_tells_tools_that_know_only_ready_what_the_health_check_says(sample: Sample) -> None:
    """``Ready`` (for kubectl wait, kstatus, dashboards) follows Succeeded on every sample the state machine
    wrote: True on success, False with the failure's reason once it ended otherwise, Unknown on the way."""
    conditions = {c["type"]: c for c in sample.obj["status"]["conditions"]}
    ready, done = conditions["Ready"], conditions.get("Succeeded")
    assert ready["status"] == READY_BY_HEALTH[sample.health], ready
    if done is not None and done["status"] != "Unknown":
        assert (ready["reason"], ready["message"]) == (done["reason"], done["message"])
    else:
        assert ready["reason"] == sample.obj["status"]["phase"]
