"""``buildstudio run --local``: one dispatch as local processes, no cluster.

The same runner as in the sandbox pod (``python -m buildstudio.runner``, as a subprocess whose
record lines are read here), the same preflight against the model service, a live progress line
on stderr, and at the end the dispatch record (table, yaml or json) and the diff.

Model service: ``--base-url URL``; or ``--model-server replay:FILE``, recorded model replies
served on loopback by the project's scripted server (opencode, its tools and the diff are real;
only the model's words are canned, and every output says so); else the first local service that
answers on its default port (DMR, Ollama, llama.cpp, vLLM, LM Studio).

With no repository given, a tiny sample repository is created in a temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import git
import httpx
import yaml

from buildstudio import records
from buildstudio.core import inputs
from buildstudio.gate import GateDecision
from buildstudio.runner.spec import LoopLimits, RepoSource, RunnerSpec, RunnerTimeouts, dump_spec
from buildstudio.scripted_server import Replay, ScriptedServer, load_replay

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # on the runner's PYTHONPATH
DEFAULT_CONTEXT = 65536
DEFAULT_OUTPUT = 8192
DETECT_TIMEOUT = httpx.Timeout(2.0, connect=0.5)


@dataclass(frozen=True)
class Candidate:
    name: str
    base_url: str
    how_to_start: str


# Default ports of the local OpenAI-compatible services (docs/model-endpoints.md).
LOCAL_SERVICES: tuple[Candidate, ...] = (
    Candidate(
        "Docker Model Runner",
        "http://127.0.0.1:12434/engines/v1",
        "docker desktop enable model-runner --tcp 12434 && docker model pull ai/qwen3-coder",
    ),
    Candidate(
        "Ollama",
        "http://127.0.0.1:11434/v1",
        "ollama serve & ollama pull qwen3-coder  (set OLLAMA_CONTEXT_LENGTH=65536)",
    ),
    Candidate("llama.cpp", "http://127.0.0.1:8080/v1", "llama-server -m MODEL.gguf --jinja -c 65536 --port 8080"),
    Candidate(
        "vLLM",
        "http://127.0.0.1:8000/v1",
        "vllm serve Qwen/Qwen3-Coder-30B-A3B-Instruct --enable-auto-tool-choice --tool-call-parser qwen3_coder",
    ),
    Candidate(
        "LM Studio", "http://127.0.0.1:1234/v1", "lms server start && lms load qwen3-coder --context-length 65536"
    ),
)

# The sample repository of the quick start (materialised when no repo is given).
SAMPLE_REPO: dict[str, str] = {
    "README.md": "# calc\n\nA tiny calculator, the sample repository of `buildstudio run --local`.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
}
SAMPLE_PROMPT = "Add a subtract(a, b) function to calc.py, next to add(), and a test_calc.py that checks both."


# ---------------------------------------------------------------------------- pure parts


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """What the apiserver would say of this BuildDispatch: the models' schema, then the CRD's CEL rules.
    Local mode takes one more thing: a local path or file:// URL as ``spec.repo.url``."""
    from pydantic import ValidationError

    from buildstudio.api import BuildDispatch
    from buildstudio.api.crdgen import dispatch_spec_schema
    from buildstudio.api.dispatch import LOCAL_PATHS
    from buildstudio.validation import cel_violations

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


def dispatch_fields(manifest: Any) -> dict[str, str]:
    """prompt / repo url / ref / model / engine / phase of a validated BuildDispatch manifest (a YAML dict)."""
    if not isinstance(manifest, dict) or manifest.get("kind") not in (None, "BuildDispatch"):
        raise ValueError("expected a BuildDispatch manifest")
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("the manifest has no spec")
    errors = manifest_errors(manifest)
    if errors:
        raise ValueError("invalid BuildDispatch: " + "; ".join(errors))
    raw_repo = spec.get("repo")
    repo: dict[str, Any] = raw_repo if isinstance(raw_repo, dict) else {}
    out = {
        "prompt": spec.get("prompt"),
        "repo": repo.get("url"),
        "ref": repo.get("ref"),
        "model": spec.get("model"),
        "engine": spec.get("engine"),
        "phase": spec.get("phase"),
    }
    return {k: str(v) for k, v in out.items() if v}


def local_gate(fields: dict[str, str], *, opencode_present: bool) -> GateDecision:
    """The operator's capability gate over the registry, with what this machine has: the local
    engine is present when its binary was found; cloud engines are never run by ``--local``."""
    from buildstudio import registry
    from buildstudio.api.dispatch import BuildDispatchSpec
    from buildstudio.gate import EngineState, decide

    engines = [
        EngineState(e.name, e.spec, present=e.spec.endpoint == "local" and opencode_present)
        for e in registry.load()
    ]
    spec = BuildDispatchSpec.model_validate(
        {k: fields[k] for k in ("prompt", "model", "engine", "phase") if fields.get(k)}
    )
    return decide(engines, spec)


def no_service_message(tried: Sequence[tuple[Candidate, str]]) -> str:
    lines = ["no local model service answered. Tried:"]
    lines += [f"  {c.name:<20} {c.base_url:<40} {why}" for c, why in tried]
    lines.append("Start one, for example:")
    lines += [f"  {c.name:<20} {c.how_to_start}" for c, _ in tried]
    lines.append("or pass --base-url URL, or try the pipeline with recorded replies:")
    lines.append("  buildstudio run --local --model-server replay:examples/replays/add-subtract.json")
    return "\n".join(lines)


def progress_line(rec: records.ProgressRecord) -> str:
    last = f" · last: {rec.last_tool}" if rec.last_tool else ""
    return (
        f"[{rec.stage}] {rec.elapsed_seconds:6.1f}s · steps {rec.steps} · tool calls {rec.tool_calls}"
        f" · tokens {rec.tokens}{last}"
    )


def full_patch(result: records.ResultRecord) -> str | None:
    """The whole diff from the result's patch (None when there is none or it was cut)."""
    if not result.patch.data or result.patch.truncated:
        return None
    return gzip.decompress(base64.b64decode(result.patch.data)).decode("utf-8", "replace")


def record_view(result: records.ResultRecord, meta: dict[str, Any]) -> dict[str, Any]:
    """The dispatch record as plain data (yaml/json output)."""
    view = dict(meta)
    view["result"] = result.model_dump(mode="json", by_alias=True, exclude={"patch"})
    view["result"]["patch"] = {k: v for k, v in result.patch.model_dump(by_alias=True).items() if k != "data"}
    return view


def record_table(result: records.ResultRecord, meta: dict[str, Any]) -> str:
    s, d = result.summary, result.diff_stat
    rows = [
        ("OUTCOME", f"{result.outcome.value} ({'succeeded' if result.outcome.succeeded else 'failed'})"),
        ("MESSAGE", result.message),
        ("MODEL", meta["model"]),
        ("MODEL SERVICE", meta["modelService"]),
        *([("PHASE", meta["phase"])] if "phase" in meta else []),
        *([("REPO", meta["repo"]), ("WORKSPACE", meta["workspace"])] if "repo" in meta else []),
        *([("BASE COMMIT", result.base_commit[:12])] if result.base_commit else []),
        ("STEPS", str(s.steps)),
        (
            "TOOL CALLS",
            f"{s.tool_calls} ({s.tool_errors} errors)  " + ", ".join(f"{k} x{v}" for k, v in s.tools_by_name.items()),
        ),
        ("TOKENS", f"{s.tokens.total} (in {s.tokens.input}, out {s.tokens.output})"),
        (
            "FILES",
            f"{d.files} changed, +{d.additions} -{d.deletions}"
            + (f", {d.binary_files} binary" if d.binary_files else ""),
        ),
        ("DURATION", f"{result.duration_seconds:.1f}s"),
    ]
    if result.replay:
        rows.insert(3, ("REPLAY", "yes: the model's words were canned (recorded replies); tools and diff are real"))
    if s.final_text:
        rows.append(("FINAL ANSWER", " ".join(s.final_text.split())[:300]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ---------------------------------------------------------------------------- IO


async def detect_service(
    candidates: Sequence[Candidate] = LOCAL_SERVICES,
) -> tuple[Candidate | None, list[tuple[Candidate, str]], list[str]]:
    """The first candidate whose ``GET /models`` answers 200; also what each one said, and its models."""
    tried: list[tuple[Candidate, str]] = []
    async with httpx.AsyncClient(timeout=DETECT_TIMEOUT, trust_env=False) as client:
        for c in candidates:
            try:
                r = await client.get(c.base_url.rstrip("/") + "/models")
            except httpx.HTTPError as e:
                tried.append((c, f"no answer ({type(e).__name__})"))
                continue
            if r.status_code != 200:
                tried.append((c, f"HTTP {r.status_code}"))
                continue
            try:
                ids = [str(m["id"]) for m in r.json().get("data", [])]
            except (ValueError, KeyError, TypeError, AttributeError):
                ids = []
            return c, tried, ids
    return None, tried, []


def make_sample_repo(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_REPO.items():
        (path / name).write_text(text, encoding="utf-8")
    repo = git.Repo.init(path)
    repo.index.add(list(SAMPLE_REPO))
    actor = git.Actor("buildstudio", "buildstudio@localhost")
    repo.index.commit("sample repository", author=actor, committer=actor)
    repo.close()


def resolve_replay(target: str) -> Path:
    """A path as given, else relative to the repository, else a name under examples/replays/."""
    for candidate in (Path(target), REPO_ROOT / target, REPO_ROOT / "examples" / "replays" / f"{target}.json"):
        if candidate.is_file():
            return candidate
    return Path(target)  # loading it reports the error


def find_opencode(explicit: str | None) -> str | None:
    """--opencode-bin, $OPENCODE_BIN, the repo's .tools install, then PATH."""
    if explicit:
        return explicit
    if os.environ.get("OPENCODE_BIN"):
        return os.environ["OPENCODE_BIN"]
    local = REPO_ROOT / ".tools" / "opencode" / "node_modules" / ".bin" / "opencode"
    if local.exists():
        return str(local)
    return shutil.which("opencode")


class Display:
    """The live progress line on stderr (rewritten in place on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last_plain = 0.0

    def progress(self, rec: records.ProgressRecord) -> None:
        line = progress_line(rec)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
        elif time.monotonic() - self._last_plain >= 5 or rec.stage != "running":
            self._last_plain = time.monotonic()
            self.out.write(line + "\n")
        self.out.flush()

    def event(self, rec: records.EventRecord) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        self.out.write(f"{prefix}  {rec.type:<8} {rec.message}\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()


UNSHARE_PROBE_TIMEOUT = 5.0


def isolation_prefix() -> list[str]:
    """The agent in its own user and PID namespaces when this machine allows it: it then sees
    none of this process (no /proc/PID/fd to write into, no environ to read). Blocking."""
    import subprocess

    # --kill-child: a SIGTERM to unshare (Ctrl-C) reaches the runner, PID 1 of the namespace.
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"]
    exe = shutil.which("unshare")
    if exe is None:
        return []
    try:
        done = subprocess.run([*argv, "true"], capture_output=True, timeout=UNSHARE_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return argv if done.returncode == 0 else []


async def run_agent(
    spec: RunnerSpec, *, workdir: Path, workspace: Path, opencode_bin: str, display: Display, isolate: list[str]
) -> int | None:
    """Run the agent role (``python -m buildstudio.runner agent``) and show its progress.

    Its stdout is its side of the story: progress and events are shown, and nothing it prints
    decides the outcome (``roles.report_build`` does, afterwards, in this process)."""
    spec_file = workdir / "spec.json"
    spec_file.write_text(dump_spec(spec), encoding="utf-8")
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR") if k in os.environ}
    env["OPENCODE_BIN"] = opencode_bin
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        *isolate,
        sys.executable,
        "-m",
        "buildstudio.runner",
        "agent",
        "--spec",
        str(spec_file),
        "--workspace",
        str(workspace),
        "--home",
        str(workdir / "home"),
        "--report",
        str(workdir / "agent-out" / "report.json"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        limit=16 * 1024 * 1024,
        start_new_session=True,
    )
    assert proc.stderr is not None
    relay_stderr = asyncio.ensure_future(_label_agent_stderr(proc.stderr))
    loop = asyncio.get_running_loop()

    def cancel() -> None:
        # The whole group: unshare blocks SIGTERM while it waits, the runner (its child) handles it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel)
    try:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line past the limit: skip it, keep reading
                continue
            if not raw:
                break
            rec = records.parse_line(raw)
            if isinstance(rec, records.ProgressRecord):
                display.progress(rec)
            elif isinstance(rec, records.EventRecord):
                display.event(rec)
        code = await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(relay_stderr, 5.0)
        return code
    finally:
        relay_stderr.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # Whatever the agent left running in its session ends with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        display.done()


async def _label_agent_stderr(stream: asyncio.StreamReader) -> None:
    """The agent's stderr, each line labelled as its own (it may print anything there)."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            continue
        if not raw:
            return
        text = raw.decode("utf-8", "replace").rstrip()
        if text:
            print(f"  agent stderr: {text[:500]}", file=sys.stderr)


async def run_roles(
    spec: RunnerSpec, *, workdir: Path, workspace: Path, opencode_bin: str, display: Display
) -> records.ResultRecord:
    """The sandbox pod's three roles as local processes: clone here, the agent in a child
    process (its own namespaces where possible), the report here once the agent has ended."""
    from buildstudio.runner import roles

    base = workdir / "base"
    (workdir / "agent-out").mkdir(parents=True, exist_ok=True)
    counters: tuple[int, int] | None = None
    error = await asyncio.to_thread(
        roles.clone_role, spec, ws=workspace, base=base, token=None, local_paths=True
    )
    if error is None:
        isolate = await asyncio.to_thread(isolation_prefix)
        how = "its own user+PID namespaces" if isolate else "no namespace isolation (unshare unavailable)"
        print(f"agent: {how}", file=sys.stderr)
        agent_spec = spec.model_copy(update={"repo": None})
        if spec.relay:
            from buildstudio.relay import Relay

            async with Relay(spec.base_url) as relay:
                print(f"tool-call repair relay on {relay.base_url} -> {spec.base_url}", file=sys.stderr)
                agent_spec = agent_spec.model_copy(update={"base_url": relay.base_url, "relay": False})
                await run_agent(agent_spec, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin,
                                display=display, isolate=isolate)
                counters = (relay.counters.repaired, relay.counters.left_as_text)
        else:
            await run_agent(agent_spec, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin,
                            display=display, isolate=isolate)
    result = await roles.report_build(
        spec,
        ws=workspace,
        base=base,
        claim_file=workdir / "agent-out" / "report.json",
        scratch=workdir / "report",
    )
    if error is None and counters is not None:
        result.summary.repaired_tool_calls, result.summary.unrepaired_tool_calls = counters
    return result


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _err(msg: str) -> None:
    print(f"buildstudio run --local: {msg}", file=sys.stderr)


async def _run(args: argparse.Namespace) -> int:
    fields: dict[str, str] = {}
    if args.dispatch:
        try:
            fields = dispatch_fields(yaml.safe_load(await asyncio.to_thread(_read_text, args.dispatch)))
        except (OSError, ValueError, yaml.YAMLError) as e:
            _err(f"cannot read {args.dispatch}: {e}")
            return 2
    for key in ("prompt", "repo", "ref", "model", "engine", "phase"):
        if getattr(args, key):
            fields[key] = getattr(args, key)
    problem = repo_problem(fields)
    if problem:
        _err(problem)
        return 2
    text_phase = fields.get("phase") in ("ideate", "plan")
    if fields.get("phase") in ("review", "ship"):
        _err(f"phase {fields['phase']} works on a finished dispatch's stored patch: run it on a cluster")
        return 2
    opencode_bin = find_opencode(args.opencode_bin) or ""
    if not opencode_bin and not text_phase:
        _err("opencode not found: install opencode-ai (npm install opencode-ai@<pin>) or set OPENCODE_BIN")
        return 2

    replay: Replay | None = None
    server: ScriptedServer | None = None
    if args.model_server:
        kind, _, target = args.model_server.partition(":")
        if kind != "replay" or not target:
            _err("--model-server takes replay:FILE (recorded model replies served on loopback)")
            return 2
        try:
            replay = load_replay(resolve_replay(target))
        except (OSError, ValueError) as e:
            _err(f"cannot load the replay {target}: {e}")
            return 2
        # A text phase sends no tools: every request must consume the script (no_aux).
        server = await ScriptedServer(replay.script, model=replay.model, no_aux=text_phase).start()
        base_url, service = server.base_url, f"replay:{target} on {server.base_url} (canned model replies)"
        fields.setdefault("model", replay.model)
        fields.setdefault("prompt", str(replay.metadata.get("prompt") or SAMPLE_PROMPT))
        print(f"REPLAY MODEL: the model's words are canned ({replay.name}: {replay.description})", file=sys.stderr)
    elif args.base_url:
        base_url, service = args.base_url, args.base_url
    else:
        found, tried, ids = await detect_service()
        if found is None:
            print(no_service_message(tried), file=sys.stderr)
            return 3
        base_url, service = found.base_url, f"{found.name} at {found.base_url}"
        if "model" not in fields and ids:
            fields["model"] = ids[0]
            print(f"model not given: using {ids[0]!r}, the first listed by {found.name}", file=sys.stderr)
    try:
        if "model" not in fields:
            _err("no model: pass --model or a dispatch with spec.model")
            return 2
        if "prompt" not in fields:
            fields["prompt"] = SAMPLE_PROMPT if not fields.get("repo") else ""
            if not fields["prompt"]:
                _err("no prompt: pass --prompt or a dispatch with spec.prompt")
                return 2
        decision = local_gate(fields, opencode_present=bool(opencode_bin))
        print(f"gate: {decision.reason}: {decision.message}", file=sys.stderr)
        if not decision.admit:
            return 3
        context = args.context
        if replay is None:
            context, ok = await _preflight(base_url, fields["model"], args.context)
            if not ok:
                return 3
        if text_phase:
            return await _text_phase(args, fields, base_url=base_url, service=service, context=context,
                                     replay=replay is not None)
        return await _dispatch(
            args,
            fields,
            base_url=base_url,
            service=service,
            context=context,
            replay=replay is not None,
            opencode_bin=opencode_bin,
            relay=decision.tool_call_repair if args.relay == "auto" else args.relay == "on",
        )
    finally:
        if server is not None:
            await server.stop()


async def _preflight(base_url: str, model: str, declared: int | None) -> tuple[int, bool]:
    """The same preflight as the operator's; returns (context for the config, admitted)."""
    from buildstudio.preflight import ProbeTarget, decide, probe

    obs = await probe(ProbeTarget(base_url=base_url), model)
    v = decide(obs, context_override=declared)
    print(f"preflight: {v.reason.value}: {v.message}", file=sys.stderr)
    if v.advice and (v.warning or not v.admit):
        print(f"  advice: {v.advice}", file=sys.stderr)
    return (v.context_for_config or declared or DEFAULT_CONTEXT), v.admit


async def _dispatch(
    args: argparse.Namespace,
    fields: dict[str, str],
    *,
    base_url: str,
    service: str,
    context: int,
    replay: bool,
    opencode_bin: str,
    relay: bool,
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="buildstudio-local-"))
    repo_label = fields.get("repo", "")
    if args.workspace:
        workspace, repo = Path(args.workspace), None  # made absolute in command()
        repo_label = f"{workspace} (in place)"
    elif fields.get("repo"):
        repo = RepoSource(url=fields["repo"], ref=fields.get("ref", ""), local_paths=True)
        workspace = workdir / "workspace"
        repo_label = f"{fields['repo']}@{fields.get('ref') or 'default'}"
    else:
        workspace, repo = workdir / "workspace", None
        await asyncio.to_thread(make_sample_repo, workspace)
        repo_label = "built-in sample repo (calc.py)"
    spec = RunnerSpec(
        prompt=fields["prompt"],
        repo=repo,
        model=fields["model"],
        base_url=base_url,
        context_limit=context,
        output_limit=min(args.output_limit, context // 2),
        timeouts=RunnerTimeouts(run_seconds=args.timeout, idle_seconds=min(args.idle_timeout, args.timeout)),
        limits=LoopLimits(step_budget=args.step_budget),
        relay=relay,
        replay=replay,
    )
    display = Display(sys.stderr)
    result = await run_roles(spec, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin, display=display)
    for scratch in ("home", "base", "report"):
        shutil.rmtree(workdir / scratch, ignore_errors=True)
    meta = {
        "model": fields["model"],
        "modelService": service,
        "repo": repo_label,
        "workspace": str(workspace),
        "replay": replay,
    }
    return _print_result(args, result, meta, tail=full_patch(result) or result.diff, empty="(no changes)")


def _print_result(
    args: argparse.Namespace, result: records.ResultRecord, meta: dict[str, Any], *, tail: str, empty: str
) -> int:
    out = sys.stdout
    if args.output == "json":
        out.write(json.dumps(record_view(result, meta), indent=2) + "\n")
    elif args.output == "yaml":
        out.write(yaml.safe_dump(record_view(result, meta), sort_keys=False, allow_unicode=True))
    else:
        out.write(record_table(result, meta) + "\n")
        if tail:
            out.write("\n" + tail + ("" if tail.endswith("\n") else "\n"))
        elif result.outcome.succeeded:
            out.write(f"\n{empty}\n")
    return 0 if result.outcome.succeeded else 1


async def _text_phase(
    args: argparse.Namespace,
    fields: dict[str, str],
    *,
    base_url: str,
    service: str,
    context: int,
    replay: bool,
) -> int:
    """ideate / plan: one chat completion with the model, no sandbox and no opencode."""
    from buildstudio.phases import run_phase

    display = Display(sys.stderr)
    run = await run_phase(
        fields["phase"],
        fields["prompt"],
        base_url=base_url,
        model=fields["model"],
        context=context,
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
    )
    for ev in run.events:
        display.event(ev)
    result = run.record.model_copy(update={"replay": replay})
    meta = {"model": fields["model"], "modelService": service, "phase": fields["phase"], "replay": replay}
    return _print_result(args, result, meta, tail=result.summary.final_text, empty="(empty answer)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dispatch", nargs="?", help="BuildDispatch manifest (YAML); flags override its fields")
    p.add_argument(
        "--local",
        action="store_true",
        required=True,
        help="run here as local processes (the only mode of this command so far)",
    )
    p.add_argument("--prompt", help="the task (default with the sample repo: the quick-start task)")
    p.add_argument("--repo", help="git URL or path to clone (default: a sample repo in a temp dir)")
    p.add_argument("--ref", help="branch, tag or commit")
    p.add_argument("--workspace", help="work IN PLACE in this existing git repo instead of cloning")
    p.add_argument("--model", help="model id (default: the dispatch's, or the first the service lists)")
    p.add_argument("--engine", help="BuildEngine name (default: auto-detected by the capability gate)")
    p.add_argument("--phase", choices=["ideate", "plan", "build"], help="pipeline phase (default: build)")
    p.add_argument(
        "--relay",
        choices=["auto", "on", "off"],
        default="auto",
        help="tool-call repair relay (auto: as the gate decides, i.e. for models whose supportsToolUse is false)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1")
    src.add_argument(
        "--model-server",
        metavar="replay:FILE",
        help="serve recorded model replies on loopback (e.g. replay:examples/replays/add-subtract.json)",
    )
    p.add_argument("--context", type=int, default=None, help="declared context window (tokens) of the model")
    p.add_argument("--output-limit", type=int, default=DEFAULT_OUTPUT, help="max tokens per model reply")
    p.add_argument("--timeout", type=float, default=1800.0, help="run timeout, seconds")
    p.add_argument("--idle-timeout", type=float, default=300.0, help="idle timeout, seconds")
    p.add_argument("--step-budget", type=int, default=200, help="most model steps")
    p.add_argument("--opencode-bin", help="opencode binary (default: $OPENCODE_BIN, .tools/, PATH)")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")


def command(args: argparse.Namespace) -> int:
    if args.workspace:
        args.workspace = str(Path(args.workspace).resolve())
    if args.repo and not args.repo.startswith("file://") and inputs.local_path(args.repo) is not None:
        args.repo = str(Path(args.repo).resolve())  # `--repo .`: wherever the clone runs
    if args.context is None:
        args.context = DEFAULT_CONTEXT if args.model_server else None
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("run", help="run one dispatch (--local: here, without a cluster)", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)
    p.set_defaults(func=command)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="buildstudio run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    return command(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
