"""Server-sent events (pure): one incremental decoder, linear in the bytes fed, and the encoder.

Every reader of an SSE stream uses ``SSEDecoder``: the model-service client wants the ``data``
of each event (``feed_data``); the tool-call repair relay wants each event with its exact bytes
(``feed`` → ``Event(raw, data)``), so that what it does not rewrite goes downstream byte for
byte, comments and keep-alives included.

Framing: lines end at LF, CRLF or CR (a CRLF split between two chunks is one line end); a blank
line ends the event when anything precedes it. Only ``data:`` fields are decoded ("data:x" and
"data: x" alike; several are joined with "\\n"); ``event:``, ``id:``, ``retry:`` and ``:``
comments stay in the raw bytes only. An event still open when the stream ends is not an event:
``close`` hands its bytes back.

Each byte is scanned once (a decoder that re-searches its buffer per chunk costs seconds of
event-loop time on a multi-megabyte event). An event, or a line, that grows past ``max_event``
bytes without ending raises ``EventTooLarge`` or, with ``pass_oversized`` (the relay), comes
back whole as one ``Event(raw, None)``: a stream that is not SSE is passed on, not held for ever.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_EVENT = 16 * 1024 * 1024
DONE = b"data: [DONE]\n\n"  # the OpenAI stream's last event
_EOL = re.compile(rb"\r\n|\r|\n")


class EventTooLarge(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    raw: bytes  # the whole event, its blank line included
    data: str | None  # the joined ``data:`` fields; None when the event has none (comments, keep-alives)


class SSEDecoder:
    """Feed bytes as they arrive; get the events they complete."""

    def __init__(self, max_event: int = MAX_EVENT, *, pass_oversized: bool = False) -> None:
        self._max = max_event
        self._pass_oversized = pass_oversized
        self._raw = bytearray()  # bytes of the open event that came in earlier chunks
        self._line = bytearray()  # bytes of the open line that came in earlier chunks
        self._data: list[bytes] = []  # data fields of the open event
        self._cr = False  # the last chunk ended in CR: an LF first in the next is that line end's

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        start = 0  # where the open event begins in ``chunk`` (its earlier bytes are in _raw)
        pos = 0  # where the open line begins in ``chunk``
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                pos = 1
        for m in _EOL.finditer(chunk, pos):
            end = m.start()
            if self._line:
                self._line += chunk[pos:end]
                line = bytes(self._line)
                self._line.clear()
            else:
                line = chunk[pos:end]
            pos = m.end()
            if line:
                if line.startswith(b"data:"):
                    self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif end > start or self._raw:  # a blank line after something: the event ends
                raw = bytes(self._raw) + chunk[start:pos] if self._raw else chunk[start:pos]
                data = b"\n".join(self._data).decode("utf-8", "replace") if self._data else None
                events.append(Event(raw, data))
                self._raw.clear()
                self._data = []
                start = pos
        if pos == len(chunk) and chunk[-1:] == b"\r":
            self._cr = True
        self._line += chunk[pos:]
        self._raw += chunk[start:]
        if len(self._raw) > self._max:
            if not self._pass_oversized:
                raise EventTooLarge(f"an SSE event exceeded {self._max} bytes")
            events.append(Event(bytes(self._raw), None))
            self._reset()
        return events

    def feed_data(self, chunk: bytes) -> list[str]:
        """The data payloads of the events ``chunk`` completes (events without data left out)."""
        return [e.data for e in self.feed(chunk) if e.data is not None]

    def close(self) -> bytes:
        """The end of the stream: the bytes of an event it left open (not an event)."""
        rest = bytes(self._raw)
        self._reset()
        return rest

    def _reset(self) -> None:
        self._raw.clear()
        self._line.clear()
        self._data = []


def encode(obj: Any) -> bytes:
    """One ``data:`` event carrying a JSON value (compact, UTF-8)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
