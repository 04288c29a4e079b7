"""The IO shell of the runner: prepare the workspace, start the engine, watch it, stop it, report.

The engine is the spec's ``engine``: opencode (its own config and stream folder, as always) or a
cloud engine's CLI through its adapter (``buildstudio.engines``: the Launch — argv, env, files,
stdin — and the stdout parser). One runner, one watchdog, one diff capture for all of them.
A cloud engine always talks to a credential relay on loopback: the sandbox's relay sidecar (agent
role) or one started here, which holds the key; the engine's process gets a placeholder.

Decisions live in pure modules (``watchdog.check``, ``verdict.judge``, ``opencode_config``, the
adapters); this module only does the waiting, the process handling and the printing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from buildstudio.core import outcome as verdict
from buildstudio.engines import opencode_config
from buildstudio.engines import opencode_stream as events
from buildstudio.engines.adapters import adapter_for
from buildstudio.engines.base import EngineAdapter, Launch, LaunchError, ParsedStream, RunRequest
from buildstudio.protocol import records
from buildstudio.protocol.spec import RunnerSpec
from buildstudio.sandbox.runner import procs, watchdog, workspace
from buildstudio.sandbox.runner.output import RecordWriter, one_line

if TYPE_CHECKING:
    from buildstudio.adapters import gitdiff
    from buildstudio.sandbox.relay import Relay

# gitdiff pulls in GitPython (≈ 45 ms of imports): it is imported in a thread while opencode
# runs (the runner only waits then), not on the start-up path, which it would lengthen.
GITDIFF_MODULE = "buildstudio.adapters.gitdiff"

READ_CHUNK = 64 * 1024
TICK_SECONDS = 0.2
DIFF_TIMEOUT_SECONDS = 60.0
TERM_GRACE_SECONDS = 1.0  # SIGTERM → opencode exits in ≈ 0.07 s (contract §2)
# Environment passed through from the runner's own (everything else is set explicitly).
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def opencode_argv(opencode_bin: str, ws: Path, model: str) -> list[str]:
    """The command (pure). The prompt is NOT here: an argument with spaces reaches the model
    wrapped in quotes and is capped at 128 KiB (contract §2); stdin from a file arrives verbatim,
    so the positional prompt is empty and the prompt file is stdin."""
    return [
        opencode_bin,
        "run",
        "--dir",
        str(ws),
        "-m",
        opencode_config.model_ref(model),
        "--format",
        "json",
        "--dangerously-skip-permissions",
        "",
    ]


def engine_env(home: Path, launch_env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """A cloud engine's environment (pure): the minimal base, a private HOME/XDG, the adapter's
    variables (its placeholder key, the relay's URL). Never the caller's credentials."""
    env = {k: base[k] for k in PASSTHROUGH_ENV if k in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(opencode_config.sandbox_env(home))
    env.update(launch_env)
    return env


def engine_binary(adapter: EngineAdapter, env: Mapping[str, str], base: Mapping[str, str]) -> str:
    """$<ENGINE>_BIN (e.g. CLAUDE_BIN) of the runner's environment, else the name on the run's PATH."""
    explicit = base.get(f"{adapter.name.upper()}_BIN")
    if explicit:
        return explicit
    return shutil.which(adapter.binary, path=env.get("PATH")) or adapter.binary


def relay_origin(url: str) -> str:
    """``http://127.0.0.1:PORT`` of a relay base URL such as ``http://127.0.0.1:PORT/v1``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def opencode_env(spec: RunnerSpec, home: Path, base: dict[str, str]) -> dict[str, str]:
    """A minimal environment (pure): no credentials of the caller leak into the sandboxed agent."""
    env = {k: base[k] for k in PASSTHROUGH_ENV if k in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(opencode_config.sandbox_env(home))
    if spec.api_key_env and spec.api_key_env in base:
        env[spec.api_key_env] = base[spec.api_key_env]
    return env


@dataclass
class RunState:
    started_mono: float
    started_at: str
    stage: str = "preparing"
    last_event_at: float | None = None
    last_tool: str = ""
    stop: watchdog.Decision | None = None
    cancelled: bool = False
    stderr_tail: bytes = b""
    opencode_started: float | None = None  # run and idle time count from here, not from the clone


class Supervisor:
    def __init__(
        self,
        spec: RunnerSpec,
        *,
        ws: Path,
        home: Path,
        opencode_bin: str,
        writer: RecordWriter,
        base_env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        capture_diff: bool = True,
        behind_relay: bool = False,
        relay_counters_file: Path | None = None,
    ) -> None:
        self.spec = spec
        # A cloud engine's adapter (None: opencode, on its own path).
        self.adapter = adapter_for(spec.engine)
        self.engine = spec.engine
        # True in the agent container: spec.base_url is the relay sidecar already (it holds the key).
        self.behind_relay = behind_relay
        # The sidecar's counters file: its writes are model traffic (activity), its tokens the relay's count.
        self.relay_counters_file = relay_counters_file
        self.relay: Relay | None = None  # the in-process relay, while the engine runs
        # False in the sandbox's agent container: the reporter, another uid, recomputes the diff.
        self.capture_diff = capture_diff
        self.ws = ws
        self.home = home
        self.opencode_bin = opencode_bin
        self.writer = writer
        self.base_env = dict(os.environ) if base_env is None else base_env
        self.clock = clock
        self.folder: events.StreamFolder | ParsedStream = (
            events.StreamFolder(str(ws)) if self.adapter is None else ParsedStream(self.adapter.parser(str(ws)))
        )
        self.final_stop_at: float | None = None  # when the terminal step_finish was seen
        self.start_error = ""  # opencode could not be started at all
        self.relay_counters: tuple[int, int] | None = None  # (repaired, left as text)
        self.relay_tokens: tuple[int, int] | None = None  # (input, output) counted by the relay
        self._gitdiff_import: asyncio.Future[ModuleType] | None = None
        self.state = RunState(started_mono=clock(), started_at=utcnow())
        self.cancel_requested = asyncio.Event()
        self.limits = watchdog.Limits(
            run_seconds=spec.timeouts.run_seconds,
            idle_seconds=spec.timeouts.idle_seconds,
            exit_after_final_seconds=spec.timeouts.exit_after_final_seconds,
            step_budget=spec.limits.step_budget,
            unknown_finishes=spec.limits.unknown_finishes,
            compactions=spec.limits.compactions,
        )

    # ---- signals and progress -------------------------------------------------------------
    def signals(self) -> watchdog.Signals:
        f = self.folder
        started = self.state.opencode_started
        last = self.state.last_event_at
        if self.adapter is not None and not self.adapter.live_stdout:
            # grok prints nothing until it ends: its model traffic through the relay is its activity.
            traffic = self._relay_activity()
            if traffic is not None and (last is None or traffic > last):
                last = traffic
        return watchdog.Signals(
            started_at=self.state.started_mono if started is None else started,
            last_event_at=last,
            steps=f.steps,
            consecutive_unknown=f.unknown_finish_streak,
            compactions=f.compaction_cycles,
            final_stop_at=self.final_stop_at,
        )

    def _relay_activity(self) -> float | None:
        """When the relay last saw a model request start or end (this runner's clock), if known."""
        if self.relay is not None:
            return self.relay.last_activity
        if self.relay_counters_file is not None:
            try:
                mtime = self.relay_counters_file.stat().st_mtime
            except OSError:
                return None
            return self.clock() - max(0.0, time.time() - mtime)
        return None

    def progress(self, *, force: bool = False, message: str = "") -> None:
        now = self.clock()
        if not (force or self.writer.progress_due(now)):
            return  # checked first: this runs on every chunk of opencode's output
        f = self.folder
        self.writer.progress(
            records.ProgressRecord(
                stage=self.state.stage,
                elapsed_seconds=round(now - self.state.started_mono, 2),
                steps=f.steps,
                tool_calls=f.tool_calls,
                tokens=f.input_tokens + f.output_tokens,
                last_tool=self.state.last_tool,
                message=one_line(message, 256),
            ),
            now,
            force=force,
        )

    def note(self, type_: str, message: str) -> None:
        self.writer.event(records.EventRecord(type=type_, message=message, ts=time.time()))

    # ---- the run ------------------------------------------------------------------------
    async def run(self) -> records.ResultRecord:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_cancel)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_cancel(self) -> None:
        # Once opencode has ended, the run is decided: finish the diff and report it as it was.
        if self.state.stage != "diffing" and not self.state.cancelled:
            self.state.cancelled = True
            self.cancel_requested.set()

    async def _run(self) -> records.ResultRecord:
        self.state.stage = "cloning" if self.spec.repo else "preparing"
        canned = " (replay model: the model's words are canned)" if self.spec.replay else ""
        self.progress(force=True, message=f"preparing workspace {self.ws}{canned}")
        try:
            base = await self._prepare_workspace()
        except workspace.WorkspaceError as e:
            if self.state.cancelled:
                return self._result(records.Outcome.CANCELLED, f"cancelled: {e}", None, "", None)
            return self._result(records.Outcome.WORKSPACE_ERROR, str(e), exit_code=None, base="", diff=None)
        if self.state.cancelled:
            return await self._finish(base, exit_code=None)
        if self.adapter is not None:
            return await self._finish(base, exit_code=await self._run_adapter(self.adapter))
        if not self.spec.relay:
            return await self._finish(base, exit_code=await self._run_opencode(self.spec.base_url))
        # The repair relay turns text-format tool calls into API tool_calls (opencode 1.18.33 does
        # not parse them: contract §6); it runs in this process, in front of the model service.
        from buildstudio.sandbox.relay import Relay

        async with Relay(self.spec.base_url) as relay:
            self.note("repair", f"tool-call repair relay on {relay.base_url} -> {self.spec.base_url}")
            exit_code = await self._run_opencode(relay.base_url)
            self.relay_counters = (relay.counters.repaired, relay.counters.left_as_text)
        return await self._finish(base, exit_code=exit_code)

    async def _run_adapter(self, adapter: EngineAdapter) -> int | None:
        """A cloud engine: always behind a credential relay on loopback; the key never reaches it."""
        if self.behind_relay:
            return await self._launch_adapter(adapter, self.spec.base_url)
        from buildstudio.sandbox.relay import Relay

        spec = self.spec
        key = self.base_env.get(spec.api_key_env) if spec.api_key_env else None
        relay = Relay(
            spec.base_url,
            repair=spec.relay,
            api_key=key or None,
            auth_header=adapter.auth_header,
            strip_fields=adapter.strip_request_fields,
            count_usage=not adapter.live_stdout,
        )
        async with relay:
            self.relay = relay
            self.note("relay", f"{adapter.name}: credential relay on {relay.base_url} -> {spec.base_url}")
            try:
                return await self._launch_adapter(adapter, relay.base_url)
            finally:
                self.relay_counters = (relay.counters.repaired, relay.counters.left_as_text)
                self.relay_tokens = (relay.counters.input_tokens, relay.counters.output_tokens)
                self.relay = None

    async def _launch_adapter(self, adapter: EngineAdapter, relay_url: str) -> int | None:
        spec = self.spec
        request = RunRequest(
            prompt=spec.prompt,
            model=spec.model,
            workspace=str(self.ws),
            home=str(self.home),
            base_url=relay_origin(relay_url),
            request_timeout_s=max(300, -(-spec.timeouts.header_timeout_ms // 1000)),
            max_output_tokens=spec.output_limit,
            max_steps=spec.limits.step_budget,
        )
        try:
            launch = adapter.launch(request)
        except LaunchError as e:
            self.start_error = f"cannot start {adapter.name}: {e}"
            return None
        try:
            stdin_file = await asyncio.to_thread(self._write_launch, launch)
        except (OSError, workspace.WorkspaceError) as e:
            self.start_error = f"cannot prepare {adapter.name}'s files: {e}"
            return None
        env = engine_env(self.home, launch.env, self.base_env)
        argv = [engine_binary(adapter, env, self.base_env), *launch.argv[1:]]
        return await self._start_and_watch(argv, env, Path(launch.cwd), stdin_file, adapter.name)

    def _write_launch(self, launch: Launch) -> Path:
        """The adapter's files, its git excludes and its stdin (a file: written whole, then closed)."""
        for d in opencode_config.xdg_dirs(self.home).values():
            d.mkdir(parents=True, exist_ok=True)
        roots = {"home": self.home, "workspace": self.ws}
        for f in launch.files:
            root = roots[f.root].resolve()
            path = (root / f.path).resolve()
            if not path.is_relative_to(root):
                raise OSError(f"{f.path!r} is outside the run's {f.root}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f.content, encoding="utf-8")
            path.chmod(f.mode)
        if launch.git_excludes:
            workspace.exclude_engine_files(self.ws, launch.git_excludes)
            workspace.precreate_engine_dirs(self.ws, launch.git_excludes)
        stdin_file = self.home / ".buildstudio" / "prompt.txt"
        stdin_file.parent.mkdir(parents=True, exist_ok=True)
        if launch.stdin is None:
            return Path(os.devnull)
        stdin_file.write_bytes(launch.stdin.encode("utf-8"))
        return stdin_file

    async def _run_opencode(self, base_url: str) -> int | None:
        prompt_file = await asyncio.to_thread(self._write_inputs, base_url)
        argv = opencode_argv(self.opencode_bin, self.ws, self.spec.model)
        env = opencode_env(self.spec, self.home, self.base_env)
        return await self._start_and_watch(argv, env, self.ws, prompt_file, "opencode", self.opencode_bin)

    def _write_inputs(self, base_url: str) -> Path:
        """opencode's config and the prompt file; returns the prompt file."""
        config = opencode_config.build_config(
            base_url=base_url,
            model=self.spec.model,
            context=self.spec.context_limit,
            output=self.spec.output_limit,
            api_key_env=self.spec.api_key_env,
            header_timeout_ms=self.spec.timeouts.header_timeout_ms,
            chunk_timeout_ms=self.spec.timeouts.chunk_timeout_ms,
        )
        opencode_config.write_config(self.home, config)
        # Outside the workspace, so it never shows in the diff.
        prompt_file = self.home / ".buildstudio" / "prompt.txt"
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_bytes(self.spec.prompt.encode("utf-8"))
        return prompt_file

    async def _prepare_workspace(self) -> str:
        task = asyncio.ensure_future(asyncio.to_thread(workspace.prepare, self.ws, self.spec.repo))
        cancel = asyncio.ensure_future(self.cancel_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {task, cancel}, timeout=self.spec.timeouts.clone_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancel.cancel()
        if task in done:
            return task.result()
        # Timed out or cancelled: kill git (our descendants) so the thread returns.
        await asyncio.to_thread(procs.kill_descendants, timeout=2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5.0)
        if self.state.cancelled:
            raise workspace.WorkspaceError("cancelled while preparing the workspace")
        raise workspace.WorkspaceError(f"clone did not finish within {self.spec.timeouts.clone_seconds:g} s")

    async def _start_and_watch(
        self, argv: list[str], env: dict[str, str], cwd: Path, stdin_file: Path, name: str, shown: str = ""
    ) -> int | None:
        self.state.stage = "running"
        try:
            with stdin_file.open("rb") as stdin:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=stdin,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=str(cwd),
                    start_new_session=True,
                )
        except OSError as e:
            self.start_error = f"cannot start {name} ({shown or argv[0]}): {e}"
            return None
        self.state.opencode_started = self.clock()
        self.progress(force=True, message=f"{name} started")
        if self.capture_diff:
            self._gitdiff()  # start importing it now, while the runner only waits
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.ensure_future(self._read_stdout(proc.stdout)),
            asyncio.ensure_future(self._read_stderr(proc.stderr)),
        ]
        waiter = asyncio.ensure_future(proc.wait())
        cancel = asyncio.ensure_future(self.cancel_requested.wait())
        try:
            while not waiter.done():
                await asyncio.wait({waiter, cancel}, timeout=TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                if self.state.cancelled:
                    self.note("watchdog", f"cancel requested: stopping {name}")
                    break
                decision = watchdog.check(self.clock(), self.signals(), self.limits, engine=name)
                if decision is not None:
                    self.state.stop = decision
                    self.note("watchdog", decision.message)
                    break
                self.progress()
        finally:
            cancel.cancel()
            await self._stop(proc, waiter)
            # Everything opencode started is dead now, so the pipes reach EOF promptly.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*readers), 5.0)
            for r in readers:
                r.cancel()
            if isinstance(self.folder, ParsedStream):
                # The stream's end as the adapter sees it (a claude killed between its error and result).
                self._on_records(self.folder.end(proc.returncode), self.clock())
        return proc.returncode

    async def _stop(self, proc: asyncio.subprocess.Process, waiter: asyncio.Future[int]) -> None:
        """End opencode and every process the run started (tool commands outlive opencode)."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), TERM_GRACE_SECONDS)
        left = await asyncio.to_thread(procs.kill_descendants, keep_waiting=frozenset({proc.pid}), timeout=5.0)
        if left:
            self.note("watchdog", f"processes still alive after kill: {sorted(left)}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 5.0)

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(READ_CHUNK)
            now = self.clock()
            recs = self.folder.feed_bytes(chunk, now) if chunk else self.folder.finish(now)
            self._on_records(recs, now)
            if not chunk:
                return

    def _on_records(self, recs: list[records.EventRecord], now: float) -> None:
        if self.folder.last_event_at is not None:
            self.state.last_event_at = self.folder.last_event_at
        for rec in recs:
            if rec.type == "tool":
                self.state.last_tool = one_line(rec.message, 200)
            self.writer.event(rec)
        if not self.folder.terminal:
            self.final_stop_at = None  # an error or a new step after the "final" one
        elif self.final_stop_at is None:
            self.final_stop_at = now
        self.progress()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        keep = self.spec.output.stderr_tail_bytes
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            self.state.stderr_tail = (self.state.stderr_tail + chunk)[-keep:] if keep else b""

    # ---- the ending -----------------------------------------------------------------------
    def _gitdiff(self) -> asyncio.Future[ModuleType]:
        """The gitdiff module, imported once in a thread (never blocking the event loop)."""
        if self._gitdiff_import is None:
            self._gitdiff_import = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, GITDIFF_MODULE))
        return self._gitdiff_import

    async def _finish(self, base: str, *, exit_code: int | None) -> records.ResultRecord:
        diff: gitdiff.DiffResult | None = None
        diff_error = ""
        if self.capture_diff or self.state.cancelled:  # cancelled: no reporter will run after us
            diff, diff_error = await self._capture(base)
        return self._judge(base, exit_code, diff, diff_error)

    async def _capture(self, base: str) -> tuple[gitdiff.DiffResult | None, str]:
        self.state.stage = "diffing"
        self.progress(force=True, message="capturing the diff")
        gd = await self._gitdiff()
        diff: gitdiff.DiffResult | None = None
        diff_error = ""
        # Cancelled: the grace bounds everything; otherwise git's own timeout does.
        budget = (
            max(2.0, self.spec.timeouts.cancel_grace_seconds - 3.0) if self.state.cancelled else DIFF_TIMEOUT_SECONDS
        )
        try:
            diff = await asyncio.wait_for(
                asyncio.to_thread(
                    gd.capture,
                    self.ws,
                    base,
                    excerpt_bytes=self.spec.output.diff_excerpt_bytes,
                    patch_cap_bytes=self.spec.output.patch_max_bytes,
                    timeout_s=budget,
                ),
                timeout=budget + 1.0,
            )
        except Exception as e:  # the result record must still be printed
            diff_error = f"diff capture failed: {e}"
        return diff, diff_error

    def _judge(
        self, base: str, exit_code: int | None, diff: gitdiff.DiffResult | None, diff_error: str
    ) -> records.ResultRecord:
        if self.start_error:
            return self._result(records.Outcome.ENGINE_FAILED, self.start_error, exit_code, base, diff)
        stop = self.state.stop.trip.value if self.state.stop else None
        outcome, message = verdict.judge(
            self.folder.summary,
            exit_code=exit_code,
            stop_reason=stop,
            diff_stat=diff.stat if diff else records.DiffStat(),
            cancelled=self.state.cancelled,
            engine=self.engine,
        )
        if self.state.stop is not None and self.state.stop.trip is not watchdog.Trip.EXIT_AFTER_FINAL:
            message = f"{message} ({self.state.stop.message})"
        tail = self.state.stderr_tail.decode("utf-8", "replace").strip()
        if tail and not outcome.succeeded and not self.folder.summary.events:
            message = f"{message}; {self.engine} stderr: {one_line(tail, 600)}"
        if diff_error:
            message = f"{message}; {diff_error}"
            if not self.state.cancelled:
                # The edits may be on disk: never report a failed capture as NoChanges.
                outcome = records.Outcome.DIFF_CAPTURE_FAILED
        return self._result(outcome, message, exit_code, base, diff)

    def _result(
        self,
        outcome: records.Outcome,
        message: str,
        exit_code: int | None,
        base: str,
        diff: gitdiff.DiffResult | None,
    ) -> records.ResultRecord:
        now = self.clock()
        summary = self.folder.summary
        if self.relay_counters is not None:
            summary.repaired_tool_calls, summary.unrepaired_tool_calls = self.relay_counters
        if self.relay_tokens is not None and summary.tokens.total == 0:
            fill_tokens(summary, *self.relay_tokens)
        rec = records.ResultRecord(
            outcome=outcome,
            message=message,
            exit_code=exit_code,
            summary=summary,
            base_commit=base,
            started_at=self.state.started_at,
            finished_at=utcnow(),
            duration_seconds=round(now - self.state.started_mono, 3),
            replay=self.spec.replay,
        )
        if diff is not None:
            diff.fill(rec)
        return rec


def fill_tokens(summary: records.RunSummary, input_tokens: int, output_tokens: int) -> None:
    """The relay's token count, for an engine that printed none (grok)."""
    if input_tokens or output_tokens:
        summary.tokens = records.TokenUsage(
            input=input_tokens, output=output_tokens, total=input_tokens + output_tokens
        )


async def supervise(
    spec: RunnerSpec,
    *,
    ws: Path,
    home: Path,
    opencode_bin: str,
    writer: RecordWriter,
    capture_diff: bool = True,
    base_env: dict[str, str] | None = None,
    behind_relay: bool = False,
    relay_counters_file: Path | None = None,
) -> records.ResultRecord:
    """Run once and print every record, the result last; returns the result."""
    sup = Supervisor(
        spec,
        ws=ws,
        home=home,
        opencode_bin=opencode_bin,
        writer=writer,
        capture_diff=capture_diff,
        base_env=base_env,
        behind_relay=behind_relay,
        relay_counters_file=relay_counters_file,
    )
    try:
        result = await sup.run()
    except Exception as e:  # a bug in the runner: still end everything and print a result
        await asyncio.to_thread(procs.kill_descendants, timeout=3.0)
        result = records.ResultRecord(
            outcome=records.Outcome.RUNNER_ERROR,
            message=one_line(f"runner error: {type(e).__name__}: {e}", 1000),
            summary=sup.folder.summary,
            started_at=sup.state.started_at,
            finished_at=utcnow(),
            replay=spec.replay,
        )
    writer.result(result)
    return result
