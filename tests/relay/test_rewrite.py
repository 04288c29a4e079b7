"""The sans-IO rewriters: streamed (SSE) and whole replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildstudio.relay.counters import RelayCounters
from buildstudio.relay.rewrite import StreamRewriter, rewrite_completion
from tests.relay.cases import CANONICAL, CASES, Case
from tests.relay.helpers import chunk, opencode_schemas, read_sse, splits, sse_stream

SCHEMAS = opencode_schemas()


def run_stream(data: bytes, tcp: int, counters: RelayCounters | None = None) -> bytes:
    rw = StreamRewriter(SCHEMAS, counters or RelayCounters())
    out = b"".join(rw.feed(part) for part in splits(data, tcp))
    return out + rw.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("piece", [1, 3, 7, 10_000])
def test_streamed_reply(case: Case, piece: int) -> None:
    data = sse_stream(splits(case.reply, piece))
    for tcp in (1, 19, len(data)):
        counters = RelayCounters()
        out = run_stream(data, tcp, counters)
        reply = read_sse(out)
        assert reply.content == case.text
        assert reply.tool_calls() == case.calls
        assert reply.finish == ("tool_calls" if case.calls else "stop")
        assert reply.usage == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        assert reply.done
        assert counters.repaired == len(case.calls) and counters.reasons == case.rejected
        ids = [c["id"] for c in reply.calls.values()]
        assert len(set(ids)) == len(ids) and all(i.startswith("call_") for i in ids)
        if not case.calls and not case.rejected:  # no call markup: the very same bytes
            assert out == data


@pytest.mark.parametrize("text", ["plain words", "a <b> c < d <tool_c", "<", "x<", "<<function", "tail <functio"])
@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_pass_through_is_byte_exact(text: str, nl: str) -> None:
    for piece in range(1, len(text) + 1):
        data = sse_stream(splits(text, piece), nl=nl)
        data = b": keep-alive" + nl.encode() * 2 + data  # comments pass too
        for tcp in (1, 5, len(data)):
            assert run_stream(data, tcp) == data


def test_prefix_text_streams_before_the_call_completes() -> None:
    rw = StreamRewriter(SCHEMAS, RelayCounters())
    ev = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "I'll write it.\n<tool"}),
        chunk({"content": "_call>\n<function=write>\n<parameter=filePath>\n/a\n</parameter>\n"}),
    ]
    out = b"".join(rw.feed(b"data: " + json.dumps(e).encode() + b"\n\n") for e in ev)
    assert read_sse(out).content == "I'll write it.\n"
    assert read_sse(out).calls == {}
    out2 = rw.feed(
        b"data: "
        + json.dumps(chunk({"content": "<parameter=content>\nx\n</parameter>\n</function>"})).encode()
        + b"\n\n"
    )
    assert read_sse(out2).calls == {}  # complete only once </tool_call> is ruled in or out
    out3 = rw.feed(b"data: " + json.dumps(chunk({}, "stop")).encode() + b"\n\n") + rw.close()
    r = read_sse(out3)
    assert r.tool_calls() == [("write", {"filePath": "/a", "content": "x"})] and r.finish == "tool_calls"


def test_content_and_finish_in_one_chunk() -> None:
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": CANONICAL}, "stop")]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"
    r = read_sse(run_stream(data, len(data)))
    assert r.tool_calls() == [("write", {"filePath": "/workspace/textcall.py", "content": "print('from text')"})]
    assert r.finish == "tool_calls" and r.done


def test_api_tool_calls_keep_their_own_indices_after_repaired_ones() -> None:
    head = {"index": 0, "id": "call_api", "type": "function", "function": {"name": "glob", "arguments": ""}}
    evs = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": CANONICAL}),
        chunk({"tool_calls": [head]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pattern": "*"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"
    r = read_sse(run_stream(data, 7))
    assert r.tool_calls() == [
        ("write", {"filePath": "/workspace/textcall.py", "content": "print('from text')"}),
        ("glob", {"pattern": "*"}),
    ]
    assert r.calls[1]["id"] == "call_api" and r.finish == "tool_calls"


def test_api_tool_calls_alone_pass_untouched() -> None:
    head = {"index": 0, "id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
    evs = [chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [head]}), chunk({}, "tool_calls")]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"
    assert run_stream(data, 3) == data


def test_cut_stream_mid_call_gives_the_text_back() -> None:
    partial = CANONICAL[:60]
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": partial})]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs)  # no finish, no [DONE]
    counters = RelayCounters()
    r = read_sse(run_stream(data, 11, counters))
    assert r.content == partial and r.calls == {} and r.finish is None and not r.done
    assert counters.reasons == {"unterminated": 1}


def test_cut_stream_after_a_complete_call_still_delivers_it() -> None:
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": CANONICAL})]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs)
    r = read_sse(run_stream(data, 11))
    assert [n for n, _ in r.tool_calls()] == ["write"] and r.finish is None


def test_finish_length_is_kept() -> None:
    data = sse_stream(["Writing.\n<tool_call>\n<function=write>\n<parameter=content>\nprint("], finish="length")
    r = read_sse(run_stream(data, 13))
    assert r.finish == "length" and r.calls == {}
    assert r.content == "Writing.\n<tool_call>\n<function=write>\n<parameter=content>\nprint("


def completion(content: str | None, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen3-coder",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_whole_reply(case: Case) -> None:
    body = json.dumps(completion(case.reply)).encode()
    counters = RelayCounters()
    new = rewrite_completion(body, SCHEMAS, counters)
    assert counters.repaired == len(case.calls) and counters.reasons == case.rejected
    if not case.calls:
        assert new is None  # sent on unchanged
        return
    assert new is not None
    obj = json.loads(new)
    choice = obj["choices"][0]
    msg = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert msg["content"] == (case.text if case.text.strip() else None)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == case.calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in msg["tool_calls"])
    assert obj["usage"] == completion("")["usage"] and obj["id"] == "chatcmpl-1"


def test_whole_reply_without_content_or_json() -> None:
    c = RelayCounters()
    assert rewrite_completion(json.dumps(completion(None)).encode(), SCHEMAS, c) is None
    assert rewrite_completion(b"not json", SCHEMAS, c) is None
    assert rewrite_completion(b'{"error": "x"}', SCHEMAS, c) is None


def test_sse_framing_and_bounds() -> None:
    from buildstudio.relay.sse import SSEDecoder

    d = SSEDecoder(max_event=100)
    evs = d.feed(b"data: a\r\n\r\n: ping\n\ndata: b\ndata: c\n\nevent: x\rdata: d\r\r")
    assert [(e.raw, e.data) for e in evs] == [
        (b"data: a\r\n\r\n", "a"),
        (b": ping\n\n", None),
        (b"data: b\ndata: c\n\n", "b\nc"),
        (b"event: x\rdata: d\r\r", "d"),
    ]
    big = d.feed(b"data: " + b"x" * 200)  # no end in sight: passed on raw, not buffered for ever
    assert [(e.raw, e.data) for e in big] == [(b"data: " + b"x" * 200, None)]
    assert d.feed(b"\n\n") == [type(big[0])(b"\n\n", None)]
    assert d.close() == b""


def test_chunks_after_the_finish_pass_untouched() -> None:
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": "done"}, "stop"),
           chunk({"content": " <tool_c"}), chunk({}, None)]  # fmt: skip
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"
    assert run_stream(data, 9) == data
