"""``python -m buildstudio.sandbox.runner clone|agent|report ...``: the sandbox pod's containers (``roles.py``).

``python -m buildstudio.sandbox.runner --spec FILE [--workspace DIR] [--home DIR]`` runs everything in one
process (clone, opencode, diff, result): for engine tests and development only — the agent then
shares the runner's uid and stdout, so this mode has no trust boundary (docs/security.md).

stdout: the record protocol (``buildstudio.protocol.records``), one JSON object a line, the result last.
Exit status: 0 when the run succeeded, 1 when it did not (the result record says why),
2 when the spec could not be read (nothing else printed but one result record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

from buildstudio.protocol import records
from buildstudio.protocol.spec import load_spec
from buildstudio.sandbox.runner import procs
from buildstudio.sandbox.runner.output import RecordWriter
from buildstudio.sandbox.runner.supervise import supervise, utcnow

DEFAULT_WORKSPACE = "/workspace"


def find_opencode(explicit: str | None) -> str:
    """--opencode-bin, then $OPENCODE_BIN, then `opencode` on PATH."""
    for candidate in (explicit, os.environ.get("OPENCODE_BIN")):
        if candidate:
            return candidate
    return shutil.which("opencode") or "opencode"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m buildstudio.sandbox.runner", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--spec", required=True, type=Path, help="RunnerSpec JSON file")
    ws_default = os.environ.get("BUILDSTUDIO_WORKSPACE", DEFAULT_WORKSPACE)
    ap.add_argument("--workspace", type=Path, default=Path(ws_default))
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("HOME", "/tmp/buildstudio-home")))
    ap.add_argument("--opencode-bin", help="opencode binary (default: $OPENCODE_BIN, then PATH)")
    return ap.parse_args(argv)


ROLES = ("clone", "agent", "report", "push")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:  # the sandbox pod's containers (runner/roles.py)
        from buildstudio.sandbox.runner.roles import main as role_main

        return role_main(argv)
    args = parse_args(argv)
    writer = RecordWriter(max_events=0, max_bytes=1 << 20, progress_interval=2.0)
    try:
        spec = load_spec(args.spec)
    except (OSError, ValueError, ValidationError) as e:
        writer.result(
            records.ResultRecord(
                outcome=records.Outcome.RUNNER_ERROR,
                message=" ".join(f"cannot read the runner spec {args.spec}: {e}".split())[:2000],
                started_at=utcnow(),
                finished_at=utcnow(),
            )
        )
        return 2
    writer = RecordWriter(
        max_events=spec.output.max_event_records,
        max_bytes=spec.output.max_output_bytes,
        progress_interval=spec.output.progress_interval_seconds,
    )
    if spec.phase != "build":  # ideate / plan / review: one chat completion, no repo, no opencode
        from buildstudio.sandbox.runner.textphase import run_text

        text_result = asyncio.run(run_text(spec, writer))
        return 0 if text_result.outcome.succeeded else 1
    # Orphaned tool processes (own sessions) re-parent to us, so stopping can find them all.
    if not procs.set_child_subreaper():
        print(
            "warning: PR_SET_CHILD_SUBREAPER unavailable; detached tool processes may outlive the run",
            file=sys.stderr,
        )
    args.home.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(
        supervise(
            spec,
            ws=args.workspace.absolute(),
            home=args.home.absolute(),
            opencode_bin=find_opencode(args.opencode_bin),
            writer=writer,
        )
    )
    return 0 if result.outcome.succeeded else 1


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown.

    Everything is printed (and flushed) and every child reaped by then; freeing the module
    state of pydantic, GitPython and asyncio one object at a time only adds ≈ 45 ms to each run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
