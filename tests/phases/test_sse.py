"""The incremental SSE parser: framing variants, any chunking, bounded and linear."""

from __future__ import annotations

import pytest

from buildstudio.phases.sse import EventTooLarge, SSEParser

STREAM = (
    b": keep-alive\n\n"
    b"data: {\"a\": 1}\n\n"
    b"event: message\r\nid: 7\r\ndata:{\"b\": 2}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"retry: 100\n\n"
    b"data: \xc3\xbcnicode\n\n"
    b"data: [DONE]\n\n"
    b"data: never finished"
)
EXPECTED = ['{"a": 1}', '{"b": 2}', "line one\nline two", "ünicode", "[DONE]"]


def test_whole_stream() -> None:
    assert SSEParser(1024).feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    parser = SSEParser(1024)
    out: list[str] = []
    for i in range(0, len(STREAM), size):
        out += parser.feed(STREAM[i : i + size])
    assert out == EXPECTED


def test_an_event_over_the_cap_raises() -> None:
    parser = SSEParser(100)
    assert parser.feed(b"data: " + b"x" * 90 + b"\n\n") == ["x" * 90]
    with pytest.raises(EventTooLarge, match="100 bytes"):
        for _ in range(10):
            parser.feed(b"data: " + b"y" * 30 + b"\n")  # data lines of one event add up
    with pytest.raises(EventTooLarge):
        SSEParser(100).feed(b"data: " + b"z" * 200)  # one line without an end


@pytest.mark.timeout(20)  # a parser that re-scans its buffer per chunk needs minutes here
def test_a_big_event_in_small_chunks_is_linear() -> None:
    parser = SSEParser(8 * 1024 * 1024)
    data = b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"
    out: list[str] = []
    for i in range(0, len(data), 1024):
        out += parser.feed(data[i : i + 1024])
    assert len(out) == 1 and len(out[0]) == 4 * 1024 * 1024
