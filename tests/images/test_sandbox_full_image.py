"""The full sandbox image (Dockerfile.sandbox with ENGINES="opencode claude codex grok", `make images-full`):
each engine's CLI, installed by the registry's recipe at its pin, runs as uid 65532 on a read-only root, and
the runner drives a cloud engine inside the image against a scripted vendor server on loopback to a real diff.

Built only when asked, so these skip without it — except under CI with BUILDSTUDIO_FULL_IMAGE=1 (conftest)."""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio import pins
from buildstudio.core import manifests, settings
from buildstudio.protocol import records
from tests.engines.scenarios import MODELS, _subst, make_server, write_edit_script
from tests.images.conftest import FULL_IMAGE_WANTED, REPO_ROOT, VERSION, Image, buildah, images_missing
from tests.images.test_archives import OUT, _member
from tests.runner_harness import make_repo

pytestmark = pytest.mark.images

DEFAULTS = settings.SandboxDefaults()
ALL_ENGINES = "opencode claude codex grok"
# What `<engine> --version` prints at the pin (docs/engines/<engine>.md; the image's build checks the same).
VERSIONS = {
    "opencode": pins.OPENCODE_VERSION,
    "claude": f"{pins.CLAUDE_CODE_VERSION} (Claude Code)",
    "codex": f"codex-cli {pins.CODEX_VERSION}",
    "grok": pins.GROK_CLI_BINARY_VERSION,
}
SECRET = "sk-SECRET-vendor-key-0123456789"
KEY_ENV = "BUILDSTUDIO_TEST_VENDOR_KEY"
SUB = "def sub(a, b):\n    return a - b\n"


def _scratch(path: Path, owner: int = DEFAULTS.uid) -> Path:
    """A host directory standing in for an emptyDir (the pod's fsGroup is the agent's uid)."""
    path.mkdir()
    os.chown(path, owner, DEFAULTS.uid)
    path.chmod(0o770)
    return path


def _chown_tree(root: Path) -> None:
    for p in (root, *root.rglob("*")):
        os.chown(p, DEFAULTS.uid, DEFAULTS.uid, follow_symlinks=False)


@pytest.mark.parametrize("engine", list(VERSIONS))
def test_each_engine_prints_its_pin_as_the_agent(sandbox_full_image: Image, tmp_path: Path, engine: str) -> None:
    mounts = [("rw", _scratch(tmp_path / "home"), "/home/runner"), ("rw", _scratch(tmp_path / "tmp"), "/tmp")]
    proc = sandbox_full_image.run([engine, "--version"], mounts=mounts)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[0] == VERSIONS[engine]


def test_labels_name_the_engines(sandbox_full_image: Image) -> None:
    labels = sandbox_full_image.labels()
    assert labels["dev.dpf.buildstudio.engines"] == ALL_ENGINES
    assert labels["dev.dpf.buildstudio.opencode.version"] == pins.OPENCODE_VERSION


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["grok", "claude", "codex"])
async def test_a_cloud_engine_dispatch_ends_with_its_diff_inside_the_image(
    sandbox_full_image: Image, tmp_path: Path, engine: str
) -> None:
    """The runner (one process: its own credential relay, the agent, the diff) with `engine: <engine>`, as uid
    65532 on a read-only root with the pod's writable paths; the CLI in the image talks to the scripted vendor
    server on loopback through the relay, which alone holds the key."""
    home, tmp, spec_dir = (_scratch(tmp_path / n) for n in ("home", "tmp", "spec"))
    ws = tmp_path / "ws"
    make_repo(ws)  # as root, then handed to the agent's uid as the clone container would leave it
    _chown_tree(ws)
    server = make_server(engine, _subst(write_edit_script(engine), manifests.WORKSPACE))
    await server.start()
    try:
        spec: dict[str, Any] = {
            "prompt": "Add a sub(a, b) function in sub.py and swap the operands in calc.py.",
            "model": MODELS[engine],
            "engine": engine,
            "baseUrl": f"http://127.0.0.1:{server.port}/v1",
            "apiKeyEnv": KEY_ENV,
            "timeouts": {"runSeconds": 120, "idleSeconds": 90},
        }
        (spec_dir / "runner.json").write_text(json.dumps(spec), encoding="utf-8")
        (spec_dir / "runner.json").chmod(0o644)
        argv = sandbox_full_image.argv(
            ["python", "-m", "buildstudio.sandbox.runner", "--spec", f"{manifests.CONFIG_MOUNT}/runner.json"],
            mounts=[
                ("ro", spec_dir, manifests.CONFIG_MOUNT),
                ("rw", ws, manifests.WORKSPACE),
                ("rw", home, manifests.HOME),
                ("rw", tmp, "/tmp"),
            ],
            env={"TMPDIR": "/tmp", KEY_ENV: SECRET},
            cwd=manifests.WORKSPACE,
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
        keys = [
            {k.lower(): v for k, v in r["headers"].items()}.get("x-api-key" if engine == "claude" else "authorization")
            for r in server.requests
            if r["method"] == "POST"
        ]
    finally:
        await server.stop()
    lines = [r for r in (records.parse_line(line) for line in out.splitlines()) if r is not None]
    assert lines and isinstance(lines[-1], records.ResultRecord), err.decode()[-3000:]
    res = lines[-1]
    assert res.outcome is records.Outcome.COMPLETED, (res.message, err.decode()[-3000:])
    assert proc.returncode == 0
    assert (ws / "sub.py").read_text(encoding="utf-8") == SUB
    assert res.diff_stat.files == 2 and "+    return b + a" in res.diff, res.diff
    assert sorted(res.summary.files_touched) == ["calc.py", "sub.py"]
    # The vendor got the key from the relay, in its own header.
    assert keys and all(k is not None and k.endswith(SECRET) for k in keys), keys


def test_the_image_holds_what_the_registry_recipes_install(sandbox_full_image: Image) -> None:
    """Each cloud CLI is the registry's npm recipe (package@pin) in its own prefix, linked onto PATH."""
    registry = yaml.safe_load((REPO_ROOT / "engines" / "build-engines.yaml").read_text(encoding="utf-8"))
    root = sandbox_full_image.rootfs
    for row in registry["engines"]:
        engine = row["name"]
        if engine == "opencode":
            continue
        [recipe] = [r for r in row["spec"]["recipes"] if r["type"] == "npm"]
        package, version = recipe["package"].rsplit("@", 1)
        prefix = f"/opt/dpf-engines/{engine}"
        meta = json.loads((root / prefix.lstrip("/") / "node_modules" / package / "package.json").read_text())
        assert meta["version"] == version == row["spec"]["version"], engine
        assert str((root / recipe["target"].lstrip("/")).readlink()) == f"{prefix}/node_modules/.bin/{engine}"


def test_the_archive_is_the_tested_image(sandbox_full_image: Image) -> None:
    """`make images-full` leaves the full image as an OCI archive next to the others, under the name a
    BuildEngine's `spec.image` (or the chart's sandbox image) would use: the same content the tests ran."""
    path = OUT / "buildstudio-sandbox-full.oci.tar"
    if not path.is_file():
        images_missing(f"{path} not built (run `make images-full`)", required_in_ci=FULL_IMAGE_WANTED)
    with tarfile.open(path) as archive:
        [entry] = _member(archive, "index.json")["manifests"]
        manifest = _member(archive, "blobs/" + entry["digest"].replace(":", "/"))
    ref = f"ghcr.io/dpf-dev/buildstudio-sandbox-full:{VERSION}"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == ref
    image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", sandbox_full_image.name)
    assert manifest["config"]["digest"] == f"sha256:{image_id}"
    recorded = {i["name"]: i for i in json.loads((OUT / "images.json").read_text(encoding="utf-8"))["images"]}
    if "sandbox-full" not in recorded:  # a later plain `make images` rewrote images.json
        images_missing(f"{OUT / 'images.json'} lists no sandbox-full (rerun `make images-full`)",
                       required_in_ci=FULL_IMAGE_WANTED)
    assert recorded["sandbox-full"]["id"] == image_id and Path(recorded["sandbox-full"]["archive"]) == path
