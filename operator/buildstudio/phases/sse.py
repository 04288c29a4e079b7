"""Incremental server-sent-events parser (pure): the ``data`` of each complete event, linear in the bytes fed.

Each byte is scanned once (a decoder that re-searches its buffer per chunk costs seconds of
event-loop time on a multi-megabyte event); an event, or a line, longer than ``max_event``
bytes raises ``EventTooLarge`` instead of growing without bound. Lines end at LF or CRLF; only
``data:`` fields matter here (``event:``, ``id:``, ``retry:`` and ``:`` comments are skipped).
An event still open when the stream ends is dropped, as the SSE specification says.
"""

from __future__ import annotations


class EventTooLarge(ValueError):
    pass


class SSEParser:
    def __init__(self, max_event: int) -> None:
        self._max = max_event
        self._line = bytearray()  # the current, unterminated line
        self._data: list[bytes] = []  # data fields of the current event
        self._size = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The data payloads of the events ``chunk`` completes (multi-line data joined with "\\n")."""
        out: list[str] = []
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            self._line += chunk[start:newline]
            start = newline + 1
            line = bytes(self._line[:-1] if self._line.endswith(b"\r") else self._line)
            self._line.clear()
            self._take(line, out)
        self._line += chunk[start:]
        if self._size + len(self._line) > self._max:
            raise EventTooLarge(f"an SSE event exceeded {self._max} bytes")
        return out

    def _take(self, line: bytes, out: list[str]) -> None:
        if not line:  # a blank line ends the event
            if self._data:
                out.append(b"\n".join(self._data).decode("utf-8", "replace"))
            self._data, self._size = [], 0
        elif line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            self._data.append(value)
            self._size += len(value)
