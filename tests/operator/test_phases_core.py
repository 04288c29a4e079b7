"""Phases in the operator's pure core: text phases in the sandbox, the review input, the ship gate step."""

from __future__ import annotations

import base64
import gzip
import hashlib
from datetime import timedelta
from typing import Any

from buildstudio.api.common import API_GROUP
from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.conditions import find
from buildstudio.core.source_dispatch import REVIEW_DIFF_BYTES, Source, review_input
from buildstudio.core.source_dispatch import review_facts as _review_of
from buildstudio.core.status import LiveState, result_fields
from buildstudio.protocol.records import Outcome, PushRecord, ResultRecord, ReviewRecord
from buildstudio.protocol.spec import RunnerSpec
from tests.core.test_machine import T0, S, cond, dispatch, spec, valid

PATCH = "diff --git a/calc.py b/calc.py\n+def subtract(a, b):\n+    return a - b\n"
SHA = hashlib.sha256(PATCH.encode()).hexdigest()


def test_text_phases_run_in_the_sandbox_without_repo_or_relay() -> None:
    runner, _ = mf.sandbox_files(
        spec(phase="plan", repo=None), model="qwen3-coder", base_url="http://m/v1", context=32768, relay=True
    )
    parsed = RunnerSpec.model_validate(runner)
    assert (parsed.phase, parsed.repo, parsed.relay, parsed.review) == ("plan", None, False, None)
    build, _ = mf.sandbox_files(spec(), model="qwen3-coder", base_url="http://m/v1", context=32768, relay=True)
    assert RunnerSpec.model_validate(build).phase == "build" and build["repo"]["url"]


def _source(**status: Any) -> Source:
    base: dict[str, Any] = {
        "phase": "Succeeded",
        "diffStat": {"files": 1, "additions": 2, "deletions": 0},
        "diff": PATCH,
        "diffBytes": len(PATCH),
        "patchConfigMap": "fix-patch",
        "finalText": "Added subtract.",
    }
    base.update(status)
    data = base64.b64encode(gzip.compress(PATCH.encode())).decode()
    ann = {f"{API_GROUP}/patch-sha256": SHA, f"{API_GROUP}/patch-truncated": "false"}
    return Source("fix", BuildDispatchStatus.model_validate(base), ann, data)


def test_review_input_carries_the_whole_patch_and_its_digest() -> None:
    src = _source(diff="+def subtract(a, b):\n")  # status holds only an excerpt; the ConfigMap the whole patch
    ri = review_input(src)
    assert ri.diff == PATCH and ri.sha256 == SHA and not ri.diff_truncated
    assert (ri.files, ri.additions, ri.final_text) == (1, 2, "Added subtract.")
    runner, _ = mf.sandbox_files(
        spec(phase="review", source={"dispatch": "fix"}),
        model="qwen3-coder",
        base_url="http://m/v1",
        context=32768,
        relay=False,
        review=ri,
    )
    assert RunnerSpec.model_validate(runner).review == ri
    assert len(runner["review"]["diff"]) <= REVIEW_DIFF_BYTES


def test_review_verdict_lands_in_status_and_is_read_back_for_ship() -> None:
    rec = ResultRecord(
        outcome=Outcome.COMPLETED,
        message="review",
        phase="review",
        review=ReviewRecord(source="fix", verdict="Approve", diff_sha256=SHA),
    )
    fields = result_fields(rec, S, patch_cm="", review_of="fix")
    assert fields["review"] == {"source": "fix", "verdict": "Approve", "diffSha256": SHA}
    obj = {
        "metadata": {"name": "rev"},
        "spec": {"phase": "review", "source": {"dispatch": "fix"}},
        "status": {"phase": "Succeeded", "finishedAt": "2026-11-25T10:00:00Z", "review": fields["review"]},
    }
    when, facts = _review_of(obj)  # type: ignore[misc]
    assert (when, facts.review, facts.source, facts.verdict.value, facts.diff_sha256) == (
        "2026-11-25T10:00:00Z",
        "rev",
        "fix",
        "Approve",
        SHA,
    )
    assert _review_of({"metadata": {"name": "b"}, "status": {"phase": "Running"}}) is None


def _ship(**kw: Any) -> m.Dispatch:
    return dispatch(phase="ship", repo=None, source={"dispatch": "fix"}, approval={"approvedBy": "alice"}, **kw)


def test_ship_allowed_launches_the_ship_pod_and_its_push_result_ends_it() -> None:
    step = m.ship(_ship(), True, "Approved", "ship fix: 1 files, +2/-0", T0, S, final=False)
    assert m.stage_of(step.status) == "running" and cond(step.status, "Admitted")["reason"] == "Approved"
    assert cond(step.status, "ModelReady")["reason"] == "NotApplicable"
    assert step.status["podName"] == "fix-1-1" and step.status["attempt"] == 1  # <dispatch>-<attempt>
    assert [a for a in step.actions if isinstance(a, m.Launch)] == [m.Launch(1, "", "", None)]
    valid(step.status)
    running = m.Dispatch(**{**_ship().__dict__, "status": step.status})
    pod = m.PodView.from_pod(
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [{"name": "push", "state": {"terminated": {"exitCode": 0}}}],
            }
        }
    )
    assert pod.reporter_ended  # the push container is the ship pod's result channel
    pushed = PushRecord(reason="Pushed", branch="buildstudio/fix", commit="c" * 40, remote="https://g/r.git")
    ok = ResultRecord(outcome=Outcome.COMPLETED, message="pushed", phase="ship", push=pushed)
    done = m.running(running, pod, LiveState(result=ok, results=1), T0, S, log_ended=True)
    assert done.status["phase"] == "Succeeded" and cond(done.status, "Succeeded")["reason"] == "Pushed"
    assert done.status["push"] == {
        "reason": "Pushed",
        "branch": "buildstudio/fix",
        "commit": "c" * 40,
        "remote": "https://g/r.git",
    }
    valid(done.status)
    refused = ResultRecord(
        outcome=Outcome.RUNNER_ERROR, message="non-fast-forward", phase="ship", push=PushRecord(reason="PushRejected")
    )
    failed = m.running(running, pod, LiveState(result=refused, results=1), T0, S, log_ended=True)
    assert failed.status["phase"] == "Failed" and cond(failed.status, "Succeeded")["reason"] == "PushRejected"
    bare = ResultRecord(outcome=Outcome.COMPLETED, message="no push record", phase="ship")
    odd = m.running(running, pod, LiveState(result=bare, results=1), T0, S, log_ended=True)
    assert odd.status["phase"] == "Failed" and cond(odd.status, "Succeeded")["reason"] == "PushFailed"


def test_ship_waits_for_a_review_then_times_out() -> None:
    step = m.ship(_ship(), False, "ReviewMissing", "no review of fix yet", T0, S, final=False)
    assert m.stage_of(step.status) == "entry" and step.wake_after == S.preflight_interval
    assert step.status["reason"] == "ReviewMissing" and find(step.status.get("conditions"), "Admitted") is None
    late = T0 + timedelta(seconds=3601)
    done = m.ship(_ship(), False, "ReviewMissing", "no review of fix yet", late, S, final=False)
    assert done.status["phase"] == "Failed" and cond(done.status, "Succeeded")["reason"] == "ReviewMissing"


def test_ship_final_refusal_and_cancel() -> None:
    step = m.ship(_ship(), False, "NoDiff", "fix changed nothing", T0, S, final=True)
    assert step.status["phase"] == "Failed" and cond(step.status, "Admitted")["reason"] == "NoDiff"
    cancelled = m.ship(_ship(cancel=True), True, "Approved", "x", T0, S, final=False)
    assert cancelled.status["phase"] == "Cancelled"


def test_chart_environment_reaches_settings_and_the_sandbox_pod() -> None:
    from buildstudio.core.settings import from_env

    env = {
        "BUILDSTUDIO_SANDBOX_SERVICE_ACCOUNT": "buildstudio-sandbox",
        "BUILDSTUDIO_GPU_TOLERATION": "false",
        "BUILDSTUDIO_GPU_NODE_LABEL": "example.com/gpu",
        "BUILDSTUDIO_SANDBOX_RESOURCES": '{"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}',
        "BUILDSTUDIO_WORKSPACE_SIZE": "10Gi",
        "BUILDSTUDIO_MODEL_BASE_URL": "http://vllm.models.svc:8000/v1",
        "BUILDSTUDIO_MAX_RUNNING": "8",
    }
    settings = from_env(env)
    sb = settings.sandbox
    assert (sb.service_account_name, sb.gpu_toleration, sb.gpu_node_label) == (
        "buildstudio-sandbox",
        False,
        "example.com/gpu",
    )
    assert (dict(sb.requests), dict(sb.limits), sb.workspace_size) == ({"cpu": "1"}, {"memory": "2Gi"}, "10Gi")
    from buildstudio.adapters import registry

    opencode = registry.with_overrides(
        registry.load()[0], base_url=settings.model_base_url, max_running=settings.max_running
    )
    assert opencode.spec.model_service is not None
    assert opencode.spec.model_service.base_url == "http://vllm.models.svc:8000/v1"
    assert opencode.spec.concurrency.max_running == 8 and opencode.spec.concurrency.max_running_per_model == 2
    claude = registry.load()[1]
    assert registry.with_overrides(claude, base_url="http://x/v1") is claude


def test_sandbox_pod_service_account_and_toleration_switch() -> None:
    from dataclasses import replace as dc_replace

    from tests.operator.test_core_manifests import D, req

    pod = mf.sandbox_pod(req(), dc_replace(D, service_account_name="sb", gpu_toleration=False))
    assert pod["spec"]["serviceAccountName"] == "sb" and "tolerations" not in pod["spec"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_model_service_api_key_reaches_only_the_relay_by_reference() -> None:
    from dataclasses import replace as dc_replace

    from tests.operator.test_core_manifests import D, req

    pod = mf.sandbox_pod(dc_replace(req(), model_api_key=mf.SecretKey("vllm-key", "token")), D)
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "model-credential"]
    assert volume["secret"]["secretName"] == "vllm-key" and volume["secret"]["items"] == [
        {"key": "token", "path": "key"}
    ]
    relay = next(c for c in pod["spec"]["initContainers"] if c["name"] == "relay")
    assert "--api-key-file" in relay["command"]
    runner, config = mf.sandbox_files(spec(), model="qwen3-coder", base_url="http://m/v1", context=32768, relay=False)
    assert "apiKeyEnv" not in runner and "apiKey" not in config["provider"]["local"]["options"]
