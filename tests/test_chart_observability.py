"""The chart's observability extras: the Grafana dashboard ConfigMap and the PrometheusRule.

Every PromQL expression they carry may name only series the operator really exports, with labels those
series really have: the names come from the operator's prometheus_client registry, not from a list kept
here. With `promtool` (Debian package `prometheus`) the rules and the dashboard's queries are also
checked for syntax, and the alerts are run by `promtool test rules` on synthetic series.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.status_samples import success_reasons

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO_ROOT / "operator"
CHART = REPO_ROOT / "charts" / "build-studio"
DASHBOARD_FILE = CHART / "dashboards" / "build-studio.json"
RELEASE, NAMESPACE = "bs", "build-studio"
FULLNAME = f"{RELEASE}-build-studio"
DASHBOARD_ON = {"grafana.dashboard.enabled": "true"}
RULES_ON = {"metrics.prometheusRule.enabled": "true"}

# Labels Prometheus adds to every scraped series (target labels of a ServiceMonitor scrape).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})
# PromQL words that are not series names: operators, modifiers and aggregations (function names need no list:
# they are followed by "(", and promtool checks them below).
PROMQL_OPERATORS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "topk"}
PROMQL_WORDS = frozenset(PROMQL_OPERATORS | PROMQL_AGGREGATIONS | {"bottomk", "quantile", "offset", "atan2"})
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


# --- what the operator exports ----------------------------------------------------------------------------
def metrics_modules() -> list[ModuleType]:
    """The operator's modules that define metrics, found by what they import (they may move between
    packages)."""
    pattern = re.compile(r"^\s*(from prometheus_client import|import prometheus_client)", re.M)
    sources = [p for p in sorted((PACKAGE_ROOT / "buildstudio").rglob("*.py")) if pattern.search(p.read_text())]
    assert sources, "no module under operator/ imports prometheus_client"
    return [importlib.import_module(".".join(p.relative_to(PACKAGE_ROOT).with_suffix("").parts)) for p in sources]


def registries() -> list[Any]:
    from prometheus_client import REGISTRY, CollectorRegistry

    found = [v for m in metrics_modules() for v in vars(m).values() if isinstance(v, CollectorRegistry)]
    return found or [REGISTRY]


@functools.cache
def exported() -> dict[str, frozenset[str]]:
    """Every series name the operator's /metrics can serve → its label names, read from the registry
    after import: a metric renamed or dropped in the code makes the chart's queries fail here."""
    from prometheus_client.metrics import MetricWrapperBase

    # The registry lists label names only of children already observed; the metric objects know them all.
    labels = {
        w._name: frozenset(w._labelnames)
        for m in metrics_modules()
        for w in vars(m).values()
        if isinstance(w, MetricWrapperBase)
    }
    series: dict[str, frozenset[str]] = {}
    for registry in registries():
        for family in registry.collect():
            own = labels.get(family.name, frozenset())
            suffixes = {
                "counter": [("_total", own), ("_created", own)],
                "histogram": [("_bucket", own | {"le"}), ("_count", own), ("_sum", own), ("_created", own)],
                "summary": [("", own | {"quantile"}), ("_count", own), ("_sum", own), ("_created", own)],
                "info": [("_info", own)],
            }.get(family.type, [("", own)])
            series.update({family.name + suffix: names for suffix, names in suffixes})
    return series


# --- PromQL, read just enough to name its series and labels ------------------------------------------------
def promql_refs(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """([(series name, labels its selector matches on)], labels named in by/on/without clauses)."""
    for var, value in GRAFANA_DURATIONS.items():
        expr = expr.replace(var, value)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    grouping: set[str] = set()

    def group(m: re.Match[str]) -> str:
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
        return " "

    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", group, expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    refs: list[tuple[str, set[str]]] = []
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, selector, call = m.group(1), m.group(2), m.group(3)
        if call and selector is None:
            continue  # a function or an aggregation
        if name in PROMQL_WORDS or re.fullmatch(r"\d\w*", name) or name in ("e", "inf", "nan", "Inf", "NaN"):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector or ""))
        refs.append((name, labels))
    return refs, grouping


def unknown_refs(expr: str) -> list[str]:
    """What `expr` names that the operator does not export: series, selector labels, grouping labels."""
    series = exported()
    refs, grouping = promql_refs(expr)
    problems: list[str] = []
    seen_labels: set[str] = set(TARGET_LABELS)
    for name, labels in refs:
        if name not in series:
            problems.append(f"series {name}")
            continue
        seen_labels |= series[name]
        problems += [f"label {lbl} of {name}" for lbl in sorted(labels - series[name] - TARGET_LABELS)]
    problems += [f"grouping label {lbl}" for lbl in sorted(grouping - seen_labels)]
    return problems


def test_the_checker_catches_unknown_series_and_labels() -> None:
    """The check below is only worth something if it refuses what the operator does not export."""
    assert unknown_refs('sum by (engine) (rate(buildstudio_dispatches_total{outcome="x"}[5m]))') == []
    assert (
        unknown_refs("histogram_quantile(0.9, sum by (le) (rate(buildstudio_dispatch_duration_seconds_bucket[5m])))")
        == []
    )
    assert unknown_refs("rate(buildstudio_dispatches[5m])") == ["series buildstudio_dispatches"]
    assert unknown_refs("buildstudio_running_dispatches > 0") == ["series buildstudio_running_dispatches"]
    assert unknown_refs('buildstudio_queue_length{engine="a"}') == ["label engine of buildstudio_queue_length"]
    assert unknown_refs("sum by (model) (buildstudio_preflight_failures_total)") == ["grouping label model"]
    assert unknown_refs("sum by (engine, reason) (buildstudio_preflight_failures_total)") == []
    running = 'buildstudio_dispatches_running{model="m"}'
    assert unknown_refs(running) == ["label model of buildstudio_dispatches_running"]
    assert unknown_refs("up == 0") == ["series up"]  # Prometheus' own series are not the operator's


# --- rendering --------------------------------------------------------------------------------------------
@functools.cache
def _helm() -> str | None:
    explicit = os.environ.get("HELM_BIN")
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    return explicit or (str(local) if local.is_file() else shutil.which("helm"))


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    path = _helm()
    if path is None:
        pytest.skip("helm not found (set HELM_BIN, run .ci/install-kube-tools.sh, or put helm on PATH)")
    home = tmp_path_factory.mktemp("helm-home")  # keep helm's config and cache out of the user's home
    env = dict(
        os.environ, HELM_CONFIG_HOME=str(home / "c"), HELM_CACHE_HOME=str(home / "k"), HELM_DATA_HOME=str(home / "d")
    )
    return path, env


def _helm_run(
    helm: tuple[str, dict[str, str]], verb: str, values: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    path, env = helm
    sets = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    extra = [RELEASE] if verb == "template" else ["--strict"]
    cmd = [path, verb, *extra, str(CHART), "--namespace", NAMESPACE, *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def render(helm: tuple[str, dict[str, str]], values: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    proc = _helm_run(helm, "template", values or {})
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _of(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _dashboard_cm(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def _rules(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = _of(docs, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_off_by_default(helm: tuple[str, dict[str, str]]) -> None:
    docs = render(helm)
    assert _dashboard_cm(docs) == [] and _of(docs, "PrometheusRule") == []


@pytest.mark.parametrize("values", [DASHBOARD_ON, RULES_ON, {**DASHBOARD_ON, **RULES_ON}])
def test_lints_strict_with_the_options_on(helm: tuple[str, dict[str, str]], values: dict[str, str]) -> None:
    lint = _helm_run(helm, "lint", values)
    assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("values", "pointer"),
    [
        ({"grafana.dashboard.enable": "true"}, "/grafana/dashboard"),
        ({"grafana.dashboard.namespace": "Monitoring"}, "/grafana/dashboard/namespace"),
        ({"metrics.prometheusRule.failureRatio": "2"}, "/metrics/prometheusRule/failureRatio"),
        ({"metrics.prometheusRule.failureRatio": "1.5"}, "/metrics/prometheusRule/failureRatio"),
        ({"metrics.prometheusRule.queueStuckFor": "an hour"}, "/metrics/prometheusRule/queueStuckFor"),
        ({"metrics.prometheusRule.selector": "{job=x}"}, "/metrics/prometheusRule/selector"),
        ({"metrics.prometheusRule.extra": "1"}, "/metrics/prometheusRule"),
        ({"metrics.prometheusRule.kubeApiErrorsPerMinute": "0"}, "/metrics/prometheusRule/kubeApiErrorsPerMinute"),
        ({"metrics.prometheusRule.kubeApiErrorsPerMinute": "many"}, "/metrics/prometheusRule/kubeApiErrorsPerMinute"),
    ],
)
def test_schema_rejects_bad_observability_values(
    helm: tuple[str, dict[str, str]], values: dict[str, str], pointer: str
) -> None:
    proc = _helm_run(helm, "template", values)
    assert proc.returncode != 0 and pointer in proc.stderr, proc.stderr


# --- the dashboard ------------------------------------------------------------------------------------------
def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def _panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out += p.get("panels", [])  # a collapsed row keeps its panels inside
    return out


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values' selector)."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: only label_values(selector, label) is used here: {query}"
        selector, label = m.groups()
        out.append((f"variable {var['name']}", f"sum by ({label}) ({selector})"))
    return out


def test_dashboard_queries_name_only_exported_series_and_labels() -> None:
    queries = dashboard_queries(_dashboard())
    assert len(queries) >= 10
    problems = [f"{where}: {p}" for where, expr in queries for p in unknown_refs(expr)]
    assert problems == []
    used = {name for _, expr in queries for name, _ in promql_refs(expr)[0]}
    # Each metric the operator exports has a panel (a new metric should get one too).
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", s) for s in exported()}
    assert {f for f in families if not any(u.startswith(f) for u in used)} == set()


def test_dashboard_success_outcomes_are_the_machines() -> None:
    """Panels tell success from failure by the outcome label: their list must be the state machine's."""
    lists = {x for _, expr in dashboard_queries(_dashboard()) for x in re.findall(r'outcome[!=]~"([^"]+)"', expr)}
    assert lists, "no outcome regex in the dashboard"
    assert {frozenset(x.split("|")) - {"Cancelled"} for x in lists} == {frozenset(success_reasons())}


def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable() -> None:
    dashboard = _dashboard()
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels)
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "job", "engine"}
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def test_dashboard_configmap_carries_the_file(helm: tuple[str, dict[str, str]]) -> None:
    docs = render(helm, {**DASHBOARD_ON, "grafana.dashboard.annotations.grafana_folder": "Platform"})
    (cm,) = _dashboard_cm(docs)
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "build-studio"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    assert json.loads(cm["data"]["build-studio.json"]) == _dashboard()
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(cm, "1.28", strict=True)


def test_dashboard_namespace_and_labels_can_be_overridden(helm: tuple[str, dict[str, str]]) -> None:
    docs = render(
        helm,
        {
            **DASHBOARD_ON,
            "grafana.dashboard.namespace": "monitoring",
            "grafana.dashboard.labels.grafana_dashboard": "null",
            "grafana.dashboard.labels.dash": "yes",
        },
    )
    (cm,) = _dashboard_cm(docs)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dash"] == "yes" and "grafana_dashboard" not in cm["metadata"]["labels"]


# --- the PrometheusRule --------------------------------------------------------------------------------------
ALERTS = {
    "BuildStudioOperatorDown",
    "BuildStudioDispatchFailureRate",
    "BuildStudioQueueStuck",
    "BuildStudioQueueTimeouts",
    "BuildStudioPreflightFailing",
    "BuildStudioKubeAPIErrors",
}


def test_rules_name_only_exported_series_and_labels(helm: tuple[str, dict[str, str]]) -> None:
    rules = _rules(render(helm, RULES_ON))
    assert {r["alert"] for r in rules} == ALERTS
    problems = [f"{r['alert']}: {p}" for r in rules for p in unknown_refs(r["expr"])]
    assert problems == []
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        # Scoped to this install: the ServiceMonitor's scrape sets job to the Service's name.
        assert f'job="{FULLNAME}", namespace="{NAMESPACE}"' in r["expr"], r["alert"]


def test_operator_down_watches_a_series_present_from_start(helm: tuple[str, dict[str, str]]) -> None:
    """absent() of a series that only appears once something happened would fire on every idle install."""
    from prometheus_client import generate_latest

    rules = {r["alert"]: r for r in _rules(render(helm, RULES_ON))}
    (name,) = {n for n, _ in promql_refs(rules["BuildStudioOperatorDown"]["expr"])[0]}
    assert exported()[name] == frozenset(), f"{name} has labels: it has no series before the first observation"
    served = "".join(generate_latest(r).decode() for r in registries())
    assert re.search(rf"^{name} ", served, re.M), served


def test_rule_success_outcomes_are_the_machines(helm: tuple[str, dict[str, str]]) -> None:
    rules = {r["alert"]: r for r in _rules(render(helm, RULES_ON))}
    (failing,) = re.findall(r'outcome!~"([A-Za-z|]+)"', rules["BuildStudioDispatchFailureRate"]["expr"])
    assert set(failing.split("|")) - {"Cancelled"} == success_reasons()


def test_rule_values_reach_the_rules(helm: tuple[str, dict[str, str]]) -> None:
    docs = render(
        helm,
        {
            **RULES_ON,
            "metrics.prometheusRule.labels.release": "prom",
            "metrics.prometheusRule.groupName": "bs-alerts",
            "metrics.prometheusRule.selector": 'job="bs"',
            "metrics.prometheusRule.alertLabels.team": "platform",
            "metrics.prometheusRule.failureRatio": "0.25",
            "metrics.prometheusRule.failureWindow": "1h",
            "metrics.prometheusRule.queueStuckFor": "2h",
            "metrics.prometheusRule.kubeApiErrorsPerMinute": "0.5",
        },
    )
    (rule,) = _of(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom" and rule["metadata"]["namespace"] == NAMESPACE
    assert [g["name"] for g in rule["spec"]["groups"]] == ["bs-alerts"]
    rules = {r["alert"]: r for r in _rules(docs)}
    assert all(r["labels"]["team"] == "platform" for r in rules.values())
    assert all('{job="bs"' in r["expr"] and "namespace=" not in r["expr"] for r in rules.values())
    assert ") > 0.25" in rules["BuildStudioDispatchFailureRate"]["expr"]
    assert "[1h]" in rules["BuildStudioDispatchFailureRate"]["expr"]
    assert "[2h]" in rules["BuildStudioQueueStuck"]["expr"]
    assert rules["BuildStudioKubeAPIErrors"]["expr"].rstrip().endswith("* 60 > 0.5")


# --- promtool: syntax, and the alerts run on synthetic series ------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    path = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus; or set PROMTOOL_BIN)")
    return path


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_promtool_accepts_the_rules(helm: tuple[str, dict[str, str]], promtool: str, tmp_path: Path) -> None:
    (rule,) = _of(render(helm, {**RULES_ON, "metrics.prometheusRule.alertLabels.team": "platform"}), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    proc = _promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_accepts_the_dashboard_queries(promtool: str, tmp_path: Path) -> None:
    """Each query as a recording rule, Grafana's variables filled in as Grafana would."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(_dashboard())):
        for var, value in GRAFANA_DURATIONS.items():
            expr = expr.replace(var, value)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $job, $engine: "All" is .*
        rules.append({"record": f"build_studio:dashboard_query_{i}", "expr": expr, "labels": {"where": where}})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _promtool(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in proc.stdout, proc.stdout + proc.stderr


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ",".join(f'{k}="{v}"' for k, v in {"job": FULLNAME, "namespace": NAMESPACE, **labels}.items())
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def _finished(outcome: str, values: str, engine: str = "opencode", model: str = "m") -> dict[str, str]:
    return _series("buildstudio_dispatches_total", values, engine=engine, model=model, outcome=outcome)


def _api_errors(values: str, verb: str, resource: str, code: str) -> dict[str, str]:
    return _series("buildstudio_kube_api_errors_total", values, verb=verb, resource=resource, code=code)


def _alert(name: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in fired]}


# (what happens, series, alert checks): the alerts fire on trouble, and stay quiet next to it.
ALERT_CASES: list[tuple[str, list[dict[str, str]], list[dict[str, Any]]]] = [
    (
        "operator gone: only another install is scraped",
        [{"series": 'buildstudio_queue_length{job="other",namespace="x"}', "values": "0x30"}],
        [
            _alert("BuildStudioOperatorDown", "5m"),  # for: 10m
            _alert("BuildStudioOperatorDown", "15m", {"job": FULLNAME, "namespace": NAMESPACE, "severity": "critical"}),
        ],
    ),
    (
        "operator up and idle",
        [_series("buildstudio_queue_length", "0x30")],
        [_alert("BuildStudioOperatorDown", "15m"), _alert("BuildStudioQueueStuck", "30m")],
    ),
    (
        "one engine failing, another fine, cancellations ignored",
        [
            _finished("ModelError", "0+1x40"),
            _finished("Completed", "0x40"),
            _finished("Completed", "0+1x40", engine="claude"),
            _finished("Cancelled", "0+5x40", engine="claude"),
        ],
        [_alert("BuildStudioDispatchFailureRate", "20m", {"engine": "opencode", "severity": "warning"})],
    ),
    (
        "two failures are too few to call a rate",
        [_finished("ModelError", "0 1 2x30")],
        [_alert("BuildStudioDispatchFailureRate", "25m")],
    ),
    (
        "a queue that stops draining",
        [_series("buildstudio_queue_length", "2x120"), _finished("Completed", "0+1x30 30x90")],
        [
            _alert("BuildStudioQueueStuck", "70m"),  # the last finish (30m) is within 45m
            _alert("BuildStudioQueueStuck", "95m", {"severity": "warning"}),
        ],
    ),
    (
        "queue timeouts and preflight refusals",
        [_finished("QueueTimeout", "0+1x20"), _finished("PreflightFailed", "0+1x20", model="big")],
        [
            _alert("BuildStudioQueueTimeouts", "10m", {"engine": "opencode", "severity": "warning"}),
            _alert("BuildStudioPreflightFailing", "10m", {"engine": "opencode", "model": "big", "severity": "warning"}),
        ],
    ),
    (
        "the API server refuses patches; 404s and 409s are expected",
        [
            _api_errors("0+5x40", "patch", "builddispatches", "503"),
            _api_errors("0+50x40", "read", "pods", "404"),
            _api_errors("0+50x40", "create", "configmaps", "409"),
            _api_errors("0+1x40", "list", "pods", "timeout"),
        ],
        [
            _alert("BuildStudioKubeAPIErrors", "8m"),  # for: 10m
            _alert(
                "BuildStudioKubeAPIErrors",
                "25m",
                {"verb": "patch", "resource": "builddispatches", "severity": "warning"},
            ),  # one timeout a minute is at the threshold, not over it
        ],
    ),
]


def test_promtool_runs_the_alerts(helm: tuple[str, dict[str, str]], promtool: str, tmp_path: Path) -> None:
    (rule,) = _of(render(helm, RULES_ON), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            r.pop("annotations")  # promtool compares annotations too; their templates are checked above
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    tests = [
        {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": checks}
        for name, series, checks in ALERT_CASES
    ]
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    proc = _promtool(promtool, "test", "rules", "test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {a["alertname"] for _, _, checks in ALERT_CASES for a in checks} == ALERTS


# --- the series the operator feeds (adapters/metrics.py) -------------------------------------------------------
def _value(name: str, **labels: str) -> float:
    from buildstudio.adapters.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_running_gauge_counts_each_dispatch_once_under_its_engine() -> None:
    from buildstudio.adapters.metrics import RunningDispatch

    before = _value("buildstudio_dispatches_running", engine="e-running")
    a, b = RunningDispatch(), RunningDispatch()
    a.sync("e-running", running=False)  # queued: not counted
    assert _value("buildstudio_dispatches_running", engine="e-running") == before
    a.sync("e-running", running=True)
    a.sync("e-running", running=True)  # every look after a step: still once
    b.sync("e-running", running=True)
    assert _value("buildstudio_dispatches_running", engine="e-running") == before + 2
    a.sync("e-running", running=False)  # finished
    b.sync("", running=False)  # its daemon ended (operator stopping, dispatch deleted)
    assert _value("buildstudio_dispatches_running", engine="e-running") == before


def test_relay_counters_come_from_the_finished_dispatchs_summary() -> None:
    from buildstudio.adapters.metrics import record_relay

    labels = {"engine": "e-relay", "model": "m"}
    record_relay("e-relay", "m", {"repairedToolCalls": 3, "unrepairedToolCalls": 1})
    record_relay("e-relay", "m", {"repairedToolCalls": 0})  # relay off or nothing to repair
    record_relay("e-relay", "m", None)
    assert _value("buildstudio_relay_tool_calls_total", **labels, result="repaired") == 3
    assert _value("buildstudio_relay_tool_calls_total", **labels, result="unrepaired") == 1


async def test_kube_api_errors_are_counted_by_verb_resource_and_code() -> None:
    """Through the real adapter: an answer that is an error, and an API server that is not there."""
    from aiohttp import web
    from kubernetes_asyncio import client as k8s_client

    from buildstudio.adapters.kube import Kube, KubeError

    async def unavailable(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 503}, status=503)

    app = web.Application()
    app.router.add_route("PATCH", "/api/v1/namespaces/n/pods/p", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(k8s_client.ApiClient(k8s_client.Configuration(host=f"http://127.0.0.1:{port}")), timeout=2.0)
    before = _value("buildstudio_kube_api_errors_total", verb="patch", resource="pods", code="503")
    try:
        with pytest.raises(KubeError):
            await kube.merge_patch("Pod", "p", "n", {"metadata": {"labels": {"a": "b"}}})
    finally:
        await kube.aclose()
        await runner.cleanup()
    assert _value("buildstudio_kube_api_errors_total", verb="patch", resource="pods", code="503") == before + 1

    gone = Kube(k8s_client.ApiClient(k8s_client.Configuration(host=f"http://127.0.0.1:{port}")), timeout=2.0)
    before = _value("buildstudio_kube_api_errors_total", verb="read", resource="pods", code="connection")
    try:
        with pytest.raises(OSError):  # aiohttp's ClientConnectorError is one
            await gone.get("Pod", "p", "n")
    finally:
        await gone.aclose()
    assert _value("buildstudio_kube_api_errors_total", verb="read", resource="pods", code="connection") == before + 1
