"""The parser + coercion on the table of real reply shapes, under every chunking."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from buildstudio.sandbox.relay.counters import RelayCounters
from buildstudio.sandbox.relay.parse import (
    Call,
    CallOpen,
    ParamClose,
    ParamOpen,
    ParamText,
    Piece,
    Reason,
    Rejected,
    Text,
    ToolCallParser,
    _merge,
    parse_all,
)
from buildstudio.sandbox.relay.rewrite import ToolCall, resolve
from tests.sandbox.relay.cases import CANONICAL, CASES, Case
from tests.sandbox.relay.helpers import FIXTURES, opencode_schemas

SCHEMAS = opencode_schemas()


def outcome(pieces: list[Piece]) -> tuple[list[tuple[str, dict[str, Any]]], str, dict[str, int]]:
    counters = RelayCounters()
    outs = resolve(pieces, SCHEMAS, counters, new_id=lambda: "id")
    calls = [(o.name, json.loads(o.arguments)) for o in outs if isinstance(o, ToolCall)]
    text = "".join(o for o in outs if isinstance(o, str))
    assert counters.repaired == len(calls)
    return calls, text, counters.reasons


def feed_in(parts: list[str]) -> list[Piece]:
    p = ToolCallParser(SCHEMAS.keys())
    out: list[Piece] = []
    for part in parts:
        out += p.feed(part)
    return _merge(out + p.finish())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reply_shapes(case: Case) -> None:
    calls, text, reasons = outcome(parse_all(case.reply, SCHEMAS.keys()))
    assert calls == case.calls
    assert text == case.text
    assert reasons == case.rejected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_split_point_gives_the_same_result(case: Case) -> None:
    whole = parse_all(case.reply, SCHEMAS.keys())
    r = case.reply
    for i in range(len(r) + 1):
        assert feed_in([r[:i], r[i:]]) == whole, f"split at {i}: {r[:i]!r} | {r[i:]!r}"
    assert feed_in(list(r)) == whole  # one character per chunk
    rng = random.Random(case.id)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(r) + 1), min(len(r) + 1, rng.randint(1, 8))))
        parts = [r[a:b] for a, b in zip([0, *cuts], [*cuts, len(r)], strict=True)]
        assert feed_in(parts) == whole, parts


def test_text_before_a_call_is_released_before_the_call_completes() -> None:
    p = ToolCallParser(["write"])
    assert p.feed("Sure, writing it now. ") == [Text("Sure, writing it now. ")]
    assert p.feed("<tool_c") == [] and p.holding and not p.in_call
    assert p.feed("all>\n<function=write>\n<parameter=content>\nx") == [] and p.in_call
    assert p.feed("</parameter>\n</function>\n</tool_call>") == [Call("write", {"content": "\nx"})]
    assert not p.holding


def test_only_a_possible_marker_is_held() -> None:
    p = ToolCallParser(["read"])
    for text, released, held in [
        ("a < b", "a < b", 0),
        (" and <", " and ", 1),
        ("f", "", 2),  # "<f" could still be "<function="
        ("x", "<fx", 0),
        ("<function=re", "", 12),
    ]:
        out = p.feed(text)
        assert "".join(x.text for x in out if isinstance(x, Text)) == released
        assert p.held_chars == held


def test_unknown_tool_is_released_as_soon_as_its_name_is_known() -> None:
    p = ToolCallParser(["read"])
    assert p.feed("<tool_call>\n<function=read_fi") == []
    assert p.feed("le>\n<parameter=") == [
        Rejected("<tool_call>\n<function=read_file>", _reason("unknownTool")),
        Text("\n<parameter="),
    ]
    assert not p.holding


def _reason(v: str) -> Reason:
    return Reason(v)


def test_oversized_call_is_given_up_as_text() -> None:
    big = "x" * 5000
    reply = f"<tool_call>\n<function=write>\n<parameter=content>\n{big}\n</parameter>\n</function>\n</tool_call>"
    pieces = parse_all(reply, ["write"], max_call_chars=1000)
    assert not any(isinstance(p, Call) for p in pieces)
    assert "".join(p.text for p in pieces if isinstance(p, Text | Rejected)) == reply
    assert any(isinstance(p, Rejected) and p.reason.value == "tooLarge" for p in pieces)


def test_no_tools_means_nothing_is_a_call() -> None:
    pieces = parse_all(CANONICAL, [])
    assert "".join(p.text for p in pieces if isinstance(p, Text | Rejected)) == CANONICAL
    assert not any(isinstance(p, Call) for p in pieces)


def test_canonical_case_is_the_captured_opencode_text() -> None:
    """The reply opencode 1.18.33 printed verbatim (opencode-contract §6) is what CASES[0] repairs."""
    lines = (FIXTURES / "text-format-toolcall-not-parsed.jsonl").read_text().splitlines()
    texts = [e["part"]["text"] for e in map(json.loads, lines) if e["type"] == "text"]
    assert texts == [CANONICAL]


def stream_pieces(parts: list[str]) -> list[Piece]:
    p = ToolCallParser(SCHEMAS.keys(), stream=True)
    out: list[Piece] = []
    for part in parts:
        out += p.feed(part)
    return out + p.finish()


def replay(pieces: list[Piece]) -> list[tuple[str, dict[str, str]] | Rejected]:
    """What the stream pieces say, rebuilt: each opened call's parameters from its ParamText pieces."""
    got: list[tuple[str, dict[str, str]] | Rejected] = []
    name, pname = "", ""
    params: dict[str, str] = {}
    for p in pieces:
        if isinstance(p, CallOpen):
            name, params = p.name, {}
        elif isinstance(p, ParamOpen):
            pname = p.name
            params[pname] = ""
        elif isinstance(p, ParamText):
            params[pname] += p.text
        elif isinstance(p, Call) and name:
            assert p.name == name and p.params == params  # the streamed pieces ARE the call
            got.append((name, params))
            name = ""
        elif isinstance(p, Rejected):
            assert p.opened == bool(name)
            got.append(p)
            name = ""
    return got


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_stream_pieces_rebuild_the_call_under_every_split(case: Case) -> None:
    r = case.reply
    whole = stream_pieces([r])
    plain = [Rejected(x.text, x.reason) if isinstance(x, Rejected) else x for x in whole]
    assert _merge([x for x in plain if isinstance(x, Call | Rejected | Text)]) == parse_all(r, SCHEMAS.keys())
    assert any(isinstance(x, Rejected) and x.opened for x in whole) == case.opened
    expected = replay(whole)
    for i in range(len(r) + 1):
        assert replay(stream_pieces([r[:i], r[i:]])) == expected, i
    assert replay(stream_pieces(list(r))) == expected


def test_a_value_streams_as_it_arrives_holding_only_a_possible_terminator() -> None:
    p = ToolCallParser(["write"], stream=True)
    assert p.feed("<tool_call>\n<function=write>\n<parameter=content>\nab") == [
        CallOpen("write"), ParamOpen("content"), ParamText("\nab"),
    ]  # fmt: skip
    assert p.feed("c </par") == [ParamText("c ")]
    assert p.feed("k") == [ParamText("</park")]
    assert p.feed("</parameter>") == [ParamClose()]


def test_held_input_is_linear() -> None:
    """8 MB in 1 KiB chunks took 42 s with `str +=` (quadratic); now it is linear."""
    p = ToolCallParser(["write"], max_call_chars=16 * 1024 * 1024)
    p.feed("<tool_call>\n<function=write>\n<parameter=content>\n")
    block = "x < y </p" * 113 + "abcdefg"
    started = time.perf_counter()
    for _ in range(8 * 1024):
        assert p.feed(block) == []
    (call,) = p.feed("</parameter>\n</function>\n</tool_call>")
    elapsed = time.perf_counter() - started
    assert isinstance(call, Call) and call.params["content"] == "\n" + block * 8 * 1024
    assert elapsed < 10.0, elapsed  # a bound, not a benchmark (about 0.2 s here)
