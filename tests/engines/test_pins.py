"""The cloud-engine pins live in buildstudio/pins.py; everything else follows them: the adapters,
hack/install-engines.sh, the registry rows (version, npm recipe, command = the adapter's argv, a
model the CLI knows), Dockerfile.sandbox's ARG defaults and hack/build-images.sh's build args."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio import pins
from buildstudio.engines.adapters import ADAPTERS, adapter_for
from buildstudio.engines.base import RunRequest

REPO = Path(__file__).resolve().parents[2]
PINS = {
    "claude": (pins.CLAUDE_CODE_VERSION, pins.CLAUDE_CODE_NPM_PACKAGE, pins.CLAUDE_CODE_VERSION),
    "codex": (pins.CODEX_VERSION, pins.CODEX_NPM_PACKAGE, pins.CODEX_VERSION),
    "grok": (pins.GROK_CLI_VERSION, pins.GROK_CLI_NPM_PACKAGE, pins.GROK_CLI_BINARY_VERSION),
}


def registry_row(engine: str) -> dict[str, Any]:
    registry = yaml.safe_load((REPO / "engines" / "build-engines.yaml").read_text(encoding="utf-8"))
    return next(e["spec"] for e in registry["engines"] if e["spec"]["engine"] == engine)


@pytest.mark.parametrize("engine", sorted(ADAPTERS))
def test_adapter_and_registry_follow_the_pins(engine: str) -> None:
    version, package, prints = PINS[engine]
    adapter = adapter_for(engine)
    assert adapter is not None
    assert (adapter.package, adapter.version) == (package, prints)
    row = registry_row(engine)
    assert row["version"] == version
    assert [r["package"] for r in row["recipes"] if r["type"] == "npm"] == [package]
    # The registry's command is the argv the adapter really builds (placeholders in their places).
    request = RunRequest(
        prompt="{prompt}", model="{model}", workspace="{workspace}", home="/home/x", base_url="http://127.0.0.1:1"
    )
    assert row["command"] == list(adapter.launch(request).argv)
    assert row["versionCommand"] == list(adapter.version_command)


def test_the_codex_model_is_one_codex_knows() -> None:
    # gpt-5-codex is not in codex 0.171's catalogue: no apply_patch tool (docs/engines/codex.md §2).
    assert [m["id"] for m in registry_row("codex")["models"]] == ["gpt-5.5"]


def test_the_chart_carries_the_same_registry() -> None:
    chart = REPO / "charts" / "build-studio" / "files" / "build-engines.yaml"
    assert chart.read_text(encoding="utf-8") == (REPO / "engines" / "build-engines.yaml").read_text(encoding="utf-8")


def test_install_engines_reads_the_pins() -> None:
    script = (REPO / "hack" / "install-engines.sh").read_text(encoding="utf-8")
    assert not re.search(r"\d+\.\d+\.\d+", script.split("set -euo pipefail", 1)[1]), "a version is hard-coded"
    # Its pin reader, run on pins.py, yields the pins.
    reader = re.search(r"^pin\(\) \{.*\}$", script, re.M)
    assert reader is not None
    for name in ("CLAUDE_CODE_VERSION", "CODEX_VERSION", "GROK_CLI_VERSION"):
        out = subprocess.run(
            ["bash", "-c", f"{reader.group(0)}\npin {name}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == getattr(pins, name)


def test_build_images_passes_the_engine_pins_as_build_args() -> None:
    script = (REPO / "hack" / "build-images.sh").read_text(encoding="utf-8")
    for name in ("CLAUDE_CODE_VERSION", "CODEX_VERSION", "GROK_CLI_VERSION"):
        assert f'"{name}=$(pin {name})"' in script or f"{name}=$(pin {name})" in script, name
    dockerfile = (REPO / "Dockerfile.sandbox").read_text(encoding="utf-8")
    for name in ("CLAUDE_CODE_VERSION", "CODEX_VERSION", "GROK_CLI_VERSION", "GROK_CLI_BINARY_VERSION"):
        assert f"ARG {name}={getattr(pins, name)}" in dockerfile, name
