"""Issue #14 finding 5: bad record lines never stall a reader, never cost unbounded time or memory."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from buildstudio.adapters.kube import Kube
from buildstudio.engines import opencode_stream as events
from buildstudio.engines.opencode_stream import StreamFolder
from buildstudio.protocol.lines import OVERLONG_MARKER, LineSplitter, aiter_lines
from buildstudio.protocol.records import MAX_LINE_BYTES, EventRecord, Outcome, ProgressRecord, dump, parse_line
from buildstudio.protocol.sse import SSEDecoder

GOOD = dump(ProgressRecord(stage="running", steps=3))
DEEP = 100_000
MB = 1024 * 1024


def thirty_mb_without_newline(chunk: int = 64 * 1024) -> Iterator[bytes]:
    piece = b'{"kind":"event","type":"text","message":"' + b"x" * (chunk - 41)
    filler = b"x" * chunk
    yield piece
    for _ in range(30 * MB // chunk):
        yield filler


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    "line",
    [
        "[" * DEEP,
        '{"kind":"result","outcome":"Completed","message":"m","review":' + "[" * DEEP + "]" * DEEP + "}",
        '{"kind":"event","type":"x","message":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
    ],
)
def test_deeply_nested_line_is_not_a_record(line: str) -> None:
    """Was: RecursionError out of parse_line, the log follower re-read the log for ever."""
    start = time.perf_counter()
    assert parse_line(line) is None
    assert parse_line(line.encode()) is None
    assert time.perf_counter() - start < 1.0


def test_bad_lines_are_none_never_raise() -> None:
    assert parse_line(b'{"kind":"event","type":"x","message":"\xff\xfe"}') is None  # invalid UTF-8
    assert parse_line(b"\xc3\x28") is None
    assert parse_line(None) is None  # type: ignore[arg-type]  # not text at all
    assert parse_line('{"kind":"event","type":"x","message":"' + "\ud800" + '"}') is not None  # json allows it
    assert parse_line(GOOD) == ProgressRecord(stage="running", steps=3)


def test_overlong_line_is_refused_before_parsing() -> None:
    """A real record padded past the cap is not a record (and is not parsed at all)."""
    padded = GOOD + " " * MAX_LINE_BYTES
    assert json.loads(padded)["kind"] == "progress"  # valid JSON, only too long
    start = time.perf_counter()
    assert parse_line(padded) is None and parse_line(padded.encode()) is None
    assert time.perf_counter() - start < 0.05
    assert MAX_LINE_BYTES >= 2 * MB  # room for a result with its whole (1 MiB base64) patch


def test_outcome_diff_capture_failed_is_a_failure() -> None:
    assert Outcome("DiffCaptureFailed") is Outcome.DIFF_CAPTURE_FAILED
    assert not Outcome.DIFF_CAPTURE_FAILED.succeeded


# --------------------------------------------------------------------------- the splitter


def test_30_megabyte_line_costs_bounded_memory_and_time() -> None:
    splitter = LineSplitter(MAX_LINE_BYTES, overlong_marker=OVERLONG_MARKER)
    got: list[bytes] = []
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for chunk in thirty_mb_without_newline():
            got += splitter.feed(chunk)
        got += splitter.feed(b"\n" + GOOD.encode() + b"\n")
        got += splitter.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 3.0
    assert peak < MAX_LINE_BYTES + 2 * MB, peak  # the cap plus a chunk, not the 30 MB line
    assert got == [OVERLONG_MARKER, GOOD.encode()] and splitter.overlong == 1
    assert parse_line(got[0]) is None and parse_line(got[1]) == ProgressRecord(stage="running", steps=3)


def test_splitter_output_does_not_depend_on_chunking() -> None:
    def reference(data: bytes, cap: int) -> list[bytes]:
        *lines, last = data.split(b"\n")
        return [b"!" if len(line) > cap else line for line in ([*lines, last] if last else lines)]

    rng = random.Random(14)
    for _ in range(500):
        data = b"".join(rng.choice([b"\n", b"a", b"bbbbbbb", b"c" * 25]) for _ in range(rng.randint(0, 30)))
        splitter = LineSplitter(20, overlong_marker=b"!")
        got: list[bytes] = []
        i = 0
        while i < len(data):
            step = rng.randint(1, 9)
            got += splitter.feed(data[i : i + step])
            i += step
        got += splitter.close()
        want = reference(data, 20)
        assert got == want and splitter.overlong == want.count(b"!"), data


def test_splitter_marks_each_dropped_line_once_in_place() -> None:
    splitter = LineSplitter(10, overlong_marker=b"<dropped>")
    out = splitter.feed(b"one\n" + b"x" * 8)
    out += splitter.feed(b"y" * 5)  # the buffered line overflows: dropped here
    out += splitter.feed(b"z" * 100 + b"\ntwo\n" + b"w" * 11 + b"\nthree")
    out += splitter.close()
    assert out == [b"one", b"<dropped>", b"two", b"<dropped>", b"three"] and splitter.overlong == 2


async def test_aiter_lines_reads_an_async_source() -> None:
    chunks = iter([b"a\nb", b"b\n" + b"x" * 50, b"\nc"])

    async def read(_: int) -> bytes:
        return next(chunks, b"")

    splitter = LineSplitter(10)
    assert [line async for line in aiter_lines(read, splitter)] == [b"a", b"bb", b"c"]
    assert splitter.overlong == 1


# --------------------------------------------------------------------------- the operator's log follower


async def test_follow_log_survives_a_30_megabyte_line() -> None:
    """Was: bytes buffer grown with += and re-split per chunk (31 s, memory unbounded). The log is
    streamed by a loopback server as the API server would (chunked, ``follow=true``)."""

    async def log(request: web.Request) -> web.StreamResponse:
        assert request.query.get("follow") == "true"
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(GOOD.encode() + b"\n")
        for chunk in thirty_mb_without_newline(16384):
            await resp.write(chunk)
        await resp.write(b"\n" + GOOD.encode() + b"\n" + b"\xff\xfe not utf-8\n")
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", log)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conf = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    kube = Kube(k8s_client.ApiClient(conf))
    start = time.perf_counter()
    try:
        lines = [line async for line in kube.follow_log("dev", "fix-1-1", idle_timeout=30)]
    finally:
        await kube.aclose()
        await runner.cleanup()
    assert time.perf_counter() - start < 10.0
    parsed = [parse_line(line) for line in lines]
    assert parsed == [parsed[0], None, parsed[0], None] and isinstance(parsed[0], ProgressRecord)
    assert len(lines) == 4 and all(len(line) < 1024 for line in lines)


# --------------------------------------------------------------------------- opencode's event stream


def _event(text: str) -> bytes:
    return json.dumps({"type": "text", "timestamp": 1, "part": {"text": text}}).encode()


@pytest.mark.parametrize("decoder", ["default", "stdlib"])
def test_stream_folder_counts_bad_lines_and_goes_on(decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if decoder == "stdlib":
        monkeypatch.setattr(events, "loads", events.loads_stdlib)
    folder = StreamFolder(max_line_bytes=MB)
    stream = [
        b"[" * DEEP + b"\n",
        b'{"type":"text","part":{"text":"\xff\xfe"}}\n',  # invalid UTF-8
        *thirty_mb_without_newline(),
        b"\n" + _event("after") + b"\n",
    ]
    for chunk in stream:
        assert all(isinstance(r, EventRecord) for r in folder.feed_bytes(chunk))
    folder.finish()
    folder.feed(b"x" * (MB + 1))  # a whole line given directly is capped too
    s = folder.summary
    assert s.malformed_lines == 4 and s.events == 1, decoder


# --------------------------------------------------------------------------- the relay's SSE framing


def test_sse_decoder_scans_each_byte_once() -> None:
    """Was: the held event re-searched per chunk (16 MB without an end: 76 s)."""
    decoder = SSEDecoder(pass_oversized=True)  # the relay's
    start = time.perf_counter()
    out: list[Any] = []
    for chunk in thirty_mb_without_newline(16384):
        out += decoder.feed(chunk)
        if out:
            break
    assert time.perf_counter() - start < 5.0
    assert len(out) == 1 and out[0].data is None  # passed on raw once past the cap
    assert [e.data for e in decoder.feed(b"data: a\r\n\r") + decoder.feed(b"\ndata: b\n\n")] == ["a", "b"]
