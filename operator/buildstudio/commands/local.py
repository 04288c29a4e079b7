"""``buildstudio run --local``: one dispatch as local processes, no cluster.

The same runner as in the sandbox pod (``python -m buildstudio.sandbox.runner``, as a subprocess whose
record lines are read here), the same preflight against the model service, a live progress line
on stderr, and at the end the dispatch record and the whole patch (-o table, yaml or json), or
only the patch, ready for `git apply` (-o patch).

Model service: ``--base-url URL``; or ``--model-server replay:FILE``, recorded model replies
served on loopback by the project's scripted server (opencode, its tools and the diff are real;
only the model's words are canned, and every output says so); else the first local service that
answers on its default port (DMR, Ollama, llama.cpp, vLLM, LM Studio).

Engine: opencode by default; ``--engine claude|codex|grok`` runs that CLI (from $CLAUDE_BIN …,
.tools/engines/bin/ or PATH) through the same runner, behind a credential relay: on a replay (the
scripted server speaks its API), on ``--base-url`` (a model service, same preflight and gate), or
on its vendor's API with the key from the variable the registry names (``local_engine``).

With no repository given, a tiny sample repository is created in a temp directory. Each run's
temp directory is removed at the end (--keep keeps it and says where). Every input is validated
before any work, through the CRD's models; errors are one line (see the exit codes below).

This module is the run's order of steps (validate, gate, preflight, spec, run, result); beside it
``local_spec`` (the dispatch spec from the manifest and the flags), ``local_services`` (the model
service: detected or a replay), ``local_sandbox`` (the sandbox's roles as local processes),
``localbase`` (the work tree: sample repository, snapshot) and ``local_display`` (what is shown).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from buildstudio.api import inputs
from buildstudio.api.dispatch import TEXT_PHASES
from buildstudio.commands import localbase
from buildstudio.commands.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, CliError
from buildstudio.commands.local_display import Display, full_patch, gate_line, note, print_result, workspace_label
from buildstudio.commands.local_engine import CloudCli, ReplayServer, ScriptFor, cloud_cli, engines_for_gate, vendor_key
from buildstudio.commands.local_sandbox import run_roles
from buildstudio.commands.local_services import detect_service, no_service_message, replay_server
from buildstudio.commands.local_spec import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_RUN_SECONDS,
    DEFAULT_STEP_BUDGET,
    local_spec,
    replay_phase,
    repo_problem,
    spec_errors,
    spec_fields,
)
from buildstudio.commands.scripted_server import Replay, ScriptedServer
from buildstudio.core import runner_spec
from buildstudio.core.gate import GateDecision
from buildstudio.protocol import records
from buildstudio.protocol.spec import RepoSource
from buildstudio.sandbox.runner.launch import find_engine, find_opencode

DEFAULT_OUTPUT = 8192  # --output-limit: tokens per model reply, at most half the context (core.runner_spec)


@dataclass(frozen=True)
class ModelService:
    """The model service this run talks to, once found and checked."""

    base_url: str
    label: str  # what the record says of it
    context: int  # tokens, measured by the preflight or declared
    replay: bool  # recorded replies (--model-server replay:FILE)
    # A cloud CLI's replay: the script in its own tools, once the workspace path is known.
    script_for: ScriptFor | None = None
    api_key: str | None = None  # the vendor key, for the relay only (never the engine)


def local_gate(
    fields: dict[str, str],
    *,
    opencode_present: bool,
    present: dict[str, bool] | None = None,
    local_service: str | None = None,
) -> GateDecision:
    """The operator's capability gate over the registry, with what this machine has: the local
    engine is present when opencode was found, a cloud engine when ``present`` says so (its CLI
    found, and its key where the vendor needs one). ``local_service``: the base URL the engine named
    in ``fields`` runs on, judged as a local engine there (a cloud CLI on a model service)."""
    from buildstudio.adapters import registry
    from buildstudio.api.dispatch import BuildDispatchSpec
    from buildstudio.core.gate import EngineState, decide

    rows = [(e.name, e.spec) for e in registry.load()]
    on_service = (fields["engine"], local_service) if local_service and fields.get("engine") else None
    engines = [
        EngineState(name, spec, present=ok)
        for name, spec, ok in engines_for_gate(
            rows, opencode_present=opencode_present, present=present or {}, local_service=on_service
        )
    ]
    spec = BuildDispatchSpec.model_validate(
        {k: fields[k] for k in ("prompt", "model", "engine", "phase") if fields.get(k)}
    )
    return decide(engines, spec)


def _load_manifest(path: str) -> dict[str, Any]:
    try:
        manifest = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {path}", getattr(e, "strerror", None) or str(e), "check the path") from e
    except yaml.YAMLError as e:
        raise CliError(f"cannot read {path}", f"not valid YAML ({e})", "fix the file") from e
    if not isinstance(manifest, dict) or manifest.get("kind") not in (None, "BuildDispatch"):
        raise CliError(f"cannot use {path}", "it is not a BuildDispatch manifest", "pass a BuildDispatch YAML file")
    if not isinstance(manifest.get("spec"), dict):
        raise CliError(f"cannot use {path}", "the manifest has no spec", "add spec.prompt, spec.repo, …")
    return manifest


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
            note(
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
        replay, replay_name = replay_server(args.model_server)
    spec = local_spec(manifest["spec"] if manifest else None, _flags(args))
    cloud = cloud_cli(spec.get("engine"))
    if cloud is not None and "model" not in spec and not args.base_url and cloud.default_model:
        # The engine's own model id (codex chooses its tools by it), not the replay's.
        spec["model"] = cloud.default_model
    if replay is not None:
        spec.setdefault("model", replay.model)
        phase = replay_phase(replay.metadata, spec.get("phase"), replay_name)
        if phase is not None:
            spec["phase"] = phase
    text_phase = spec.get("phase") in TEXT_PHASES
    if "prompt" not in spec:
        if replay is not None and replay.metadata.get("prompt"):
            spec["prompt"] = str(replay.metadata["prompt"])
        elif spec.get("repo") or args.workspace:
            raise CliError("no prompt", "a repository was given but no task",
                           "pass --prompt TEXT, --prompt-file FILE, --prompt - (stdin) or spec.prompt")  # fmt: skip
        else:
            spec["prompt"] = localbase.SAMPLE_PROMPT
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
    args.timeout = int(timeouts.get("runSeconds", DEFAULT_RUN_SECONDS))
    args.idle_timeout = int(timeouts.get("idleSeconds", DEFAULT_IDLE_SECONDS))
    args.step_budget = int(spec.get("stepBudget") or DEFAULT_STEP_BUDGET)
    opencode_bin = find_opencode(args.opencode_bin) or ""
    if text_phase:
        cloud = None  # one chat completion on the model service: no engine runs (the gate judges the rest)
    engine_bin = (find_engine(cloud.adapter.binary) or "") if cloud is not None else ""
    if cloud is not None and not engine_bin:
        name = cloud.adapter.binary
        raise CliError(f"{name} not found", f"no binary in ${name.upper()}_BIN, .tools/engines/bin/ or PATH",
                       f"run hack/install-engines.sh {name}, or set {name.upper()}_BIN")  # fmt: skip
    if cloud is None and not opencode_bin and not text_phase:
        raise CliError("opencode not found", "no binary in --opencode-bin, $OPENCODE_BIN, .tools/ or PATH",
                       "run `make setup`, or npm install opencode-ai@<pin>, or set OPENCODE_BIN")  # fmt: skip
    if not text_phase:
        await asyncio.to_thread(_check_workspace, args, fields)

    server: ScriptedServer | ReplayServer | None = None
    script_for: ScriptFor | None = None
    api_key: str | None = None
    vendor = cloud is not None and replay is None and not args.base_url
    if replay is not None and cloud is not None:
        # The scripted server speaks the engine's API; the replay's tool calls become its tools.
        server = await ReplayServer(cloud.kind, replay).start()
        script_for = server.set_workspace
        base_url = server.base_url
        service = f"replay:{replay_name} on {server.base_url} as the {cloud.kind} API (canned model replies)"
        print(f"REPLAY MODEL: the model's words are canned ({replay.name}: {replay.description})", file=sys.stderr)
    elif replay is not None:
        # A text phase sends no tools: every request must consume the script (no_aux).
        server = await ScriptedServer(replay.script, model=replay.model, no_aux=text_phase).start()
        base_url = server.base_url
        service = f"replay:{replay_name} on {server.base_url} (canned model replies)"
        print(f"REPLAY MODEL: the model's words are canned ({replay.name}: {replay.description})", file=sys.stderr)
    elif args.base_url:
        base_url, service = args.base_url, args.base_url
    elif cloud is not None:
        api_key = vendor_key(cloud, os.environ)
        base_url = cloud.adapter.vendor_base_url
        service = f"{cloud.kind} vendor API {base_url} (key from ${cloud.key_env}, held by the relay)"
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
        present = {cloud.name: True} if cloud is not None else {}
        on_service = base_url if cloud is not None and replay is None and not vendor else None
        decision = local_gate(fields, opencode_present=bool(opencode_bin), present=present, local_service=on_service)
        relay = decision.tool_call_repair if args.relay == "auto" else args.relay == "on"
        print(gate_line(decision, relay=relay, text_phase=text_phase), file=sys.stderr)
        if not decision.admit:
            return EXIT_REFUSED
        context = args.context
        if vendor:
            context = context or runner_spec.DEFAULT_CONTEXT  # the vendor's API: no preflight (as on a cluster)
        elif replay is None:
            context, ok = await preflight(base_url, fields["model"], args.context)
            if not ok:
                return EXIT_REFUSED
        model_service = ModelService(base_url, service, context, replay is not None, script_for, api_key)
        if text_phase:
            return await _text_phase(args, fields, model_service)
        return await _dispatch(
            args, fields, model_service, opencode_bin=opencode_bin, relay=relay, cloud=cloud, engine_bin=engine_bin
        )
    finally:
        if server is not None:
            await server.stop()


async def preflight(base_url: str, model: str, declared: int | None) -> tuple[int, bool]:
    """The same preflight as the operator's; returns (context for the config, admitted)."""
    from buildstudio.adapters.modelservice.probe import probe
    from buildstudio.core.observation import ProbeTarget
    from buildstudio.core.preflight import decide

    obs = await probe(ProbeTarget(base_url=base_url), model)
    v = decide(obs, context_override=declared)
    print(f"preflight: {v.reason.value}: {v.message}", file=sys.stderr)
    if v.advice and (v.warning or not v.admit):
        print(f"  advice: {v.advice}", file=sys.stderr)
    return (v.context_for_config or declared or runner_spec.DEFAULT_CONTEXT), v.admit


async def _dispatch(
    args: argparse.Namespace,
    fields: dict[str, str],
    service: ModelService,
    *,
    opencode_bin: str,
    relay: bool,
    cloud: CloudCli | None = None,
    engine_bin: str = "",
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
            await asyncio.to_thread(localbase.make_sample_repo, workspace)
            repo_label = "built-in sample repo (calc.py)"
        spec = runner_spec.runner_spec(
            prompt=fields["prompt"],
            model=fields["model"],
            base_url=service.base_url,
            context=service.context,
            run_seconds=args.timeout,
            idle_seconds=args.idle_timeout,
            repo=repo,
            step_budget=args.step_budget,
            relay=relay,
            replay=service.replay,
            requested_output=args.output_limit,  # the local rule: --output-limit, at most half the context
            engine=cloud.kind if cloud is not None else "opencode",
        )
        if service.script_for is not None:
            service.script_for(str(workspace))
        display = Display(sys.stderr)
        result = await run_roles(spec, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin,
                                 display=display, snapshot=bool(args.workspace and args.allow_dirty),
                                 engine_bin=engine_bin, api_key=service.api_key)  # fmt: skip
        for scratch in ("home", "base", "report", "snapshot"):
            shutil.rmtree(workdir / scratch, ignore_errors=True)
        # A patch over the record's cap is only in the workspace: keep it, and say so.
        keep = keep or (result.patch.truncated and not args.workspace)
        meta = {
            **({"engine": cloud.kind} if cloud is not None else {}),
            "model": fields["model"],
            "modelService": service.label,
            "repo": repo_label,
            "workspace": workspace_label(workspace, in_place=bool(args.workspace), kept=keep),
            "replay": service.replay,
        }
        if args.workspace and args.allow_dirty:
            meta["baseNote"] = " (a snapshot of the uncommitted work tree: --allow-dirty)"
        return _finish(args, result, meta, tail=full_patch(result) or result.diff, empty="(no changes)")
    finally:
        if not keep:
            await asyncio.to_thread(shutil.rmtree, workdir, True)


def _finish(
    args: argparse.Namespace, result: records.ResultRecord, meta: dict[str, Any], *, tail: str, empty: str
) -> int:
    """Print the record as -o asks; the exit code (1 when -o patch could not write the whole patch)."""
    incomplete = print_result(args.output, result, meta, tail=tail, empty=empty)
    return EXIT_FAILED if incomplete else exit_code(result.outcome)


def exit_code(outcome: records.Outcome) -> int:
    """0 succeeded, 130 interrupted (a local run is cancelled only by Ctrl-C or SIGTERM), else 1."""
    if outcome.succeeded:
        return 0
    return EXIT_INTERRUPTED if outcome is records.Outcome.CANCELLED else EXIT_FAILED


async def _text_phase(args: argparse.Namespace, fields: dict[str, str], service: ModelService) -> int:
    """ideate / plan: one chat completion with the model, no sandbox and no opencode."""
    from buildstudio.adapters.modelservice.textrun import run_phase

    display = Display(sys.stderr)
    run = await run_phase(
        fields["phase"],
        fields["prompt"],
        base_url=service.base_url,
        model=fields["model"],
        context=service.context,
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
    )
    for ev in run.events:
        display.event(ev)
    result = run.record.model_copy(update={"replay": service.replay})
    meta = {"model": fields["model"], "modelService": service.label, "phase": fields["phase"], "replay": service.replay}
    return _finish(args, result, meta, tail=result.summary.final_text, empty="(empty answer)")


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
    p.add_argument("--phase", choices=[*sorted(TEXT_PHASES), "build"], help="pipeline phase (default: the manifest's, "
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
        args.context = runner_spec.DEFAULT_CONTEXT if args.model_server else None
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


