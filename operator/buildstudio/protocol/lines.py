"""Split a byte stream arriving in arbitrary chunks into lines, each line capped (pure).

The one line splitter of the package (opencode's event stream, pod logs, the runner's stdout in
`run --local`). Each byte is scanned for a newline once, in the chunk it arrived in; the
unfinished line is held in a `bytearray` and never grows past the cap: the rest of an over-long
line is skipped up to its newline, and the line counts once in `overlong`. A caller that needs
to see where a line was dropped passes `overlong_marker`, emitted in the line's place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

DEFAULT_MAX_LINE_BYTES = 1 << 20
# Not JSON, so a record parser counts it as one malformed line.
OVERLONG_MARKER = b"# a line over the size cap was dropped here"


class LineSplitter:
    """Lines without their newline; a line over `max_line_bytes` is dropped and counted."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, overlong_marker: bytes | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.overlong_marker = overlong_marker
        self.overlong = 0
        self._buf = bytearray()  # the unfinished line, at most max_line_bytes
        self._discarding = False  # inside an over-long line: skip to its newline

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines `chunk` completes."""
        if not chunk:
            return []
        limit = self.max_line_bytes
        lines = chunk.split(b"\n")  # only the new bytes are searched
        tail = lines.pop()  # after the last newline (maybe empty)
        out: list[bytes] = []
        if lines:
            start = 0
            if self._discarding:  # this newline ends a line dropped (and counted) already
                self._discarding = False
                start = 1
            elif self._buf:
                start = 1
                if len(self._buf) + len(lines[0]) > limit:
                    self._drop(out)
                else:
                    self._buf += lines[0]
                    out.append(bytes(self._buf))
                self._buf.clear()
            rest = lines[start:] if start else lines
            # Fast path: one C-level pass proves every line short (the usual case).
            if rest and max(map(len, rest)) > limit:
                for line in rest:
                    if len(line) <= limit:
                        out.append(line)
                    else:
                        self._drop(out)
            else:
                out += rest
        if tail and not self._discarding:
            if len(self._buf) + len(tail) > limit:
                self._buf.clear()
                self._discarding = True
                self._drop(out)
            else:
                self._buf += tail
        return out

    def close(self) -> list[bytes]:
        """End of stream: the last line when it had no newline."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._discarding = False
        return [rest] if rest else []

    def _drop(self, out: list[bytes]) -> None:
        self.overlong += 1
        if self.overlong_marker is not None:
            out.append(self.overlong_marker)


async def aiter_lines(
    read: Callable[[int], Awaitable[bytes]], splitter: LineSplitter, chunk_size: int = 1 << 16
) -> AsyncIterator[bytes]:
    """Lines of an async byte source (`asyncio.StreamReader.read`) until it returns b""."""
    while chunk := await read(chunk_size):
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.close():
        yield line
