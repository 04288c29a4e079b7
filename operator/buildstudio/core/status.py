"""Status reduction: runner records → bounded status fields (≤ 32 KiB whatever the run did).

The daemon that follows a pod's log folds every line into a ``LiveState`` (pure, O(1) per
line in memory: last N events only); ``progress_fields`` and ``result_fields`` turn it into
status fields and ``fit_budget`` guarantees the size budget of the whole status.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from buildstudio.core.conditions import one_line, timestamp
from buildstudio.core.settings import Settings
from buildstudio.protocol.records import EventRecord, Outcome, Patch, ProgressRecord, ResultRecord, parse_line

EVENT_CHARS = 512
LAST_TOOL_CHARS = 256
PROGRESS_MESSAGE_CHARS = 512
DIFF_MARKER = "\n# … diff truncated: {shown} of {total} bytes shown; the whole patch is in ConfigMap {cm}\n"


@dataclass(frozen=True)
class LiveState:
    """What the operator has read of one attempt's logs so far.

    Progress and events come from the working container's log (the agent's, in a build: the
    agent's side, so informative only); ``result`` only from the reporter container's whole log,
    read once that container has terminated. ``results`` counts result records there: more
    than one is a conflict. ``conflict`` is set when the result fails the operator's own checks."""

    lines: int = 0
    malformed: int = 0
    events_seen: int = 0
    events: tuple[str, ...] = ()
    progress: ProgressRecord | None = None
    result: ResultRecord | None = None
    results: int = 0
    ignored_results: int = 0  # result records in a log that is not the result channel
    conflict: str = ""
    # The agent's own record when it was cancelled: its partial diff, shown on a dispatch that is
    # Cancelled whatever the record says (a cancelled dispatch can never be shipped or reviewed).
    agent_cancelled: ResultRecord | None = None


def fold_line(state: LiveState, line: str | bytes, *, keep_events: int = 20, accept_results: bool = True) -> LiveState:
    """One log line folded in. Foreign or malformed lines are counted, never fatal."""
    if not line.strip():
        return state
    record = parse_line(line)
    lines = state.lines + 1
    if record is None:
        return replace(state, lines=lines, malformed=state.malformed + 1)
    if isinstance(record, ProgressRecord):
        return replace(state, lines=lines, progress=record)
    if isinstance(record, EventRecord):
        text = one_line(f"{record.type}: {record.message}", EVENT_CHARS)
        events = (*state.events, text)[-keep_events:] if keep_events > 0 else ()
        return replace(state, lines=lines, events=events, events_seen=state.events_seen + 1)
    if not accept_results:
        cancelled = record if record.outcome is Outcome.CANCELLED else state.agent_cancelled
        return replace(state, lines=lines, ignored_results=state.ignored_results + 1, agent_cancelled=cancelled)
    return replace(state, lines=lines, result=state.result or record, results=state.results + 1)


def fold_log(text: str, *, keep_events: int = 20) -> LiveState:
    """A whole log (the result channel's, read once its container terminated) folded."""
    state = LiveState()
    for line in text.splitlines():
        state = fold_line(state, line, keep_events=keep_events)
    return state


def with_followed(followed: LiveState, live: LiveState) -> LiveState:
    """What the follower knows after folding a streamed line into ``live``: the stream's progress,
    the result (if any) it already had — a stream never supplies results."""
    return replace(live, result=followed.result, results=followed.results)


def with_result_log(
    followed: LiveState, got: LiveState, *, whole_log: bool, conflict: str, keep_events: int = 20
) -> LiveState:
    """The attempt's state once the result channel's whole log (``got``) is read. ``whole_log``:
    the followed log is the result channel itself (text phases, ship), so the longer read is the
    newest; otherwise the reporter's progress and events follow the agent's. The result is only
    ever the result channel's; ``conflict``: why it fails the operator's own checks."""
    base = followed
    if whole_log:
        base = got if got.lines >= base.lines else base
    else:
        base = replace(
            base,
            lines=base.lines + got.lines,
            malformed=base.malformed + got.malformed,
            events=(*base.events, *got.events)[-keep_events:] if keep_events > 0 else (),
            events_seen=base.events_seen + got.events_seen,
            progress=got.progress or base.progress,
        )
    return replace(base, result=got.result, results=got.results, conflict=conflict)


def verify_patch(patch: Patch, *, max_bytes: int = 512 * 1024 * 1024) -> str:
    """Why the patch data does not match its own record ("" when it does): the sha256 and size
    are recomputed from the data, inflating at most ``max_bytes`` (a gzip bomb stops there)."""
    if not patch.data:
        return "" if not patch.sha256 or patch.sha256 == hashlib.sha256(b"").hexdigest() else "patch data missing"
    try:
        raw = base64.b64decode(patch.data, validate=True)
    except (binascii.Error, ValueError):
        return "patch data is not base64"
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    digest = hashlib.sha256()
    size = 0
    try:
        chunk = inflater.decompress(raw, 1 << 20)
        while True:
            size += len(chunk)
            if size > max_bytes:
                return f"patch inflates past {max_bytes} bytes"
            digest.update(chunk)
            if not inflater.unconsumed_tail:
                break
            chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
        tail = inflater.flush()
        size += len(tail)
        digest.update(tail)
    except zlib.error as e:
        if not patch.truncated:
            return f"patch data is not gzip: {e}"
    if digest.hexdigest() != patch.sha256:
        return f"patch sha256 {patch.sha256[:12] or 'none'} does not match its data ({digest.hexdigest()[:12]})"
    if not patch.truncated and size != patch.bytes:
        return f"patch size {patch.bytes} does not match its data ({size} bytes)"
    return ""


def progress_fields(state: LiveState, now: Any, *, reported_by: str = "agent") -> dict[str, Any]:
    """``status.progress`` and ``status.recentEvents`` from the live state."""
    fields: dict[str, Any] = {"recentEvents": list(state.events)}
    rec = state.progress
    if rec is not None:
        fields["progress"] = {
            "stage": one_line(rec.stage, 32),
            "steps": max(rec.steps, 0),
            "toolCalls": max(rec.tool_calls, 0),
            "tokens": max(rec.tokens, 0),
            "lastTool": one_line(rec.last_tool, LAST_TOOL_CHARS),
            "message": one_line(rec.message, PROGRESS_MESSAGE_CHARS),
            "reportedBy": reported_by,
            "updatedAt": timestamp(now),
        }
    return fields


def clip_bytes(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, never splitting a character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore")


def diff_excerpt(diff: str, limit: int, *, total: int, patch_cm: str) -> tuple[str, bool]:
    """The diff cut at a line boundary within ``limit`` bytes, with a marker when cut."""
    if len(diff.encode()) <= limit and total <= len(diff.encode()):
        return diff, False
    cut = clip_bytes(diff, limit)
    if "\n" in cut and len(cut.encode()) < len(diff.encode()):
        cut = cut[: cut.rfind("\n") + 1]
    shown = len(cut.encode())
    return cut + DIFF_MARKER.format(shown=shown, total=max(total, shown), cm=patch_cm or "-"), True


def _cost(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def result_fields(
    result: ResultRecord, settings: Settings, *, patch_cm: str, review_of: str | None = None
) -> dict[str, Any]:
    """The terminal record's summary, diff excerpt and final text, each bounded.

    ``review_of``: the source a review-phase dispatch names in its spec; a verdict is kept only
    then, and for that source whatever the record says (a build's record carries none)."""
    summary = result.summary
    stat = result.diff_stat
    total = max(result.diff_bytes, len(result.diff.encode()))
    excerpt, cut = diff_excerpt(result.diff, settings.diff_excerpt_bytes, total=total, patch_cm=patch_cm)
    review: dict[str, Any] = {}
    if review_of and result.review is not None and result.review.source == review_of:
        review = {"review": result.review.model_dump(by_alias=True)}
    if result.base_commit and result.phase == "build":
        review["baseCommit"] = result.base_commit  # what a ship pushes the patch onto
    return review | {
        "summary": {
            "steps": summary.steps,
            "toolCalls": summary.tool_calls,
            "toolErrors": summary.tool_errors,
            "filesChanged": stat.files,
            "tokens": summary.tokens.model_dump(by_alias=True),
            "cost": _cost(summary.cost),
            "repairedToolCalls": summary.repaired_tool_calls,
            "unrepairedToolCalls": summary.unrepaired_tool_calls,
            "durationSeconds": int(max(result.duration_seconds, 0)),
            "reportedBy": "agent" if result.phase == "build" else "reporter",
        },
        "diffStat": stat.model_dump(by_alias=True),
        "diffSummary": f"+{stat.additions}/-{stat.deletions}",
        "diff": excerpt,
        "diffBytes": total,
        "diffTruncated": bool(result.diff_truncated or cut),
        "patchConfigMap": patch_cm,
        "finalText": clip_bytes(summary.final_text, settings.final_text_bytes),
    }


def size_of(status: Mapping[str, Any]) -> int:
    return len(json.dumps(status, separators=(",", ":"), ensure_ascii=False).encode())


def fit_budget(status: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """The status shrunk until it fits ``budget`` bytes; cheapest-to-lose content goes first."""
    out = dict(status)
    if size_of(out) <= budget:
        return out
    if out.get("recentEvents"):
        out["recentEvents"] = [one_line(e, 160) for e in out["recentEvents"]][-10:]
    while size_of(out) > budget and out.get("diff"):
        diff = str(out["diff"])
        keep = len(diff.encode()) // 2 if len(diff) > 256 else 0
        out["diff"] = clip_bytes(diff, keep) + ("\n# … diff truncated to fit the status budget\n" if keep else "")
        out["diffTruncated"] = True
    if size_of(out) > budget and out.get("finalText"):
        out["finalText"] = clip_bytes(str(out["finalText"]), 512)
    if size_of(out) > budget:
        out["recentEvents"] = []
    if size_of(out) > budget:
        out["conditions"] = [
            {**c, "message": one_line(str(c.get("message", "")), 128)} for c in out.get("conditions") or []
        ]
        out["message"] = one_line(str(out.get("message", "")), 256)
    return out
