"""The runner's stdout: compact record lines, bounded in total (kubelet rotates logs at ~10 MiB).

Progress records are rate-limited, event records are capped by count and bytes (the cap is
announced once, and the final count of suppressed events is announced before the result),
the single result record is always printed.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from buildstudio.protocol import records

MAX_EVENT_MESSAGE = 512


def one_line(text: str, limit: int = MAX_EVENT_MESSAGE) -> str:
    """A single bounded line (pure)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RecordWriter:
    def __init__(
        self,
        *,
        max_events: int,
        max_bytes: int,
        progress_interval: float,
        stream: BinaryIO | None = None,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.progress_interval = progress_interval
        self.stream: BinaryIO = stream if stream is not None else sys.stdout.buffer
        self.bytes_written = 0
        self.events_written = 0
        self.events_suppressed = 0
        self._last_progress: float | None = None
        self._capped = False

    def _write(self, rec: records.ProgressRecord | records.EventRecord | records.ResultRecord) -> None:
        data = (records.dump(rec) + "\n").encode("utf-8")
        self.stream.write(data)
        self.stream.flush()
        self.bytes_written += len(data)

    def _room(self, reserve: int) -> bool:
        # Keep room for the result record (diff excerpt + summary) whatever happened before.
        return self.bytes_written + reserve < self.max_bytes

    def progress_due(self, now: float) -> bool:
        return self._last_progress is None or now - self._last_progress >= self.progress_interval

    def progress(self, rec: records.ProgressRecord, now: float, *, force: bool = False) -> bool:
        if not (self.progress_due(now) or force) or not self._room(256 * 1024):
            return False
        self._last_progress = now
        self._write(rec)
        return True

    def event(self, rec: records.EventRecord) -> bool:
        if self.events_written >= self.max_events or not self._room(256 * 1024):
            self.events_suppressed += 1
            if not self._capped:
                self._capped = True
                self._write(
                    records.EventRecord(
                        type="watchdog",
                        message=f"event output capped after {self.events_written} events "
                        f"({self.bytes_written} bytes); the rest are counted, not printed",
                        ts=rec.ts,
                    )
                )
            return False
        rec.message = one_line(rec.message)
        self._write(rec)
        self.events_written += 1
        return True

    def result(self, rec: records.ResultRecord) -> None:
        if self.events_suppressed:
            self._write(
                records.EventRecord(
                    type="watchdog",
                    message=f"{self.events_suppressed} event records not printed "
                    f"(cap {self.max_events} events / {self.max_bytes} bytes)",
                )
            )
        self._write(rec)
