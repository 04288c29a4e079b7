"""The one SSE decoder: framing variants, any chunking, bounded and linear; data or raw events."""

from __future__ import annotations

import pytest

from buildstudio.protocol.sse import DONE, Event, EventTooLarge, SSEDecoder, encode

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
    assert SSEDecoder(1024).feed_data(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    parser = SSEDecoder(1024)
    out: list[str] = []
    for i in range(0, len(STREAM), size):
        out += parser.feed_data(STREAM[i : i + size])
    assert out == EXPECTED


def test_an_event_over_the_cap_raises() -> None:
    parser = SSEDecoder(100)
    assert parser.feed_data(b"data: " + b"x" * 90 + b"\n\n") == ["x" * 90]
    with pytest.raises(EventTooLarge, match="100 bytes"):
        for _ in range(10):
            parser.feed_data(b"data: " + b"y" * 30 + b"\n")  # data lines of one event add up
    with pytest.raises(EventTooLarge):
        SSEDecoder(100).feed_data(b"data: " + b"z" * 200)  # one line without an end


@pytest.mark.timeout(20)  # a parser that re-scans its buffer per chunk needs minutes here
def test_a_big_event_in_small_chunks_is_linear() -> None:
    parser = SSEDecoder(8 * 1024 * 1024)
    data = b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"
    out: list[str] = []
    for i in range(0, len(data), 1024):
        out += parser.feed_data(data[i : i + 1024])
    assert len(out) == 1 and len(out[0]) == 4 * 1024 * 1024


def test_raw_events_keep_their_bytes_and_oversized_ones_pass() -> None:
    """The relay's view: every event with its exact bytes (comments too); CR line ends."""
    d = SSEDecoder(max_event=100, pass_oversized=True)
    evs = d.feed(b"data: a\r\n\r\n: ping\n\ndata: b\ndata: c\n\nevent: x\rdata: d\r\r")
    assert [(e.raw, e.data) for e in evs] == [
        (b"data: a\r\n\r\n", "a"),
        (b": ping\n\n", None),
        (b"data: b\ndata: c\n\n", "b\nc"),
        (b"event: x\rdata: d\r\r", "d"),
    ]
    big = d.feed(b"data: " + b"x" * 200)  # no end in sight: passed on raw, not buffered for ever
    assert [(e.raw, e.data) for e in big] == [(b"data: " + b"x" * 200, None)]
    assert d.feed(b"\n\n") == [Event(b"\n\n", None)]
    assert d.close() == b""


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_raw_events_under_any_chunking_rebuild_the_stream(size: int) -> None:
    stream = STREAM.replace(b"retry: 100\n\n", b"retry: 100\r\rdata: cr\r\r")
    d = SSEDecoder(1024, pass_oversized=True)
    evs: list[Event] = []
    for i in range(0, len(stream), size):
        evs += d.feed(stream[i : i + size])
    assert b"".join(e.raw for e in evs) + d.close() == stream  # pass-through is byte for byte
    assert [e.data for e in evs if e.data is not None] == [*EXPECTED[:3], "cr", *EXPECTED[3:]]


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    d = SSEDecoder()
    assert [e.data for e in d.feed(b"data: a\r\n\r") + d.feed(b"\ndata: b\n\n")] == ["a", "b"]
    assert d.feed_data(b"data: c\r") + d.feed_data(b"\n\r\n") == ["c"]


def test_encode_round_trips() -> None:
    obj = {"choices": [{"delta": {"content": "ü <x>\n"}}]}
    assert SSEDecoder().feed_data(encode(obj) + DONE) == ['{"choices":[{"delta":{"content":"ü <x>\\n"}}]}', "[DONE]"]
