"""Run the real kubectl against the emulator (installed by .ci/install-kube-tools.sh)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import shutil

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def find_binary(name: str) -> str | None:
    """`$KUBECTL_BIN` / `$HELM_BIN`, else `.tools/bin/<name>` in the repo, else PATH."""
    explicit = os.environ.get(f"{name.upper()}_BIN")
    if explicit:
        return explicit if pathlib.Path(explicit).is_file() else None
    local = REPO_ROOT / ".tools" / "bin" / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


MISSING_REASON = "kubectl not found: run .ci/install-kube-tools.sh (or set KUBECTL_BIN)"


@dataclasses.dataclass(frozen=True)
class KubectlResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> KubectlResult:
        if self.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(self.args)} exited {self.returncode}:\n{self.stderr}")
        return self


async def run_kubectl(binary: str, kubeconfig: pathlib.Path, *args: str, stdin: str | None = None,
                      timeout: float = 30.0) -> KubectlResult:  # noqa: ASYNC109 (the process's bound)
    """Run kubectl with KUBECONFIG set; kill it and raise TimeoutError after `timeout` seconds."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), HOME=str(kubeconfig.parent))
    process = await asyncio.create_subprocess_exec(
        binary, *args, env=env, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 5)
        raise TimeoutError(f"kubectl {' '.join(args)} did not finish within {timeout}s") from None
    assert process.returncode is not None
    return KubectlResult(tuple(args), process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class Kubectl:
    """`await kubectl("get", "bd")` → KubectlResult (check=True raises on a non-zero exit)."""

    def __init__(self, binary: str, kubeconfig: pathlib.Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    async def __call__(self, *args: str, stdin: str | None = None, timeout: float = 30.0,  # noqa: ASYNC109
                       check: bool = True) -> KubectlResult:
        result = await run_kubectl(self.binary, self.kubeconfig, *args, stdin=stdin, timeout=timeout)
        return result.check() if check else result
