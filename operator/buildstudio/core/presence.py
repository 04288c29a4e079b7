"""Whether a BuildEngine is there for real: the engine as the gate sees it, when to run the
presence probe and what it found, and the engine's ``present``/``presence`` status."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import conditions as c
from buildstudio.core.gate import EngineState

FAILED_PROBE_RETRY = 300.0  # seconds before a failed probe of the same spec runs again
VERSION_RE = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.-]+)?")


def engine_state(name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> EngineState | None:
    """The engine as the gate sees it; None when its spec is invalid."""
    try:
        parsed = BuildEngineSpec.model_validate(dict(spec))
    except ValueError:
        return None
    return EngineState(name=name, spec=parsed, present=bool(status.get("present")))


def probe_plan(engine: EngineState, generation: int | None, default_image: str) -> tuple[str, list[str], str]:
    """(image, version command, fingerprint) of the presence probe for this spec generation."""
    image = engine.spec.image or default_image
    command = list(engine.spec.version_command) or [engine.spec.command[0], "--version"]
    raw = json.dumps([image, command, generation], sort_keys=True).encode()
    return image, command, hashlib.sha256(raw).hexdigest()[:16]


def needs_probe(status: Mapping[str, Any], generation: int | None, image: str, now: datetime) -> bool:
    """Once per image and generation; a failed probe again after ``FAILED_PROBE_RETRY``."""
    presence = status.get("presence") or {}
    if presence.get("method") != "probe-pod" or presence.get("image") != image:
        return True
    if presence.get("observedGeneration") != generation:
        return True
    if not status.get("present"):
        checked = c.parse_time(presence.get("checkedAt"))
        return checked is None or (now - checked).total_seconds() >= FAILED_PROBE_RETRY
    return False


def parse_version(log: str) -> str:
    match = VERSION_RE.search(log)
    return match.group(0) if match else c.one_line(log, 128)


def probe_outcome(phase: str, log: str, image: str, command: list[str]) -> tuple[bool, str, str]:
    """(present, version, message) from the finished probe pod's phase and log."""
    if phase != "Succeeded":
        return False, "", f"`{' '.join(command)}` failed in {image}: {c.one_line(log, 300) or phase}"
    version = parse_version(log)
    return True, version, f"`{' '.join(command)}` in {image} printed {version}"


def credential_message(where: str, exists: bool) -> str:
    """A cloud engine's presence: its credential Secret ``where`` (namespace/name) exists."""
    return f"credential Secret {where} " + ("exists" if exists else "not found")


def presence_unchanged(status: Mapping[str, Any], present: bool, message: str) -> bool:
    return present == bool(status.get("present")) and (status.get("presence") or {}).get("message") == message


def presence_status(
    status: Mapping[str, Any],
    *,
    present: bool,
    method: str,
    message: str,
    image: str,
    version: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    out = dict(status)
    out["present"] = present
    out["version"] = version
    out["presence"] = {
        "method": method,
        "checkedAt": c.timestamp(now),
        "message": c.one_line(message),
        "image": image,
        "observedGeneration": generation,
    }
    out["conditions"] = c.set_condition(
        status.get("conditions"),
        c.PRESENT,
        "True" if present else "False",
        "Present" if present else "NotPresent",
        message,
        now=now,
        generation=generation,
    )
    out["observedGeneration"] = generation
    return out


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields ``new`` sets differently from ``old`` (the engine's status patch)."""
    return {k: v for k, v in new.items() if old.get(k) != v}
