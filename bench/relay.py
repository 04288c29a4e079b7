"""Benchmark the tool-call repair relay: added latency to first byte, per-chunk cost, throughput,
and the silence a client sees while a long text-format tool call streams (issue #18).

    .venv/bin/python bench/relay.py [--chunks 4000] [--requests 40] [--repeats 15]

Three processes on loopback, as in a sandbox: a raw SSE upstream (this file, ``--upstream``),
the relay (``python -m buildstudio.sandbox.relay``) and the client (this process). Each figure compares
the same request sent directly to the upstream and through the relay. The silence figures
count, as the issue did, upstream chunks of a long ``write`` call that produce no downstream
byte, before (calls held until they close) and after (calls streamed as tool_calls deltas),
over replies cut at random token-sized points; then the longest wall-clock gap between
downstream reads with a paced upstream, direct vs relay. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

WRITE_TOOL = {
    "type": "function",
    "function": {
        "name": "write",
        "description": "Writes a file",
        "parameters": {
            "type": "object",
            "properties": {"content": {"type": "string"}, "filePath": {"type": "string"}},
            "required": ["content", "filePath"],
        },
    },
}


def _event(delta: dict[str, Any], fr: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "qwen3-coder",
           "choices": [{"index": 0, "delta": delta, "finish_reason": fr}]}  # fmt: skip
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream_events(text: str, piece: int) -> list[bytes]:
    evs = [_event({"role": "assistant", "content": ""})]
    evs += [_event({"content": text[i : i + piece]}) for i in range(0, len(text), piece)]
    return [*evs, _event({}, "stop"), b"data: [DONE]\n\n"]


def payloads(chunks: int) -> dict[str, list[bytes]]:
    prose = ("The quick brown fox jumps over the lazy dog; a < b and c > d. " * (chunks // 15 + 1))[: chunks * 4]
    code = ("def f(x):\n    return x < 3 and '</div>' or x > 1\n" * (chunks // 12 + 1))[: chunks * 4]
    call = (
        "I'll write the file.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/w/big.py\n</parameter>\n"
        f"<parameter=content>\n{code}\n</parameter>\n</function>\n</tool_call>"
    )
    paced = call_reply(code[:1600])
    return {
        "hello": stream_events("Hello.", 8),
        "text": stream_events(prose, 4),
        "call": stream_events(call, 4),
        "paced": stream_events(paced, 4),
    }


PACE = 0.005  # seconds between upstream events of the "paced" reply


def call_reply(code: str) -> str:
    return (
        "I'll write the file.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/w/big.py\n</parameter>\n"
        f"<parameter=content>\n{code}\n</parameter>\n</function>\n</tool_call>"
    )


# -- upstream process ----------------------------------------------------------------------


async def _serve_upstream(port_file: Path, chunks: int) -> None:
    data = payloads(chunks)

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for ev in data[body["bench"]]:
            await resp.write(ev)  # one write per event, as a token-streaming server does
            if body["bench"] == "paced":
                await asyncio.sleep(PACE)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    _write(port_file, str(runner.addresses[0][1]))
    await asyncio.Event().wait()


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _read_port(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


# -- client ----------------------------------------------------------------------------------


async def _wait_port(path: Path, proc: asyncio.subprocess.Process) -> int:
    for _ in range(400):
        port = _read_port(path)
        if port is not None:
            return port
        if proc.returncode is not None:
            raise RuntimeError(f"a helper process exited {proc.returncode}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no port in {path}")


async def one(session: aiohttp.ClientSession, base: str, kind: str) -> tuple[float, float, bytes]:
    """(seconds to the first body byte, seconds to the end, body)."""
    body = {"model": "qwen3-coder", "messages": [], "stream": True, "tools": [WRITE_TOOL], "bench": kind}
    t0 = time.perf_counter()
    async with session.post(base + "/chat/completions", json=body) as r:
        first = await r.content.readany()
        t1 = time.perf_counter()
        rest = await r.read()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t0, first + rest


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    up = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--upstream", str(tmp / "up"), "--chunks", str(args.chunks)
    )
    relay: asyncio.subprocess.Process | None = None
    try:
        direct = f"http://127.0.0.1:{await _wait_port(tmp / 'up', up)}/v1"
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "buildstudio.sandbox.relay", "--upstream", direct, "--port-file", str(tmp / "relay"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        via = f"http://127.0.0.1:{await _wait_port(tmp / 'relay', relay)}/v1"
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            for base in (direct, via):  # warm up both paths
                await one(s, base, "hello")

            async def med(base: str, kind: str, n: int, pick: Callable[[tuple[float, float, bytes]], float]) -> float:
                return statistics.median([pick(await one(s, base, kind)) for _ in range(n)])

            n = args.requests
            print(f"relay benchmark: {args.chunks} content chunks per long reply, {n} requests per TTFB figure")
            d, v = await med(direct, "hello", n, lambda r: r[0]), await med(via, "hello", n, lambda r: r[0])
            print(f"time to first byte      direct {d * 1e3:7.2f} ms   relay {v * 1e3:7.2f} ms", end="")
            print(f"   added {(v - d) * 1e3:6.2f} ms")
            for kind, label in (("text", "pass-through text"), ("call", "repaired write call")):
                events = len(payloads(args.chunks)[kind])
                reps = max(3, n // 8)
                d = await med(direct, kind, reps, lambda r: r[1])
                v = await med(via, kind, reps, lambda r: r[1])
                print(
                    f"{label:<22}  direct {d * 1e3:7.1f} ms   relay {v * 1e3:7.1f} ms   "
                    f"added {(v - d) * 1e3 / events:6.3f} ms/chunk   relay throughput {events / v:8.0f} chunks/s"
                )
            _, _, body = await one(s, via, "call")
            assert b'"tool_calls"' in body and b'"finish_reason":"tool_calls"' in body, "call was not repaired"
            gaps = {base: [await longest_gap(s, base) for _ in range(args.repeats // 3 or 1)] for base in (direct, via)}
            n_paced = len(payloads(args.chunks)["paced"])
            print(
                f"longest gap between downstream reads, write call of {n_paced} events paced {PACE * 1e3:.0f} ms "
                f"apart:\n    direct {spread(gaps[direct], 1e3, 'ms')}\n    relay  {spread(gaps[via], 1e3, 'ms')}"
            )
    finally:
        for p in (relay, up):
            if p is not None and p.returncode is None:
                p.terminate()
                await asyncio.wait_for(p.wait(), timeout=10)
    in_process(args.chunks)
    silence(args.chunks, args.repeats)


async def longest_gap(session: aiohttp.ClientSession, base: str) -> float:
    """Seconds of the longest wait between two reads of the paced call's body (after the first byte)."""
    body = {"model": "qwen3-coder", "messages": [], "stream": True, "tools": [WRITE_TOOL], "bench": "paced"}
    async with session.post(base + "/chat/completions", json=body) as r:
        await r.content.readany()
        last, worst = time.perf_counter(), 0.0
        while await r.content.readany():
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
    return worst


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = [x * scale for x in values]
    return f"min {min(v):.4g}{unit}  median {statistics.median(v):.4g}{unit}  max {max(v):.4g}{unit}  (n={len(v)})"


def _longest(flags: list[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def silence(chunks: int, repeats: int) -> None:
    """The issue's measure, in process: upstream chunks of a long write call with no downstream byte."""
    from buildstudio.sandbox.relay.counters import RelayCounters
    from buildstudio.sandbox.relay.rewrite import StreamRewriter

    schemas = {"write": WRITE_TOOL["function"]["parameters"]}  # type: ignore[index]
    code = ("def f(x):\n    return x < 3 and '</div>' or x > 1\n" * (chunks // 12 + 1))[: chunks * 4]
    reply = call_reply(code)
    rng = random.Random(18)
    replies = []
    for _ in range(repeats):  # cut where a tokenizer might: 1 to 8 characters per chunk
        cuts, at = [], 0
        while at < len(reply):
            step = rng.randint(1, 8)
            cuts.append(reply[at : at + step])
            at += step
        replies.append([_event({"role": "assistant", "content": ""})] + [_event({"content": c}) for c in cuts])
    print(
        f"silence while a {len(code)}-char write call streams ({repeats} replies cut at random 1-8 chars per "
        "chunk; seconds assume a slow 20 chunks/s):"
    )
    for label, stream in (("before (held until it closes)", False), ("after (streamed)", True)):
        silent, share, run, no_event = [], [], [], []
        for evs in replies:
            rw = StreamRewriter(schemas, RelayCounters(), stream_calls=stream)
            outs = [rw.feed(ev) for ev in evs]
            outs.append(rw.feed(_event({}, "stop")) + rw.close())
            assert b'"finish_reason":"tool_calls"' in outs[-1]
            silent.append(sum(not o for o in outs))
            share.append(silent[-1] / len(outs) * 100)
            run.append(_longest([not o for o in outs]))
            no_event.append(_longest([b"data:" not in o for o in outs]))
        print(f"  {label}")
        print(f"    chunks with no downstream byte      {spread(silent)}  = {spread(share, unit=' %')}")
        print(f"    longest run of such chunks          {spread(run)}  = {spread(run, 0.05, ' s')}")
        print(f"    longest run without a data event    {spread(no_event)}  = {spread(no_event, 0.05, ' s')}")


def in_process(chunks: int) -> None:
    """CPU cost of the rewriter alone (no sockets)."""
    from buildstudio.sandbox.relay.counters import RelayCounters
    from buildstudio.sandbox.relay.rewrite import StreamRewriter

    schemas = {"write": WRITE_TOOL["function"]["parameters"]}  # type: ignore[index]
    for kind, evs in payloads(chunks).items():
        if kind in ("hello", "paced"):
            continue
        best = float("inf")
        for _ in range(5):
            rw = StreamRewriter(schemas, RelayCounters())
            t0 = time.perf_counter()
            for ev in evs:
                rw.feed(ev)
            rw.close()
            best = min(best, time.perf_counter() - t0)
        print(f"rewriter CPU ({kind:<4})     {best / len(evs) * 1e6:6.1f} µs/chunk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=4000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=15, help="replies per silence figure")
    ap.add_argument("--upstream", help=argparse.SUPPRESS)  # internal: run as the upstream process
    args = ap.parse_args()
    if not args.upstream:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"host load (1/5/15 min): {load}, {os.cpu_count()} cores")
    if args.upstream:
        asyncio.run(_serve_upstream(Path(args.upstream), args.chunks))
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
