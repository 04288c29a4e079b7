"""The engine registry: loaded and validated through the same models and CEL rules as the CRD."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio import pins
from buildstudio.adapters import registry
from buildstudio.cli import main

REPO = Path(__file__).resolve().parents[2]


def _doc() -> dict[str, Any]:
    return yaml.safe_load((REPO / "engines" / "build-engines.yaml").read_text())  # type: ignore[no-any-return]


def test_registry_loads_the_four_engines() -> None:
    entries = {e.name: e.spec for e in registry.load()}
    assert list(entries) == ["opencode", "claude", "codex", "grok"]
    oc = entries["opencode"]
    assert oc.bake_in_default and oc.endpoint == "local" and "localModels" in oc.capabilities
    assert oc.version == pins.OPENCODE_VERSION and oc.build == pins.OPENCODE_LINUX_BUILD
    types = [r.type for r in oc.recipes]
    assert types == ["prestaged-binary", "curl", "npm"]
    assert oc.recipes[0].path == "/opt/dpf-engines/opencode/bin/opencode"
    assert oc.recipes[0].target == "/usr/local/bin/opencode"
    assert oc.recipes[1].sha256 == pins.OPENCODE_LINUX_TARBALL_SHA256
    assert oc.recipes[2].package == pins.OPENCODE_NPM_PACKAGE
    for cloud in ("claude", "codex", "grok"):
        spec = entries[cloud]
        assert spec.endpoint == "cloud" and spec.credential is not None and not spec.bake_in_default


def test_seeded_object_is_a_valid_build_engine() -> None:
    from tests import crdcheck

    obj = registry.as_object(registry.load()[0])
    assert obj["metadata"]["labels"][registry.MANAGED_LABEL] == "true"
    assert crdcheck.errors(obj) == []


def _broken(mutate: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    mutate(doc)
    return doc


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["engines"][1]["spec"].pop("version"), "engines[1] (claude): spec.version: Field required"),
    (lambda d: d["engines"][0]["spec"]["recipes"][1].pop("sha256"),
     "engines[0] (opencode): spec.recipes[1]: a curl recipe needs url and sha256"),
    (lambda d: d["engines"][2]["spec"].update(endpoint="moon"), "engines[2] (codex): spec.endpoint: Input should be"),
    (lambda d: d["engines"][3]["spec"].pop("credential"),
     "engines[3] (grok): spec.credential: a cloud engine needs credential.secretRef"),
    (lambda d: d["engines"].append(copy.deepcopy(d["engines"][0])), "engines[4] (opencode): duplicate engine name"),
    (lambda d: d.update(kind="Other"), "expected kind: BuildEngineRegistry"),
    (lambda d: d["engines"][0]["spec"].update(contextFloor=2048),
     "engines[0] (opencode): spec.hardMinimumContext: hardMinimumContext must not exceed contextFloor"),
])
def test_bad_registry_names_entry_and_field(mutate: Any, expected: str) -> None:
    with pytest.raises(registry.RegistryError) as err:
        registry.parse(_broken(mutate), source="build-engines.yaml")
    assert expected in str(err.value)


def test_engines_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAME", "ENDPOINT", "VERSION"]
    assert "opencode  local" in out and "qwen3-coder(strong)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_broken(lambda d: d["engines"][1]["spec"].pop("command"))))
    assert main(["engines", "-f", str(bad)]) == 2  # invalid input: EXIT_USAGE
    assert "engines[1] (claude): spec.command: Field required" in capsys.readouterr().err
    assert main(["engines", "-o", "yaml"]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["kind"] for o in objs] == ["BuildEngine"] * 4
