"""Rewrite chat-completion replies so text-format tool calls become API ``tool_calls`` (pure, sans-IO).

Replies without call markup leave here byte for byte as they came in: untouched SSE events are
forwarded raw, and an event whose text ends in a possible partial marker is held (raw) until
the next event settles it. Only when a call is found (or markup is given up) are new events
written, built from the upstream chunk's own ``id``/``model``/``created`` fields.

A streamed XML-form call goes out as it arrives (issue #18: a client must not sit in silence
while a slow model writes a long file): once the parser has the function name and the first
parameter name, the first ``tool_calls`` delta carries id, type and name, then
``function.arguments`` pieces follow at the upstream's pace. Per parameter, by the tool's schema:
a string parameter streams (JSON-escaped; the template's one leading and one trailing newline
are stripped by holding back at most two characters); any other type waits for its whole value
and goes through the same coercion as a whole reply, a wait bounded by ``MAX_TYPED_CHARS``
(beyond that it streams as the string it is, which opencode answers with a schema error). The
closing ``}`` goes out only with the finished call, so the arguments never parse as JSON before
the call is complete: a call cut off or malformed after its first delta stays unparseable (the
client cannot run it) and its markup follows as text, counted with its reason. An upstream
chunk that, inside a call, yields nothing to send (markup, a typed value) yields an SSE comment,
so the client's chunk timeout always sees bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from buildstudio.protocol.sse import SSEDecoder, encode
from buildstudio.sandbox.relay.coerce import call_arguments, coerce_value, schema_types, strip_template_newlines
from buildstudio.sandbox.relay.counters import RelayCounters
from buildstudio.sandbox.relay.parse import (
    DEFAULT_MAX_CALL_CHARS,
    Call,
    CallOpen,
    ParamClose,
    ParamOpen,
    ParamText,
    Piece,
    Rejected,
    Text,
    ToolCallParser,
    parse_all,
)

Schemas = Mapping[str, Any]  # tool name -> its `parameters` JSON schema


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the API carries it

    def api(self) -> dict[str, Any]:
        fn = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": fn}


@dataclass(frozen=True)
class ArgDelta:
    """A piece of a streamed call: the first one carries id and name, all carry arguments text."""

    arguments: str
    id: str | None = None
    name: str | None = None


Out = str | ToolCall | ArgDelta  # content text, a whole repaired call, or a piece of a streamed one

MAX_TYPED_CHARS = 64 * 1024  # a number/boolean/object value held for coercion longer than this streams as text
KEEPALIVE = b":\n\n"  # an SSE comment: bytes for the client's chunk timeout, no event for its parser


def _esc(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _strip_lead(text: str) -> str:
    return text[2:] if text.startswith("\r\n") else text[1:] if text.startswith("\n") else text


def _newline_tail(text: str) -> int:
    """How many of the last (at most two) characters are newline characters that may be stripped."""
    n = 0
    while n < 2 and n < len(text) and text[-1 - n] in "\r\n":
        n += 1
    return n


def _arg_piece(call: ArgStream, p: ParamOpen | ParamText | ParamClose) -> str:
    if isinstance(p, ParamOpen):
        return call.open(p.name)
    if isinstance(p, ParamText):
        return call.text(p.text)
    return call.close()


class ArgStream:
    """One streamed call's ``function.arguments``, built piece by piece (pure).

    The pieces join to the same JSON object ``call_arguments`` gives for the whole call (keys in
    the order the model wrote them), except a non-string value over ``max_typed`` characters.
    """

    def __init__(self, parameters: Any, *, max_typed: int = MAX_TYPED_CHARS) -> None:
        props = parameters.get("properties") if isinstance(parameters, Mapping) else None
        self._props: Mapping[str, Any] = props if isinstance(props, Mapping) else {}
        self._max_typed = max_typed
        self._count = 0
        self._schema: Any = None
        self._key = ""
        self._streams = True
        self._lead_done = False
        self._pending = ""  # streamed text held back: a possible leading/trailing template newline
        self._typed: list[str] = []
        self._typed_len = 0

    def start(self) -> str:
        return "{"

    def open(self, name: str) -> str:
        self._key = ("," if self._count else "") + json.dumps(name, ensure_ascii=False) + ":"
        self._count += 1
        self._schema = self._props.get(name)
        types = schema_types(self._schema)
        self._streams = not types or "string" in types  # what coerce_value keeps verbatim
        self._lead_done, self._pending, self._typed, self._typed_len = False, "", [], 0
        return self._key + '"' if self._streams else ""

    def text(self, text: str) -> str:
        if self._streams:
            return self._string(text)
        self._typed.append(text)
        self._typed_len += len(text)
        if self._typed_len <= self._max_typed:
            return ""
        self._streams = True  # not short after all: stop waiting, send it as the string it is
        held, self._typed = "".join(self._typed), []
        return self._key + '"' + self._string(held)

    def _string(self, text: str) -> str:
        p = self._pending + text
        if not self._lead_done:
            if len(p) < 2:
                self._pending = p
                return ""
            p, self._lead_done = _strip_lead(p), True
        keep = _newline_tail(p)
        self._pending = p[len(p) - keep :]
        return _esc(p[: len(p) - keep])

    def close(self) -> str:
        if self._streams:
            p = self._pending if self._lead_done else _strip_lead(self._pending)
            if p.endswith("\r\n"):
                p = p[:-2]
            elif p.endswith("\n"):
                p = p[:-1]
            return _esc(p) + '"'
        value = coerce_value(strip_template_newlines("".join(self._typed)), self._schema)
        return self._key + json.dumps(value, ensure_ascii=False)

    def end(self) -> str:
        return "}"


def resolve(
    pieces: list[Piece], schemas: Schemas, counters: RelayCounters, new_id: Callable[[], str] = new_call_id
) -> list[Out]:
    """Parser pieces → output, counting repaired and rejected calls."""
    out: list[Out] = []
    for p in pieces:
        if isinstance(p, Text):
            out.append(p.text)
        elif isinstance(p, Rejected):
            counters.left(p.reason.value)
            out.append(p.text)
        else:
            assert isinstance(p, Call)
            args = call_arguments(p, schemas.get(p.name))
            counters.repaired += 1
            out.append(ToolCall(new_id(), p.name, json.dumps(args, ensure_ascii=False)))
    return out


def rewrite_completion(
    body: bytes,
    schemas: Schemas,
    counters: RelayCounters,
    *,
    max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
    new_id: Callable[[], str] = new_call_id,
) -> bytes | None:
    """A non-streaming reply with calls repaired, or None when it should go out unchanged."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return None
    changed = False
    for choice in choices:
        msg = choice.get("message") if isinstance(choice, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or not isinstance(content, str) or not content:
            continue
        pieces = parse_all(content, schemas.keys(), max_call_chars=max_call_chars)
        outs = resolve(pieces, schemas, counters, new_id)
        calls = [o.api() for o in outs if isinstance(o, ToolCall)]
        if not calls:
            continue  # rejected markup is already the original text
        text = "".join(o for o in outs if isinstance(o, str))
        msg["content"] = text if text.strip() else None
        msg["tool_calls"] = list(msg.get("tool_calls") or []) + calls
        if choice.get("finish_reason") in ("stop", None):
            choice["finish_reason"] = "tool_calls"
        changed = True
    return json.dumps(obj, ensure_ascii=False).encode() if changed else None


class StreamRewriter:
    """Feed the upstream SSE bytes as they arrive; write out what ``feed``/``close`` return."""

    def __init__(
        self,
        schemas: Schemas,
        counters: RelayCounters,
        *,
        max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
        new_id: Callable[[], str] = new_call_id,
        stream_calls: bool = True,
        max_typed: int = MAX_TYPED_CHARS,
    ) -> None:
        self._schemas = schemas
        self._counters = counters
        self._new_id = new_id
        self._max_typed = max_typed
        self._stream_calls = stream_calls  # False: calls held until they close, no keep-alive (before #18)
        self._parser = ToolCallParser(schemas.keys(), max_call_chars=max_call_chars, stream=stream_calls)
        self._call: ArgStream | None = None  # the call being streamed
        self._stream_index = -1  # its tool_calls index in the outgoing stream
        self._sse = SSEDecoder(pass_oversized=True)  # a stream that is not SSE goes on raw
        self._finished = False  # the parser has seen the end of the reply
        self._held: list[bytes] = []  # raw events whose text is not settled yet
        self._held_text = ""  # their content
        self._held_out: list[Out] = []  # output already decided while holding them
        self._template: dict[str, Any] = {}  # top-level fields of the last chunk (id, model, ...)
        self._next_index = 0  # tool_calls index in the outgoing stream
        self._index_map: dict[int, int] = {}  # upstream tool_calls index -> outgoing index
        self._repaired = 0

    @property
    def repaired(self) -> int:
        return self._repaired

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for ev in self._sse.feed(data):
            out += self._event(ev.raw, ev.data)
        return bytes(out)

    def close(self) -> bytes:
        """Upstream ended (normally after ``[DONE]``, or cut off): settle what is held."""
        rest = self._sse.close()
        return self._settle() + rest

    # -- events ---------------------------------------------------------------------------

    def _event(self, raw: bytes, data: str | None) -> bytes:
        if data is None:
            return raw
        if data.strip() == "[DONE]":
            return self._settle() + raw
        try:
            obj = json.loads(data)
        except ValueError:
            return raw
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or len(choices) != 1:
            return raw  # usage-only chunk, or n > 1 (opencode never asks for that): untouched
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return raw
        return self._chunk(raw, obj, choice)

    def _chunk(self, raw: bytes, obj: dict[str, Any], choice: dict[str, Any]) -> bytes:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content = delta.get("content")
        content = content if isinstance(content, str) else ""
        fr = choice.get("finish_reason")
        if self._finished:  # after the finish chunk (some servers send more): nothing left to parse
            tool_calls, remapped = self._remap(delta.get("tool_calls"))
            if not remapped:
                return raw
            return encode({**obj, "choices": [dict(choice, delta=dict(delta, tool_calls=tool_calls))]})
        self._template = {k: v for k, v in obj.items() if k not in ("choices", "usage")}

        pieces: list[Piece] = []
        if content:
            pieces += self._parser.feed(content)
        if fr is not None:
            pieces += self._parser.finish()
            self._finished = True
        outs = self._resolve(pieces)
        tool_calls, remapped = self._remap(delta.get("tool_calls"))
        new_fr = "tool_calls" if fr == "stop" and self._repaired else fr

        plain = all(isinstance(o, str) for o in outs) and not remapped and new_fr == fr
        if plain and not self._parser.in_call:
            others = any(v is not None for k, v in delta.items() if k not in ("content", "role"))
            if self._parser.holding and fr is None and not others:
                self._held.append(raw)
                self._held_text += content
                self._held_out += outs
                return b""
            if "".join(str(o) for o in self._held_out + outs) == self._held_text + content:
                done = b"".join(self._held) + raw  # nothing changed: forward exactly what came
                self._clear_held()
                return done

        res = bytearray(self._emit(self._held_out + outs))
        self._clear_held()
        if not res and content and self._parser.in_call and self._stream_calls:
            res += KEEPALIVE
        rest = {k: v for k, v in delta.items() if k != "content"}
        if tool_calls is not None:
            rest["tool_calls"] = tool_calls
        extra = {k: v for k, v in choice.items() if k not in ("index", "delta", "finish_reason")}
        has_more = any(v is not None for v in rest.values()) or any(v is not None for v in extra.values())
        if has_more or fr is not None or obj.get("usage") is not None:
            c = dict(choice, delta=rest, finish_reason=new_fr)
            res += encode({**obj, "choices": [c]})
        return bytes(res)

    def _settle(self) -> bytes:
        """End of the reply without a finish_reason chunk seen yet."""
        outs: list[Out] = []
        if not self._finished:
            self._finished = True
            outs = self._resolve(self._parser.finish())
        all_out = self._held_out + outs
        if all(isinstance(o, str) for o in all_out) and "".join(str(o) for o in all_out) == self._held_text:
            res = b"".join(self._held)
        else:
            res = self._emit(all_out)
        self._clear_held()
        return res

    # -- helpers --------------------------------------------------------------------------

    def _resolve(self, pieces: list[Piece]) -> list[Out]:
        out: list[Out] = []
        for p in pieces:
            if isinstance(p, CallOpen):
                self._call = ArgStream(self._schemas.get(p.name), max_typed=self._max_typed)
                out.append(ArgDelta(self._call.start(), id=self._new_id(), name=p.name))
                continue
            call = self._call
            if isinstance(p, ParamOpen | ParamText | ParamClose):
                assert call is not None, "parameter piece outside an opened call"
                if piece := _arg_piece(call, p):
                    out.append(ArgDelta(piece))
            elif isinstance(p, Call) and call is not None:
                self._counters.repaired += 1
                self._repaired += 1
                out.append(ArgDelta(call.end()))
                self._call = None
            else:
                if isinstance(p, Rejected) and p.opened:
                    self._call = None  # its arguments stay unclosed: never valid JSON, never run
                outs = resolve([p], self._schemas, self._counters, self._new_id)
                self._repaired += sum(isinstance(o, ToolCall) for o in outs)
                out += outs
        return out

    def _emit(self, outs: list[Out]) -> bytes:
        res = bytearray()
        pending: dict[str, Any] | None = None  # consecutive argument pieces of one call go out as one delta
        for o in outs:
            if isinstance(o, ArgDelta):
                if o.id is not None:
                    if pending is not None:
                        res += self._synth({"tool_calls": [pending]})
                    self._stream_index, self._next_index = self._next_index, self._next_index + 1
                    fn = {"name": o.name, "arguments": o.arguments}
                    pending = {"index": self._stream_index, "id": o.id, "type": "function", "function": fn}
                elif pending is not None:
                    pending["function"]["arguments"] += o.arguments
                else:
                    pending = {"index": self._stream_index, "function": {"arguments": o.arguments}}
                continue
            if pending is not None:
                res += self._synth({"tool_calls": [pending]})
                pending = None
            if isinstance(o, str):
                if o:
                    res += self._synth({"content": o})
            else:
                tc = {"index": self._next_index, **o.api()}
                self._next_index += 1
                res += self._synth({"tool_calls": [tc]})
        if pending is not None:
            res += self._synth({"tool_calls": [pending]})
        return bytes(res)

    def _synth(self, delta: dict[str, Any]) -> bytes:
        return encode({**self._template, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def _remap(self, tool_calls: Any) -> tuple[Any, bool]:
        """Upstream's own API tool_calls keep their order but move past the repaired ones."""
        if not isinstance(tool_calls, list):
            return None, False
        changed = False
        out = []
        for tc in tool_calls:
            if isinstance(tc, dict) and isinstance(tc.get("index", 0), int):
                i = tc.get("index", 0)
                if i not in self._index_map:
                    self._index_map[i] = self._next_index
                    self._next_index += 1
                if self._index_map[i] != i:
                    tc = {**tc, "index": self._index_map[i]}
                    changed = True
            out.append(tc)
        return out, changed

    def _clear_held(self) -> None:
        self._held, self._held_text, self._held_out = [], "", []
