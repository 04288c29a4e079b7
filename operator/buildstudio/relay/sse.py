"""Server-sent-events framing (pure): split a byte stream into events, keeping each event's bytes.

Keeping the raw bytes lets the relay forward untouched events exactly as the server sent them.
Events end at a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    raw: bytes  # the whole event, terminator included
    data: str | None  # the joined ``data:`` lines, None when the event has none (comments, keep-alives)


def event_data(raw: bytes) -> str | None:
    lines: list[str] = []
    for line in _LINE.split(raw):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
    return "\n".join(lines) if lines else None


MAX_EVENT = 16 * 1024 * 1024  # an "event" that never ends is not SSE: pass it on raw


class SSEDecoder:
    """Feed bytes as they arrive; get complete events."""

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes at the start of _buf already searched for an event end
        self._max = max_event

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        events: list[Event] = []
        start = 0
        # Only new bytes are searched (re-searching the held event per chunk is quadratic); an
        # end (at most 4 bytes) may straddle the previous chunk's last 3 bytes.
        pos = max(self._scanned - 3, 0)
        while (m := _END.search(buf, pos)) is not None:
            raw = bytes(buf[start : m.end()])
            events.append(Event(raw, event_data(raw)))
            start = pos = m.end()
        del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._max:
            events.append(Event(bytes(buf), None))
            buf.clear()
            self._scanned = 0
        return events

    def close(self) -> bytes:
        """Bytes left over at the end of the stream (an unterminated event)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest


def encode(obj: Any) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
