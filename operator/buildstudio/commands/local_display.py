"""What ``buildstudio run --local`` shows: the live progress line and events on stderr, the gate's
line, and at the end the dispatch record (-o table, yaml, json) with the patch, or only the
patch (-o patch). Formatting only: nothing here decides how the run goes or ends."""

from __future__ import annotations

import base64
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from buildstudio.core.gate import GateDecision
from buildstudio.core.outcome import plural
from buildstudio.protocol import records


def note(msg: str) -> None:
    print(f"buildstudio run --local: {msg}", file=sys.stderr)


def gate_line(decision: GateDecision, *, relay: bool, text_phase: bool) -> str:
    """The gate's verdict as it will really run: "with tool-call repair" only when the relay runs."""
    message = decision.message.replace(" with tool-call repair", "")
    if decision.admit and not text_phase:
        if relay:
            message += " with tool-call repair (relay on)"
        elif decision.tool_call_repair:
            message += " (tool-call repair off: --relay off)"
    return f"gate: {decision.reason}: {message}"


def progress_line(rec: records.ProgressRecord) -> str:
    last = f" · last: {rec.last_tool}" if rec.last_tool else ""
    return (
        f"[{rec.stage}] {rec.elapsed_seconds:6.1f}s · steps {rec.steps} · tool calls {rec.tool_calls}"
        f" · tokens {rec.tokens}{last}"
    )


class Display:
    """The live progress line on stderr (rewritten in place on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last_plain = 0.0

    def progress(self, rec: records.ProgressRecord) -> None:
        line = progress_line(rec)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
        elif time.monotonic() - self._last_plain >= 5 or rec.stage != "running":
            self._last_plain = time.monotonic()
            self.out.write(line + "\n")
        self.out.flush()

    def event(self, rec: records.EventRecord) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        self.out.write(f"{prefix}  {rec.type:<8} {rec.message}\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()


def full_patch(result: records.ResultRecord) -> str | None:
    """The whole diff from the result's patch (None when there is none or it was cut)."""
    if not result.patch.data or result.patch.truncated:
        return None
    return gzip.decompress(base64.b64decode(result.patch.data)).decode("utf-8", "replace")


def patch_note(result: records.ResultRecord, workspace: str) -> str:
    """Where the whole patch is when the record cannot carry it ("" when it does, or there is none)."""
    if not result.patch.truncated:
        return ""
    return (
        f"the whole patch ({result.patch.bytes} bytes) is over the record's cap; the changes are in {workspace}"
        " (run `git -C WORKSPACE diff` there)"
    )


def workspace_label(workspace: Path, *, in_place: bool, kept: bool) -> str:
    if in_place:
        return f"{workspace} (in place)"
    if kept:
        return f"{workspace} (kept; remove {workspace.parent} when done)"
    return "removed after the run (--keep keeps it)"


def record_view(result: records.ResultRecord, meta: dict[str, Any]) -> dict[str, Any]:
    """The dispatch record as plain data (yaml/json output), with the whole patch as text under
    ``patch`` (``result.diff`` is the bounded excerpt the cluster's status keeps)."""
    view = dict(meta)
    view["result"] = result.model_dump(mode="json", by_alias=True, exclude={"patch"})
    view["result"]["patch"] = {k: v for k, v in result.patch.model_dump(by_alias=True).items() if k != "data"}
    if "phase" not in meta:  # a build (text phases have no patch)
        view["patch"] = full_patch(result) or ""
        note_text = patch_note(result, str(meta.get("workspace", "the workspace")))
        if note_text:
            view["patchNote"] = note_text
    return view


def tool_calls_text(summary: records.RunSummary) -> str:
    """``3 (1 error): read x2, edit x1``; ``0`` when the model called no tool."""
    errors = f" ({plural(summary.tool_errors, 'error')})" if summary.tool_errors else ""
    names = ", ".join(f"{k} x{v}" for k, v in summary.tools_by_name.items())
    return f"{summary.tool_calls}{errors}" + (f": {names}" if names else "")


def files_text(stat: records.DiffStat) -> str:
    """``1 file changed, +3 -0``, with binary files when there are."""
    binary = f", {stat.binary_files} binary" if stat.binary_files else ""
    return f"{plural(stat.files, 'file')} changed, +{stat.additions} -{stat.deletions}{binary}"


def record_table(result: records.ResultRecord, meta: dict[str, Any]) -> str:
    """The record as label/value rows. A text phase (ideate, plan) shows only what applies to it: no
    steps, tools, files or diff, and no answer excerpt (the whole answer follows the table)."""
    s = result.summary
    build = "phase" not in meta
    rows = [
        ("OUTCOME", f"{result.outcome.value} ({'succeeded' if result.outcome.succeeded else 'failed'})"),
        ("MESSAGE", result.message),
        ("MODEL", meta["model"]),
        ("MODEL SERVICE", meta["modelService"]),
        *([("PHASE", meta["phase"])] if "phase" in meta else []),
        *([("REPO", meta["repo"]), ("WORKSPACE", meta["workspace"])] if "repo" in meta else []),
        *([("BASE COMMIT", result.base_commit[:12] + meta.get("baseNote", ""))] if result.base_commit else []),
        *([("STEPS", str(s.steps)), ("TOOL CALLS", tool_calls_text(s))] if build else []),
        ("TOKENS", f"{s.tokens.total} (in {s.tokens.input}, out {s.tokens.output})"),
        *([("FILES", files_text(result.diff_stat))] if build else []),
        ("DURATION", f"{result.duration_seconds:.1f}s"),
    ]
    if result.replay:
        real = "; tools and diff are real" if build else ""
        rows.insert(3, ("REPLAY", f"yes: the model's words were canned (recorded replies){real}"))
    if s.final_text and build:
        rows.append(("FINAL ANSWER", " ".join(s.final_text.split())[:300]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def print_result(output: str, result: records.ResultRecord, meta: dict[str, Any], *, tail: str, empty: str) -> bool:
    """The record on stdout as ``-o`` asks (``tail``: the diff or answer under the table; ``empty``:
    what to say when there is none). True when ``-o patch`` could not write the whole patch."""
    out = sys.stdout
    workspace = meta.get("workspace", "the workspace")
    if output == "patch":
        out.write(full_patch(result) or "")
        out.flush()
        print(f"{result.outcome.value}: {result.message}", file=sys.stderr)
        missing = patch_note(result, workspace)
        if missing:
            note(missing)
        return bool(missing)
    if output == "json":
        out.write(json.dumps(record_view(result, meta), indent=2) + "\n")
    elif output == "yaml":
        out.write(yaml.safe_dump(record_view(result, meta), sort_keys=False, allow_unicode=True))
    else:
        out.write(record_table(result, meta) + "\n")
        if tail:
            out.write("\n" + tail + ("" if tail.endswith("\n") else "\n"))
        elif result.outcome.succeeded:
            out.write(f"\n{empty}\n")
        excerpt_of = patch_note(result, workspace)
        if excerpt_of:
            note(f"the diff above is an excerpt: {excerpt_of}")
    return False
