"""``buildstudio pipeline --local``: the BuildPipeline here, as local processes, no cluster.

The steps are decided by the operator's own pure function (``core.pipeline.decide``), so the order,
the prompts (the plan in the build's prompt, marked as in the cluster), the review's verdict and
the refusals are the cluster's. Each child it creates runs at once, here:

- plan, review: one chat completion with the model (``adapters.modelservice.textrun``), as
  ``run --local --phase plan`` does; the review judges the build's whole patch and its sha256;
- build: the sandbox's roles as local processes (``local_sandbox.run_roles``, as ``run --local``):
  a clone of ``--repo`` at ``--ref``, opencode, the reporter's diff;
- approval: asked on the terminal (y/N) when stdin is one, else ``--approve``; the approver is
  the local user. No terminal and no ``--approve``: refused (exit 3), nothing pushed;
- ship: the cluster's gate (``core.ship.decide_ship``: the review judged this very patch, an
  approval is given), its commit message and trailers (``core.shippod.plan_push``), and the ship
  pod's push role (``sandbox.runner.push.push``: the patch's sha256 checked again, applied on the
  build's base commit, committed, pushed as a new branch ``<branch-prefix><name>-build``, never
  forced) to ``--repo`` — a URL, or a path (a local bare repository works).

Model: ``--base-url URL``, or the first local service that answers (as ``run --local``), or
``--model-server replay:FILE``: recorded replies on loopback. FILE is one phase's replay (it
declares its phase; enough for ``--no-review``) or a pipeline replay naming one replay per phase,
each a path relative to FILE, whose declared phase must match::

    {"replay": {"name": "pipelines/add-subtract", "description": "…"},
     "phases": {"plan": "../plan-add-subtract.json", "build": "../add-subtract.json",
                "review": "../review-approve.json"}}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import getpass
import gzip
import hashlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from buildstudio.api import inputs
from buildstudio.api.dispatch import LOCAL_PATHS, Approval, BuildDispatchSpec
from buildstudio.api.pipeline import BuildPipelineSpec, Stage
from buildstudio.commands.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    CliError,
)
from buildstudio.commands.local import DEFAULT_OUTPUT, local_gate, preflight, read_prompt
from buildstudio.commands.local_display import Display, full_patch, gate_line
from buildstudio.commands.local_sandbox import run_roles
from buildstudio.commands.local_services import detect_service, no_service_message, replay_server, resolve_replay
from buildstudio.commands.local_spec import DEFAULT_STEP_BUDGET, repo_problem
from buildstudio.commands.scripted_server import Replay, ScriptedServer, load_replay
from buildstudio.core import pipeline as pl
from buildstudio.core import runner_spec
from buildstudio.core.review import ReviewFacts
from buildstudio.core.ship import SourceFacts, decide_ship
from buildstudio.core.shippod import DEFAULT_BRANCH_PREFIX, PushRefusal, plan_push
from buildstudio.core.source import ReviewSource
from buildstudio.protocol import records
from buildstudio.protocol.spec import RepoSource
from buildstudio.sandbox.runner.launch import find_opencode

NAMESPACE = "local"  # the decisions name a namespace; a local pipeline has none
UID = "local"  # the children's owner: the pipeline itself
MAX_LOOKS = 32  # a pipeline has at most 6 children; a loop past this is a bug, not a pipeline
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
TEXT_STAGES: tuple[Stage, ...] = ("plan", "review")


# ---------------------------------------------------------------- pure parts


def default_name(now: dt.datetime) -> str:
    """A new name per run (its branch must not exist on the remote yet)."""
    return "local-" + now.astimezone(dt.UTC).strftime("%Y%m%d-%H%M%S")


def stages(args: argparse.Namespace) -> list[Stage]:
    """The steps that ask a model, in order."""
    out: list[Stage] = ["plan"] if args.plan else []
    out.append("build")
    if not args.no_review:
        out.append("review")
    return out


def pipeline_spec(args: argparse.Namespace, models: Mapping[str, str]) -> BuildPipelineSpec:
    """The BuildPipeline spec of this run, validated as the CRD's models do (local paths allowed)."""
    from pydantic import ValidationError

    repo: dict[str, Any] = {"url": args.repo}
    if args.ref:
        repo["ref"] = args.ref
    timeouts = {k: v for k, v in (("runSeconds", args.timeout), ("idleSeconds", args.idle_timeout)) if v}
    doc: dict[str, Any] = {
        "prompt": args.prompt,
        "repo": repo,
        "models": dict(models),
        "phases": {"plan": bool(args.plan), "review": not args.no_review, "ship": not (args.no_review or args.no_ship)},
        "ship": {"branchPrefix": args.branch_prefix},
    }
    if args.engine:
        doc["engine"] = args.engine
    if timeouts:
        doc["timeouts"] = timeouts
    try:
        return BuildPipelineSpec.model_validate(doc, context=LOCAL_PATHS)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError("invalid pipeline", errors, "fix the flags") from None


def load_replays(model_server: str) -> tuple[dict[str, tuple[Replay, str]], str]:
    """Stage → (replay, its file) of ``--model-server replay:FILE``: a pipeline replay's phases, or
    the one phase a plain replay declares. Each declared phase must be the stage it drives."""
    from buildstudio.commands.local_spec import replay_phase

    kind, _, target = model_server.partition(":")
    path = resolve_replay(target) if kind == "replay" and target else None
    raw: Any = None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(path.read_text(encoding="utf-8"))
    if path is None or not isinstance(raw, dict) or "phases" not in raw:
        replay, name = replay_server(model_server)  # a plain replay, or its one-line error
        return {replay_phase(replay.metadata, None, name) or "build": (replay, name)}, name
    phases = raw["phases"]
    if not isinstance(phases, dict) or not phases:
        raise CliError(f"replay {target}", "\"phases\" must map plan, build, review to replay files",
                       "see examples/replays/pipelines/add-subtract.json")  # fmt: skip
    out: dict[str, tuple[Replay, str]] = {}
    for stage, name in phases.items():
        if stage not in ("plan", "build", "review") or not isinstance(name, str):
            raise CliError(f"replay {target}", f"phases.{stage}: expected plan, build or review naming a file",
                           "see examples/replays/pipelines/add-subtract.json")  # fmt: skip
        try:
            one = load_replay(path.parent / name)
        except (OSError, ValueError) as e:
            raise CliError(f"replay {target}: phases.{stage}", f"cannot load {name}: {e}", "check the file") from e
        replay_phase(one.metadata, stage, name)  # CliError when it records another phase
        out[stage] = (one, name)
    return out, target


def patch_bytes(result: records.ResultRecord) -> bytes | None:
    """The build's whole patch as its reporter stored it; None when there is none or it was cut."""
    if not result.patch.data or result.patch.truncated:
        return None
    try:
        return gzip.decompress(base64.b64decode(result.patch.data, validate=True))
    except (binascii.Error, OSError, EOFError):
        return None


def review_source(name: str, result: records.ResultRecord) -> ReviewSource:
    """What the review judges: the build's whole patch and its sha256, recomputed here."""
    patch = patch_bytes(result)
    return ReviewSource(
        dispatch=name,
        diff=patch.decode("utf-8", "replace") if patch is not None else result.diff,
        diff_stat=result.diff_stat,
        diff_bytes=result.diff_bytes,
        diff_truncated=patch is None,
        final_text=result.summary.final_text,
        sha256=hashlib.sha256(patch).hexdigest() if patch is not None else "",
    )


def exit_code(status: Mapping[str, Any]) -> int:
    """0 shipped (or succeeded as far as asked), 3 no approval (nothing pushed), 130 cancelled, else 1."""
    if status.get("phase") == "Succeeded":
        return EXIT_OK
    if status.get("reason") == pl.APPROVAL_REFUSED:
        return EXIT_REFUSED
    if status.get("phase") == "Cancelled":
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def summary_lines(name: str, status: Mapping[str, Any], *, replay: bool) -> list[str]:
    """The table output: the outcome, the children, the diff, the review, the approval, the branch."""
    rows = [("PIPELINE", f"{name}: {status.get('phase')} ({status.get('reason')}): {status.get('message')}")]
    kids = ", ".join(f"{c['name']} {c.get('phase') or '-'}" for c in status.get("children") or ())
    rows.append(("CHILDREN", kids or "-"))
    if status.get("diffStat"):
        rows.append(("DIFF", f"{status['diffSummary']} in {status['diffStat'].get('files', 0)} files"))
    if status.get("review"):
        rows.append(("REVIEW", f"{status['review']['dispatch']}: {status['review']['verdict']}"))
    if status.get("approvedBy"):
        rows.append(("APPROVED", f"{status['approvedBy']} (the local user)"))
    if status.get("branch"):
        rows.append(("BRANCH", f"{status['branch']} at {status.get('commit', '')}"))
    if replay:
        rows.append(("REPLAY", "the model's words were canned (--model-server replay:…)"))
    return [f"{k:<9} {v}" for k, v in rows]


# ---------------------------------------------------------------- the model service of each step


@dataclasses.dataclass(frozen=True)
class Service:
    """Where each step's model answers: one service (``--base-url`` or detected), or a replay per step."""

    base_url: str
    label: str
    context: int
    replays: Mapping[str, tuple[Replay, str]] = dataclasses.field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def serve(self, stage: Stage) -> AsyncIterator[str]:
        """The base URL for ``stage``: a replay's scripted server for the step's duration."""
        if stage not in self.replays:
            yield self.base_url
            return
        replay, target = self.replays[stage]
        # A text step sends no tools: every request must consume the script (no_aux).
        server = await ScriptedServer(replay.script, model=replay.model, no_aux=stage in TEXT_STAGES).start()
        print(f"REPLAY MODEL ({stage}): the model's words are canned ({target}: {replay.description})",
              file=sys.stderr)  # fmt: skip
        try:
            yield server.base_url
        finally:
            await server.stop()


async def find_service(args: argparse.Namespace, wanted: list[Stage]) -> tuple[Service, dict[str, str]] | int:
    """The service and each step's model; an exit code when none answers or the preflight refuses."""
    if args.model_server:
        replays, name = load_replays(args.model_server)
        missing = [s for s in wanted if s not in replays]
        if missing:
            raise CliError(f"replay {name}", f"it records no {', '.join(missing)} step",
                           "use a pipeline replay (examples/replays/pipelines/) or --no-review")  # fmt: skip
        models: dict[str, str] = {s: str(args.model or replays[s][0].model) for s in wanted}
        return Service("", f"replay:{name}", args.context or runner_spec.DEFAULT_CONTEXT, replays), models
    if args.base_url:
        base_url, label, ids = str(args.base_url), str(args.base_url), list[str]()
    else:
        found, tried, ids = await detect_service()
        if found is None:
            print(no_service_message(tried), file=sys.stderr)
            return EXIT_REFUSED
        base_url, label = found.base_url, f"{found.name} at {found.base_url}"
    model = args.model or (ids[0] if ids else "")
    if not model:
        raise CliError("no model", "none given and the service lists none", "pass --model")
    if not args.model:
        print(f"model not given: using {model!r}, the first listed by {label}", file=sys.stderr)
    context, ok = await preflight(base_url, model, args.context)
    if not ok:
        return EXIT_REFUSED
    return Service(base_url, label, context), {s: model for s in wanted}


# ---------------------------------------------------------------- the steps, here


class LocalPipeline:
    """Runs each child ``core.pipeline.decide`` creates, at once, and feeds back what it ended with."""

    def __init__(
        self, args: argparse.Namespace, p: pl.Pipeline, service: Service, opencode_bin: str, workdir: Path
    ) -> None:
        self.args = args
        self.p = p
        self.service = service
        self.opencode_bin = opencode_bin
        self.workdir = workdir
        self.children: dict[str, pl.Child] = {}
        self.specs: dict[str, BuildDispatchSpec] = {}
        self.results: dict[str, records.ResultRecord] = {}
        self.reviews: dict[str, ReviewFacts] = {}  # build → its latest review
        self.engine = ""
        self.relay = False

    def gate(self, wanted: list[Stage]) -> bool:
        """The capability gate for each step that asks a model, before anything runs."""
        for stage in wanted:
            # A review is a text step like a plan; the gate's source check is a cluster
            # dispatch's, here the source is this run's own build.
            fields = {"prompt": self.p.spec.prompt, "model": getattr(self.p.spec.models, stage) or "",
                      "phase": "plan" if stage in TEXT_STAGES else "build"}  # fmt: skip
            if self.p.spec.engine:
                fields["engine"] = self.p.spec.engine
            decision = local_gate(fields, opencode_present=bool(self.opencode_bin))
            if stage == "build":
                self.engine = decision.engine or ""
                self.relay = decision.tool_call_repair if self.args.relay == "auto" else self.args.relay == "on"
            line = gate_line(decision, relay=self.relay, text_phase=stage in TEXT_STAGES)
            print(f"{stage}: " + line.replace(" plan: ", f" {stage}: ", 1), file=sys.stderr)
            if not decision.admit:
                return False
        return True

    async def drive(self) -> pl.Pipeline:
        """Look, act, look again, until the pipeline is finished (or waits for an approval nobody gives)."""
        for _ in range(MAX_LOOKS):
            step = pl.decide(self.p, self.children, dt.datetime.now(tz=dt.UTC))
            self.p = dataclasses.replace(self.p, status=step.status)
            self.tell(step)
            if step.finished:
                return self.p
            creates = [a for a in step.actions if isinstance(a, pl.CreateChild)]
            for action in creates:
                child = await self.run(action)
                self.children[action.name] = child
                if child.reason == records.Outcome.CANCELLED.value:  # Ctrl-C stopped it: the pipeline ends
                    self.p = dataclasses.replace(self.p, spec=self.p.spec.model_copy(update={"cancel": True}))
            if creates:
                continue
            if step.status.get("phase") != "AwaitingApproval":
                raise RuntimeError(f"the pipeline waits in {step.status.get('phase')} with nothing to run")
            approval = await self.ask_approval()
            if isinstance(approval, str):
                end = pl.approval_refused(self.p, dt.datetime.now(tz=dt.UTC), approval)
                self.p = dataclasses.replace(self.p, status=end.status)
                self.tell(end)
                return self.p
            self.p = dataclasses.replace(self.p, spec=self.p.spec.model_copy(update={"approval": approval}))
        raise RuntimeError(f"the pipeline did not finish in {MAX_LOOKS} looks")

    @staticmethod
    def tell(step: pl.Step) -> None:
        for action in step.actions:
            if isinstance(action, pl.Emit):
                print(f"pipeline: {action.reason}: {action.message}", file=sys.stderr)

    async def ask_approval(self) -> Approval | str:
        """``local_approval``'s answer: the flag, or y/N on the terminal (after the patch and the
        review's text), or none."""
        user = getpass.getuser()
        answer: str | None = None
        if not self.args.approve and sys.stdin.isatty():
            review = self.children.get(str((self.p.status.get("review") or {}).get("dispatch", "")))
            source = self.specs[review.name].source if review is not None else None
            build = self.results.get(source.dispatch) if source is not None else None
            if review is not None and source is not None and build is not None:
                print(f"--- the patch of {source.dispatch} ---\n{full_patch(build) or build.diff}", file=sys.stderr)
                print(f"--- review {review.name}: {review.verdict} ---\n{review.final_text.strip()}\n---",
                      file=sys.stderr)  # fmt: skip
            prefix = self.p.spec.ship.branch_prefix if self.p.spec.ship is not None else DEFAULT_BRANCH_PREFIX
            what = f"{source.dispatch} as the new branch {prefix}{source.dispatch}" if source is not None else "it"
            print(f"Ship {what} to {self.p.spec.repo.url}, approved by {user}? [y/N] ",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
            answer = await asyncio.to_thread(sys.stdin.readline)
        return pl.local_approval(user, approve_flag=bool(self.args.approve), answer=answer)

    async def run(self, action: pl.CreateChild) -> pl.Child:
        spec = BuildDispatchSpec.model_validate(action.manifest["spec"], context=LOCAL_PATHS)
        self.specs[action.name] = spec
        if action.stage == "ship":
            return await self.ship(action.name, spec)
        timeouts = spec.timeouts
        async with self.service.serve(action.stage) as base_url:
            if action.stage == "build":
                result = await self.build(action.name, spec, base_url)
                self.results[action.name] = result
                return pl.local_child(action.name, UID, result)
            from buildstudio.adapters.modelservice.textrun import run_phase

            source = None
            if action.stage == "review" and spec.source is not None:
                source = review_source(spec.source.dispatch, self.results[spec.source.dispatch])
            run = await run_phase(
                action.stage,
                spec.prompt,
                base_url=base_url,
                model=spec.model or "",
                context=self.service.context,
                source=source,
                timeout=timeouts.run_seconds,
                idle_timeout=timeouts.idle_seconds,
                review_name=action.name,
            )
        display = Display(sys.stderr)
        for ev in run.events:
            display.event(ev)
        result = run.record.model_copy(update={"phase": action.stage})
        self.results[action.name] = result
        if run.review is not None:
            self.reviews[run.review.source] = run.review
        return pl.local_child(action.name, UID, result, review=run.review)

    async def build(self, name: str, spec: BuildDispatchSpec, base_url: str) -> records.ResultRecord:
        """The sandbox's roles as local processes, as ``run --local`` runs them."""
        assert spec.repo is not None
        workdir = self.workdir / name
        workdir.mkdir(parents=True)
        rspec = runner_spec.runner_spec(
            prompt=spec.prompt,
            model=spec.model or "",
            base_url=base_url,
            context=self.service.context,
            run_seconds=spec.timeouts.run_seconds,
            idle_seconds=spec.timeouts.idle_seconds,
            # Without --ref: the remote's default branch (the spec's "main" is only the CRD's default).
            repo=RepoSource(url=spec.repo.url, ref=self.args.ref or "", local_paths=True),
            step_budget=DEFAULT_STEP_BUDGET,
            relay=self.relay,
            replay=bool(self.service.replays),
            requested_output=DEFAULT_OUTPUT,
        )
        return await run_roles(rspec, workdir=workdir, workspace=workdir / "workspace",
                               opencode_bin=self.opencode_bin, display=Display(sys.stderr))  # fmt: skip

    async def ship(self, name: str, spec: BuildDispatchSpec) -> pl.Child:
        """The cluster's gate and commit, then the ship pod's push role, here."""
        from buildstudio.sandbox.runner.push import PushError, push

        def failed(reason: str, message: str) -> pl.Child:
            return pl.Child(name=name, owner_uid=UID, phase="Failed", reason=reason, message=message)

        assert spec.source is not None
        source = spec.source.dispatch
        build = self.results[source]
        patch = patch_bytes(build)
        facts = SourceFacts(
            name=source,
            succeeded=build.outcome.succeeded,
            diff_stat=build.diff_stat,
            diff_bytes=build.diff_bytes,
            patch_config_map=f"{source} (the local build's record)",
            patch_sha256=hashlib.sha256(patch).hexdigest() if patch is not None else "",
            patch_truncated=patch is None,
        )
        decision = decide_ship(facts, self.reviews.get(source), spec.approval)
        if not decision.allow or decision.plan is None or patch is None:
            return failed(decision.reason.value, decision.message)
        source_spec = self.specs[source]
        planned = plan_push(
            ship=name,
            ship_spec=spec,
            source=source,
            source_spec=source_spec,
            base_commit=build.base_commit,
            engine=self.engine,
            model=source_spec.model or "",
            plan=decision.plan,
            verdict="Approve",  # the gate allows only an approving review of this exact patch
            commit_date=dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
            namespace=NAMESPACE,
            allowed_secrets=(),
            allow_plaintext=False,
        )
        if isinstance(planned, PushRefusal):
            return failed(planned.reason, planned.message)
        print(f"ship: pushing {planned.spec.branch} to {planned.spec.repo_url}", file=sys.stderr)
        try:
            commit, _ = await asyncio.to_thread(push, planned.spec, patch, self.workdir / name, local_paths=True)
        except PushError as e:
            return failed(e.reason.value, e.message)
        pushed = {"branch": planned.spec.branch, "commit": commit, "remote": planned.spec.repo_url}
        return pl.Child(name=name, owner_uid=UID, phase="Succeeded", reason="Pushed",
                        message=f"pushed {planned.spec.branch} at {commit[:12]}", push=pushed)  # fmt: skip


# ---------------------------------------------------------------- the command


async def _run(args: argparse.Namespace) -> int:
    wanted = stages(args)
    found = await find_service(args, wanted)
    if isinstance(found, int):
        return found
    service, models = found
    if not args.prompt:
        build = service.replays.get("build")
        recorded = str(build[0].metadata.get("prompt") or "") if build else ""
        if not recorded:
            raise CliError("no prompt", "the pipeline needs a task",
                           "pass --prompt TEXT, --prompt-file FILE or --prompt -")  # fmt: skip
        args.prompt = recorded
    if not args.prompt.strip():
        raise CliError("empty prompt", "the task has no text", "pass --prompt TEXT, --prompt-file FILE or --prompt -")
    spec = pipeline_spec(args, models)
    p = pl.Pipeline(name=args.name, namespace=NAMESPACE, uid=UID, generation=1, spec=spec)
    opencode_bin = find_opencode(args.opencode_bin) or ""
    if not opencode_bin:
        raise CliError("opencode not found", "no binary in --opencode-bin, $OPENCODE_BIN, .tools/ or PATH",
                       "run `make setup`, or npm install opencode-ai@<pin>, or set OPENCODE_BIN")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="buildstudio-pipeline-"))
    try:
        local = LocalPipeline(args, p, service, opencode_bin, workdir)
        if not local.gate(wanted):
            return EXIT_REFUSED
        end = await local.drive()
    finally:
        if args.keep:
            print(f"WORKSPACE kept: {workdir}", file=sys.stderr)
        else:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
    status = end.status
    if args.output in ("yaml", "json"):
        head = {k: status[k] for k in ("phase", "reason", "message") if k in status}
        doc = {"name": end.name, "replay": bool(service.replays), "status": {**head, **status}}
        print(yaml.safe_dump(doc, sort_keys=False) if args.output == "yaml" else json.dumps(doc, indent=2))
    else:
        print("\n".join(summary_lines(end.name, status, replay=bool(service.replays))))
    code = exit_code(status)
    if code != EXIT_OK:
        print(f"buildstudio: pipeline {end.name} {str(status.get('phase')).lower()}: {status.get('reason')}: "
              f"{status.get('message')}", file=sys.stderr)  # fmt: skip
    return code


def command(args: argparse.Namespace) -> int:
    read_prompt(args, sys.stdin)
    if args.name is None:
        args.name = default_name(dt.datetime.now(tz=dt.UTC))
    if not _NAME.match(args.name):
        raise CliError(f"--name {args.name}", "not a lowercase name of at most 40 letters, digits and '-'",
                       "e.g. --name add-subtract")  # fmt: skip
    if args.no_ship and args.no_review:
        raise CliError("--no-ship", "--no-review already leaves the ship out", "drop one of them")
    if args.approve and (args.no_review or args.no_ship):
        raise CliError("--approve", "nothing is shipped, so there is nothing to approve", "drop --approve")
    if not args.repo.startswith("file://") and inputs.local_path(args.repo) is not None:
        args.repo = str(Path(args.repo).resolve())  # the clone and the push run elsewhere
    problem = repo_problem({"repo": args.repo, **({"ref": args.ref} if args.ref else {})})
    if problem:
        raise CliError("refusing the repository", problem, "pass a plain git URL or path, and a branch, tag or sha")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("buildstudio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", required=True,
                   help="run here as local processes (the only mode of this command so far)")  # fmt: skip
    task = p.add_mutually_exclusive_group()
    task.add_argument("--prompt", help="the task, verbatim; `-` reads it from stdin (default with a replay: "
                      "the build replay's recorded task)")  # fmt: skip
    task.add_argument("--prompt-file", metavar="FILE", help="read the task from FILE (UTF-8)")
    p.add_argument("--repo", required=True,
                   help="git URL or path: cloned for the build, and the remote the ship pushes to "
                   "(a local bare repository works)")  # fmt: skip
    p.add_argument("--ref", help="branch, tag or commit to start from (default: the remote's default branch)")
    p.add_argument("--name", help="the pipeline's name: children <name>-plan, -build, -review, -ship; the branch "
                   "is <branch-prefix><name>-build (default: local-<UTC time>)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="run a plan step first; its text goes into the build's "
                   "prompt, marked")  # fmt: skip
    p.add_argument("--no-review", action="store_true", help="no review, so no ship: the pipeline ends after the build")
    p.add_argument("--no-ship", action="store_true", help="end once the review approved: nothing is pushed")
    p.add_argument("--approve", action="store_true", help="approve the ship without asking (for scripts); the "
                   "approver is the local user")  # fmt: skip
    p.add_argument("--branch-prefix", default=DEFAULT_BRANCH_PREFIX, help="prefix of the pushed branch "
                   f"(default {DEFAULT_BRANCH_PREFIX})")  # fmt: skip
    p.add_argument("--model", help="model id of every step (default: each replay's, or the service's first)")
    p.add_argument("--engine", help="BuildEngine name (default: auto-detected by the capability gate)")
    p.add_argument("--relay", choices=["auto", "on", "off"], default="auto",
                   help="the build's tool-call repair relay (auto: as the gate decides)")  # fmt: skip
    src = p.add_mutually_exclusive_group()
    src.add_argument("--base-url", help="OpenAI-compatible base URL (default: the first local service that answers)")
    src.add_argument(
        "--model-server",
        metavar="replay:FILE",
        help="recorded model replies on loopback: one "
        "phase's replay or a pipeline replay (e.g. replay:examples/replays/pipelines/add-subtract.json)",
    )
    p.add_argument("--context", type=int, default=None, help="declared context window (tokens) of the model")
    p.add_argument("--timeout", type=int, default=None, metavar="SECONDS", help="each step's run timeout, 30..86400")
    p.add_argument("--idle-timeout", type=int, default=None, metavar="SECONDS",
                   help="each step's longest silence, 10..86400")  # fmt: skip
    p.add_argument("--opencode-bin", help="opencode binary (default: $OPENCODE_BIN, .tools/, PATH)")
    p.add_argument("--keep", action="store_true", help="keep the run's temp directory and print where")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table",
                   help="table (default), or the pipeline's status as the cluster's BuildPipeline has it")  # fmt: skip


EXIT_HELP = EXIT_CODES_HELP.replace(
    "  3    refused by the preflight or the capability gate: nothing was run",
    "  3    refused by the preflight or the capability gate, or no approval: nothing was pushed",
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "pipeline",
        help="run the governed pipeline plan → build → review → approval → ship (--local: here)",
        description=__doc__,
        epilog=EXIT_HELP,
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)
    p.set_defaults(func=command)
