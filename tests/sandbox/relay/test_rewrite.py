"""The sans-IO rewriters: streamed (SSE) and whole replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildstudio.sandbox.relay.counters import RelayCounters
from buildstudio.sandbox.relay.rewrite import StreamRewriter, rewrite_completion
from tests.sandbox.relay.cases import CANONICAL, CASES, Case
from tests.sandbox.relay.helpers import chunk, opencode_schemas, read_sse, splits, sse_stream

SCHEMAS = opencode_schemas()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


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
        if case.opened:
            (only,) = reply.calls.values()
            assert only["name"] and not _parses(only["arguments"])
        else:
            assert reply.tool_calls() == case.calls
        assert reply.finish == ("tool_calls" if case.calls else "stop")
        assert reply.usage == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        assert reply.done
        assert counters.repaired == len(case.calls) and counters.reasons == case.rejected
        ids = [c["id"] for c in reply.calls.values()]
        assert len(set(ids)) == len(ids) and all(i.startswith("call_") for i in ids)
        if not case.calls and not case.rejected:  # no call markup: the very same bytes
            assert out == data


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_split_point_streams_the_same_call(case: Case) -> None:
    r = case.reply
    for parts in [[r[:i], r[i:]] for i in range(len(r) + 1)] + [list(r)]:
        reply = read_sse(run_stream(sse_stream(parts), 10_000))
        assert reply.content == case.text, parts
        if case.opened:
            assert len(reply.calls) == 1 and not _parses(reply.calls[0]["arguments"]), parts
        else:
            assert reply.tool_calls() == case.calls, parts


@pytest.mark.parametrize("text", ["plain words", "a <b> c < d <tool_c", "<", "x<", "<<function", "tail <functio"])
@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_pass_through_is_byte_exact(text: str, nl: str) -> None:
    for piece in range(1, len(text) + 1):
        data = sse_stream(splits(text, piece), nl=nl)
        data = b": keep-alive" + nl.encode() * 2 + data  # comments pass too
        for tcp in (1, 5, len(data)):
            assert run_stream(data, tcp) == data


def _sse(*deltas: tuple[dict[str, Any], str | None]) -> bytes:
    return b"".join(b"data: " + json.dumps(chunk(d, fr)).encode() + b"\n\n" for d, fr in deltas)


def test_text_then_the_call_stream_before_the_call_completes() -> None:
    rw = StreamRewriter(SCHEMAS, RelayCounters())
    out = rw.feed(_sse(({"role": "assistant", "content": ""}, None), ({"content": "I'll write it.\n<tool"}, None)))
    out += rw.feed(_sse(({"content": "_call>\n<function=write>\n<parameter=filePath>\n/a\n</parameter>\n"}, None)))
    r = read_sse(out)
    assert r.content == "I'll write it.\n"
    assert [(c["name"], c["arguments"]) for c in r.calls.values()] == [("write", '{"filePath":"/a"')]
    out += rw.feed(_sse(({"content": "<parameter=content>\nx\n</parameter>\n</function>"}, None)))
    assert read_sse(out).calls[0]["arguments"] == '{"filePath":"/a","content":"x"'  # no "}" before the close
    out += rw.feed(_sse(({}, "stop"))) + rw.close()
    r = read_sse(out)
    assert r.tool_calls() == [("write", {"filePath": "/a", "content": "x"})] and r.finish == "tool_calls"
    assert r.calls[0]["id"].startswith("call_")


def test_first_delta_waits_for_the_first_parameter_name() -> None:
    """Before it, markup may still turn out to be text (so nothing call-shaped has gone out)."""
    rw = StreamRewriter(SCHEMAS, RelayCounters())
    out = rw.feed(_sse(({"content": "<tool_call>\n<function=write>\n<parameter=file"}, None)))
    assert out == b":\n\n"  # a keep-alive comment, no event
    out = rw.feed(_sse(({"content": "Path>"}, None)))
    assert read_sse(out).calls[0] == {"id": read_sse(out).calls[0]["id"], "name": "write", "arguments": '{"filePath":"'}


def test_typed_parameters_wait_for_coercion_and_strings_stream() -> None:
    reply = (
        "<tool_call>\n<function=read>\n<parameter=limit>\n200\n</parameter>\n<parameter=filePath>\n"
        'a\\b"c\n</parameter>\n</function>\n</tool_call>'
    )
    rw = StreamRewriter(SCHEMAS, RelayCounters())
    seen = []
    for part in splits(reply, 1):
        seen.append(read_sse(rw.feed(_sse(({"content": part}, None)))).calls.get(0, {}).get("arguments", ""))
    args = "".join(seen)
    at = reply.index("</parameter>")
    assert "".join(seen[: at + 1]) == "{"  # the integer waited for its closing tag ...
    assert '"limit":200' in "".join(seen[: at + 12]) and args.count("200") == 1  # ... then went out coerced
    assert json.loads(args) == {"limit": 200, "filePath": 'a\\b"c'}


def test_a_long_typed_value_stops_waiting() -> None:
    rw = StreamRewriter(SCHEMAS, RelayCounters(), max_typed=8)
    body = "<tool_call>\n<function=read>\n<parameter=limit>\n1234567890\n</parameter>\n</function>\n</tool_call>"
    r = read_sse(b"".join(rw.feed(_sse(({"content": p}, None))) for p in splits(body, 3)) + rw.close())
    assert r.tool_calls() == [("read", {"limit": "1234567890"})]  # sent as the string it is


def test_silence_while_a_long_write_streams_in_small_chunks() -> None:
    """The issue's measure: upstream chunks that produce no downstream byte (was 429 of 441)."""
    code = "def f(x):\n    return x < 3 and '</div>' or x > 1\n" * 40
    reply = "Writing.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/w/big.py\n</parameter>\n" + (
        f"<parameter=content>\n{code}</parameter>\n</function>\n</tool_call>"
    )
    interval = 0.05  # simulated: a slow local model sending 20 chunks/s
    for piece in (1, 2, 4, 7):
        events = splits(reply, piece)
        rw = StreamRewriter(SCHEMAS, RelayCounters())
        outs = [rw.feed(_sse(({"content": p}, None))) for p in events]
        outs.append(rw.feed(_sse(({}, "stop"))) + rw.close())
        silent = longest_run([not o for o in outs])
        # only a partial "<tool_call>" in plain text is held without a byte (pass-through stays exact)
        assert silent <= len("<tool_call>") - 1 and silent * interval < 1.0, (piece, silent)
        no_event = longest_run([not read_sse(o).events for o in outs])  # comments counted as silence
        if piece >= 4:  # about one token: the wait for "<function=write>\n<parameter=filePath>"
            assert no_event * interval < 1.0, (piece, no_event)
        r = read_sse(b"".join(outs))
        assert r.tool_calls() == [("write", {"filePath": "/w/big.py", "content": code.removesuffix("\n")})]
        pieces = [read_sse(o).calls.get(0, {}).get("arguments", "") for o in outs]
        assert sum(bool(p) for p in pieces) > len(code) // piece // 2  # arguments arrive in many pieces


def longest_run(flags: list[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


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
    assert r.content == partial and r.finish is None and not r.done
    (opened,) = r.calls.values()  # the call had begun: it stays unparseable, so it is never run
    assert opened["name"] == "write" and not _parses(opened["arguments"])
    assert counters.reasons == {"unterminated": 1} and counters.repaired == 0


def test_cut_stream_after_a_complete_call_still_delivers_it() -> None:
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": CANONICAL})]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs)
    r = read_sse(run_stream(data, 11))
    assert [n for n, _ in r.tool_calls()] == ["write"] and r.finish is None


def test_finish_length_is_kept() -> None:
    data = sse_stream(["Writing.\n<tool_call>\n<function=write>\n<parameter=content>\nprint("], finish="length")
    r = read_sse(run_stream(data, 13))
    assert r.finish == "length" and [c["arguments"] for c in r.calls.values()] == ['{"content":"print(']
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


def test_chunks_after_the_finish_pass_untouched() -> None:
    evs = [chunk({"role": "assistant", "content": ""}), chunk({"content": "done"}, "stop"),
           chunk({"content": " <tool_c"}), chunk({}, None)]  # fmt: skip
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"
    assert run_stream(data, 9) == data


@pytest.mark.parametrize(
    "raw",
    ["", "\n", "\r\n", "\n\n", "\r\n\r\n", "x", "\nx\n", "\r\nx\r\n", "\n\nx\n\n", "\r", "a\rb\n", 'q"\\\t\u2028é'],
)
def test_arg_stream_strings_match_whole_coercion_under_every_split(raw: str) -> None:
    from buildstudio.sandbox.relay.coerce import strip_template_newlines
    from buildstudio.sandbox.relay.rewrite import ArgStream

    want = json.dumps({"p": strip_template_newlines(raw)}, ensure_ascii=False, separators=(",", ":"))
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            a = ArgStream({"properties": {"p": {"type": "string"}}})
            got = a.start() + a.open("p") + a.text(raw[:i]) + a.text(raw[i:j]) + a.text(raw[j:]) + a.close() + a.end()
            assert got == want, (i, j)


def test_arg_stream_typed_values_wait_and_are_coerced() -> None:
    from buildstudio.sandbox.relay.rewrite import ArgStream

    a = ArgStream(SCHEMAS["todowrite"])
    assert a.start() + a.open("todos") == "{"
    assert a.text("\n[{'content': 'x', ") == "" and a.text("'status': 'pending', 'priority': 'low'}]\n") == ""
    tail = a.close() + a.end()
    assert json.loads("{" + tail) == {"todos": [{"content": "x", "status": "pending", "priority": "low"}]}
