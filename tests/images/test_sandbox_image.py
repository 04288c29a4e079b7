"""The built sandbox image (Dockerfile.sandbox), run as the sandbox pod runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from buildstudio import pins
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core import manifests, settings
from tests.images.conftest import Image

pytestmark = pytest.mark.images

DEFAULTS = settings.SandboxDefaults()


def test_opencode_prints_the_pin(sandbox_image: Image, tmp_path: Path) -> None:
    mounts = [("rw", _scratch(tmp_path / "home"), "/home/runner"), ("rw", _scratch(tmp_path / "tmp"), "/tmp")]
    proc = sandbox_image.run(["opencode", "--version"], mounts=mounts)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == pins.OPENCODE_VERSION


def test_labels_agree_with_the_pins(sandbox_image: Image) -> None:
    labels = sandbox_image.labels()
    assert labels["dev.dpf.buildstudio.opencode.version"] == pins.OPENCODE_VERSION
    assert labels["dev.dpf.buildstudio.opencode.build"] == pins.OPENCODE_LINUX_BUILD
    assert labels["org.opencontainers.image.title"] == "buildstudio-sandbox"


_IMPORT_PROBE = """
import importlib.util, json, sys, orjson
import buildstudio.sandbox.runner, buildstudio.sandbox.runner.roles, buildstudio.sandbox.runner.__main__
import buildstudio.engines.opencode_stream
clients = ("kopf", "kubernetes", "kubernetes_asyncio")
print(json.dumps({"orjson": orjson.__version__, "python": sys.version.split()[0],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in clients),
                  "installed": [n for n in clients if importlib.util.find_spec(n)]}))
"""


def test_runner_imports_with_orjson_and_without_the_operator_stack(sandbox_image: Image, tmp_path: Path) -> None:
    proc = sandbox_image.run(["python", "-c", _IMPORT_PROBE], mounts=[("rw", _scratch(tmp_path / "tmp"), "/tmp")])
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["python"].startswith("3.11.")
    assert found["orjson"]
    assert found["loaded"] == [] and found["installed"] == []


_WRITE_PROBE = """
import json, os, sys
ok = {}
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(d, ".probe"))
        ok[d] = True
    except OSError:
        ok[d] = False
print(json.dumps(ok))
"""
# Writable for uid 65532 in the image itself (`docker run` without the pod's emptyDirs): its own directories
# and the sticky world-writable temp directories every Debian has. Never the runner, opencode or the system.
WRITABLE = ["/workspace", "/home/runner", "/tmp", "/var/tmp"]
PROTECTED = ["/", "/etc", "/usr/bin", "/usr/local/bin", "/opt/venv/bin", "/opt/dpf-engines/opencode/bin"]
PROTECTED += ["/opt/venv/lib/python3.11/site-packages/buildstudio/runner"]


def test_uid_65532_writes_only_its_declared_paths(sandbox_image: Image, tmp_path: Path) -> None:
    paths = WRITABLE + PROTECTED
    proc = sandbox_image.run(["python", "-c", _WRITE_PROBE, *paths], ro_root=False)
    assert proc.returncode == 0, proc.stderr
    ok = json.loads(proc.stdout)
    assert [p for p in paths if ok[p]] == WRITABLE
    # As the pod runs it: a read-only root, and only the emptyDirs (workspace, $HOME, /tmp) writable.
    pod = [("rw", _scratch(tmp_path / d), f"/{d.replace('-', '/')}") for d in ("workspace", "home-runner", "tmp")]
    proc = sandbox_image.run(["python", "-c", _WRITE_PROBE, *paths], mounts=pod)
    assert proc.returncode == 0, proc.stderr
    ok = json.loads(proc.stdout)
    assert [p for p in paths if ok[p]] == ["/workspace", "/home/runner", "/tmp"]
    # The image's identity as the pod sees it: uid 65532, HOME and the workspace from its ENV.
    assert sandbox_image.env["HOME"] == manifests.HOME
    assert sandbox_image.env["BUILDSTUDIO_WORKSPACE"] == manifests.WORKSPACE


def _scratch(path: Path, owner: int = DEFAULTS.uid) -> Path:
    """A host directory standing in for an emptyDir (the pod's fsGroup is the agent's uid)."""
    path.mkdir()
    os.chown(path, owner, DEFAULTS.uid)
    path.chmod(0o770)
    return path


def _git_repo(path: Path) -> None:
    (path / "README.md").write_text("# sample\n", encoding="utf-8")
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run([*git, *cmd], check=True, capture_output=True, timeout=60)
    for p in (path, *path.rglob("*")):
        os.chown(p, DEFAULTS.uid, DEFAULTS.uid, follow_symlinks=False)


@pytest.mark.opencode
@pytest.mark.slow
async def test_a_scripted_dispatch_completes_inside_the_image(sandbox_image: Image, tmp_path: Path) -> None:
    """clone → agent → report, the sandbox pod's three runner roles with its mounts and uids, on a
    read-only root; the real opencode in the image talks to the scripted model server on loopback."""
    script: list[dict[str, Any]] = [
        {"tool": "write", "args": {"filePath": "hello.txt", "content": "hello from the image\n"}},
        {"text": "Wrote hello.txt."},
    ]
    remote, spec_dir = tmp_path / "remote", _scratch(tmp_path / "spec")
    remote.mkdir()
    _git_repo(remote)
    ws, base, home, tmp, out = (_scratch(tmp_path / n) for n in ("ws", "base", "home", "tmp", "agent-out"))
    reporter_tmp = _scratch(tmp_path / "reporter-tmp", owner=DEFAULTS.reporter_uid)
    spec_file = f"{manifests.CONFIG_MOUNT}/runner.json"
    run_dir = "/run/buildstudio"  # /var/run is a symlink to /run: mount under the real path
    async with ScriptedServer(script) as server:
        spec = {
            "prompt": "Write hello.txt.",
            "repo": {"url": "/srv/remote", "ref": "main", "localPaths": True},
            "model": "qwen3-coder",
            "baseUrl": server.base_url,
            "timeouts": {"runSeconds": 120, "idleSeconds": 90},
        }
        (spec_dir / "runner.json").write_text(json.dumps(spec), encoding="utf-8")
        (spec_dir / "runner.json").chmod(0o644)
        common = [("ro", spec_dir, manifests.CONFIG_MOUNT)]
        clone = await _role(
            sandbox_image,
            ["clone", "--spec", spec_file, "--workspace", "/workspace", "--base", f"{run_dir}/base", "--local-paths"],
            [
                *common,
                ("ro", remote, "/srv/remote"),
                ("rw", ws, "/workspace"),
                ("rw", base, f"{run_dir}/base"),
                ("rw", tmp, "/tmp"),
            ],
            uid=DEFAULTS.uid,
            home="/tmp",
        )
        assert clone.returncode == 0, clone.stderr
        agent = await _role(
            sandbox_image,
            [
                "agent",
                "--spec",
                spec_file,
                "--workspace",
                "/workspace",
                "--home",
                "/home/runner",
                "--report",
                f"{run_dir}/agent-out/report.json",
            ],
            [
                *common,
                ("rw", ws, "/workspace"),
                ("rw", home, "/home/runner"),
                ("rw", tmp, "/tmp"),
                ("rw", out, f"{run_dir}/agent-out"),
            ],
            uid=DEFAULTS.uid,
            home="/home/runner",
            env={"OPENCODE_DISABLE_PROJECT_CONFIG": "1"},
        )
        assert agent.returncode == 0, agent.stderr[-3000:]
        report = await _role(
            sandbox_image,
            [
                "report",
                "--spec",
                spec_file,
                "--workspace",
                "/workspace",
                "--base",
                f"{run_dir}/base",
                "--agent-report",
                f"{run_dir}/agent-out/report.json",
                "--scratch",
                "/tmp/report",
            ],
            [
                *common,
                ("ro", ws, "/workspace"),
                ("ro", base, f"{run_dir}/base"),
                ("ro", out, f"{run_dir}/agent-out"),
                ("rw", reporter_tmp, "/tmp"),
            ],
            uid=DEFAULTS.reporter_uid,
            groups=[DEFAULTS.uid],
            home="/tmp",
        )
        requests = len(server.chat_requests(with_tools=True))
    lines = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]
    assert lines, report.stderr[-3000:]
    result = lines[-1]
    assert result["kind"] == "result", result
    assert result["outcome"] == "Completed", (result.get("message"), agent.stderr[-2000:], report.stderr[-2000:])
    assert result["diffStat"]["files"] == 1
    assert "+hello from the image" in result["diff"]
    assert requests == 2


async def _role(
    image: Image,
    args: list[str],
    mounts: list[tuple[str, Path, str]],
    *,
    uid: int,
    home: str,
    groups: tuple[int, ...] | list[int] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = image.argv(
        ["python", "-m", "buildstudio.sandbox.runner", *args],
        uid=uid,
        groups=groups,
        mounts=mounts,
        env={"HOME": home, **(env or {})},
        cwd="/",
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "RO_ROOT": "1"}
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode or 0, out.decode(), err.decode())
