"""Run commands inside the images `make images` built (hack/build-images.sh), without a container engine.

`buildah from` makes a working container of the image and `buildah mount` gives its root filesystem;
a command then runs there under `unshare -m` + `chroot` + `setpriv` as the pod would run it: a
read-only root, only the declared volumes writable, a given uid/gid. The network namespace is the
host's, so a server the test starts on loopback is reachable from inside. Needs root and buildah.
Without the images: a one-line skip on a developer's machine, a failure under CI (.ci/run builds them).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
BUILDAH = ["buildah", "--storage-driver", "vfs"]
TIMEOUT = 60.0


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


# The full sandbox image (all four engines) is built only when asked: `make images-full`, or
# BUILDSTUDIO_FULL_IMAGE=1 for hack/build-images.sh (which .ci/run sets when CI builds it).
FULL_IMAGE_WANTED = _truthy("BUILDSTUDIO_FULL_IMAGE")


def images_missing(reason: str, *, required_in_ci: bool = True) -> None:
    if required_in_ci and _truthy("CI"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def buildah(*args: str, timeout: float = TIMEOUT) -> str:
    proc = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


# Runs as root: $1 = rootfs; then "rw|ro HOSTDIR TARGET" triples; then "--"; then the chroot argv.
# Mount points are made in the working container's own layer (the kubelet does the same), then the
# root is bound read-only; /dev and /proc are the host's (no pid namespace: loopback stays shared).
_MOUNT_SCRIPT = r"""
set -euo pipefail
root="$1"; shift
mount --make-rprivate /
mount --bind "$root" "$root"
while [ "$1" != "--" ]; do
  mode="$1"; src="$2"; dst="$root$3"; shift 3
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  [ "$mode" = ro ] && mount -o remount,bind,ro "$dst"
done
shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
[ "${RO_ROOT:-1}" = 1 ] && mount -o remount,bind,ro "$root"
exec chroot "$root" "$@"
"""


@dataclasses.dataclass
class Image:
    name: str
    rootfs: Path
    env: dict[str, str]  # the image's ENV

    def argv(
        self,
        cmd: Sequence[str],
        *,
        uid: int = 65532,
        groups: Sequence[int] = (),
        mounts: Sequence[tuple[str, Path, str]] = (),
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
    ) -> list[str]:
        """`unshare -m` … `chroot ROOT setpriv … env -i … CMD`: CMD inside the image as uid:uid."""
        flat = [part for mode, src, dst in mounts for part in (mode, str(src), dst)]
        ids = ["--reuid", str(uid), "--regid", str(uid)]
        ids += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        environment = [f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        inner = ["/usr/bin/setpriv", *ids, "/usr/bin/env", "-i", "-C", cwd, *environment, *cmd]
        return ["unshare", "-m", "bash", "-c", _MOUNT_SCRIPT, "image-run", str(self.rootfs), *flat, "--", *inner]

    def run(
        self, cmd: Sequence[str], *, timeout: float = TIMEOUT, ro_root: bool = True, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RO_ROOT": "1" if ro_root else "0"}
        return subprocess.run(
            self.argv(cmd, **kw),  # type: ignore[arg-type]
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def labels(self) -> dict[str, str]:
        out = buildah(
            "inspect",
            "--type",
            "image",
            "--format",
            "{{range $k, $v := .OCIv1.Config.Labels}}{{$k}}={{$v}}\n{{end}}",
            self.name,
        )
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _image(what: str, *, make: str = "make images", required_in_ci: bool = True) -> Iterator[Image]:
    name = f"localhost/buildstudio-{what}:{VERSION}"
    if os.geteuid() != 0 or not (shutil.which("buildah") and shutil.which("unshare")):
        images_missing(
            "the image smoke tests need root, buildah and unshare (`make images` installs buildah)",
            required_in_ci=required_in_ci,
        )
    probe = subprocess.run(
        [*BUILDAH, "inspect", "--type", "image", name], capture_output=True, timeout=TIMEOUT, check=False
    )
    if probe.returncode != 0:
        images_missing(f"{name} not built (run `{make}`)", required_in_ci=required_in_ci)
    env_lines = buildah("inspect", "--type", "image", "--format", "{{range .OCIv1.Config.Env}}{{.}}\n{{end}}", name)
    container = buildah("from", "--pull-never", "--name", f"bs-smoke-{what}-{uuid.uuid4().hex[:8]}", name)
    try:
        rootfs = Path(buildah("mount", container))
        yield Image(name, rootfs, dict(line.split("=", 1) for line in env_lines.splitlines() if "=" in line))
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def sandbox_image() -> Iterator[Image]:
    yield from _image("sandbox")


@pytest.fixture(scope="module")
def operator_image() -> Iterator[Image]:
    yield from _image("operator")


@pytest.fixture(scope="module")
def sandbox_full_image() -> Iterator[Image]:
    yield from _image("sandbox-full", make="make images-full", required_in_ci=FULL_IMAGE_WANTED)
