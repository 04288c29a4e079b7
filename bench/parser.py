"""Throughput and memory of the opencode event folder on synthetic streams.

Usage: python bench/parser.py [--sizes 1MB,100MB,1GB] [--decoder auto|stdlib]

Each size runs in a fresh subprocess so its peak RSS is its own. The stream is generated
on the fly in 64 KiB chunks (never held whole); only the time spent in the folder
(line splitting + JSON + folding + EventRecords) is counted. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
CHUNK = 64 * 1024


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _event(kind: str, step: int, **part: object) -> bytes:
    # Shaped like opencode 1.18.33 output (ids, timestamps, nested state), ≈ 300-600 bytes.
    body = {
        "type": kind,
        "timestamp": 1795549038271 + step,
        "sessionID": "ses_df0f000afffelcJqTd5ucQ4Eg6",
        "part": {
            "id": f"prt_{step:024d}",
            "messageID": f"msg_{step:024d}",
            "sessionID": "ses_df0f000afffelcJqTd5ucQ4Eg6",
            **part,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _step(step: int) -> list[bytes]:
    path = f"/workspace/src/module_{step % 50}.py"
    snapshot = "0b5146d69a7f3435916ca594d9f5fe68057ea59a"
    lines = [
        _event("step_start", step, type="step-start", snapshot=snapshot),
        _event("text", step, type="text", text=f"Step {step}: editing {path} next.", time={"start": 1, "end": 2}),
        _event(
            "tool_use",
            step,
            type="tool",
            tool="edit" if step % 2 else "write",
            callID=f"call_{step}_0",
            state={
                "status": "error" if step % 17 == 0 else "completed",
                "input": {"filePath": path, "oldString": "return a + b", "newString": "return int(a) + int(b)"},
                "output": "Edit applied successfully.",
                "metadata": {"diagnostics": {}, "filepath": path, "truncated": False},
                "title": path[len("/workspace/") :],
                "time": {"start": 1795549038265, "end": 1795549038287},
            },
        ),
        _event(
            "step_finish",
            step,
            type="step-finish",
            reason="tool-calls",
            snapshot=snapshot,
            tokens={"total": 5300, "input": 5000, "output": 300, "reasoning": 0, "cache": {"write": 0, "read": 0}},
            cost=0,
        ),
    ]
    if step % 25 == 0:
        lines.append(b'{"type":"mystery","timestamp":1}\n')
    if step % 40 == 0:
        lines.append(b"not json at all\n")
    return lines


def generate(size: int) -> Iterator[bytes]:
    """Chunks of a synthetic stream of about `size` bytes (generated lazily)."""
    produced = 0
    step = 0
    buf: list[bytes] = []
    buffered = 0
    while produced < size:
        for line in _step(step):
            buf.append(line)
            buffered += len(line)
        step += 1
        if buffered >= CHUNK:
            chunk = b"".join(buf)
            buf.clear()
            buffered = 0
            produced += len(chunk)
            yield chunk
    if buf:
        yield b"".join(buf)


def run_one(size: int, decoder: str) -> dict[str, float | str]:
    from buildstudio.engines import opencode_stream as events

    if decoder == "stdlib":
        events.loads = events.loads_stdlib
    folder = events.StreamFolder("/workspace")
    spent = 0.0
    nbytes = 0
    records = 0
    for chunk in generate(size):
        nbytes += len(chunk)
        start = time.perf_counter()
        records += len(folder.feed_bytes(chunk, now=0.0))
        spent += time.perf_counter() - start
    folder.finish()
    s = folder.summary
    lines = s.events + s.malformed_lines
    return {
        "bytes": nbytes,
        "events": s.events,
        "lines": lines,
        "records": records,
        "seconds": spent,
        "events_per_s": s.events / spent if spent else 0.0,
        "mb_per_s": nbytes / spent / 1e6 if spent else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "decoder": str(getattr(events.loads, "__module__", None) or "?"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1MB,100MB,1GB")
    parser.add_argument("--decoder", choices=["auto", "stdlib"], default="auto")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one size, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(parse_size(args.one), args.decoder)))
        return
    print(f"{'size':>8} {'events':>10} {'seconds':>8} {'events/s':>10} {'MB/s':>7} {'peak RSS':>9}  decoder")
    for size_text in args.sizes.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--one", size_text, "--decoder", args.decoder],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
        r = json.loads(child.stdout)
        print(
            f"{size_text:>8} {int(r['events']):>10} {r['seconds']:>8.2f} {r['events_per_s']:>10,.0f} "
            f"{r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>7.1f}MB  {r['decoder']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
