"""Incremental parser for qwen3-coder's text-format tool calls (pure; no IO).

Shapes accepted (``NAME`` must be one of the request's tools, else the markup stays text):

    <tool_call>
    <function=NAME>
    <parameter=P>
    VALUE
    </parameter>
    </function>
    </tool_call>

- the opening ``<tool_call>`` may be missing (Ollama/vLLM leak the bare ``<function=``),
- ``</tool_call>`` may be missing; ``</function>`` may be missing at the end of the reply,
- a ``</parameter>`` may be missing when the next ``<parameter=`` / ``</function>`` follows,
- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes/Qwen2.5 JSON form),
- ``<function=NAME>{"arg": ...}</function>`` (the Llama 3 JSON form).

A VALUE runs to the first ``</parameter>``, so code holding ``<``, ``>`` and ``</`` survives.
Text outside calls is released as soon as it cannot be the start of a call; only a possible
partial marker (``<tool_c``, ``<function=wri``) or an open call is held. Output does not
depend on how the reply is split into chunks.

With ``stream=True`` an XML-form call is also reported while it arrives: ``CallOpen`` once the
function name AND the first ``<parameter=NAME>`` are seen (before that, markup that turns out
not to be a call is still plain text), then ``ParamOpen``/``ParamText``/``ParamClose`` as the
values come, then the ``Call`` (or a ``Rejected`` with ``opened=True``). Held input is linear:
consumed markup and value text go to lists, only an undecided tail stays in the string buffer.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
FUNC = "<function="
FUNC_END = "</function>"
PARAM = "<parameter="
PARAM_END = "</parameter>"

MAX_NAME = 256  # a tool or parameter name longer than this is not a name
MAX_GAP = 4096  # whitespace tolerated between markers of one call
DEFAULT_MAX_CALL_CHARS = 8 * 1024 * 1024  # an open call larger than this is given up as text
_VALUE_TERMS = (PARAM_END, PARAM, FUNC_END, CLOSE)
_LONGEST_TERM = max(len(t) for t in _VALUE_TERMS)


class Reason(enum.StrEnum):
    """Why markup that looked like a call was left as text."""

    UNKNOWN_TOOL = "unknownTool"
    MALFORMED = "malformed"
    UNTERMINATED = "unterminated"
    TOO_LARGE = "tooLarge"
    BAD_JSON = "badJson"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Call:
    """One parsed call. ``params`` holds raw text values (XML form); ``json_args`` the JSON form."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    json_args: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rejected:
    """Call-like markup given back as text, with the reason it was not a call.

    ``opened``: a ``CallOpen`` for this markup went out first (stream mode).
    """

    text: str
    reason: Reason
    opened: bool = False


@dataclass(frozen=True)
class CallOpen:
    """Stream mode: a call to ``name`` has begun (its first parameter name is known)."""

    name: str


@dataclass(frozen=True)
class ParamOpen:
    name: str


@dataclass(frozen=True)
class ParamText:
    """Raw value text, in order; the parameter's pieces join to its raw value."""

    text: str


@dataclass(frozen=True)
class ParamClose:
    pass


Piece = Text | Call | Rejected | CallOpen | ParamOpen | ParamText | ParamClose


class _State(enum.Enum):
    TEXT = enum.auto()
    OPENED = enum.auto()  # after <tool_call>
    NAME = enum.auto()  # after <function=
    BODY = enum.auto()  # between parameters
    PNAME = enum.auto()  # after <parameter=
    VALUE = enum.auto()  # inside a parameter value
    CLOSING = enum.auto()  # after </function>, looking for </tool_call>
    JSON = enum.auto()  # after <tool_call>{
    FUNC_JSON = enum.auto()  # after <function=NAME>{


def _is_partial(buf: str, at: int, markers: tuple[str, ...]) -> bool:
    """True when buf[at:] is a proper prefix of one of the markers (need more input to decide)."""
    tail = buf[at:]
    return any(len(tail) < len(m) and m.startswith(tail) for m in markers)


def _value_safe_end(buf: str, start: int) -> int:
    """First index >= start where a value terminator could begin in data still to come."""
    for i in range(max(start, len(buf) - _LONGEST_TERM + 1), len(buf)):
        if buf[i] == "<" and _is_partial(buf, i, _VALUE_TERMS):
            return i
    return len(buf)


def _skip_ws(buf: str, at: int) -> int:
    n = len(buf)
    while at < n and buf[at].isspace():
        at += 1
    return at


class ToolCallParser:
    """Feed reply text in any chunking; get back text, calls and rejected markup, in order."""

    def __init__(
        self, tool_names: Collection[str], *, max_call_chars: int = DEFAULT_MAX_CALL_CHARS, stream: bool = False
    ) -> None:
        self._tools = frozenset(tool_names)
        self._max = max_call_chars
        self._stream = stream
        self._buf = ""  # unreleased input: a partial marker in TEXT, else the open call's undecided tail
        self._raw: list[str] = []  # the open call's markup before _buf (given back whole if rejected)
        self._raw_len = 0
        self._acc: list[str] = []  # the current value's (or JSON body's) text before _buf[_pos:]
        self._opened = False  # stream mode: CallOpen sent for the open call
        self._pos = 0  # parse cursor in _buf
        self._state = _State.TEXT
        self._after_call = False  # drop whitespace that directly follows a call
        self._name = ""
        self._pname = ""
        self._params: dict[str, str] = {}
        self._json_args: dict[str, Any] | None = None
        self._scan = 0  # where to resume searching for a terminator (avoids rescanning big values)
        self._done = False

    @property
    def holding(self) -> bool:
        """Some input is held back undecided."""
        return bool(self._buf) or bool(self._raw)

    @property
    def in_call(self) -> bool:
        """An opened call is being collected (not just a partial marker)."""
        return self._state is not _State.TEXT

    @property
    def held_chars(self) -> int:
        return self._raw_len + len(self._buf)

    def feed(self, chunk: str) -> list[Piece]:
        if self._done:
            raise RuntimeError("feed() after finish()")
        out: list[Piece] = []
        if chunk:
            self._buf += chunk
            self._run(out, final=False)
        return _merge(out)

    def finish(self) -> list[Piece]:
        """End of reply: decide everything still held."""
        out: list[Piece] = []
        if not self._done:
            self._done = True
            self._run(out, final=True)
        return _merge(out)

    # -- machinery -------------------------------------------------------------------------

    def _run(self, out: list[Piece], *, final: bool) -> None:
        while self._step(out, final):
            pass
        self._compact(out)

    def _compact(self, out: list[Piece]) -> None:
        """Move decided input out of the string buffer, so held input costs O(1) per new character."""
        if self._state is _State.TEXT:
            return
        cut = self._pos
        if self._state in (_State.VALUE, _State.JSON, _State.FUNC_JSON) and self._scan > self._pos:
            cut = self._scan  # value/JSON text before the scan point holds no terminator
            part = self._buf[self._pos : cut]
            self._acc.append(part)
            if self._stream and self._state is _State.VALUE:
                out.append(ParamText(part))
        if cut:
            self._raw.append(self._buf[:cut])
            self._raw_len += cut
            self._buf = self._buf[cut:]
            self._scan = max(self._scan - cut, 0)
            self._pos = 0

    def _acc_text(self, end: int) -> str:
        text = "".join(self._acc) + self._buf[self._pos : end]
        self._acc = []
        return text

    def _release(self, out: list[Piece], upto: int) -> None:
        if upto > 0:
            out.append(Text(self._buf[:upto]))
            self._buf = self._buf[upto:]

    def _reject(self, out: list[Piece], upto: int, reason: Reason) -> None:
        """Give back the call's markup up to buf[:upto] as text and rescan the rest as text."""
        out.append(Rejected("".join(self._raw) + self._buf[:upto], reason, self._opened))
        self._buf = self._buf[upto:]
        self._reset_to_text()

    def _reset_to_text(self) -> None:
        self._state = _State.TEXT
        self._pos = 0
        self._scan = 0
        self._name = ""
        self._pname = ""
        self._params = {}
        self._json_args = None
        self._raw, self._raw_len, self._acc = [], 0, []
        self._opened = False

    def _complete(self, out: list[Piece], upto: int, call: Call) -> None:
        out.append(call)
        self._buf = self._buf[upto:]
        self._reset_to_text()
        self._after_call = True

    def _step(self, out: list[Piece], final: bool) -> bool:
        """Advance once; False when more input is needed (or all is consumed)."""
        if self._state is _State.TEXT:
            return self._text(out, final)
        if self._raw_len + len(self._buf) > self._max:
            self._reject(out, len(self._buf), Reason.TOO_LARGE)
            return True
        return _HANDLERS[self._state](self, out, final)

    def _text(self, out: list[Piece], final: bool) -> bool:
        buf = self._buf
        if self._after_call:
            i = _skip_ws(buf, 0)
            if i == len(buf):
                self._buf = ""  # whitespace right after a call is dropped
                return False
            self._buf = buf = buf[i:]
            self._after_call = False
        i = buf.find("<")
        if i < 0:
            self._release(out, len(buf))
            return False
        if buf.startswith(OPEN, i):
            self._release(out, i)
            self._state, self._pos = _State.OPENED, len(OPEN)
            return True
        if buf.startswith(FUNC, i):
            self._release(out, i)
            self._state, self._pos = _State.NAME, len(FUNC)
            return True
        if not final and _is_partial(buf, i, (OPEN, FUNC)):
            self._release(out, i)
            return False
        self._release(out, i + 1)
        return True

    def _opened_(self, out: list[Piece], final: bool) -> bool:
        buf = self._buf
        j = _skip_ws(buf, self._pos)
        if j - self._pos > MAX_GAP:
            self._reject(out, self._pos, Reason.MALFORMED)
        elif buf.startswith(FUNC, j):
            self._state, self._pos = _State.NAME, j + len(FUNC)
        elif buf.startswith("{", j):
            self._state, self._pos, self._scan = _State.JSON, j, j
        elif j == len(buf) or (not final and _is_partial(buf, j, (FUNC,))):
            if not final:
                return False
            self._reject(out, len(buf), Reason.UNTERMINATED)
        else:
            self._reject(out, self._pos, Reason.MALFORMED)
        return True

    def _name_(self, out: list[Piece], final: bool) -> bool:
        """After ``<function=`` or ``<parameter=``: a name up to ``>``."""
        buf = self._buf
        j = buf.find(">", self._pos)
        name = buf[self._pos : j if j >= 0 else len(buf)]
        if len(name) > MAX_NAME or any(c.isspace() or c == "<" for c in name) or (j >= 0 and not name):
            self._reject(out, self._pos, Reason.MALFORMED)
            return True
        if j < 0:
            if not final:
                return False
            self._reject(out, len(buf), Reason.UNTERMINATED)
            return True
        if self._state is _State.NAME:
            if name not in self._tools:
                self._reject(out, j + 1, Reason.UNKNOWN_TOOL)
                return True
            self._name, self._state = name, _State.BODY
        else:
            self._pname, self._state, self._scan = name, _State.VALUE, j + 1
            if self._stream:
                if not self._opened:
                    self._opened = True
                    out.append(CallOpen(self._name))
                out.append(ParamOpen(name))
        self._pos = j + 1
        return True

    def _body(self, out: list[Piece], final: bool) -> bool:
        buf = self._buf
        j = _skip_ws(buf, self._pos)
        if j - self._pos > MAX_GAP:
            self._reject(out, self._pos, Reason.MALFORMED)
        elif buf.startswith(PARAM, j):
            self._state, self._pos = _State.PNAME, j + len(PARAM)
        elif buf.startswith("{", j) and not self._params:
            self._state, self._pos, self._scan = _State.FUNC_JSON, j, j
        elif buf.startswith(FUNC_END, j):
            self._state, self._pos = _State.CLOSING, j + len(FUNC_END)
        elif buf.startswith(CLOSE, j):  # </function> forgotten
            self._complete(out, j + len(CLOSE), self._call())
        elif j == len(buf):
            if not final:
                return False
            self._complete(out, j, self._call())  # reply ended after a whole parameter
        elif not final and _is_partial(buf, j, (PARAM, FUNC_END, CLOSE)):
            return False
        else:
            self._reject(out, self._pos, Reason.MALFORMED)
        return True

    def _value(self, out: list[Piece], final: bool) -> bool:
        buf = self._buf
        k, term = self._find_first(buf, _VALUE_TERMS)
        if k < 0:
            if not final:
                self._scan = _value_safe_end(buf, max(self._scan, self._pos))
                return False
            self._reject(out, len(buf), Reason.UNTERMINATED)  # cut off mid-value: never guess the rest
            return True
        if self._stream:
            if k > self._pos:
                out.append(ParamText(buf[self._pos : k]))
            out.append(ParamClose())
        self._params[self._pname] = self._acc_text(k)
        self._state = _State.BODY
        self._pos = k + len(PARAM_END) if term == PARAM_END else k  # else: </parameter> forgotten
        return True

    def _closing(self, out: list[Piece], final: bool) -> bool:
        buf = self._buf
        j = _skip_ws(buf, self._pos)
        if buf.startswith(CLOSE, j):
            self._complete(out, j + len(CLOSE), self._call())
            return True
        if not final and j - self._pos <= MAX_GAP and (j == len(buf) or _is_partial(buf, j, (CLOSE,))):
            return False
        self._complete(out, self._pos, self._call())
        return True

    def _json(self, out: list[Piece], final: bool) -> bool:
        """``<tool_call>{...}</tool_call>``: everything up to the close tag is one JSON object."""
        buf = self._buf
        k = buf.find(CLOSE, self._scan)
        if k < 0 and not final:
            self._scan = max(self._scan, len(buf) - len(CLOSE) + 1)
            return False
        upto = k + len(CLOSE) if k >= 0 else len(buf)
        parsed = _json_call(self._acc_text(k if k >= 0 else len(buf)))
        if parsed is None:
            self._reject(out, upto, Reason.BAD_JSON if k >= 0 else Reason.UNTERMINATED)
        elif parsed.name not in self._tools:
            self._reject(out, upto, Reason.UNKNOWN_TOOL)
        else:
            self._complete(out, upto, parsed)
        return True

    def _func_json(self, out: list[Piece], final: bool) -> bool:
        """``<function=NAME>{...}</function>``: the arguments are one JSON object."""
        buf = self._buf
        k = buf.find(FUNC_END, self._scan)
        if k < 0 and not final:
            self._scan = max(self._scan, len(buf) - len(FUNC_END) + 1)
            return False
        try:
            args = json.loads(self._acc_text(k if k >= 0 else len(buf)))
        except ValueError:
            args = None
        if not isinstance(args, dict):
            reason = Reason.BAD_JSON if k >= 0 else Reason.UNTERMINATED
            self._reject(out, k + len(FUNC_END) if k >= 0 else len(buf), reason)
            return True
        self._json_args = args
        if k < 0:
            self._complete(out, len(buf), self._call())
        else:
            self._state, self._pos = _State.CLOSING, k + len(FUNC_END)
        return True

    def _find_first(self, buf: str, terms: tuple[str, ...]) -> tuple[int, str]:
        best, which = -1, ""
        for t in terms:
            k = buf.find(t, self._scan)
            if k >= 0 and (best < 0 or k < best):
                best, which = k, t
        return best, which

    def _call(self) -> Call:
        if self._json_args is not None:
            return Call(self._name, json_args=self._json_args)
        return Call(self._name, dict(self._params))


def _json_call(raw: str) -> Call | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(obj["name"], json_args=args)


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join adjacent Text pieces (callers compare and emit fewer deltas)."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + p.text)
        elif not (isinstance(p, Text) and not p.text):
            out.append(p)
    return out


def parse_all(text: str, tool_names: Collection[str], **kw: Any) -> list[Piece]:
    """Whole-reply convenience (non-streaming replies, tests)."""
    p = ToolCallParser(tool_names, **kw)
    return _merge(p.feed(text) + p.finish())


_HANDLERS = {
    _State.OPENED: ToolCallParser._opened_,
    _State.NAME: ToolCallParser._name_,
    _State.PNAME: ToolCallParser._name_,
    _State.BODY: ToolCallParser._body,
    _State.VALUE: ToolCallParser._value,
    _State.CLOSING: ToolCallParser._closing,
    _State.JSON: ToolCallParser._json,
    _State.FUNC_JSON: ToolCallParser._func_json,
}
