"""``buildstudio run --local``: one dispatch as local processes, no cluster.

The same runner as in the sandbox pod (``python -m buildstudio.runner``, as a subprocess whose
record lines are read here), the same preflight against the model service, a live progress line
on stderr, and at the end the dispatch record and the whole patch (-o table, yaml or json), or
only the patch, ready for `git apply` (-o patch).

Model service: ``--base-url URL``; or ``--model-server replay:FILE``, recorded model replies
served on loopback by the project's scripted server (opencode, its tools and the diff are real;
only the model's words are canned, and every output says so); else the first local service that
answers on its default port (DMR, Ollama, llama.cpp, vLLM, LM Studio).

With no repository given, a tiny sample repository is created in a temp directory. Each run's
temp directory is removed at the end (--keep keeps it and says where). Every input is validated
before any work, through the CRD's models; errors are one line (see the exit codes below).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
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

from buildstudio import localbase, records
from buildstudio.clierrors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, CliError
from buildstudio.core import inputs
from buildstudio.gate import GateDecision
from buildstudio.pins import API_GROUP, API_VERSION
from buildstudio.runner.spec import LoopLimits, RepoSource, RunnerSpec, RunnerTimeouts, dump_spec
from buildstudio.scripted_server import Replay, ScriptedServer, load_replay
from buildstudio.verdict import plural

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


def patch_note(result: records.ResultRecord, workspace: str) -> str:
    """Where the whole patch is when the record cannot carry it ("" when it does, or there is none)."""
    if not result.patch.truncated:
        return ""
    return (
        f"the whole patch ({result.patch.bytes} bytes) is over the record's cap; the changes are in {workspace}"
        " (run `git -C WORKSPACE diff` there)"
    )


def record_view(result: records.ResultRecord, meta: dict[str, Any]) -> dict[str, Any]:
    """The dispatch record as plain data (yaml/json output), with the whole patch as text under
    ``patch`` (``result.diff`` is the bounded excerpt the cluster's status keeps)."""
    view = dict(meta)
    view["result"] = result.model_dump(mode="json", by_alias=True, exclude={"patch"})
    view["result"]["patch"] = {k: v for k, v in result.patch.model_dump(by_alias=True).items() if k != "data"}
    if "phase" not in meta:  # a build (text phases have no patch)
        view["patch"] = full_patch(result) or ""
        note = patch_note(result, str(meta.get("workspace", "the workspace")))
        if note:
            view["patchNote"] = note
    return view


def record_table(result: records.ResultRecord, meta: dict[str, Any]) -> str:
    s, d = result.summary, result.diff_stat
    build = "phase" not in meta  # text phases (ideate, plan) have no tools, no repository, no diff
    rows = [
        ("OUTCOME", f"{result.outcome.value} ({'succeeded' if result.outcome.succeeded else 'failed'})"),
        ("MESSAGE", result.message),
        ("MODEL", meta["model"]),
        ("MODEL SERVICE", meta["modelService"]),
        *([("PHASE", meta["phase"])] if "phase" in meta else []),
        *([("REPO", meta["repo"]), ("WORKSPACE", meta["workspace"])] if "repo" in meta else []),
        *([("BASE COMMIT", result.base_commit[:12] + meta.get("baseNote", ""))] if result.base_commit else []),
        *([("STEPS", str(s.steps))] if build else []),
        *(
            [(
                "TOOL CALLS",
                f"{s.tool_calls} ({plural(s.tool_errors, 'error')})  "
                + ", ".join(f"{k} x{v}" for k, v in s.tools_by_name.items()),
            )]
            if build
            else []
        ),
        ("TOKENS", f"{s.tokens.total} (in {s.tokens.input}, out {s.tokens.output})"),
        *(
            [(
                "FILES",
                f"{d.files} changed, +{d.additions} -{d.deletions}"
                + (f", {d.binary_files} binary" if d.binary_files else ""),
            )]
            if build
            else []
        ),
        ("DURATION", f"{result.duration_seconds:.1f}s"),
    ]
    if result.replay:
        real = "; tools and diff are real" if build else ""
        rows.insert(3, ("REPLAY", f"yes: the model's words were canned (recorded replies){real}"))
    if s.final_text:
        rows.append(("FINAL ANSWER", " ".join(s.final_text.split())[:300]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# Where a field of the spec comes from when given on the command line (for error messages).
FLAG_OF = {
    "spec.timeouts.runSeconds": "--timeout",
    "spec.timeouts.idleSeconds": "--idle-timeout",
    "spec.stepBudget": "--step-budget",
    "spec.prompt": "--prompt",
    "spec.model": "--model",
    "spec.engine": "--engine",
    "spec.phase": "--phase",
    "spec.repo.url": "--repo",
    "spec.repo.ref": "--ref",
}
DEFAULT_IDLE_SECONDS = 300
DEFAULT_STEP_BUDGET = 200


def local_spec(manifest_spec: dict[str, Any] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The BuildDispatch spec of this run: the manifest's (if any), each flag given filling or
    overriding its field (``--repo`` replaces the whole ``repo``). Pure; validated afterwards."""
    spec = copy.deepcopy(manifest_spec or {})
    for key in ("prompt", "model", "engine", "phase"):
        if flags.get(key) is not None:
            spec[key] = flags[key]
    if flags.get("repo") is not None:
        spec["repo"] = {"url": flags["repo"]}
    if flags.get("ref") is not None:
        raw = spec.get("repo")
        repo: dict[str, Any] = raw if isinstance(raw, dict) else {}
        spec["repo"] = {**repo, "ref": flags["ref"]}
    timeouts = dict(spec["timeouts"]) if isinstance(spec.get("timeouts"), dict) else {}
    if flags.get("timeout") is not None:
        timeouts["runSeconds"] = flags["timeout"]
    if flags.get("idle_timeout") is not None:
        timeouts["idleSeconds"] = flags["idle_timeout"]
    run = timeouts.get("runSeconds")
    if "idleSeconds" not in timeouts and isinstance(run, int) and 10 <= run < DEFAULT_IDLE_SECONDS:
        timeouts["idleSeconds"] = run  # a short run gets an idle limit that fits it
    if timeouts:
        spec["timeouts"] = timeouts
    if flags.get("step_budget") is not None:
        spec["stepBudget"] = flags["step_budget"]
    return spec


def spec_errors(spec: dict[str, Any], *, stand_in_repo: str | None) -> list[str]:
    """What the apiserver would say of this spec (``manifest_errors``), each error naming its flag.
    ``stand_in_repo``: the local repository a build uses when the spec names none (the sample
    repository, or ``--workspace``), so that "build needs spec.repo" holds for it."""
    checked = dict(spec)
    if stand_in_repo is not None and "repo" not in checked:
        checked["repo"] = {"url": stand_in_repo}
    manifest = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "BuildDispatch",
                "metadata": {"name": "local"}, "spec": checked}  # fmt: skip
    out = []
    for err in manifest_errors(manifest):
        path = err.split(":", 1)[0]
        flag = FLAG_OF.get(path)
        out.append(f"{path} ({flag}):{err.split(':', 1)[1]}" if flag else err)
    return out


def spec_fields(spec: dict[str, Any]) -> dict[str, str]:
    """prompt / repo / ref / model / engine / phase of a validated spec, as ``dispatch_fields``."""
    raw = spec.get("repo")
    repo: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out = {
        "prompt": spec.get("prompt"),
        "repo": repo.get("url"),
        "ref": repo.get("ref"),
        "model": spec.get("model"),
        "engine": spec.get("engine"),
        "phase": spec.get("phase"),
    }
    return {k: str(v) for k, v in out.items() if v is not None and v != ""}


def gate_line(decision: GateDecision, *, relay: bool, text_phase: bool) -> str:
    """The gate's verdict as it will really run: "with tool-call repair" only when the relay runs."""
    message = decision.message.replace(" with tool-call repair", "")
    if decision.admit and not text_phase:
        if relay:
            message += " with tool-call repair (relay on)"
        elif decision.tool_call_repair:
            message += " (tool-call repair off: --relay off)"
    return f"gate: {decision.reason}: {message}"


def replay_phase(replay_meta: dict[str, Any], asked: str | None, name: str) -> str | None:
    """The phase of a run on a replay: the replay declares the phase it recorded; asking for
    another is an error (a plan replay must not silently drive a build)."""
    declared = replay_meta.get("phase")
    if declared is None:
        return asked
    if asked is not None and asked != declared:
        raise CliError(
            f"replay {name}",
            f"it records a {declared} conversation, not {asked}",
            f"drop --phase (or the manifest's spec.phase) or pass --phase {declared}",
        )
    return str(declared)


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
    spec: RunnerSpec,
    *,
    workdir: Path,
    workspace: Path,
    opencode_bin: str,
    display: Display,
    snapshot: bool = False,
) -> records.ResultRecord:
    """The sandbox pod's three roles as local processes: clone here, the agent in a child
    process (its own namespaces where possible), the report here once the agent has ended.
    ``snapshot`` (``--allow-dirty``): the base is the work tree as it is now, not its HEAD."""
    from buildstudio.runner import roles

    base = workdir / "base"
    (workdir / "agent-out").mkdir(parents=True, exist_ok=True)
    counters: tuple[int, int] | None = None
    error = await asyncio.to_thread(
        roles.clone_role, spec, ws=workspace, base=base, token=None, local_paths=True
    )
    if error is None and snapshot:
        try:
            head = (base / roles.BASE_COMMIT).read_text(encoding="utf-8").strip()
            sha = await asyncio.to_thread(
                localbase.snapshot_base, workspace, base, workdir / "snapshot",
                max_copy_bytes=spec.output.copy_max_bytes,
            )  # fmt: skip
            if sha != head:
                print(f"base: {sha[:12]}, a snapshot of the uncommitted work tree on HEAD {head[:12]};"
                      " the diff shows only the agent's changes", file=sys.stderr)  # fmt: skip
        except (localbase.SnapshotError, OSError) as e:
            # Never diff against HEAD instead: the user's own edits would be reported as the agent's.
            error = f"cannot snapshot the uncommitted work tree of {workspace}: {e}"
            (base / roles.CLONE_ERROR).write_text(error, encoding="utf-8")
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


def _note(msg: str) -> None:
    print(f"buildstudio run --local: {msg}", file=sys.stderr)


def _load_manifest(path: str) -> dict[str, Any]:
    try:
        manifest = yaml.safe_load(_read_text(path))
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {path}", getattr(e, "strerror", None) or str(e), "check the path") from e
    except yaml.YAMLError as e:
        raise CliError(f"cannot read {path}", f"not valid YAML ({e})", "fix the file") from e
    if not isinstance(manifest, dict) or manifest.get("kind") not in (None, "BuildDispatch"):
        raise CliError(f"cannot use {path}", "it is not a BuildDispatch manifest", "pass a BuildDispatch YAML file")
    if not isinstance(manifest.get("spec"), dict):
        raise CliError(f"cannot use {path}", "the manifest has no spec", "add spec.prompt, spec.repo, …")
    return manifest


def _load_replay(model_server: str) -> tuple[Replay, str]:
    kind, _, target = model_server.partition(":")
    if kind != "replay" or not target:
        raise CliError(f"--model-server {model_server}", "not of the form replay:FILE",
                       "e.g. --model-server replay:examples/replays/add-subtract.json")  # fmt: skip
    try:
        return load_replay(resolve_replay(target)), target
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the replay {target}", str(e), "check the file (examples/replays/)") from e


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("prompt", "repo", "ref", "model", "engine", "phase", "timeout", "idle_timeout", "step_budget")
    return {k: getattr(args, k) for k in keys}


def _check_workspace(args: argparse.Namespace, fields: dict[str, str]) -> None:
    """--workspace on a dirty tree is refused (unless --allow-dirty); --repo PATH with
    uncommitted work is told that the clone leaves it out."""
    if args.workspace:
        changes = localbase.worktree_changes(Path(args.workspace))
        if changes is None:
            raise CliError(f"--workspace {args.workspace}", "not a git work tree (the diff needs one)",
                           "pass the top of a git repository, or `git init` and commit it")  # fmt: skip
        if changes and not args.allow_dirty:
            raise CliError(
                f"--workspace {args.workspace}",
                f"the work tree has uncommitted changes ({localbase.changes_summary(changes)}) that the diff"
                " would report as the agent's",
                "commit or stash them, or pass --allow-dirty (the base is then a snapshot of the work tree as it is)",
            )
        return
    repo = fields.get("repo", "")
    path = inputs.local_path(repo) if repo else None
    if path is not None and Path(path).is_dir():
        changes = localbase.worktree_changes(Path(path))
        if changes:
            _note(
                f"warning: {repo} has uncommitted changes ({localbase.changes_summary(changes)}); the run clones"
                f" its committed {fields.get('ref') or 'HEAD'} and leaves them out (commit them, or work in place"
                " with --workspace PATH --allow-dirty)"
            )


async def _run(args: argparse.Namespace) -> int:
    """Everything is validated before any work: the manifest and the flags as one spec through the
    CRD's models and rules, the prompt, the replay's phase, the workspace."""
    manifest = _load_manifest(args.dispatch) if args.dispatch else None
    replay: Replay | None = None
    replay_name = ""
    if args.model_server:
        replay, replay_name = _load_replay(args.model_server)
    spec = local_spec(manifest["spec"] if manifest else None, _flags(args))
    if replay is not None:
        spec.setdefault("model", replay.model)
        phase = replay_phase(replay.metadata, spec.get("phase"), replay_name)
        if phase is not None:
            spec["phase"] = phase
    text_phase = spec.get("phase") in ("ideate", "plan")
    if "prompt" not in spec:
        if replay is not None and replay.metadata.get("prompt"):
            spec["prompt"] = str(replay.metadata["prompt"])
        elif spec.get("repo") or args.workspace:
            raise CliError("no prompt", "a repository was given but no task",
                           "pass --prompt TEXT, --prompt-file FILE, --prompt - (stdin) or spec.prompt")  # fmt: skip
        else:
            spec["prompt"] = SAMPLE_PROMPT
    if not str(spec["prompt"]).strip():
        raise CliError("empty prompt", "the task has no text", "pass --prompt TEXT, --prompt-file FILE or --prompt -")
    if args.output == "patch" and text_phase:
        raise CliError("-o patch", f"a {spec['phase']} run writes text, no patch", "use -o table, yaml or json")
    stand_in = None if text_phase else (args.workspace or "file:///buildstudio-sample")
    errors = spec_errors(spec, stand_in_repo=stand_in)
    if errors:
        raise CliError("invalid BuildDispatch", "; ".join(errors), "fix the flags or the manifest")
    fields = spec_fields(spec)
    problem = repo_problem(fields)
    if problem:
        raise CliError("refusing the repository", problem, "pass a plain git URL or path, and a branch, tag or sha")
    if fields.get("phase") in ("review", "ship"):
        raise CliError(f"phase {fields['phase']}", "it works on a finished dispatch's stored patch",
                       "run it on a cluster (buildstudio submit)")  # fmt: skip
    timeouts = spec.get("timeouts") or {}
    args.timeout = int(timeouts.get("runSeconds", 1800))
    args.idle_timeout = int(timeouts.get("idleSeconds", DEFAULT_IDLE_SECONDS))
    args.step_budget = int(spec.get("stepBudget") or DEFAULT_STEP_BUDGET)
    opencode_bin = find_opencode(args.opencode_bin) or ""
    if not opencode_bin and not text_phase:
        raise CliError("opencode not found", "no binary in --opencode-bin, $OPENCODE_BIN, .tools/ or PATH",
                       "run `make setup`, or npm install opencode-ai@<pin>, or set OPENCODE_BIN")  # fmt: skip
    if not text_phase:
        await asyncio.to_thread(_check_workspace, args, fields)

    server: ScriptedServer | None = None
    if replay is not None:
        # A text phase sends no tools: every request must consume the script (no_aux).
        server = await ScriptedServer(replay.script, model=replay.model, no_aux=text_phase).start()
        base_url = server.base_url
        service = f"replay:{replay_name} on {server.base_url} (canned model replies)"
        print(f"REPLAY MODEL: the model's words are canned ({replay.name}: {replay.description})", file=sys.stderr)
    elif args.base_url:
        base_url, service = args.base_url, args.base_url
    else:
        found, tried, ids = await detect_service()
        if found is None:
            print(no_service_message(tried), file=sys.stderr)
            return EXIT_REFUSED
        base_url, service = found.base_url, f"{found.name} at {found.base_url}"
        if "model" not in fields and ids:
            fields["model"] = ids[0]
            print(f"model not given: using {ids[0]!r}, the first listed by {found.name}", file=sys.stderr)
    try:
        if "model" not in fields:
            raise CliError("no model", "none given and the service lists none", "pass --model or spec.model")
        decision = local_gate(fields, opencode_present=bool(opencode_bin))
        relay = decision.tool_call_repair if args.relay == "auto" else args.relay == "on"
        print(gate_line(decision, relay=relay, text_phase=text_phase), file=sys.stderr)
        if not decision.admit:
            return EXIT_REFUSED
        context = args.context
        if replay is None:
            context, ok = await _preflight(base_url, fields["model"], args.context)
            if not ok:
                return EXIT_REFUSED
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
            relay=relay,
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
    keep = bool(args.keep)
    try:
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
            timeouts=RunnerTimeouts(run_seconds=args.timeout, idle_seconds=args.idle_timeout),
            limits=LoopLimits(step_budget=args.step_budget),
            relay=relay,
            replay=replay,
        )
        display = Display(sys.stderr)
        result = await run_roles(spec, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin,
                                 display=display, snapshot=bool(args.workspace and args.allow_dirty))  # fmt: skip
        for scratch in ("home", "base", "report", "snapshot"):
            shutil.rmtree(workdir / scratch, ignore_errors=True)
        # A patch over the record's cap is only in the workspace: keep it, and say so.
        keep = keep or (result.patch.truncated and not args.workspace)
        meta = {
            "model": fields["model"],
            "modelService": service,
            "repo": repo_label,
            "workspace": workspace_label(workspace, in_place=bool(args.workspace), kept=keep),
            "replay": replay,
        }
        if args.workspace and args.allow_dirty:
            meta["baseNote"] = " (a snapshot of the uncommitted work tree: --allow-dirty)"
        return _print_result(args, result, meta, tail=full_patch(result) or result.diff, empty="(no changes)")
    finally:
        if not keep:
            await asyncio.to_thread(shutil.rmtree, workdir, True)


def workspace_label(workspace: Path, *, in_place: bool, kept: bool) -> str:
    if in_place:
        return f"{workspace} (in place)"
    if kept:
        return f"{workspace} (kept; remove {workspace.parent} when done)"
    return "removed after the run (--keep keeps it)"


def _print_result(
    args: argparse.Namespace, result: records.ResultRecord, meta: dict[str, Any], *, tail: str, empty: str
) -> int:
    out = sys.stdout
    if args.output == "patch":
        patch = full_patch(result) or ""
        note = patch_note(result, meta.get("workspace", "the workspace"))
        out.write(patch)
        out.flush()
        print(f"{result.outcome.value}: {result.message}", file=sys.stderr)
        if note:
            _note(note)
            return EXIT_FAILED
    elif args.output == "json":
        out.write(json.dumps(record_view(result, meta), indent=2) + "\n")
    elif args.output == "yaml":
        out.write(yaml.safe_dump(record_view(result, meta), sort_keys=False, allow_unicode=True))
    else:
        out.write(record_table(result, meta) + "\n")
        if tail:
            out.write("\n" + tail + ("" if tail.endswith("\n") else "\n"))
        elif result.outcome.succeeded:
            out.write(f"\n{empty}\n")
        note = patch_note(result, meta.get("workspace", "the workspace"))
        if note:
            _note(f"the diff above is an excerpt: {note}")
    return exit_code(result.outcome)


def exit_code(outcome: records.Outcome) -> int:
    """0 succeeded, 130 interrupted (a local run is cancelled only by Ctrl-C or SIGTERM), else 1."""
    if outcome.succeeded:
        return 0
    return EXIT_INTERRUPTED if outcome is records.Outcome.CANCELLED else EXIT_FAILED


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
    p.add_argument(
        "dispatch", nargs="?", help="BuildDispatch manifest (YAML); each flag given fills or overrides its field"
    )
    p.add_argument(
        "--local",
        action="store_true",
        required=True,
        help="run here as local processes (the only mode of this command so far)",
    )
    task = p.add_mutually_exclusive_group()
    task.add_argument(
        "--prompt",
        help="the task, verbatim; `-` reads it from stdin (default with the sample repo: the quick-start task)",
    )
    task.add_argument("--prompt-file", metavar="FILE", help="read the task from FILE (UTF-8, up to 256 Ki characters)")
    p.add_argument("--repo", help="git URL or path to clone; `.` clones this repo's committed HEAD "
                   "(default: a sample repo in a temp dir)")  # fmt: skip
    p.add_argument("--ref", help="branch, tag or commit of --repo (default: its default branch)")
    p.add_argument("--workspace", metavar="PATH", help="work IN PLACE in this git work tree instead of cloning "
                   "(refused when it has uncommitted changes, unless --allow-dirty)")  # fmt: skip
    p.add_argument("--allow-dirty", action="store_true", help="with --workspace: accept uncommitted changes; the "
                   "diff is then taken against a snapshot of the work tree as it was (only the agent's changes)")
    p.add_argument("--model", help="model id (default: the manifest's or the replay's; with auto-detection of the "
                   "service, the first model it lists)")  # fmt: skip
    p.add_argument("--engine", help="BuildEngine name (default: auto-detected by the capability gate)")
    p.add_argument("--phase", choices=["ideate", "plan", "build"], help="pipeline phase (default: the manifest's, "
                   "the replay's, else build)")  # fmt: skip
    p.add_argument(
        "--relay",
        choices=["auto", "on", "off"],
        default="auto",
        help="tool-call repair relay (auto: as the gate decides, i.e. for models whose supportsToolUse is false)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1 "
                     "(default: the first local service that answers on its default port)")  # fmt: skip
    src.add_argument(
        "--model-server",
        metavar="replay:FILE",
        help="serve recorded model replies on loopback (e.g. replay:examples/replays/add-subtract.json)",
    )
    p.add_argument("--context", type=int, default=None,
                   help="declared context window (tokens) of the model (default: what the preflight measures)")
    p.add_argument("--output-limit", type=int, default=DEFAULT_OUTPUT, help="max tokens per model reply")
    p.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                   help="run timeout, 30..86400 (default: the manifest's, else 1800)")  # fmt: skip
    p.add_argument("--idle-timeout", type=int, default=None, metavar="SECONDS",
                   help="longest silence of the engine, 10..86400, at most --timeout "
                   "(default: the manifest's, else 300)")  # fmt: skip
    p.add_argument("--step-budget", type=int, default=None, metavar="N",
                   help="most model steps, 1..10000 (default: the manifest's, else 200)")  # fmt: skip
    p.add_argument("--opencode-bin", help="opencode binary (default: $OPENCODE_BIN, .tools/, PATH)")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's temp directory (workspace with the agent's changes) and print where")
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml", "json", "patch"],
        default="table",
        help="table (default); yaml/json: the record with the whole patch under `patch`; patch: only the patch, "
        "for `git apply`",
    )


MAX_PROMPT_BYTES = 4 * 262_144  # the CRD's 256 Ki characters, at most 4 bytes each


def read_prompt(args: argparse.Namespace, stdin: TextIO) -> None:
    """``--prompt -`` and ``--prompt-file FILE`` become the prompt text (bounded, UTF-8)."""
    if args.prompt == "-":
        what, text = "--prompt - (stdin)", stdin.read(MAX_PROMPT_BYTES + 1)
    elif args.prompt_file is not None:
        what = f"--prompt-file {args.prompt_file}"
        try:
            with Path(args.prompt_file).open("rb") as f:
                raw = f.read(MAX_PROMPT_BYTES + 1)
            text = raw.decode("utf-8")
        except OSError as e:
            raise CliError(f"cannot read {what}", e.strerror or str(e), "check the path") from e
        except UnicodeDecodeError as e:
            raise CliError(f"cannot read {what}", f"not UTF-8 text ({e.reason})", "save it as UTF-8") from e
    else:
        return
    if len(text) > MAX_PROMPT_BYTES:
        raise CliError(what, "longer than 256 Ki characters (the CRD's limit)", "shorten the task")
    args.prompt = text


def command(args: argparse.Namespace) -> int:
    read_prompt(args, sys.stdin)
    if args.allow_dirty and not args.workspace:
        raise CliError("--allow-dirty", "it applies to --workspace only", "add --workspace PATH, or drop it")
    if args.workspace:
        args.workspace = str(Path(args.workspace).resolve())
    if args.repo and not args.repo.startswith("file://") and inputs.local_path(args.repo) is not None:
        args.repo = str(Path(args.repo).resolve())  # `--repo .`: wherever the clone runs
    if args.context is None:
        args.context = DEFAULT_CONTEXT if args.model_server else None
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("buildstudio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "run",
        help="run one dispatch (--local: here, without a cluster)",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)
    p.set_defaults(func=command)


def main(argv: Sequence[str] | None = None) -> int:
    from buildstudio.cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
