"""The runner's pure parts and process handling, without opencode."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from buildstudio.protocol import records
from buildstudio.protocol.spec import RepoSource, RunnerSpec, RunnerTimeouts, dump_spec, load_spec
from buildstudio.sandbox.runner import procs, watchdog, workspace
from buildstudio.sandbox.runner.output import RecordWriter, one_line
from buildstudio.sandbox.runner.supervise import opencode_argv, opencode_env

REPO_ROOT = Path(__file__).resolve().parent.parent

LIM = watchdog.Limits(
    run_seconds=100, idle_seconds=10, exit_after_final_seconds=3, step_budget=5, unknown_finishes=4, compactions=2
)


# ---------------------------------------------------------------- watchdog (pure)


@pytest.mark.parametrize(
    ("now", "signals", "trip"),
    [
        (5, watchdog.Signals(started_at=0, last_event_at=4), None),
        (11, watchdog.Signals(started_at=0), watchdog.Trip.IDLE_TIMEOUT),  # nothing at all since start
        (20, watchdog.Signals(started_at=0, last_event_at=9), watchdog.Trip.IDLE_TIMEOUT),
        (20, watchdog.Signals(started_at=0, last_event_at=15), None),
        (100, watchdog.Signals(started_at=0, last_event_at=99), watchdog.Trip.RUN_TIMEOUT),
        (5, watchdog.Signals(started_at=0, last_event_at=4, steps=6), watchdog.Trip.STEP_BUDGET),
        (5, watchdog.Signals(started_at=0, last_event_at=4, steps=5), None),
        (5, watchdog.Signals(started_at=0, last_event_at=4, consecutive_unknown=4), watchdog.Trip.LOOP),
        (5, watchdog.Signals(started_at=0, last_event_at=4, compactions=2), watchdog.Trip.LOOP),
        (5, watchdog.Signals(started_at=0, last_event_at=4, final_stop_at=3), None),
        (6, watchdog.Signals(started_at=0, last_event_at=3, final_stop_at=3), watchdog.Trip.EXIT_AFTER_FINAL),
        # After the final event the idle timer no longer applies: the exit timer does.
        (14, watchdog.Signals(started_at=0, last_event_at=3, final_stop_at=12), None),
        # The exit timer wins over the run timeout: the work was done.
        (200, watchdog.Signals(started_at=0, last_event_at=3, final_stop_at=3), watchdog.Trip.EXIT_AFTER_FINAL),
    ],
)
def test_watchdog(now: float, signals: watchdog.Signals, trip: watchdog.Trip | None) -> None:
    d = watchdog.check(now, signals, LIM)
    assert (d.trip if d else None) == trip
    if d:
        assert d.message


def test_trip_values_are_the_verdict_vocabulary() -> None:
    from buildstudio.core import outcome as verdict

    assert set(verdict.WATCHDOG_OUTCOMES) | {verdict.EXIT_TIMER} == {t.value for t in watchdog.Trip}


# ---------------------------------------------------------------- processes


def test_parse_stat_handles_odd_command_names() -> None:
    assert procs.parse_stat("123 (a b) c)) S 45 123 123 0 -1") == (45, "S")
    assert procs.parse_stat("garbage") is None


def test_descendants_is_a_tree_walk() -> None:
    table = {2: (1, "S"), 3: (2, "S"), 4: (3, "Z"), 5: (1, "S"), 6: (5, "R")}
    assert procs.descendants(2, table) == {3, 4}
    assert procs.living({3, 4}, table) == {3}
    assert procs.descendants(1, table) == {2, 3, 4, 5, 6}


def test_kill_descendants_reaches_processes_in_their_own_session(tmp_path: Path) -> None:
    """A child that double-forks a setsid'ed grandchild: both found under the child and killed."""
    pidfile = tmp_path / "pid"
    script = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen(['setsid', 'sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        table = procs.process_table()
        assert grandchild in procs.descendants(child.pid, table)
        assert procs.kill_descendants(root=child.pid, timeout=5) == set()
        # The grandchild is dead (a zombie until its parent, the killed child, is reaped by us).
        child.kill()
        child.wait(timeout=5)
        time.sleep(0.05)
        st = procs.process_table().get(grandchild)
        assert st is None or st[1] in ("Z", "X")
    finally:
        child.kill()
        child.wait(timeout=5)


def test_subreaper_can_be_set_in_a_child() -> None:
    code = "from buildstudio.sandbox.runner import procs; print(procs.set_child_subreaper())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "True"


def test_runner_imports_nothing_of_kopf_or_kubernetes() -> None:
    code = (
        "import sys, buildstudio.sandbox.runner.__main__, buildstudio.sandbox.runner.supervise\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes', 'kubernetes_asyncio',"
        " 'kr8s', 'kmock'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"runner imports {out.stdout.strip()}"


# ---------------------------------------------------------------- command and env (pure)


def test_prompt_never_on_the_command_line(tmp_path: Path) -> None:
    argv = opencode_argv("/bin/opencode", tmp_path, "qwen3-coder")
    assert argv == [
        "/bin/opencode",
        "run",
        "--dir",
        str(tmp_path),
        "-m",
        "local/qwen3-coder",
        "--format",
        "json",
        "--dangerously-skip-permissions",
        "",
    ]
    assert argv.count("-m") == 1  # twice makes yargs crash (contract §2)


def test_env_is_minimal_and_sandboxed(tmp_path: Path) -> None:
    spec = RunnerSpec(prompt="p", model="m", base_url="http://h/v1", api_key_env="KEY")
    base = {"PATH": "/x", "OPENAI_API_KEY": "secret", "KEY": "k1", "AWS_SECRET_ACCESS_KEY": "s"}
    env = opencode_env(spec, tmp_path, base)
    assert env["PATH"] == "/x" and env["KEY"] == "k1" and env["HOME"] == str(tmp_path)
    assert "OPENAI_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OPENCODE_DISABLE_PROJECT_CONFIG"] == "1"


def test_spec_round_trip_and_camel_case(tmp_path: Path) -> None:
    raw = {
        "prompt": "do it",
        "model": "m",
        "baseUrl": "http://h/v1",
        "repo": {"url": "/r", "ref": "dev"},
        "timeouts": {"idleSeconds": 7},
        "limits": {"stepBudget": 3},
        "replay": True,
    }
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(raw))
    spec = load_spec(f)
    assert (
        spec.timeouts.idle_seconds == 7
        and spec.limits.step_budget == 3
        and spec.repo == RepoSource(url="/r", ref="dev")
    )
    again = json.loads(dump_spec(spec))
    assert again["baseUrl"] == "http://h/v1" and again["timeouts"]["idleSeconds"] == 7
    with pytest.raises(ValueError):
        RunnerSpec.model_validate({**raw, "surprise": 1})  # typos are errors, not silently ignored
    with pytest.raises(ValueError):
        RunnerSpec.model_validate({**raw, "prompt": ""})


# ---------------------------------------------------------------- output bounds


def test_record_writer_caps_events_and_keeps_the_result() -> None:
    buf = io.BytesIO()
    w = RecordWriter(max_events=3, max_bytes=10_000_000, progress_interval=2.0, stream=buf)
    for i in range(10):
        w.event(records.EventRecord(type="tool", message=f"call {i}\nsecond line"))
    assert w.progress(records.ProgressRecord(stage="running"), now=0.0)
    assert not w.progress(records.ProgressRecord(stage="running"), now=1.0)  # rate-limited
    assert w.progress(records.ProgressRecord(stage="running"), now=2.5)
    w.result(records.ResultRecord(outcome=records.Outcome.NO_CHANGES, message="ok"))
    lines = [records.parse_line(x) for x in buf.getvalue().splitlines()]
    assert all(rec is not None for rec in lines)
    events = [r for r in lines if isinstance(r, records.EventRecord)]
    assert [e.message for e in events[:3]] == ["call 0 second line", "call 1 second line", "call 2 second line"]
    assert "capped after 3 events" in events[3].message
    assert "7 event records not printed" in events[-1].message
    assert isinstance(lines[-1], records.ResultRecord)
    assert one_line("x" * 600, 10) == "x" * 9 + "…"


# ---------------------------------------------------------------- workspace


def _repo(path: Path) -> git.Repo:
    path.mkdir(parents=True, exist_ok=True)
    (path / "a.txt").write_text("one\n")
    r = git.Repo.init(path)
    r.index.add(["a.txt"])
    actor = git.Actor("t", "t@t")
    r.index.commit("first", author=actor, committer=actor)
    return r


def test_workspace_clone_at_ref_and_in_place(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    first = src.head.commit.hexsha
    src.git.checkout("-b", "feature")
    (tmp_path / "src" / "a.txt").write_text("two\n")
    src.index.add(["a.txt"])
    actor = git.Actor("t", "t@t")
    second = src.index.commit("second", author=actor, committer=actor).hexsha
    src.git.checkout(first)
    url = str(tmp_path / "src")
    assert workspace.prepare(tmp_path / "ws1", RepoSource(url=url, ref="feature", local_paths=True)) == second
    assert (tmp_path / "ws1" / "a.txt").read_text() == "two\n"
    assert workspace.prepare(tmp_path / "ws2", RepoSource(url=url, ref=first, local_paths=True)) == first
    assert workspace.prepare(tmp_path / "ws2", None) == first  # in place


def _git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


@pytest.mark.parametrize("case", ["loose", "packed", "detached", "tag"])
def test_base_commit_without_gitpython_agrees_with_it(tmp_path: Path, case: str) -> None:
    """The start-up fast path (one `git rev-parse`) gives GitPython's answer for plain repos."""
    ws = tmp_path / "ws"
    r = _repo(ws)
    if case == "packed":
        _git(ws, "gc", "-q")  # refs and objects packed
    elif case == "detached":
        _git(ws, "checkout", "-q", "--detach", "HEAD")
    elif case == "tag":  # a branch name that is also an annotated tag: HEAD is the branch, a commit
        _git(ws, "tag", "-a", "-m", "t", r.active_branch.name)
    fast = workspace._plain_repo_head(ws)
    assert fast is not None and fast == workspace._base_commit_gitpython(ws) == r.head.commit.hexsha
    assert workspace.base_commit(ws) == fast


@pytest.mark.parametrize("case", ["subdir", "no-commit", "linked-worktree", "core-worktree", "bare"])
def test_base_commit_leaves_unusual_repos_to_gitpython(tmp_path: Path, case: str) -> None:
    """Wherever the fast path is not sure it defers, so results and errors stay GitPython's."""
    ws = tmp_path / "ws"
    if case == "subdir":
        _repo(tmp_path / "r")
        ws = tmp_path / "r" / "sub"
        ws.mkdir()
    elif case == "no-commit":
        git.Repo.init(ws)
    elif case == "linked-worktree":  # .git is a file pointing elsewhere
        _repo(tmp_path / "main")
        _git(tmp_path / "main", "worktree", "add", "-q", str(ws))
    elif case == "core-worktree":  # the repo says its work tree is another directory
        _repo(ws)
        (tmp_path / "elsewhere").mkdir()
        _git(ws, "config", "core.worktree", str(tmp_path / "elsewhere"))
    elif case == "bare":
        _repo(ws)
        _git(ws, "config", "core.bare", "true")
    assert workspace._plain_repo_head(ws) is None
    try:
        expected: str | BaseException = workspace._base_commit_gitpython(ws)
    except workspace.WorkspaceError as e:
        expected = e
    if isinstance(expected, str):
        assert workspace.base_commit(ws) == expected
    else:
        with pytest.raises(workspace.WorkspaceError, match="^" + re.escape(str(expected)) + "$"):
            workspace.base_commit(ws)


@pytest.mark.parametrize("case", ["not-git", "missing", "subdir", "no-commit", "bad-url", "bad-ref", "not-empty"])
def test_workspace_errors_are_clear(tmp_path: Path, case: str) -> None:
    ws, repo = tmp_path / "ws", None
    if case == "not-git":
        ws.mkdir()
    elif case == "subdir":
        _repo(tmp_path / "r")
        ws = tmp_path / "r" / "sub"
        ws.mkdir()
    elif case == "no-commit":
        git.Repo.init(ws)
    elif case == "bad-url":
        repo = RepoSource(url=str(tmp_path / "nope"), local_paths=True)
    elif case == "bad-ref":
        _repo(tmp_path / "src")
        repo = RepoSource(url=str(tmp_path / "src"), ref="no-such-branch", local_paths=True)
    elif case == "not-empty":
        _repo(tmp_path / "src")
        ws.mkdir()
        (ws / "x").write_text("x")
        repo = RepoSource(url=str(tmp_path / "src"), local_paths=True)
    with pytest.raises(workspace.WorkspaceError) as e:
        workspace.prepare(ws, repo)
    assert str(ws) in str(e.value) or "clone" in str(e.value)


def test_runner_reports_a_bad_spec_as_a_result_record(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text('{"prompt": ""}')
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildstudio.sandbox.runner",
            "--spec",
            str(tmp_path / "spec.json"),
            "--workspace",
            str(tmp_path),
            "--home",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2
    rec = records.parse_line(out.stdout.splitlines()[-1])
    assert isinstance(rec, records.ResultRecord) and rec.outcome is records.Outcome.RUNNER_ERROR
    assert "runner spec" in rec.message


def test_runner_workspace_error_without_opencode(tmp_path: Path) -> None:
    spec = RunnerSpec(prompt="p", model="m", base_url="http://127.0.0.1:9/v1")
    (tmp_path / "spec.json").write_text(dump_spec(spec))
    (tmp_path / "ws").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "OPENCODE_BIN": "/nonexistent/opencode"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildstudio.sandbox.runner",
            "--spec",
            str(tmp_path / "spec.json"),
            "--workspace",
            str(tmp_path / "ws"),
            "--home",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 1
    rec = records.parse_line(out.stdout.splitlines()[-1])
    assert isinstance(rec, records.ResultRecord) and rec.outcome is records.Outcome.WORKSPACE_ERROR
    assert "not a git repository" in rec.message


def test_runner_reports_a_missing_opencode(tmp_path: Path) -> None:
    _repo(tmp_path / "ws")
    spec = RunnerSpec(prompt="p", model="m", base_url="http://127.0.0.1:9/v1")
    (tmp_path / "spec.json").write_text(dump_spec(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "OPENCODE_BIN": "/nonexistent/opencode"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildstudio.sandbox.runner",
            "--spec",
            str(tmp_path / "spec.json"),
            "--workspace",
            str(tmp_path / "ws"),
            "--home",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        timeout=60,
        env=env,
    )
    rec = records.parse_line(out.stdout.splitlines()[-1])
    assert isinstance(rec, records.ResultRecord) and rec.outcome is records.Outcome.ENGINE_FAILED
    assert "cannot start opencode" in rec.message and out.returncode == 1


async def _blackhole() -> tuple[asyncio.Server, int]:
    """A 'git server' that accepts and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(60)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize("how", ["clone-timeout", "cancel"])
async def test_hung_clone_is_killed(tmp_path: Path, how: str) -> None:
    server, port = await _blackhole()
    spec = RunnerSpec(
        prompt="p",
        model="m",
        base_url="http://127.0.0.1:9/v1",
        repo=RepoSource(url=f"http://127.0.0.1:{port}/repo.git"),
        timeouts=RunnerTimeouts(clone_seconds=2 if how == "clone-timeout" else 60),
    )
    (tmp_path / "spec.json").write_text(dump_spec(spec))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        "OPENCODE_BIN": "/nonexistent/opencode",
        "GIT_TERMINAL_PROMPT": "0",
    }
    t0 = time.monotonic()
    async with server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "buildstudio.sandbox.runner",
            "--spec",
            str(tmp_path / "spec.json"),
            "--workspace",
            str(tmp_path / "ws"),
            "--home",
            str(tmp_path / "h"),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        if how == "cancel":
            await asyncio.sleep(1.5)
            proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    rec = records.parse_line(out.splitlines()[-1])
    assert isinstance(rec, records.ResultRecord)
    if how == "cancel":
        assert rec.outcome is records.Outcome.CANCELLED, rec.message
    else:
        assert rec.outcome is records.Outcome.WORKSPACE_ERROR and "did not finish within 2 s" in rec.message
    assert time.monotonic() - t0 < 15


def test_private_repo_token_reaches_git_config_only_through_the_environment() -> None:
    import base64 as b64
    import subprocess as sp

    from buildstudio.sandbox.runner.workspace import credential_env

    assert credential_env("file:///srv/repo", "s3cr3t") == {}
    assert credential_env("git@git.example:r.git", "s3cr3t") == {}
    assert credential_env("https://git.example/r.git", "") == {}
    env = credential_env("https://u@git.example:8443/r.git", "s3cr3t")
    header = env["GIT_CONFIG_VALUE_0"]
    assert b64.b64decode(header.removeprefix("Authorization: Basic ")) == b"x-access-token:s3cr3t"
    seen = sp.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", "https://git.example:8443/r.git"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert seen == header  # git reads it from GIT_CONFIG_*: never on argv, in the URL or in .git/config
    elsewhere = sp.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", "https://other.example/r.git"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert elsewhere.stdout == ""  # scoped to the remote's origin: another host never gets it
    gitlab = credential_env("https://gl.example/r.git", "t", "oauth2")
    assert b64.b64decode(gitlab["GIT_CONFIG_VALUE_0"].split()[-1]) == b"oauth2:t"


def _serve_dumb_http(root: Path, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_clone_retries_until_the_remote_answers(tmp_path: Path) -> None:
    """In a cluster the pod's egress policy may apply a moment after the container starts."""
    src = _repo(tmp_path / "src")
    _git(tmp_path, "clone", "-q", "--bare", str(tmp_path / "src"), str(tmp_path / "www" / "r.git"))
    _git(tmp_path / "www" / "r.git", "update-server-info")  # dumb HTTP
    port = _free_port()
    servers: list[ThreadingHTTPServer] = []
    timer = threading.Timer(0.4, lambda: servers.append(_serve_dumb_http(tmp_path / "www", port)))
    timer.start()
    try:
        repo = RepoSource(url=f"http://127.0.0.1:{port}/r.git")
        workspace.clone(tmp_path / "ws", repo, delays=(0.3, 0.6, 1.2, 2.4))
    finally:
        timer.join()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert workspace.base_commit(tmp_path / "ws") == src.head.commit.hexsha
    assert (tmp_path / "ws" / "a.txt").read_text() == "one\n"


def test_clone_gives_up_after_its_retries_and_says_so(tmp_path: Path) -> None:
    repo = RepoSource(url=f"http://127.0.0.1:{_free_port()}/r.git")
    with pytest.raises(workspace.WorkspaceError, match=r"failed \(after 3 tries\): .*(refused|connect)") as e:
        workspace.clone(tmp_path / "ws", repo, delays=(0.01, 0.01))
    assert repo.url in str(e.value)
    assert not any((tmp_path / "ws").iterdir())


def test_clone_does_not_retry_a_refusal(tmp_path: Path) -> None:
    _repo(tmp_path / "src")
    repo = RepoSource(url=str(tmp_path / "src"), ref="no-such-branch", local_paths=True)
    with pytest.raises(workspace.WorkspaceError) as e:
        workspace.clone(tmp_path / "ws", repo, delays=(60.0,))  # a retry would hang the test
    assert "tries" not in str(e.value) and "no-such-branch" in str(e.value)


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        ("fatal: unable to access 'https://g/r.git/': Could not resolve host: g", True),
        ("fatal: unable to access 'http://h:1/r.git/': Failed to connect to h port 1: Connection refused", True),
        ("fatal: unable to access 'https://g/r.git/': Connection timed out after 300000 milliseconds", True),
        ("fatal: the remote end hung up unexpectedly", True),
        ("remote: Repository not found. fatal: repository 'https://g/r.git/' not found", False),
        ("fatal: Authentication failed for 'https://g/r.git/'", False),
        ("error: pathspec 'nope' did not match any file(s) known to git", False),
    ],
)
def test_which_git_failures_are_retried(stderr: str, transient: bool) -> None:
    assert workspace.is_transient(stderr) is transient
