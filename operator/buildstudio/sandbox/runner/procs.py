"""Ending everything a run started, without privileges.

Commands of opencode's ``bash`` tool run in their own session and survive opencode's death
(contract §2 Cancelling), so killing a process group is not enough. The runner makes itself a
*child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): every orphaned descendant is re-parented
to the runner instead of PID 1, so "all descendants of the runner" (a walk of /proc by parent
PID) is exactly what the run started, even after setsid/double forks. Stopping = SIGKILL that
set until it is empty, then reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parse_stat(text: str) -> tuple[int, str] | None:
    """(ppid, state) from the text of /proc/<pid>/stat; the command name may hold spaces and ')'."""
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 2:
        return None
    try:
        return int(fields[1]), fields[0]
    except ValueError:
        return None


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """pid → (ppid, state) for every live process (racy by nature: callers loop)."""
    table: dict[int, tuple[int, str]] = {}
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parsed = parse_stat((entry / "stat").read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue  # exited meanwhile
            if parsed is not None:
                table[int(entry.name)] = parsed
    return table


def descendants(root: int, table: Mapping[int, tuple[int, str]]) -> set[int]:
    """All processes below ``root`` in the parent tree (pure)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def living(pids: Iterable[int], table: Mapping[int, tuple[int, str]]) -> set[int]:
    """Those not yet zombies (a zombie only needs reaping)."""
    return {p for p in pids if p in table and table[p][1] not in ("Z", "X")}


def reap(pids: Iterable[int], keep: frozenset[int] = frozenset()) -> None:
    """Collect exit statuses of our zombie children, never touching ``keep`` (asyncio waits on those)."""
    for pid in pids:
        if pid in keep:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def kill_descendants(
    *, root: int | None = None, keep_waiting: frozenset[int] = frozenset(), timeout: float = 5.0
) -> set[int]:
    """SIGKILL every descendant of ``root`` (default: this process) until none is left.

    Returns the PIDs still alive at the deadline (empty on success). Loops because a process
    may fork while we kill, and grandchildren re-parent to us only once their parent died.
    """
    root = os.getpid() if root is None else root
    deadline = time.monotonic() + timeout
    while True:
        table = process_table()
        below = descendants(root, table)
        alive = living(below, table)
        reap(below - alive, keep_waiting)
        if not alive:
            return set()
        if time.monotonic() >= deadline:
            return alive
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
