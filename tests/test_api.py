"""The API models, the generated CRDs, and the examples validated against them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from buildstudio.api import BuildDispatch, BuildEngine, BuildPipeline, crdgen
from buildstudio.cli import main
from tests import crdcheck

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CRD_DIRS = [REPO / "crds", REPO / "charts" / "build-studio" / "crds"]


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    return out


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(c["spec"]["names"]["kind"], c["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            for c in crdgen.all_crds().values()]


@pytest.mark.parametrize("crd_dir", CRD_DIRS, ids=lambda p: str(p.relative_to(REPO)))
def test_crd_files_match_models(crd_dir: Path) -> None:
    """Drift: the committed CRDs are exactly what the models generate (`buildstudio crds`)."""
    for name, crd in crdgen.all_crds().items():
        path = crd_dir / name
        assert path.exists(), f"{path} missing: run `buildstudio crds`"
        assert path.read_text(encoding="utf-8") == crdgen.render(crd), f"{path} drifted: run `buildstudio crds`"


def test_drift_is_detected(tmp_path: Path) -> None:
    assert main(["crds", "--dir", str(tmp_path)]) == 0
    assert main(["crds", "--check", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "buildstudio.dpf.dev_builddispatches.yaml"
    target.write_text(target.read_text().replace("Longest wait", "Longest wai"))
    assert main(["crds", "--check", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_has_a_description(kind: str, schema: dict[str, Any]) -> None:
    # The root metadata is the apiserver's own (it refuses a CRD that describes it; explain has its text).
    missing = [
        p for p, node in _walk(schema) if not node.get("description") and not p.endswith("[]") and p != ".metadata"
    ]
    assert not missing, f"{kind} fields without description (kubectl explain would be empty): {missing}"


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=lambda v: v if isinstance(v, str) else "")
def test_schema_is_structural(kind: str, schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, f"{kind}{path}"
        assert "type" in node, f"{kind}{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        if node["type"] == "array":
            assert "items" in node, f"{kind}{path}"


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_crds_are_valid_apiextensions_v1(name: str) -> None:
    crd = yaml.safe_load((REPO / "crds" / name).read_text())
    kubernetes_validate.validate(crd, "1.33.0", strict=True)  # raises on any error
    crd["spec"]["scope"] = 5  # and the checker does check
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.33.0", strict=True)


def test_printer_columns_and_names() -> None:
    bd = crdgen.build_dispatch_crd()["spec"]
    cols = {c["name"]: c for c in bd["versions"][0]["additionalPrinterColumns"]}
    assert list(cols)[:5] == ["Phase", "Reason", "Engine", "Model", "Age"]
    assert cols["Diff"]["priority"] == 1 and cols["Diff"]["jsonPath"] == ".status.diffSummary"
    assert bd["names"]["shortNames"] == ["bd"] and bd["names"]["categories"] == ["buildstudio"]
    assert bd["versions"][0]["subresources"] == {"status": {}}
    be = crdgen.build_engine_crd()["spec"]
    assert be["scope"] == "Cluster" and be["names"]["shortNames"] == ["be"]


def test_status_has_no_preserved_subtree() -> None:
    """kopf keeps its progress in annotations, so status stays fully structural (see README)."""
    for _, schema in _schemas():
        status = schema["properties"]["status"]
        assert not any(n.get("x-kubernetes-preserve-unknown-fields") for _, n in _walk(status))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


VALID = sorted(p for p in EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def test_examples_exist() -> None:
    kinds = [d["kind"] for p in VALID for d in _docs(p)]
    assert kinds.count("BuildEngine") >= 2 and kinds.count("BuildDispatch") >= 3
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_examples_pass_schema_cel_and_models(path: Path) -> None:
    for doc in _docs(path):
        assert crdcheck.errors(doc) == [], path.name
        model = {"BuildEngine": BuildEngine, "BuildPipeline": BuildPipeline}.get(doc["kind"], BuildDispatch)
        model.model_validate(doc)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_with_a_clear_message(path: Path) -> None:
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    docs = _docs(path)
    old, new = (docs[0], docs[1]) if len(docs) == 2 else (None, docs[0])
    if old is not None:
        assert crdcheck.errors(old) == [], "the stored object of an update case must itself be valid"
    found = crdcheck.errors(new, old)
    assert found, f"{path.name} was accepted"
    assert any(expect in msg for msg in found), f"{path.name}: expected {expect!r} in {found}"


def test_update_allows_cancel_and_ttl_changes() -> None:
    old = _docs(EXAMPLES / "dispatch-build-local.yaml")[0]
    new = yaml.safe_load(yaml.safe_dump(old))
    new["spec"]["cancel"] = True
    new["spec"]["ttlSecondsAfterFinished"] = 60
    assert crdcheck.errors(new, old) == []


def test_models_round_trip_to_camel_case() -> None:
    doc = _docs(EXAMPLES / "dispatch-build-local.yaml")[0]
    bd = BuildDispatch.model_validate(doc)
    assert bd.spec.timeouts.idle_seconds == 300 and bd.spec.step_budget == 60
    api = bd.spec.to_api()
    assert api["stepBudget"] == 60 and api["timeouts"]["runSeconds"] == 1800 and "step_budget" not in api


def test_explain_prints_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "builddispatch.spec.repo"]) == 0
    out = capsys.readouterr().out
    assert "Clone URL" in out and "url\t<string>  -required-" in out
    assert main(["explain", "bd.spec.nosuch"]) == 1
