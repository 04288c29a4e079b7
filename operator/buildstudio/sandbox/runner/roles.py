"""The sandbox pod's runner roles, each in its own container (docs/security.md).

- ``clone`` (init container, the agent's uid, gone before the agent starts): clones repo@ref
  into the workspace with the git credential (a Secret volume mounted only there) and writes
  the pristine base the reporter diffs against (``base/repo.git``, ``base/base-commit``) into
  a volume the agent never mounts. A failure is written to ``base/clone-error``; the role
  itself always exits 0 so that the pod goes on to the reporter, which reports it.
- ``agent`` (init container, no credential): the spec's engine (opencode, or claude/codex/grok
  through their adapters) against the relay (the sidecar that holds the model or vendor key),
  progress and events on stdout (informative), its own account of the run in the report file.
  Always exits 0: its claim is data for the reporter.
- ``report`` (the main container, its own uid): starts once the agent container has ended,
  recomputes the diff from the workspace against the trusted base, weighs the agent's claim
  (``verdict.decide_result``) and prints the one ``result`` record, the operator's result
  channel. Text phases (ideate/plan/review) run here, through the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from buildstudio.core import outcome as verdict
from buildstudio.engines.adapters import adapter_for
from buildstudio.engines.base import LaunchError, RunRequest
from buildstudio.protocol import records
from buildstudio.protocol.spec import RunnerSpec, load_spec
from buildstudio.sandbox.runner import procs, workspace
from buildstudio.sandbox.runner.output import RecordWriter, one_line
from buildstudio.sandbox.runner.supervise import PASSTHROUGH_ENV, fill_tokens, supervise, utcnow

BASE_REPO = "repo.git"
BASE_COMMIT = "base-commit"
CLONE_ERROR = "clone-error"
MAX_CLAIM_BYTES = 4 * 1024 * 1024  # a claim with a diff excerpt and summary fits well inside
MAX_SMALL_FILE = 64 * 1024
RELAY_WAIT_SECONDS = 120.0
DIFF_TIMEOUT_SECONDS = 300.0
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _read_small(path: Path, limit: int = MAX_SMALL_FILE) -> str:
    with path.open("rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return raw.decode("utf-8", "replace").strip()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------- clone


def git_safe_directory(ws: Path) -> str:
    """A git config that trusts the workspace whoever owns its directory (pure)."""
    return f"[safe]\n\tdirectory = {ws}\n"


def trust_workspace(ws: Path) -> None:
    """This process's git trusts ``ws`` (a protected, global config of its own in a temp dir)."""
    import tempfile

    config = Path(tempfile.mkdtemp(prefix="buildstudio-git-")) / "gitconfig"
    config.write_text(git_safe_directory(ws), encoding="utf-8")
    os.environ["GIT_CONFIG_GLOBAL"] = str(config)


def engine_excludes(spec: RunnerSpec, ws: Path) -> tuple[str, ...]:
    """Work-tree files the spec's engine CLI creates by itself (grok's ``.grok/settings.json``)."""
    adapter = adapter_for(spec.engine)
    if adapter is None:
        return ()
    probe = RunRequest(
        prompt="-", model=spec.model, workspace=str(ws), home="/nonexistent", base_url="http://127.0.0.1"
    )
    try:
        return adapter.launch(probe).git_excludes
    except LaunchError:
        return ()  # the agent refuses the same request with the reason


def clone_role(
    spec: RunnerSpec,
    *,
    ws: Path,
    base: Path,
    token: str | None,
    allow_plaintext_credentials: bool = False,
    local_paths: bool = False,
) -> str | None:
    """Make ``ws`` the work tree at repo@ref and ``base`` its pristine copy; the error, if any."""
    base.mkdir(parents=True, exist_ok=True)
    try:
        if spec.repo is not None:
            workspace.clone(
                ws,
                spec.repo,
                token=token,
                allow_plaintext_credentials=allow_plaintext_credentials,
                local_paths=local_paths,
            )
        sha = workspace.write_base(ws, base)
        # Excluded in the reporter's base too: the reporter's diff uses the base's git dir, which
        # the agent cannot touch, so the engine's own files stay out of the result.
        workspace.exclude_engine_files(ws, engine_excludes(spec, ws), base_git_dir=base / BASE_REPO)
    except (workspace.WorkspaceError, OSError) as e:
        message = one_line(str(e), 2000) or type(e).__name__
        _write_atomic(base / CLONE_ERROR, message)
        return message
    _write_atomic(base / BASE_COMMIT, sha)
    return None


# ------------------------------------------------------------------------------- agent


class ClaimWriter(RecordWriter):
    """Progress and events go to stdout as usual; the result is the agent's claim, to a file."""

    def __init__(self, report: Path, **kw: float | int) -> None:
        super().__init__(
            max_events=int(kw["max_events"]), max_bytes=int(kw["max_bytes"]), progress_interval=float(kw["interval"])
        )
        self.report = report

    def result(self, rec: records.ResultRecord) -> None:
        _write_atomic(self.report, records.dump(rec))
        if rec.outcome is records.Outcome.CANCELLED:
            # The pod is being deleted and the reporter will not run: the partial diff goes to the
            # agent's log, where the operator shows it on the cancelled dispatch, labelled as ours.
            self._write(rec)
        self._write(records.EventRecord(type="agent", message=f"agent finished: {rec.outcome.value}", ts=time.time()))


async def wait_for_relay(url_file: Path, seconds: float = RELAY_WAIT_SECONDS) -> str:
    """The relay sidecar's base URL, once it has written it (it starts just before the agent)."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError, ValueError):
            url = _read_small(url_file, 4096)
            if url.startswith("http://127.0.0.1:") or url.startswith("http://[::1]:"):
                return url
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the model relay did not publish its address in {url_file} within {seconds:g} s")
        await asyncio.sleep(0.1)


# Where an engine's binary is, when not on PATH (``run --local`` finds them in .tools/): paths, no secret.
ENGINE_BIN_ENV = ("OPENCODE_BIN", "CLAUDE_BIN", "CODEX_BIN", "GROK_BIN")


def agent_env(base: dict[str, str]) -> dict[str, str]:
    """What the runner of the agent keeps of its environment: no credential exists there anyway.
    (The engine's own environment is built from ``PASSTHROUGH_ENV`` only: ``supervise.engine_env``.)"""
    return {k: base[k] for k in (*PASSTHROUGH_ENV, *ENGINE_BIN_ENV) if k in base}


async def agent_role(
    spec: RunnerSpec,
    *,
    ws: Path,
    home: Path,
    report: Path,
    relay_url_file: Path | None,
    opencode_bin: str,
    relay_counters_file: Path | None = None,
) -> records.ResultRecord:
    bounds = spec.output
    writer = ClaimWriter(
        report,
        max_events=bounds.max_event_records,
        max_bytes=bounds.max_output_bytes,
        interval=bounds.progress_interval_seconds,
    )
    base_url = spec.base_url
    if relay_url_file is not None:
        try:
            base_url = await wait_for_relay(relay_url_file)
        except TimeoutError as e:
            result = records.ResultRecord(
                outcome=records.Outcome.ENGINE_FAILED, message=str(e), started_at=utcnow(), finished_at=utcnow()
            )
            writer.result(result)
            return result
    run_spec = spec.model_copy(update={"base_url": base_url, "relay": False, "api_key_env": None, "repo": None})
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    # The agent's git (opencode's snapshots, its shell) reads $HOME/.gitconfig: trust the workspace.
    await asyncio.to_thread(_write_atomic, home / ".gitconfig", git_safe_directory(ws))
    return await supervise(
        run_spec,
        ws=ws,
        home=home,
        opencode_bin=opencode_bin,
        writer=writer,
        capture_diff=False,
        base_env=agent_env(dict(os.environ)),
        behind_relay=relay_url_file is not None,
        relay_counters_file=relay_counters_file,
    )


# ------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Claim:
    """The agent's account of its run, as read from its report file (untrusted)."""

    record: records.ResultRecord | None
    problem: str = ""  # why there is no record


def read_claim(path: Path) -> Claim:
    """The agent's report, bounded; anything unreadable is no claim, with the reason."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CLAIM_BYTES + 1)
    except FileNotFoundError:
        return Claim(None, "no report file")
    except OSError as e:
        return Claim(None, f"report unreadable: {e.strerror or e}")
    if len(raw) > MAX_CLAIM_BYTES:
        return Claim(None, f"report larger than {MAX_CLAIM_BYTES} bytes")
    rec = records.parse_line(raw.strip())
    if not isinstance(rec, records.ResultRecord):
        return Claim(None, "report is not a result record")
    return Claim(rec)


def read_base(base: Path) -> tuple[str, str]:
    """``(base commit, error)`` from what the clone container left in the base volume."""
    with contextlib.suppress(FileNotFoundError):
        return "", _read_small(base / CLONE_ERROR) or "the clone failed"
    try:
        sha = _read_small(base / BASE_COMMIT, 256)
    except (OSError, ValueError) as e:
        return "", f"no base commit from the clone: {e}"
    if not _SHA.match(sha):
        return "", f"base commit {sha[:80]!r} is not a commit id"
    return sha, ""


def read_counters(path: Path | None) -> tuple[int, int] | None:
    """The relay's repair counters (the relay is trusted: its own uid, no agent code)."""
    counters = read_relay_counters(path)
    return None if counters is None else (counters[0], counters[1])


def read_relay_counters(path: Path | None) -> tuple[int, int, int, int] | None:
    """(repaired, left as text, input tokens, output tokens) from the relay's counters file."""
    if path is None:
        return None
    import json

    try:
        data = json.loads(_read_small(path))
        return (
            int(data.get("repaired", 0)),
            int(data.get("leftAsText", 0)),
            max(0, int(data.get("inputTokens", 0))),
            max(0, int(data.get("outputTokens", 0))),
        )
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return None


def build_result(
    spec: RunnerSpec,
    claim: Claim,
    *,
    base_commit: str,
    workspace_error: str,
    diff: object | None,
    diff_error: str,
    counters: tuple[int, int] | None,
    started_at: str,
    duration: float,
    relay_tokens: tuple[int, int] | None = None,
) -> records.ResultRecord:
    """The result record from what the reporter measured and what the agent claimed (pure)."""
    from buildstudio.adapters.gitdiff import DiffResult

    assert diff is None or isinstance(diff, DiffResult)
    rec = claim.record
    if rec is not None and relay_tokens is not None and rec.summary.tokens.total == 0:
        fill_tokens(rec.summary, *relay_tokens)  # the engine printed none (grok): the relay's count
    outcome, message = verdict.decide_result(
        rec.summary if rec is not None else None,
        rec.outcome if rec is not None else None,
        one_line(rec.message, 2000) if rec is not None else claim.problem,
        diff=diff.stat if diff is not None else None,
        diff_error=diff_error,
        workspace_error=workspace_error,
    )
    nested = [n.removesuffix("/.git") for n in diff.nested_repos] if diff is not None else []
    if nested:
        shown = ", ".join(nested[:10]) + (f" and {len(nested) - 10} more" if len(nested) > 10 else "")
        message = f"{message}; nested repositories captured as plain files: {shown}"
    summary = rec.summary if rec is not None else records.RunSummary()
    if counters is not None:
        summary.repaired_tool_calls, summary.unrepaired_tool_calls = counters
    if relay_tokens is not None and summary.tokens.total == 0:
        fill_tokens(summary, *relay_tokens)  # the engine printed none (grok): the relay's count
    result = records.ResultRecord(
        outcome=outcome,
        message=message,
        exit_code=rec.exit_code if rec is not None else None,
        summary=summary,
        base_commit=base_commit,
        started_at=(rec.started_at if rec is not None else "") or started_at,
        finished_at=utcnow(),
        duration_seconds=round((rec.duration_seconds if rec is not None else 0.0) + duration, 3),
        replay=spec.replay,
        agent_claim=rec.outcome.value if rec is not None else "",
    )
    if diff is not None:
        diff.fill(result)
    if diff is not None and diff.special_files:
        result.message += f"; special files left out: {', '.join(diff.special_files[:10])}"
    return result


async def report_build(
    spec: RunnerSpec,
    *,
    ws: Path,
    base: Path,
    claim_file: Path,
    scratch: Path,
    counters_file: Path | None = None,
) -> records.ResultRecord:
    """Diff the workspace against the base and weigh the agent's claim; returns the result."""
    from buildstudio.adapters import gitdiff

    started = time.monotonic()
    started_at = utcnow()
    base_commit, workspace_error = read_base(base)
    claim = read_claim(claim_file)
    diff = None
    diff_error = ""
    if not workspace_error:
        try:
            diff = await asyncio.to_thread(
                gitdiff.capture_from_base,
                ws,
                base / BASE_REPO,
                base_commit,
                scratch,
                excerpt_bytes=spec.output.diff_excerpt_bytes,
                patch_cap_bytes=spec.output.patch_max_bytes,
                timeout_s=DIFF_TIMEOUT_SECONDS,
                max_copy_bytes=spec.output.copy_max_bytes,
            )
        except Exception as e:  # any failure is reported, never a silent NoChanges
            diff_error = one_line(f"{type(e).__name__}: {e}", 1000)
    relay = read_relay_counters(counters_file)
    return build_result(
        spec,
        claim,
        base_commit=base_commit,
        workspace_error=workspace_error,
        diff=diff,
        diff_error=diff_error,
        counters=(relay[0], relay[1]) if relay is not None else None,
        started_at=started_at,
        duration=time.monotonic() - started,
        relay_tokens=(relay[2], relay[3]) if relay is not None else None,
    )


async def report_role(args: argparse.Namespace, spec: RunnerSpec, writer: RecordWriter) -> records.ResultRecord:
    if spec.phase != "build":
        from buildstudio.sandbox.runner.textphase import run_text

        run_spec = spec
        if args.relay_url_file:
            try:
                url = await wait_for_relay(Path(args.relay_url_file))
            except TimeoutError as e:
                result = records.ResultRecord(outcome=records.Outcome.ENGINE_FAILED, message=str(e), phase=spec.phase)
                writer.result(result)
                return result
            run_spec = spec.model_copy(update={"base_url": url, "api_key_env": None})
        return await run_text(run_spec, writer)
    result = await report_build(
        spec,
        ws=args.workspace,
        base=args.base,
        claim_file=args.agent_report,
        scratch=args.scratch,
        counters_file=Path(args.relay_counters) if args.relay_counters else None,
    )
    writer.result(result)
    return result


# ------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m buildstudio.sandbox.runner", description=(__doc__ or "").split("\n")[0]
    )
    sub = ap.add_subparsers(dest="role", required=True)
    c = sub.add_parser("clone", help="init container: clone repo@ref, write the pristine base")
    a = sub.add_parser("agent", help="init container: run the engine; its claim to --report")
    r = sub.add_parser("report", help="main container: recompute the diff, print the result record")
    for p in (c, a, r):
        p.add_argument("--spec", required=True, type=Path)
        p.add_argument("--workspace", type=Path, default=Path("/workspace"))
    for p in (c, r):
        p.add_argument("--base", type=Path, required=True, help="the pristine base (clone writes, report reads)")
    c.add_argument("--credential-file", type=Path, help="the git token (a Secret volume of this container only)")
    c.add_argument("--allow-plaintext-credentials", action="store_true", help="send the token over http:// too")
    c.add_argument("--local-paths", action="store_true", help="allow local paths and file:// (local mode only)")
    a.add_argument("--home", type=Path, default=Path(os.environ.get("HOME", "/tmp/buildstudio-home")))
    a.add_argument("--report", type=Path, required=True, help="where the agent's claim goes")
    a.add_argument("--opencode-bin", help="opencode binary (default: $OPENCODE_BIN, then PATH)")
    a.add_argument("--relay-counters", help="the relay's counters file (default: counters.json beside the URL file)")
    for p in (a, r):
        p.add_argument("--relay-url-file", help="the relay sidecar's published base URL")
    r.add_argument("--agent-report", type=Path, default=Path("/nonexistent"), help="the agent's claim")
    r.add_argument("--scratch", type=Path, default=Path("/tmp/buildstudio-report"))
    r.add_argument("--relay-counters", help="the relay's repair counters file")
    return ap.parse_args(argv)


def relay_counters_path(args: argparse.Namespace) -> Path | None:
    if args.relay_counters:
        return Path(args.relay_counters)
    return Path(args.relay_url_file).with_name("counters.json") if args.relay_url_file else None


def main(argv: list[str]) -> int:
    if argv[:1] == ["push"]:  # the ship pod's one container: no spec of the sandbox's kind
        from buildstudio.sandbox.runner.push import main as push_main

        return push_main(argv[1:])
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except Exception as e:  # any unreadable spec ends in one clear line
        message = one_line(f"cannot read the runner spec {args.spec}: {e}", 2000)
        if args.role == "report":
            RecordWriter(max_events=0, max_bytes=1 << 20, progress_interval=2.0).result(
                records.ResultRecord(outcome=records.Outcome.RUNNER_ERROR, message=message)
            )
        print(message, file=sys.stderr)
        return 2
    if args.role == "clone":
        # The emptyDir is the kubelet's (root:fsGroup): git would call our own clone "dubious".
        trust_workspace(args.workspace)
        token = None
        if args.credential_file is not None:
            try:
                token = _read_small(args.credential_file, 16 * 1024) or None
            except (OSError, ValueError) as e:
                args.base.mkdir(parents=True, exist_ok=True)
                _write_atomic(args.base / CLONE_ERROR, f"cannot read the git credential: {e}")
                return 0
        error = clone_role(
            spec,
            ws=args.workspace,
            base=args.base,
            token=token,
            allow_plaintext_credentials=args.allow_plaintext_credentials,
            local_paths=args.local_paths,
        )
        print(f"clone: {error or 'done'}", file=sys.stderr)
        return 0
    if args.role == "agent":
        from buildstudio.sandbox.runner.__main__ import find_opencode

        if not procs.set_child_subreaper():
            print("warning: PR_SET_CHILD_SUBREAPER unavailable", file=sys.stderr)
        asyncio.run(
            agent_role(
                spec,
                ws=args.workspace.absolute(),
                home=args.home.absolute(),
                report=args.report,
                relay_url_file=Path(args.relay_url_file) if args.relay_url_file else None,
                opencode_bin=find_opencode(args.opencode_bin),
                relay_counters_file=relay_counters_path(args),
            )
        )
        return 0
    writer = RecordWriter(
        max_events=spec.output.max_event_records,
        max_bytes=spec.output.max_output_bytes,
        progress_interval=spec.output.progress_interval_seconds,
    )
    result = asyncio.run(report_role(args, spec, writer))
    return 0 if result.outcome.succeeded else 1
