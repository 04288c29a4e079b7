"""The CLI's errors: one line each (what failed, why, what to do) and a documented exit code.

``describe`` is pure: an exception in, ``(exit code, line)`` out. ``cli.main`` prints that line
instead of a traceback (``--debug`` shows the traceback).
"""

from __future__ import annotations

import asyncio
import re

EXIT_OK = 0
EXIT_FAILED = 1  # the run (or the command) failed
EXIT_USAGE = 2  # usage error or invalid input: nothing was done
EXIT_REFUSED = 3  # refused by the preflight or the capability gate: nothing was run
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = """exit codes:
  0    success
  1    the run failed (its record says why), or the command failed (e.g. API server unreachable)
  2    usage error or invalid input (flags, manifest, prompt, kubeconfig): nothing was done
  3    refused by the preflight or the capability gate: nothing was run
  130  interrupted (Ctrl-C)
Errors are one line on stderr; --debug (anywhere on the line) shows the traceback."""


class CliError(Exception):
    """An error the CLI reports as one line with an exit code."""

    def __init__(self, what: str, why: str, todo: str = "", code: int = EXIT_USAGE) -> None:
        self.code = code
        super().__init__(f"{what}: {why}" + (f"; {todo}" if todo else ""))


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, without terminal escapes, at most ``limit`` characters."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kube_error(exc: BaseException) -> tuple[int, str] | None:
    from buildstudio.adapters.kube import KubeError

    if not isinstance(exc, KubeError):
        return None
    if exc.status == 401:
        return EXIT_FAILED, (
            "the API server refused the credentials (401 Unauthorized); log in again or fix the kubeconfig user"
        )
    if exc.status == 403:
        return EXIT_FAILED, (
            f"the API server forbids this (403): {one_line(exc.body, 200)}; ask for RBAC on builddispatches "
            "(`kubectl auth can-i create builddispatches`)"
        )
    if exc.status == 404 and "the server could not find the requested resource" in exc.body:
        return EXIT_FAILED, (
            "the API server does not know BuildDispatch; install the CRDs: kubectl apply --server-side -f crds/"
        )
    if exc.status == 409:
        return EXIT_USAGE, f"it already exists (409): {one_line(exc.body, 200)}; pick another --name or delete it"
    if exc.status == 422:
        return EXIT_USAGE, f"the API server rejected the object (422): {one_line(exc.body, 300)}"
    return EXIT_FAILED, f"Kubernetes API call failed: {one_line(str(exc), 300)}"


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line for an exception that reached the CLI's top."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, CliError):
        return exc.code, one_line(str(exc), 1000)
    kube = _kube_error(exc)
    if kube is not None:
        return kube
    name = type(exc).__name__
    module = type(exc).__module__
    if name == "ConfigException" and module.startswith("kubernetes"):
        return EXIT_USAGE, (
            f"no usable kubeconfig: {one_line(str(exc), 200)}; set KUBECONFIG or pass --kubeconfig FILE "
            "(`kubectl config view` shows what kubectl uses)"
        )
    if module.startswith("aiohttp") or module.startswith("urllib3") or isinstance(exc, ConnectionError):
        return EXIT_FAILED, (
            f"cannot reach the Kubernetes API server: {one_line(str(exc) or name, 200)}; check the cluster "
            "(`kubectl cluster-info`) and the kubeconfig context (--context)"
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return EXIT_FAILED, f"timed out: {one_line(str(exc) or name, 200)}; check that the server is up and retry"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{one_line(str(exc), 300)}"
    return EXIT_FAILED, f"unexpected error ({name}: {one_line(str(exc), 300)}); rerun with --debug for the traceback"
