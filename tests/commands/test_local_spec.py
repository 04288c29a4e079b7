"""The spec of a local run: the manifest and the flags as one BuildDispatch spec, checked as the
apiserver would, each error naming its flag; a replay's phase."""

from __future__ import annotations

import pytest

from buildstudio.commands import local_spec
from buildstudio.commands.errors import CliError


def test_dispatch_fields_from_a_manifest() -> None:
    manifest = {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildDispatch",
        "metadata": {"name": "x"},
        "spec": {"prompt": "Fix it", "repo": {"url": "file:///r", "ref": "dev"}, "model": "qwen3-coder"},
    }
    assert local_spec.dispatch_fields(manifest) == {
        "prompt": "Fix it",
        "repo": "file:///r",
        "ref": "dev",
        "model": "qwen3-coder",
    }
    assert local_spec.dispatch_fields({"spec": {"prompt": "p", "phase": "plan"}}) == {"prompt": "p", "phase": "plan"}
    for bad in ({"kind": "Pod", "spec": {}}, {"kind": "BuildDispatch"}, ["x"]):
        with pytest.raises(ValueError):
            local_spec.dispatch_fields(bad)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"prompt": "p"}, "build needs spec.repo"),  # a CEL rule of the CRD
        ({"prompt": "p", "repo": {"url": "file:///r"}, "timeouts": {"runSeconds": 60, "idleSeconds": 600}},
         "timeouts.idleSeconds must not exceed timeouts.runSeconds"),
        ({"prompt": "p", "repo": {"url": "file:///r"}, "promt": "typo"}, "spec.promt: Extra inputs are not permitted"),
    ],
)
def test_manifest_is_validated_like_the_apiserver_would(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid BuildDispatch") as err:
        local_spec.dispatch_fields({"kind": "BuildDispatch", "spec": spec})
    assert message in str(err.value)


def test_local_spec_fills_and_overrides_the_manifest() -> None:
    manifest = {"prompt": "old", "repo": {"url": "file:///r", "ref": "dev"}, "timeouts": {"runSeconds": 600}}
    spec = local_spec.local_spec(manifest, {"prompt": "new", "ref": "main", "step_budget": 5, "model": "m"})
    assert spec == {"prompt": "new", "repo": {"url": "file:///r", "ref": "main"}, "model": "m",
                    "timeouts": {"runSeconds": 600}, "stepBudget": 5}  # fmt: skip
    assert manifest["prompt"] == "old"  # the manifest itself is left alone
    # --repo replaces the manifest's repo (its ref belonged to the other repository)
    assert local_spec.local_spec(manifest, {"repo": "/x"})["repo"] == {"url": "/x"}
    # a short run gets an idle limit that fits it; CEL would refuse the default 300 > 60
    assert local_spec.local_spec(None, {"timeout": 60})["timeouts"] == {"runSeconds": 60, "idleSeconds": 60}
    # a manifest missing spec.repo is completed by --repo before it is validated
    assert local_spec.spec_errors(local_spec.local_spec({"prompt": "p"}, {}), stand_in_repo=None) == [
        "spec.repo: build needs spec.repo"
    ]
    assert local_spec.spec_errors(local_spec.local_spec({"prompt": "p"}, {"repo": "/r"}), stand_in_repo=None) == []


def test_replay_phase() -> None:
    assert local_spec.replay_phase({"phase": "plan"}, None, "p") == "plan"
    assert local_spec.replay_phase({}, "build", "p") == "build"
    with pytest.raises(CliError, match="records a plan conversation, not build"):
        local_spec.replay_phase({"phase": "plan"}, "build", "p")
