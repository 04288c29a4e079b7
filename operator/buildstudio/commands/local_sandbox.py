"""The sandbox pod's roles as local processes, for ``buildstudio run --local``: clone here, the
agent in a child process (in its own user and PID namespaces where this machine allows it),
the report here once the agent has ended. The agent's record lines are shown as they come;
nothing it prints decides the outcome (``roles.report_build`` does, in this process).

A cloud engine's CLI (claude, codex, grok) talks to a credential relay that runs here, as the relay
sidecar does in the pod: this process holds the vendor key (if any), the agent gets the relay's URL
(``--relay-url-file``) and a placeholder key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildstudio.commands import localbase
from buildstudio.commands.local_display import Display
from buildstudio.engines.adapters import adapter_for
from buildstudio.engines.base import EngineAdapter
from buildstudio.protocol import records
from buildstudio.protocol.spec import RunnerSpec
from buildstudio.sandbox.runner.launch import start_runner, write_spec

UNSHARE_PROBE_TIMEOUT = 5.0
# What the agent's process inherits of ours: nothing secret (no tokens, no keys, no HOME). Its
# TMPDIR is the run's own (opencode's Bun extracts a 5.5 MB library there on every start and never
# removes it), so the run's clean-up takes it away.
AGENT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH")
MAX_RECORD_LINE = 16 * 1024 * 1024


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
    spec: RunnerSpec,
    *,
    workdir: Path,
    workspace: Path,
    opencode_bin: str,
    display: Display,
    isolate: list[str],
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> int | None:
    """Run the agent role (``python -m buildstudio.sandbox.runner agent``) and show its progress.

    Its stdout is its side of the story: progress and events are shown, and nothing it prints
    decides the outcome (``roles.report_build`` does, afterwards, in this process)."""
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    proc = await start_runner(
        write_spec(spec, workdir / "spec.json"),
        role="agent",
        workspace=workspace,
        home=workdir / "home",
        extra_args=["--report", str(workdir / "agent-out" / "report.json"), *extra_args],
        opencode_bin=opencode_bin,
        prefix=isolate,
        env={**{k: os.environ[k] for k in AGENT_ENV if k in os.environ}, "TMPDIR": str(tmp), **(extra_env or {})},
        limit=MAX_RECORD_LINE,
        new_session=True,
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
    engine_bin: str = "",
    api_key: str | None = None,
) -> records.ResultRecord:
    """Clone, agent, report, as the sandbox pod runs them; the reporter's result record.
    ``snapshot`` (``--allow-dirty``): the base is the work tree as it is now, not its HEAD.
    A cloud engine (``spec.engine``): its CLI is ``engine_bin``, ``api_key`` the vendor key its
    relay adds (None: the model service needs none, e.g. a replay)."""
    from buildstudio.sandbox.runner import roles

    base = workdir / "base"
    (workdir / "agent-out").mkdir(parents=True, exist_ok=True)
    counters: tuple[int, int] | None = None
    counters_file: Path | None = None  # a cloud engine's relay: its counters (repairs, tokens)
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
        cli = adapter_for(spec.engine)
        if cli is not None:
            counters_file = workdir / "relay" / "counters.json"
            await _run_cloud_agent(
                agent_spec, cli, workdir=workdir, workspace=workspace, opencode_bin=opencode_bin,
                display=display, isolate=isolate, engine_bin=engine_bin, api_key=api_key,
            )  # fmt: skip
        elif spec.relay:
            from buildstudio.sandbox.relay import Relay

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
        counters_file=counters_file,
    )
    if error is None and counters is not None:
        result.summary.repaired_tool_calls, result.summary.unrepaired_tool_calls = counters
    return result


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


async def _run_cloud_agent(
    spec: RunnerSpec,
    cli: EngineAdapter,
    *,
    workdir: Path,
    workspace: Path,
    opencode_bin: str,
    display: Display,
    isolate: list[str],
    engine_bin: str,
    api_key: str | None,
) -> None:
    """The agent behind a credential relay in this process, as in the pod: the relay speaks the
    engine's wire protocol, puts the key (if any) in the vendor's header, repairs tool calls when
    ``spec.relay``, counts tokens for an engine that prints none (grok), and publishes its URL and
    counters in files the agent's runner reads."""
    import json

    from buildstudio.sandbox.relay import Relay

    run_dir = workdir / "relay"
    run_dir.mkdir(parents=True, exist_ok=True)
    url_file, counters_file = run_dir / "url", run_dir / "counters.json"
    relay = Relay(
        spec.base_url,
        repair=spec.relay,
        api_key=api_key,
        auth_header=cli.auth_header,
        strip_fields=cli.strip_request_fields,
        count_usage=not cli.live_stdout,
    )
    relay.on_counters = lambda data: _write_atomic(counters_file, json.dumps(data))
    async with relay:
        _write_atomic(url_file, relay.base_url)
        held = "holds the key" if api_key else "no key"
        print(f"{cli.name}: credential relay on {relay.base_url} -> {spec.base_url} ({held})", file=sys.stderr)
        await run_agent(
            spec,
            workdir=workdir,
            workspace=workspace,
            opencode_bin=opencode_bin,
            display=display,
            isolate=isolate,
            extra_env={f"{cli.binary.upper()}_BIN": engine_bin} if engine_bin else None,
            extra_args=["--relay-url-file", str(url_file), "--relay-counters", str(counters_file)],
        )
