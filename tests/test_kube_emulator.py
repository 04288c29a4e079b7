"""The operator-integration layer itself: the emulator's apiserver behaviour, the kubelet,
real kubectl against the emulator, and kopf in a thread reacting through all of it."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import tempfile
from typing import Any

import kmock
import kopf
import pytest

from buildstudio.adapters.kube import Kube as OperatorKube
from tests.kube import objects, patching, pods, selectors, tables
from tests.kube.client import BUILDDISPATCHES, CONFIGMAPS, EVENTS, PODS, SECRETS, ApiError, Kube, wait_for
from tests.kube.emulator import register_crd
from tests.kube.kopf_runner import KopfOperatorFactory
from tests.kube.kubectl import Kubectl
from tests.kube.kubelet import Kubelet, PodLog, PodScript

# The fixtures, for when tests/conftest.py does not load the plugin (loading it twice is harmless).
pytest_plugins = ["tests.kube.plugin"]

Body = dict[str, Any]


def dispatch(name: str, **spec: Any) -> Body:
    return {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildDispatch",
            "metadata": {"name": name}, "spec": {"engine": "opencode", **spec}}


def pod_body(name: str, command: list[str], **spec: Any) -> Body:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "main", "image": "busybox", "command": command}], **spec}}


async def watch_events(k8s: Kube, path: str, params: dict[str, str], *, limit: int = 100) -> list[Body]:
    events: list[Body] = []
    async with k8s.http.stream("GET", path, params={"watch": "true", **params}) as response:
        assert response.headers["content-type"].startswith("application/json")
        async for line in response.aiter_lines():
            if line.strip():
                events.append(json.loads(line))
                if len(events) >= limit:
                    break
    return events


# --- pure helpers ---------------------------------------------------------------------------


def test_label_selectors() -> None:
    labels = {"app": "bs", "tier": "sandbox"}
    assert selectors.label_selector("app=bs,tier")(labels)
    assert selectors.label_selector("app==bs")(labels)
    assert not selectors.label_selector("app!=bs")(labels)
    assert selectors.label_selector("!missing,tier in (sandbox, probe)")(labels)
    assert not selectors.label_selector("tier notin (sandbox)")(labels)
    assert selectors.label_selector("")(labels)


def test_field_selectors() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns"}, "involvedObject": {"uid": "u1"}}
    assert selectors.field_selector("metadata.name=a,metadata.namespace=ns")(obj)
    assert selectors.field_selector("involvedObject.uid==u1")(obj)
    assert not selectors.field_selector("metadata.name!=a")(obj)


def test_json_patch_operations_and_test_failure() -> None:
    doc = {"metadata": {"resourceVersion": "5", "finalizers": ["x"]}, "spec": {"a": 1}}
    out = patching.json_patch(doc, [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
        {"op": "replace", "path": "/spec/a", "value": 2},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ])
    assert out == {"metadata": {"resourceVersion": "5", "finalizers": ["y"]}, "spec": {"a": 2}}
    assert doc["spec"] == {"a": 1}  # the input is untouched
    with pytest.raises(patching.PatchError):
        patching.json_patch(doc, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])


def test_merge_patch_removes_nulls_and_replaces_lists() -> None:
    assert patching.merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]}) == {
        "a": {"c": 2}, "l": [3]}


def test_pod_paths_env_and_volumes() -> None:
    mounts = pods.mount_points(
        {"volumeMounts": [{"name": "cfg", "mountPath": "/etc/bs"}, {"name": "work", "mountPath": "/data"},
                          {"name": "work", "mountPath": "/data/repo", "subPath": "repo"}]},
        {"cfg": "/tmp/c", "work": "/tmp/w"})
    assert pods.map_paths("--config=/etc/bs/config.json", mounts) == "--config=/tmp/c/config.json"
    assert pods.map_paths("/data/repo/x:/data", mounts) == "/tmp/w/repo/x:/tmp/w"
    assert pods.map_paths("/workspace /etc/bsx", mounts) == "/workspace /etc/bsx"  # not a mount path
    under_tmp = pods.mount_points({"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                                    {"name": "work", "mountPath": "/data"}]},
                                  {"tmp": "/tmp/t/volumes/tmp", "work": "/tmp/t/volumes/data"})
    assert pods.map_paths("/data/x:/tmp/y", under_tmp) == "/tmp/t/volumes/data/x:/tmp/t/volumes/tmp/y"
    # A host path that exists (a checkout under /tmp running the test's interpreter) stays as it is.
    with tempfile.NamedTemporaryFile(dir="/tmp") as host_file:
        assert pods.map_paths(host_file.name, under_tmp) == host_file.name
        assert pods.map_paths("/tmp", under_tmp) == "/tmp/t/volumes/tmp"
    cm = {"data": {"a.json": "{}"}, "binaryData": {"b": "aGk="}}
    secret = {"data": {"token": "czNjcjN0"}}
    pod = {"metadata": {"name": "p", "namespace": "ns"}}
    container = {"env": [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "URL", "value": "http://$(POD):8080"},
    ]}
    env = pods.container_env(pod, container, {"cm": cm}, {"s": secret})
    assert env == {"TOKEN": "s3cr3t", "POD": "p", "URL": "http://p:8080"}
    files = pods.volume_files({"configMap": {"name": "cm", "items": [{"key": "a.json", "path": "d/c.json"}]}},
                              {"cm": cm}, {})
    assert files == {"d/c.json": b"{}"}
    assert pods.volume_files({"configMap": {"name": "cm"}}, {"cm": cm}, {}) == {"a.json": b"{}", "b": b"hi"}
    with pytest.raises(pods.ContainerConfigError):
        pods.volume_files({"configMap": {"name": "missing"}}, {}, {})


def test_settle_update_rules() -> None:
    meta: Body = {"name": "n", "uid": "u", "generation": 3, "resourceVersion": "7"}
    old: Body = {"apiVersion": "g/v1", "kind": "K", "spec": {"a": 1}, "status": {"s": 1}, "metadata": meta}
    hijack = {**old, "spec": {"a": 2}, "status": {"s": 2},
              "metadata": {**meta, "uid": "other", "deletionTimestamp": "now", "labels": {"l": "v"}}}
    main = objects.settle_update(old, hijack, subresource=None, has_status_subresource=True)
    assert main["spec"] == {"a": 2} and main["status"] == {"s": 1} and main["metadata"]["generation"] == 4
    assert main["metadata"]["uid"] == "u" and "deletionTimestamp" not in main["metadata"]
    assert main["metadata"]["labels"] == {"l": "v"}
    status = objects.settle_update(old, hijack, subresource="status", has_status_subresource=True)
    assert status["spec"] == {"a": 1} and status["status"] == {"s": 2} and status["metadata"] == old["metadata"]
    plain = objects.settle_update(old, hijack, subresource=None, has_status_subresource=False)
    assert plain["status"] == {"s": 2}
    labels_only = {**old, "metadata": {**meta, "labels": {"x": "y"}}}
    assert objects.settle_update(old, labels_only, subresource=None,
                                 has_status_subresource=True)["metadata"]["generation"] == 3


def test_printer_column_tables() -> None:
    obj = {"metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"phase": "Running", "n": 3, "conditions": [{"type": "A", "status": "False"},
                                                                  {"type": "Succeeded", "status": "True"}]}}
    assert tables.jsonpath(obj, '.status.conditions[?(@.type=="Succeeded")].status') == ["True"]
    assert tables.jsonpath(obj, ".status.conditions[*].type") == ["A", "Succeeded"]
    assert tables.jsonpath(obj, ".status.conditions[0].status") == ["False"]
    assert tables.jsonpath(obj, ".status.missing") == []
    now = datetime.datetime(2026, 1, 1, 0, 5, 7, tzinfo=datetime.UTC)
    assert [tables.human_age(t, now) for t in ("2026-01-01T00:05:00Z", "2026-01-01T00:00:00Z",
                                               "2025-12-31T21:00:00Z", "2025-12-29T00:00:00Z")] == [
        "7s", "5m7s", "3h5m", "3d"]
    columns: list[Body] = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
               {"name": "N", "type": "integer", "jsonPath": ".status.n", "priority": 1},
               {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
               {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    result = tables.table([obj], columns, "9", now)
    assert [c["name"] for c in result["columnDefinitions"]] == ["Name", "Phase", "N", "Reason", "Age"]
    assert result["rows"][0]["cells"] == ["w", "Running", 3, None, "5m7s"]


# --- the emulator's apiserver behaviour -------------------------------------------------------


async def test_create_fills_server_metadata(k8s: Kube) -> None:
    response = await k8s.http.post("/apis/buildstudio.dpf.dev/v1alpha1/namespaces/team/builddispatches",
                                   json={**dispatch("d1"), "status": {"phase": "forged"}})
    assert response.status_code == 201
    created = response.json()
    meta = created["metadata"]
    assert meta["namespace"] == "team" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and int(meta["resourceVersion"]) > 0
    assert "status" not in created  # the status subresource: status is not taken from a create
    generated = await k8s.create(CONFIGMAPS, {"metadata": {"generateName": "cfg-"}, "data": {}})
    assert generated["metadata"]["name"].startswith("cfg-") and len(generated["metadata"]["name"]) == 9
    with pytest.raises(ApiError) as exc:
        await k8s.create(BUILDDISPATCHES, dispatch("d1"), "team")
    assert exc.value.status == 409 and exc.value.body["reason"] == "AlreadyExists"


async def test_resource_version_and_generation(k8s: Kube) -> None:
    created = await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    rv0 = int(created["metadata"]["resourceVersion"])
    other = await k8s.create(CONFIGMAPS, {"metadata": {"name": "c"}})
    assert int(other["metadata"]["resourceVersion"]) > rv0  # one global counter
    spec_changed = await k8s.patch(BUILDDISPATCHES, "d1", {"spec": {"prompt": "x"}})
    assert spec_changed["metadata"]["generation"] == 2
    labelled = await k8s.patch(BUILDDISPATCHES, "d1", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 2
    assert int(labelled["metadata"]["resourceVersion"]) > int(spec_changed["metadata"]["resourceVersion"])
    with_status = await k8s.patch(BUILDDISPATCHES, "d1", {"status": {"phase": "Queued"}}, subresource="status")
    assert with_status["metadata"]["generation"] == 2 and with_status["status"] == {"phase": "Queued"}
    noop = await k8s.patch(BUILDDISPATCHES, "d1", {"metadata": {"labels": {"a": "b"}}})
    assert noop["metadata"]["resourceVersion"] == with_status["metadata"]["resourceVersion"]


async def test_conflicts_answer_409_and_422(k8s: Kube) -> None:
    created = await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    rv = created["metadata"]["resourceVersion"]
    await k8s.patch(BUILDDISPATCHES, "d1", {"spec": {"prompt": "newer"}})
    with pytest.raises(ApiError) as stale:
        await k8s.patch(BUILDDISPATCHES, "d1", {"metadata": {"resourceVersion": rv}, "spec": {"prompt": "old"}})
    assert stale.value.status == 409 and stale.value.body["reason"] == "Conflict"
    with pytest.raises(ApiError) as failed_test:  # kopf's finalizer patch with a stale version
        await k8s.patch(BUILDDISPATCHES, "d1", [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers", "value": ["kopf"]},
        ], patch_type="json")
    assert failed_test.value.status == 422
    current = await k8s.get(BUILDDISPATCHES, "d1")
    assert "finalizers" not in current["metadata"] and current["spec"]["prompt"] == "newer"


async def test_status_subresource_separates_spec_and_status(k8s: Kube) -> None:
    await k8s.create(BUILDDISPATCHES, dispatch("d1", prompt="p"))
    via_status = await k8s.patch(BUILDDISPATCHES, "d1", {"spec": {"prompt": "hacked"}, "status": {"phase": "A"}},
                                 subresource="status")
    assert via_status["spec"]["prompt"] == "p" and via_status["status"]["phase"] == "A"
    via_main = await k8s.patch(BUILDDISPATCHES, "d1", {"spec": {"prompt": "q"}, "status": {"phase": "B"}})
    assert via_main["spec"]["prompt"] == "q" and via_main["status"]["phase"] == "A"
    with pytest.raises(ApiError) as exc:  # configmaps have no status subresource
        await k8s.create(CONFIGMAPS, {"metadata": {"name": "c"}})
        await k8s.patch(CONFIGMAPS, "c", {"status": {}}, subresource="status")
    assert exc.value.status == 404


async def test_list_is_typed_and_filtered(k8s: Kube) -> None:
    for name, labels in (("a", {"team": "x", "tier": "1"}), ("b", {"team": "y"}), ("c", {"team": "x"})):
        await k8s.create(BUILDDISPATCHES, {**dispatch(name), "metadata": {"name": name, "labels": labels}})
    await k8s.create(BUILDDISPATCHES, dispatch("a"), "other")
    response = await k8s.request("GET", "/apis/buildstudio.dpf.dev/v1alpha1/builddispatches")
    assert response["kind"] == "BuildDispatchList" and response["apiVersion"] == "buildstudio.dpf.dev/v1alpha1"
    assert int(response["metadata"]["resourceVersion"]) == k8s.emulator.resource_version
    assert len(response["items"]) == 4

    async def names(**kw: Any) -> list[str]:
        return sorted(o["metadata"]["name"] for o in await k8s.list(BUILDDISPATCHES, **kw))

    assert await names(labels="team=x") == ["a", "c"]
    assert await names(labels="team=x,tier") == ["a"]
    assert await names(labels="team!=x") == ["a", "b"]  # `a` in `other` has no labels
    assert await names(namespace="default", fields="metadata.name=a") == ["a"]
    assert await names(fields="metadata.namespace=other") == ["a"]


async def test_watch_resumes_from_resource_version(k8s: Kube) -> None:
    await k8s.create(BUILDDISPATCHES, dispatch("a"))
    listing = await k8s.request("GET", "/apis/buildstudio.dpf.dev/v1alpha1/builddispatches")
    since = listing["metadata"]["resourceVersion"]
    await k8s.delete(BUILDDISPATCHES, "a")  # between a LIST and a WATCH: must not be lost
    await k8s.create(BUILDDISPATCHES, dispatch("b"))
    path = "/apis/buildstudio.dpf.dev/v1alpha1/builddispatches"
    resumed = await watch_events(k8s, path, {"resourceVersion": since, "timeoutSeconds": "1"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("DELETED", "a"), ("ADDED", "b")]
    fresh = await watch_events(k8s, path, {"timeoutSeconds": "1"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in fresh] == [("ADDED", "b")]
    filtered = await watch_events(k8s, path, {"timeoutSeconds": "1", "resourceVersion": since,
                                              "fieldSelector": "metadata.name=b"})
    assert [e["object"]["metadata"]["name"] for e in filtered] == ["b"]


async def test_watch_live_events_and_timeout(k8s: Kube) -> None:
    path = "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches"
    watching = asyncio.create_task(watch_events(k8s, path, {"timeoutSeconds": "2"}, limit=2))
    await asyncio.sleep(0.2)
    await k8s.create(BUILDDISPATCHES, dispatch("live"))
    await k8s.patch(BUILDDISPATCHES, "live", {"spec": {"prompt": "x"}})
    events = await asyncio.wait_for(watching, 5)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await watch_events(k8s, path, {"timeoutSeconds": "1", "resourceVersion": "999999"}) == []
    assert loop.time() - started < 3  # ended by timeoutSeconds


async def test_watch_answers_410_when_history_is_exceeded(k8s: Kube) -> None:
    k8s.emulator.event_history = 3
    first = await k8s.create(CONFIGMAPS, {"metadata": {"name": "c0"}})
    for i in range(1, 6):
        await k8s.create(CONFIGMAPS, {"metadata": {"name": f"c{i}"}})
    events = await watch_events(k8s, "/api/v1/configmaps",
                                {"resourceVersion": first["metadata"]["resourceVersion"], "timeoutSeconds": "1"})
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
    k8s.emulator.fail_next_watch_with_gone(CONFIGMAPS)
    again = await watch_events(k8s, "/api/v1/configmaps", {"timeoutSeconds": "1"})
    assert [e["type"] for e in again] == ["ERROR"]
    after = await watch_events(k8s, "/api/v1/configmaps", {"timeoutSeconds": "1"})
    assert len(after) == 6 and {e["type"] for e in after} == {"ADDED"}


async def test_discovery_is_what_kubectl_expects(k8s: Kube) -> None:
    core = await k8s.request("GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"] and by_name["pods"]["namespaced"] is True
    assert "shortNames" not in by_name["pods/log"] and by_name["pods/log"]["verbs"] == ["get"]
    ours = await k8s.request("GET", "/apis/buildstudio.dpf.dev/v1alpha1")
    by_name = {r["name"]: r for r in ours["resources"]}
    assert by_name["builddispatches"]["categories"] == ["buildstudio"]
    assert by_name["builddispatches"]["shortNames"] == ["bd"]
    assert by_name["buildengines"]["namespaced"] is False
    assert "categories" not in by_name["builddispatches/status"]
    groups = await k8s.request("GET", "/apis")
    assert "buildstudio.dpf.dev" in {g["name"] for g in groups["groups"]}


WIDGET_CRD: Body = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {"group": "example.dev", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "additionalPrinterColumns": [
                               {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]}]}}


async def test_registered_crds_serve_tables(k8s: Kube) -> None:
    assert register_crd(k8s.emulator, WIDGET_CRD) == [kmock.resource("example.dev", "v1", "widgets")]
    widgets = "example.dev/v1/widgets"
    await k8s.create(widgets, {"metadata": {"name": "w1"}})
    await k8s.patch(widgets, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    listed = (await k8s.http.get("/apis/example.dev/v1/namespaces/default/widgets", headers=accept)).json()
    assert listed["kind"] == "Table" and listed["rows"][0]["cells"] == ["w1", "Ready"]
    one = (await k8s.http.get("/apis/example.dev/v1/namespaces/default/widgets/w1", headers=accept)).json()
    assert one["rows"][0]["object"]["metadata"]["name"] == "w1"
    plain = await k8s.get(widgets, "w1")
    assert plain["kind"] == "Widget"
    async with k8s.http.stream("GET", "/apis/example.dev/v1/widgets", headers=accept,
                               params={"watch": "true", "timeoutSeconds": "1"}) as response:
        events = [json.loads(line) async for line in response.aiter_lines() if line]
    assert [(e["type"], e["object"]["kind"], e["object"]["rows"][0]["cells"]) for e in events] == [
        ("ADDED", "Table", ["w1", "Ready"])]


async def test_finalizers_delay_deletion(k8s: Kube) -> None:
    await k8s.create(BUILDDISPATCHES, {**dispatch("d1"), "metadata": {"name": "d1", "finalizers": ["f/x"]}})
    marked = await k8s.delete(BUILDDISPATCHES, "d1")
    assert marked["metadata"]["deletionTimestamp"]
    still = await k8s.get(BUILDDISPATCHES, "d1")
    assert still["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    await k8s.patch(BUILDDISPATCHES, "d1", {"metadata": {"finalizers": None}})
    assert await k8s.find(BUILDDISPATCHES, "d1") is None


@pytest.mark.parametrize("gc", [True, False])
async def test_owned_objects_are_garbage_collected(k8s: Kube, gc: bool) -> None:
    k8s.emulator.gc_owned = gc
    owner = await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    ref = {"apiVersion": owner["apiVersion"], "kind": "BuildDispatch", "name": "d1",
           "uid": owner["metadata"]["uid"], "controller": True}
    await k8s.create(CONFIGMAPS, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    await k8s.create(CONFIGMAPS, {"metadata": {"name": "unrelated"}})
    await k8s.delete(BUILDDISPATCHES, "d1")
    assert (await k8s.find(CONFIGMAPS, "child") is None) is gc
    assert await k8s.find(CONFIGMAPS, "unrelated") is not None


async def test_replace_and_secret_string_data(k8s: Kube) -> None:
    created = await k8s.create(SECRETS, {"metadata": {"name": "s"}, "stringData": {"token": "s3cr3t"}})
    assert created["data"] == {"token": "czNjcjN0"} and "stringData" not in created
    await k8s.create(BUILDDISPATCHES, dispatch("d1", prompt="a"))
    replaced = await k8s.request("PUT", "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches/d1",
                                 body=dispatch("d1", prompt="b"))
    assert replaced["spec"]["prompt"] == "b" and replaced["metadata"]["generation"] == 2
    assert replaced["metadata"]["uid"] == (await k8s.get(BUILDDISPATCHES, "d1"))["metadata"]["uid"]


async def test_kmock_reactions_still_take_priority(k8s: Kube, kubelet: Kubelet) -> None:
    """With a test's own reaction present, kmock's matching serves everything (the slow path)."""
    k8s.emulator["get", kmock.resource("v1/pods"), kmock.subresource("log")] << b"from a reaction\n"
    await k8s.create(PODS, pod_body("p", ["x"]))
    assert await k8s.logs("p") == "from a reaction\n"
    response = await k8s.http.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}})
    assert response.status_code == 201
    since = response.json()["metadata"]["resourceVersion"]
    await k8s.patch(CONFIGMAPS, "c", {"data": {"k": "v"}})
    await k8s.delete(CONFIGMAPS, "c")
    events = await watch_events(k8s, "/api/v1/configmaps", {"resourceVersion": since, "timeoutSeconds": "1"})
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    with pytest.raises(ApiError) as exc:
        await k8s.get(CONFIGMAPS, "c")
    assert exc.value.status == 404


async def test_answers_do_not_leak_into_each_other_with_reactions(k8s: Kube, kubelet: Kubelet) -> None:
    k8s.emulator["get /healthz"] << b"ok"  # any reaction: kmock's matching is in play
    kubelet.script("p", PodScript.canned(["line"]))
    await k8s.create(PODS, pod_body("p", ["x"]))
    await pod_phase(k8s, "p", "Succeeded")
    log = await k8s.http.get("/api/v1/namespaces/default/pods/p/log")
    assert log.headers["content-type"].startswith("text/plain") and log.text == "line\n"
    pod = await k8s.http.get("/api/v1/namespaces/default/pods/p")
    assert pod.status_code == 200 and pod.headers["content-type"].startswith("application/json")
    created = await k8s.http.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}})
    patched = await k8s.http.patch("/api/v1/namespaces/default/configmaps/c", content=b'{"data": {}}',
                                   headers={"Content-Type": "application/merge-patch+json"})
    assert (created.status_code, patched.status_code) == (201, 200)
    assert (await k8s.http.get("/healthz")).text == "ok"


async def test_unknown_resources_and_objects_are_404(k8s: Kube) -> None:
    response = await k8s.http.get("/apis/nothing.example/v1/things")
    assert response.status_code == 404
    with pytest.raises(ApiError) as exc:
        await k8s.get(BUILDDISPATCHES, "absent")
    assert exc.value.status == 404 and exc.value.body["reason"] == "NotFound"


# --- the kubelet ------------------------------------------------------------------------------


async def pod_phase(k8s: Kube, name: str, *phases: str, within: float = 15.0) -> Body:
    async def reached() -> Body | None:
        pod = await k8s.find(PODS, name)
        return pod if pod and (pod.get("status") or {}).get("phase") in phases else None
    return await wait_for(reached, within, message=f"pod {name} in {phases}")


async def test_kubelet_runs_the_command_and_serves_its_log(k8s: Kube, kubelet: Kubelet) -> None:
    code = "print('hi'); import sys; print('err', file=sys.stderr)"
    await k8s.create(PODS, pod_body("hello", ["python", "-c", code]))
    pod = await pod_phase(k8s, "hello", "Succeeded")
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert pod["spec"]["nodeName"] == Kubelet.node_name
    assert sorted((await k8s.logs("hello")).splitlines()) == ["err", "hi"]
    assert await k8s.logs("hello", tail_lines=0) == ""


async def test_kubelet_maps_volumes_and_env(k8s: Kube, kubelet: Kubelet) -> None:
    await k8s.create(CONFIGMAPS, {"metadata": {"name": "cfg"}, "data": {"config.json": '{"x": 1}'}})
    await k8s.create(SECRETS, {"metadata": {"name": "sec"}, "data": {"token": "czNjcjN0"}})
    script = ("import json, os, pathlib, sys; "
              "print(json.load(open(sys.argv[1]))['x'], os.environ['TOKEN'], os.environ['OUT']); "
              "pathlib.Path(os.environ['OUT']).write_text('ok'); sys.exit(3)")
    body = pod_body("mapped", ["python", "-c", script], volumes=[
        {"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}])
    container = body["spec"]["containers"][0]
    container["args"] = ["/etc/bs/config.json"]
    container["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/bs"}, {"name": "scratch", "mountPath": "/data"}]
    container["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                        {"name": "OUT", "value": "/data/out"}]
    await k8s.create(PODS, body)
    pod = await pod_phase(k8s, "mapped", "Failed", "Succeeded")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["exitCode"], terminated["reason"]) == ("Failed", 3, "Error")
    one, token, out = (await k8s.logs("mapped")).strip().split(" ")
    assert (one, token) == ("1", "s3cr3t") and out.endswith("/volumes/scratch/out")
    assert await asyncio.to_thread(pathlib.Path(out).read_text) == "ok"  # the emptyDir is a real directory
    argv = kubelet.process_argv("mapped")
    assert argv is not None and argv[-1].endswith("/volumes/cfg/config.json")


async def test_kubelet_terminates_a_deleted_pod(k8s: Kube, kubelet: Kubelet) -> None:
    trap = ("import signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *_: (print('term', flush=True), sys.exit(0))); "
            "print('up', flush=True); time.sleep(60)")
    await k8s.create(PODS, pod_body("sleeper", ["python", "-u", "-c", trap]))
    await pod_phase(k8s, "sleeper", "Running")
    await wait_for(lambda: (log := kubelet.log("sleeper")) is not None and "up" in log.lines, 10, message="up")
    marked = await k8s.delete(PODS, "sleeper")
    assert marked["metadata"]["deletionTimestamp"]  # a running pod waits for its kubelet
    await wait_for(lambda: _absent(k8s, PODS, "sleeper"), 10, message="pod removed")
    log = kubelet.log("sleeper")
    assert log is not None and log.lines == ["up", "term"]


async def _absent(k8s: Kube, resource: str, name: str) -> bool:
    return await k8s.find(resource, name) is None


async def test_kubelet_kills_after_the_grace_period(k8s: Kube, kubelet: Kubelet) -> None:
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")
    body = pod_body("stubborn", ["python", "-c", stubborn], terminationGracePeriodSeconds=1)
    await k8s.create(PODS, body)
    await pod_phase(k8s, "stubborn", "Running")
    await wait_for(lambda: (log := kubelet.log("stubborn")) is not None and bool(log.lines), 10, message="up")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await k8s.delete(PODS, "stubborn")
    await wait_for(lambda: _absent(k8s, PODS, "stubborn"), 10, message="pod removed")
    assert 0.9 < loop.time() - started < 5


async def test_owner_deletion_terminates_a_running_child_pod(k8s: Kube, kubelet: Kubelet) -> None:
    kubelet.default = PodScript.hang(["working"])
    owner = await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    body = pod_body("d1-1", ["x"])
    body["metadata"]["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": "BuildDispatch",
                                            "name": "d1", "uid": owner["metadata"]["uid"]}]
    await k8s.create(PODS, body)
    await pod_phase(k8s, "d1-1", "Running")
    await k8s.delete(BUILDDISPATCHES, "d1")
    await wait_for(lambda: _absent(k8s, PODS, "d1-1"), 10, message="the child pod terminated and removed")
    log = kubelet.log("d1-1")
    assert log is not None and log.done


@pytest.mark.parametrize(("script", "phase", "check"), [
    (PodScript.canned(["a", "b"], 0), "Succeeded",
     lambda s: s["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"),
    (PodScript.canned(["x"], 2), "Failed",
     lambda s: s["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2),
    (PodScript.oom_killed(["boom"]), "Failed",
     lambda s: (s["containerStatuses"][0]["state"]["terminated"]["reason"],
                s["containerStatuses"][0]["state"]["terminated"]["exitCode"]) == ("OOMKilled", 137)),
    (PodScript.evicted(), "Failed", lambda s: s["reason"] == "Evicted"),
], ids=["completed", "error", "oomkilled", "evicted"])
async def test_kubelet_canned_outcomes(k8s: Kube, kubelet: Kubelet, script: PodScript, phase: str,
                                       check: Any) -> None:
    kubelet.script("canned", script)
    await k8s.create(PODS, pod_body("canned", ["never-run"]))
    pod = await pod_phase(k8s, "canned", phase)
    assert check(pod["status"])
    assert (await k8s.logs("canned")).splitlines() == list(script.logs)


async def test_kubelet_unschedulable_and_image_pull_backoff(k8s: Kube, kubelet: Kubelet) -> None:
    kubelet.script("nogpu", PodScript.unschedulable())
    kubelet.script(lambda pod: pod["spec"]["containers"][0]["image"] == "missing:latest",
                   PodScript.image_pull_backoff())
    await k8s.create(PODS, pod_body("nogpu", ["x"]))
    body = pod_body("noimage", ["x"])
    body["spec"]["containers"][0]["image"] = "missing:latest"
    await k8s.create(PODS, body)

    async def condition() -> Body | None:
        pod = await k8s.get(PODS, "nogpu")
        conds = [c for c in (pod.get("status") or {}).get("conditions", []) if c["type"] == "PodScheduled"]
        return conds[0] if conds and conds[0]["status"] == "False" else None

    scheduled = await wait_for(condition, 10, message="PodScheduled=False")
    assert scheduled["reason"] == "Unschedulable"

    async def waiting() -> str | None:
        pod = await k8s.get(PODS, "noimage")
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        reason = (statuses[0].get("state") or {}).get("waiting", {}).get("reason")
        return reason if reason == "ImagePullBackOff" else None

    assert await wait_for(waiting, 10, message="ImagePullBackOff")
    assert (await k8s.get(PODS, "nogpu"))["status"]["phase"] == "Pending"
    with pytest.raises(ApiError) as exc:
        await k8s.logs("noimage")
    assert exc.value.status == 400
    await k8s.delete(PODS, "noimage")
    await wait_for(lambda: _absent(k8s, PODS, "noimage"), 10, message="noimage removed")
    await k8s.delete(PODS, "nogpu")  # never bound: removed at once
    assert await k8s.find(PODS, "nogpu") is None


async def test_kubelet_relists_after_410(k8s: Kube, tmp_path: pathlib.Path) -> None:
    node = Kubelet(k8s, workdir=tmp_path / "node", watch_seconds=1)
    node.default = PodScript.hang(["up"])
    await node.start()
    try:
        await k8s.create(PODS, pod_body("a", ["x"]))
        await pod_phase(k8s, "a", "Running")
        k8s.emulator.fail_next_watch_with_gone(PODS)
        await wait_for(lambda: k8s.emulator.gone_served >= 1, 5, message="the kubelet's watch answered 410")
        await k8s.create(PODS, pod_body("b", ["x"]))
        await pod_phase(k8s, "b", "Running")
        log = node.log("a")
        assert log is not None and log.lines == ["up"]  # the re-list did not start `a` twice
    finally:
        await node.stop()


async def test_kubelet_log_follow_streams_live(k8s: Kube, kubelet: Kubelet) -> None:
    kubelet.script("slow", PodScript.canned(["one", "two", "three"], line_interval=0.3))
    await k8s.create(PODS, pod_body("slow", ["x"]))
    await pod_phase(k8s, "slow", "Running", "Succeeded")
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, float]] = []
    async with k8s.http.stream("GET", "/api/v1/namespaces/default/pods/slow/log",
                               params={"follow": "true"}) as response:
        async for line in response.aiter_lines():
            if line:
                seen.append((line, loop.time()))
    assert [line for line, _ in seen] == ["one", "two", "three"]
    assert seen[-1][1] - seen[0][1] > 0.3  # delivered as they came, not at the end
    missing = await k8s.http.get("/api/v1/namespaces/default/pods/nope/log")
    assert missing.status_code == 404


# --- pods of several containers: init containers, native sidecars, per-container logs and uids --


def py(code: str, *args: str, **extra: Any) -> Body:
    """A container running `python -c code args…` (`name`, `restartPolicy`… in `extra`)."""
    return {"image": "python", "command": ["python", "-c", code, *args], **extra}


SHARED = [{"name": "shared", "mountPath": "/shared"}]
APPEND = "import sys; print({0!r}); open(sys.argv[1] + '/order', 'a').write({0!r} + '\\n')"
SIDECAR = """import os, signal, sys, time
d = sys.argv[1]
def term(*_):
    open(d + '/order', 'a').write('side-term\\n')
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(d + '/pid.tmp', 'w').write(str(os.getpid()))
os.replace(d + '/pid.tmp', d + '/side.pid')
print('side up', flush=True)
time.sleep(60)
"""
MAIN_SEES_SIDECAR = """import os, sys, time
d = sys.argv[1]
end = time.time() + 20
while not os.path.exists(d + '/side.pid') and time.time() < end:
    time.sleep(0.05)
print('main sees side', os.path.exists('/proc/' + open(d + '/side.pid').read()), flush=True)
open(d + '/order', 'a').write('main\\n')
"""


def container_states(status: Body) -> dict[str, Body]:
    every = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    return {s["name"]: s["state"] for s in every}


async def status_history(k8s: Kube, name: str, done: Any, within: float = 30.0) -> list[Body]:
    """Every status the pod's watch shows until `done(status)`; start it before creating the pod."""
    seen: list[Body] = []

    async def collect() -> list[Body]:
        async with k8s.http.stream("GET", "/api/v1/namespaces/default/pods", params={
                "watch": "true", "fieldSelector": f"metadata.name={name}", "timeoutSeconds": str(int(within))},
                timeout=within + 5) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    seen.append(json.loads(line)["object"].get("status") or {})
                    if done(seen[-1]):
                        break
        return seen
    return await asyncio.wait_for(collect(), within + 10)


def test_pod_phase_identity_and_volume_modes() -> None:
    def st(state: Body, last: Body | None = None) -> Body:
        return pods.container_status({}, {}, state, ready=False, started=False, last_state=last)

    done, failed = st(pods.terminated(0, "t0", "t1")), st(pods.terminated(3, "t0", "t1"))
    running, initializing = st(pods.running("t0")), st(pods.waiting("PodInitializing"))
    assert pods.pod_phase([("init", failed), ("init", initializing)], [initializing]) == "Failed"
    assert pods.pod_phase([("init", running)], [initializing]) == "Pending"
    assert pods.pod_phase([("init", done), ("sidecar", running)], [running]) == "Running"
    # As the kubelet's getPhase: a running sidecar keeps the pod Running after the main containers
    # ended; once it is stopped (or backing off after a crash) it never decides the phase.
    assert pods.pod_phase([("sidecar", running)], [done]) == "Running"
    assert pods.pod_phase([("sidecar", st(pods.terminated(143, "t0", "t1")))], [done]) == "Succeeded"
    backoff = st(pods.waiting("CrashLoopBackOff"), pods.terminated(1, "t0", "t1"))
    assert pods.pod_phase([("sidecar", backoff)], [failed]) == "Failed"
    assert pods.pod_phase([("sidecar", st(pods.waiting("CreateContainerConfigError")))], [done]) == "Pending"
    assert pods.pod_phase([], [done, failed]) == "Failed"
    assert pods.pod_phase([], [done], evicted=True) == "Failed"
    pod = {"spec": {"securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                        "supplementalGroups": [7], "runAsNonRoot": True}}}
    assert pods.run_as(pod, {}) == pods.RunAs(65532, 65532, (65532, 7), 65532)
    reporter = {"securityContext": {"runAsUser": 65530, "runAsGroup": 65530}}
    assert pods.run_as(pod, reporter) == pods.RunAs(65530, 65530, (65532, 7), 65532)
    assert pods.run_as({}, {"securityContext": {"runAsUser": 5}}) == pods.RunAs(5, 0, (), None)
    with pytest.raises(pods.ContainerConfigError):
        pods.run_as(pod, {"securityContext": {"runAsUser": 0}})
    # The kubelet's fsGroup ownership: emptyDir 0777 → 2777; a 0400 Secret file → 0440 for the group.
    assert pods.fs_group_mode(pods.EMPTY_DIR_MODE, 65532, directory=True, read_only=False) == 0o2777
    assert pods.fs_group_mode(0o400, 65532, directory=False, read_only=True) == 0o440
    assert pods.fs_group_mode(0o400, None, directory=False, read_only=True) == 0o400
    secret = {"secret": {"secretName": "s", "defaultMode": 0o400, "items": [{"key": "a", "path": "a", "mode": 0o600},
                                                                            {"key": "b", "path": "b"}]}}
    assert pods.volume_file_modes(secret, ["a", "b"]) == {"a": 0o600, "b": 0o400}
    layout = {"spec": {"initContainers": [{"name": "clone"}, {"name": "relay", "restartPolicy": "Always"},
                                          {"name": "agent"}], "containers": [{"name": "reporter"}]}}
    plan = PodScript.canned(["result"]).with_container("agent", PodScript.oom_killed()).plan(layout)
    assert (plan["reporter"].logs, plan["agent"].reason, plan["clone"].mode) == (("result",), "OOMKilled", "canned")
    assert plan["relay"].running_for is None  # a canned sidecar runs until the kubelet ends it
    assert PodScript.canned(["x"], container="agent").plan(layout)["agent"].logs == ("x",)
    assert PodScript.image_pull_backoff().plan(layout)["clone"].mode == "image-pull-backoff"
    with pytest.raises(ValueError, match="per-container"):
        PodScript.run().with_container("agent", PodScript.evicted())


async def test_kubelet_runs_init_containers_sidecar_then_main(k8s: Kube, kubelet: Kubelet) -> None:
    body = pod_body("multi", [], volumes=[{"name": "shared", "emptyDir": {}}], initContainers=[
        py(APPEND.format("one"), "/shared", name="one", volumeMounts=SHARED),
        py(SIDECAR, "/shared", name="side", restartPolicy="Always", volumeMounts=SHARED),
        py(APPEND.format("two"), "/shared", name="two", volumeMounts=SHARED)])
    body["spec"]["containers"] = [py(MAIN_SEES_SIDECAR, "/shared", name="main", volumeMounts=SHARED)]
    watching = asyncio.create_task(status_history(
        k8s, "multi", lambda s: "terminated" in container_states(s).get("side", {})))
    await asyncio.sleep(0.2)
    await k8s.create(PODS, body)
    history = [status for status in await watching if "initContainerStatuses" in status]
    final = history[-1]
    assert final["phase"] == "Succeeded"
    assert [s["name"] for s in final["initContainerStatuses"]] == ["one", "side", "two"]
    states = container_states(final)
    assert states["one"]["terminated"]["reason"] == states["two"]["terminated"]["reason"] == "Completed"
    assert states["main"]["terminated"]["exitCode"] == 0 and states["side"]["terminated"]["exitCode"] == 0
    # In order: `one` ran while nothing else did; the sidecar was up before `two` and while `main` ran.
    one_running = next(s for s in history if "running" in container_states(s)["one"])
    assert one_running["phase"] == "Pending" and {
        name: next(iter(state)) for name, state in container_states(one_running).items()} == {
        "one": "running", "side": "waiting", "two": "waiting", "main": "waiting"}
    assert container_states(one_running)["main"]["waiting"]["reason"] == "PodInitializing"
    two_started = next(s for s in history if "waiting" not in container_states(s)["two"])
    assert "running" in container_states(two_started)["side"]
    main_running = next(s for s in history if "running" in container_states(s)["main"])
    assert main_running["phase"] == "Running" and "running" in container_states(main_running)["side"]
    main_ended = next(s for s in history if "terminated" in container_states(s)["main"])
    assert main_ended["phase"] == "Running" and "running" in container_states(main_ended)["side"]
    # The sidecar got its SIGTERM only after the main container had ended.
    order = await asyncio.to_thread(pathlib.Path(kubelet.process_argv("multi", container="main")[-1],
                                                 "order").read_text)
    assert order == "one\ntwo\nmain\nside-term\n"
    # One log per container; without ?container= the only main container's.
    async def log_of(container: str | None) -> str:
        params = {"container": container} if container else {}
        response = await k8s.http.get("/api/v1/namespaces/default/pods/multi/log", params=params)
        assert response.status_code == 200, response.text
        return response.text
    assert [await log_of(c) for c in ("one", "side", "two")] == ["one\n", "side up\n", "two\n"]
    assert await log_of("main") == await log_of(None) == "main sees side True\n"
    side = kubelet.log("multi", container="side")
    assert side is not None and side.done and side.lines == ["side up"]
    bad = await k8s.http.get("/api/v1/namespaces/default/pods/multi/log", params={"container": "nope"})
    assert bad.status_code == 400 and "is not valid" in bad.text


async def test_kubelet_failed_init_container_fails_the_pod(k8s: Kube, kubelet: Kubelet) -> None:
    body = pod_body("broken", [], volumes=[{"name": "shared", "emptyDir": {}}], initContainers=[
        py("import time; print('up', flush=True); time.sleep(60)", name="side", restartPolicy="Always"),
        py("import sys; print('bad'); sys.exit(3)", name="bad"),
        py(APPEND.format("never"), "/shared", name="never", volumeMounts=SHARED)])
    body["spec"]["containers"] = [py(APPEND.format("main"), "/shared", name="main", volumeMounts=SHARED)]
    await k8s.create(PODS, body)
    pod = await wait_for(lambda: _with_terminated(k8s, "broken", "side"), 15, message="the sidecar ended")
    status = pod["status"]
    states = container_states(status)
    assert status["phase"] == "Failed"
    assert (states["bad"]["terminated"]["exitCode"], states["bad"]["terminated"]["reason"]) == (3, "Error")
    assert states["never"]["waiting"]["reason"] == states["main"]["waiting"]["reason"] == "PodInitializing"
    assert states["side"]["terminated"]["exitCode"] == 143  # SIGTERM, no handler
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("False", "ContainersNotInitialized")
    assert "bad" in initialized["message"]
    main_log = await k8s.http.get("/api/v1/namespaces/default/pods/broken/log")
    assert main_log.status_code == 400 and "waiting to start: PodInitializing" in main_log.text
    bad = await k8s.http.get("/api/v1/namespaces/default/pods/broken/log", params={"container": "bad"})
    assert bad.text == "bad\n"
    assert kubelet.process_argv("broken", container="main") == []  # never started
    never = kubelet.log("broken", container="never")
    assert never is not None and never.lines == []


async def _with_terminated(k8s: Kube, name: str, container: str) -> Body | None:
    pod = await k8s.find(PODS, name)
    return pod if pod and "terminated" in container_states(pod.get("status") or {}).get(container, {}) else None


def layout_pod(name: str) -> Body:
    """The sandbox's shape (clone → relay sidecar → agent → reporter), commands that must not run."""
    body = pod_body(name, ["never-run"], initContainers=[
        {"name": "clone", "image": "x", "command": ["never-run"]},
        {"name": "relay", "image": "x", "command": ["never-run"], "restartPolicy": "Always"},
        {"name": "agent", "image": "x", "command": ["never-run"]}])
    body["spec"]["containers"][0]["name"] = "reporter"
    return body


async def test_kubelet_per_container_canned_outcomes(k8s: Kube, kubelet: Kubelet) -> None:
    kubelet.script("ok", PodScript.canned(["result"]))
    kubelet.script("oom", PodScript.canned(["result"]).with_container("agent", PodScript.oom_killed(["boom"])))
    kubelet.script("only-agent", PodScript.canned(["agent says"], container="agent"))
    kubelet.script("mixed", PodScript.run(containers={"relay": PodScript.hang(["relay up"]),
                                                      "agent": PodScript.canned(["agent says"])}))
    mixed = layout_pod("mixed")
    mixed["spec"]["initContainers"][0]["command"] = ["python", "-c", "print('cloned')"]
    mixed["spec"]["containers"][0]["command"] = ["python", "-c", "print('reported')"]
    for body in (layout_pod("ok"), layout_pod("oom"), layout_pod("only-agent"), mixed):
        await k8s.create(PODS, body)

    async def log(pod: str, container: str | None = None) -> tuple[int, str]:
        response = await k8s.http.get(f"/api/v1/namespaces/default/pods/{pod}/log",
                                      params={"container": container} if container else {})
        return response.status_code, response.text

    ok = await wait_for(lambda: _with_terminated(k8s, "ok", "relay"), 15, message="ok ended")
    states = container_states(ok["status"])
    assert ok["status"]["phase"] == "Succeeded" and states["reporter"]["terminated"]["reason"] == "Completed"
    assert all("terminated" in state for state in states.values())
    assert await log("ok") == (200, "result\n") and await log("ok", "agent") == (200, "")
    oom = await wait_for(lambda: _with_terminated(k8s, "oom", "relay"), 15, message="oom ended")
    states = container_states(oom["status"])
    assert oom["status"]["phase"] == "Failed"
    assert (states["agent"]["terminated"]["reason"], states["agent"]["terminated"]["exitCode"]) == ("OOMKilled", 137)
    assert states["reporter"]["waiting"]["reason"] == "PodInitializing"
    assert await log("oom", "agent") == (200, "boom\n") and (await log("oom"))[0] == 400
    only = await pod_phase(k8s, "only-agent", "Succeeded")
    assert await log("only-agent", "agent") == (200, "agent says\n") and await log("only-agent") == (200, "")
    assert only["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    await wait_for(lambda: _with_terminated(k8s, "mixed", "relay"), 15, message="mixed ended")
    assert [await log("mixed", c) for c in ("clone", "relay", "agent", "reporter")] == [
        (200, "cloned\n"), (200, "relay up\n"), (200, "agent says\n"), (200, "reported\n")]
    two = pod_body("two-mains", ["x"])
    two["spec"]["containers"].append({"name": "second", "image": "x", "command": ["x"]})
    kubelet.script("two-mains", PodScript.canned(["first"]))
    await k8s.create(PODS, two)
    await pod_phase(k8s, "two-mains", "Succeeded")
    status, text = await log("two-mains")
    assert status == 400 and "a container name must be specified" in text and "[main second]" in text
    assert await log("two-mains", "main") == (200, "first\n")


async def test_kubelet_restarts_a_sidecar_that_exits(k8s: Kube, kubelet: Kubelet) -> None:
    kubelet.restart_backoff = 0.1
    body = pod_body("flappy", ["python", "-c", "import time; time.sleep(1.5)"],
                    initContainers=[py("print('tick')", name="side", restartPolicy="Always")])
    await k8s.create(PODS, body)

    async def ended() -> Body | None:
        pod = await _with_terminated(k8s, "flappy", "side")
        return pod if pod and pod["status"]["phase"] == "Succeeded" else None

    pod = await wait_for(ended, 15, message="flappy ended")
    side = pod["status"]["initContainerStatuses"][0]
    assert side["restartCount"] >= 1 and side["state"]["terminated"]["exitCode"] == 0
    assert side["lastState"]["terminated"]["exitCode"] == 0
    previous = await k8s.http.get("/api/v1/namespaces/default/pods/flappy/log",
                                  params={"container": "side", "previous": "true"})
    assert previous.status_code == 200 and previous.text == "tick\n"


PRELUDE = """import errno, os, sys, time
d = sys.argv[1]
def wait(path):
    end = time.time() + 20
    while not os.path.exists(path) and time.time() < end:
        time.sleep(0.05)
def attempt(label, action):
    try:
        action()
        print(label, 'ok', flush=True)
    except OSError as e:
        print(label, type(e).__name__, errno.errorcode.get(e.errno), flush=True)
def publish(name, data, mode):
    fd = os.open(d + '/' + name + '.tmp', os.O_WRONLY | os.O_CREAT, mode)
    os.write(fd, data.encode())
    os.close(fd)
    os.replace(d + '/' + name + '.tmp', d + '/' + name)
print('id', os.getuid(), os.getgid(), sorted(os.getgroups()), flush=True)
"""
HOLDER = PRELUDE + """key = sys.argv[2]
st = os.stat(key)
print('key', oct(st.st_mode & 0o7777), st.st_gid, open(key).read(), flush=True)
publish('key.path', key, 0o640)
publish('holder.pid', str(os.getpid()), 0o640)
time.sleep(60)
"""
AGENT = PRELUDE + """wait(d + '/holder.pid')
pid = open(d + '/holder.pid').read()
attempt('environ', lambda: open('/proc/' + pid + '/environ', 'rb').read())
attempt('stdout', lambda: open('/proc/' + pid + '/fd/1', 'w').write('forged\\n'))
attempt('secret', lambda: open(open(d + '/key.path').read()).read())
publish('agent.txt', 'agent-wrote', 0o640)
"""
READER = PRELUDE + """wait(d + '/agent.txt')
pid = open(d + '/holder.pid').read()
st = os.stat(d + '/agent.txt')
print('shared', oct(os.stat(d).st_mode & 0o7777), oct(st.st_mode & 0o777), st.st_gid, open(d + '/agent.txt').read())
attempt('environ', lambda: open('/proc/' + pid + '/environ', 'rb').read())
attempt('write', lambda: open(d + '/x', 'w'))
"""


async def test_kubelet_separate_uids_isolate_sibling_containers(k8s: Kube, kubelet: Kubelet) -> None:
    if not kubelet.separate_uids:
        pytest.skip(f"containers cannot run as their own uids here: {kubelet.separate_uids_reason}")
    await k8s.create(SECRETS, {"metadata": {"name": "key"}, "stringData": {"token": "s3cr3t"}})

    def uid(n: int) -> Body:
        return {"securityContext": {"runAsUser": n, "runAsGroup": n}}

    body = pod_body("uids", [], securityContext={"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                                  "fsGroup": 65532},
                    volumes=[{"name": "shared", "emptyDir": {}},
                             {"name": "key", "secret": {"secretName": "key", "defaultMode": 0o400}}])
    body["spec"]["initContainers"] = [py(
        HOLDER, "/shared", "/var/run/key/token", name="holder", restartPolicy="Always", **uid(65533),
        env=[{"name": "HOLDER_SECRET", "value": "env-s3cr3t"}],
        volumeMounts=[*SHARED, {"name": "key", "mountPath": "/var/run/key", "readOnly": True}])]
    body["spec"]["containers"] = [
        py(AGENT, "/shared", name="agent", volumeMounts=SHARED),
        py(READER, "/shared", name="reader", **uid(65530),
           volumeMounts=[{"name": "shared", "mountPath": "/shared", "readOnly": True}])]
    await k8s.create(PODS, body)
    pod = await wait_for(lambda: _with_terminated(k8s, "uids", "holder"), 30, message="the pod ended")
    logs = {c: (kubelet.log("uids", container=c) or PodLog()).lines for c in ("holder", "agent", "reader")}
    assert pod["status"]["phase"] == "Succeeded", logs
    # The Secret file: defaultMode 0400 plus the fsGroup's read; only the container mounting it sees it.
    assert logs["holder"] == ["id 65533 65533 [65532]", "key 0o440 65532 s3cr3t"]
    assert logs["agent"] == ["id 65532 65532 [65532]", "environ PermissionError EACCES",
                             "stdout PermissionError EACCES", "secret FileNotFoundError ENOENT"]
    # fsGroup: the agent's 0640 file is readable by the reader's uid; its read-only mount refuses writes.
    assert logs["reader"] == ["id 65530 65530 [65532]", "shared 0o2777 0o640 65532 agent-wrote",
                              "environ PermissionError EACCES", "write OSError EROFS"]


# --- kopf in a thread, through the whole layer ------------------------------------------------


def child_pod_operator(calls: dict[str, int]) -> kopf.OperatorRegistry:
    """A minimal operator: each BuildDispatch gets one adopted pod that prints 'hi'."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("buildstudio.dpf.dev", "v1alpha1", "builddispatches", registry=registry)
    async def create_sandbox(body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        pod = pod_body(f"{name}-1", ["python", "-c", "print('hi')"])
        pod["metadata"].update(labels={"buildstudio.dpf.dev/dispatch": name}, namespace=namespace or "default")
        kopf.adopt(pod, owner=body)
        # The emulator stores a uid, so the adopted pod's owner reference carries one (GC needs it).
        assert pod["metadata"]["ownerReferences"][0]["uid"], pod["metadata"]["ownerReferences"]
        kube = OperatorKube.from_config(os.environ["KUBECONFIG"], in_cluster=False)
        try:
            await kube.create(pod)  # the operator's own client (kubernetes_asyncio)
        finally:
            await kube.aclose()
        patch.status["conditions"] = [{"type": "Admitted", "status": "True", "reason": "Test"}]

    return registry


async def pod_names(k8s: Kube) -> list[str]:
    return sorted(p["metadata"]["name"] for p in await k8s.list(PODS, "default"))


async def test_kopf_operator_through_the_whole_layer(k8s: Kube, kubelet: Kubelet,
                                                     kopf_operator: KopfOperatorFactory, kubectl: Kubectl) -> None:
    calls: dict[str, int] = {}
    operator = await kopf_operator(child_pod_operator(calls))
    created = await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    pod = await pod_phase(k8s, "d1-1", "Succeeded")
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("BuildDispatch", "d1", created["metadata"]["uid"])
    logs = await kubectl("logs", "d1-1")
    assert logs.stdout == "hi\n"
    bd = await wait_for(lambda: _with_condition(k8s, "d1", "Admitted"), 10, message="Admitted condition")
    assert bd["metadata"]["generation"] == 1  # kopf's own writes did not bump it
    assert calls == {"d1": 1}
    await k8s.delete(BUILDDISPATCHES, "d1")
    await wait_for(lambda: _absent(k8s, PODS, "d1-1"), 10, message="owned pod collected")
    await operator.stop()
    assert not operator.alive


async def _with_condition(k8s: Kube, name: str, kind: str) -> Body | None:
    bd = await k8s.find(BUILDDISPATCHES, name)
    conds = ((bd or {}).get("status") or {}).get("conditions") or []
    return bd if any(c["type"] == kind for c in conds) else None


async def test_kopf_relists_after_410_gone_without_duplicates(k8s: Kube, kubelet: Kubelet,
                                                              kopf_operator: KopfOperatorFactory) -> None:
    kubelet.default = PodScript.hang()

    def short_watches(settings: kopf.OperatorSettings) -> None:
        settings.watching.server_timeout = 1  # reconnect soon, so the 410 is met quickly

    calls: dict[str, int] = {}
    await kopf_operator(child_pod_operator(calls), settings_hook=short_watches)
    await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    await pod_phase(k8s, "d1-1", "Running")
    k8s.emulator.fail_next_watch_with_gone(BUILDDISPATCHES)
    await wait_for(lambda: k8s.emulator.gone_served >= 1, 10, message="a watch answered 410")
    await k8s.create(BUILDDISPATCHES, dispatch("d2"))
    await pod_phase(k8s, "d2-1", "Running")
    await asyncio.sleep(0.5)  # room for a duplicate to show up
    assert await pod_names(k8s) == ["d1-1", "d2-1"]
    assert calls == {"d1": 1, "d2": 1}


async def test_kopf_restart_creates_no_duplicates(k8s: Kube, kubelet: Kubelet,
                                                  kopf_operator: KopfOperatorFactory) -> None:
    kubelet.default = PodScript.hang()
    calls: dict[str, int] = {}
    operator = await kopf_operator(child_pod_operator(calls))
    await k8s.create(BUILDDISPATCHES, dispatch("d1"))
    await pod_phase(k8s, "d1-1", "Running")
    await wait_for(lambda: _with_condition(k8s, "d1", "Admitted"), 10, message="d1 handled")
    await operator.stop()
    assert not operator.alive
    await k8s.create(BUILDDISPATCHES, dispatch("d2"))  # while the operator is down
    await asyncio.sleep(0.2)
    assert await pod_names(k8s) == ["d1-1"]
    await operator.start()
    await pod_phase(k8s, "d2-1", "Running")
    await asyncio.sleep(0.5)
    assert await pod_names(k8s) == ["d1-1", "d2-1"]
    assert calls == {"d1": 1, "d2": 1}


# --- real kubectl against the emulator --------------------------------------------------------


MANIFEST = """\
apiVersion: buildstudio.dpf.dev/v1alpha1
kind: BuildDispatch
metadata:
  name: walk
spec:
  engine: opencode
  prompt: add a hello.py
"""


async def test_kubectl_walkthrough(k8s: Kube, kubelet: Kubelet, kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    manifest = tmp_path / "bd.yaml"
    await asyncio.to_thread(manifest.write_text, MANIFEST)
    applied = await kubectl("apply", "-f", str(manifest))  # default validation: fieldValidation via OpenAPI v3
    assert "builddispatch.buildstudio.dpf.dev/walk created" in applied.stdout
    again = await kubectl("apply", "--validate=false", "-f", str(manifest))
    assert "walk unchanged" in again.stdout or "walk configured" in again.stdout
    listed = await kubectl("get", "bd")  # printer columns from the repository's CRD
    header = listed.stdout.splitlines()[0].split()
    assert header[0] == "NAME" and "AGE" in header and listed.stdout.splitlines()[1].startswith("walk ")
    as_yaml = await kubectl("get", "bd", "walk", "-o", "yaml")
    assert "uid:" in as_yaml.stdout and "prompt: add a hello.py" in as_yaml.stdout
    assert "walk" in (await kubectl("get", "buildstudio")).stdout  # the category

    waiting = asyncio.create_task(kubectl("wait", "--for=condition=Succeeded", "--timeout=30s", "bd/walk"))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    status = {"status": {"phase": "Succeeded", "conditions": [
        {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    await kubectl("patch", "bd", "walk", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    waited = await asyncio.wait_for(waiting, 35)
    assert "condition met" in waited.stdout
    bd = await k8s.get(BUILDDISPATCHES, "walk")
    await k8s.create(EVENTS, {
        "metadata": {"name": "walk.1"}, "type": "Normal", "reason": "Admitted", "message": "admitted by the gate",
        "involvedObject": {"apiVersion": bd["apiVersion"], "kind": "BuildDispatch", "name": "walk",
                           "namespace": "default", "uid": bd["metadata"]["uid"]},
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1})
    await k8s.create(EVENTS, {
        "metadata": {"name": "other.1"}, "type": "Normal", "reason": "Unrelated", "message": "not ours",
        "involvedObject": {"kind": "BuildDispatch", "name": "other", "namespace": "default", "uid": "x"}})
    described = await kubectl("describe", "bd", "walk")
    assert "Name:" in described.stdout and "walk" in described.stdout and "Completed" in described.stdout
    assert "admitted by the gate" in described.stdout and "not ours" not in described.stdout  # field selectors
    await asyncio.to_thread(manifest.write_text, MANIFEST.replace("add a hello.py", "add a bye.py"))
    await kubectl("replace", "-f", str(manifest))
    assert (await k8s.get(BUILDDISPATCHES, "walk"))["spec"]["prompt"] == "add a bye.py"

    kubelet.script("walk-1", PodScript.canned(["cloning", "done"], line_interval=0.2))
    await k8s.create(PODS, pod_body("walk-1", ["x"]))
    await pod_phase(k8s, "walk-1", "Running", "Succeeded")
    followed = await kubectl("logs", "-f", "walk-1")
    assert followed.stdout == "cloning\ndone\n"
    assert (await kubectl("logs", "--tail=1", "walk-1")).stdout == "done\n"
    deleted = await kubectl("delete", "bd", "walk", timeout=20)
    assert 'deleted' in deleted.stdout
    assert await k8s.find(BUILDDISPATCHES, "walk") is None


async def test_kubectl_get_watch_prints_changes(k8s: Kube, kubectl: Kubectl) -> None:
    register_crd(k8s.emulator, WIDGET_CRD)
    widgets = "example.dev/v1/widgets"
    await k8s.create(widgets, {"metadata": {"name": "w1"}})
    watching = asyncio.create_task(kubectl("get", "widgets", "-w", "--request-timeout=3s"))
    await asyncio.sleep(1.0)
    await k8s.patch(widgets, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    lines = (await asyncio.wait_for(watching, 10)).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE"]
    assert [line.split() for line in lines[1:]] == [["w1"], ["w1", "Ready"]]
