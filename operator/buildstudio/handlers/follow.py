"""The log of one attempt: its progress followed while the pod runs, its result read once from
the result channel's whole log. The folding is ``core.status``; this module only reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from buildstudio.adapters.kube import KubeError
from buildstudio.core import machine as m
from buildstudio.core import pacing
from buildstudio.core.status import LiveState, fold_line, fold_log, verify_patch, with_followed, with_result_log
from buildstudio.handlers.context import OperatorContext

Logger = logging.Logger | logging.LoggerAdapter[Any]


class LogFollower:
    """Follows one attempt's progress into a ``LiveState`` (re-attaching from the start on
    errors), and reads the result once from the result container's whole log.

    ``alarm`` is the daemon's wake-up: the stream's end always rings it; a record that should be
    shown (``pacing.wakes_daemon``) rings it only while ``listening``, else it stays ``pending``
    for the daemon's next look (while the progress throttle holds, a look would write nothing)."""

    def __init__(
        self,
        ctx: OperatorContext,
        namespace: str,
        pod: str,
        logger: Logger,
        *,
        container: str,
        alarm: asyncio.Event | None = None,
    ) -> None:
        self.ctx = ctx
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.logger = logger
        self.live = LiveState()
        self.ended = False
        self.result_read = False
        self.alarm = alarm if alarm is not None else asyncio.Event()
        self.listening = True
        self.pending = False  # a record to show arrived since the daemon's last look
        self.task = asyncio.create_task(self._run(), name=f"follow {namespace}/{pod}/{container}")

    async def _run(self) -> None:
        keep = self.ctx.settings.recent_events
        while not self.ended:
            live = LiveState()
            try:
                async for line in self.ctx.kube.follow_log(self.namespace, self.pod, container=self.container):
                    # Result records are never taken from here: only the result channel's finished log counts.
                    progress = live.progress
                    live = fold_line(live, line, keep_events=keep, accept_results=False)
                    self.live = with_followed(self.live, live)
                    if pacing.wakes_daemon(live.lines, progress=live.progress is not progress):
                        self.pending = True
                        if self.listening:
                            self.alarm.set()
                self.ended = True
                self.alarm.set()
                return
            except TimeoutError:
                continue  # a silent stretch: re-attach (the log is re-read from its start)
            except KubeError as exc:
                if exc.status == 404 and await self.ctx.kube.get("Pod", self.pod, self.namespace) is None:
                    self.ended = True  # the pod is gone and so is its log
                    self.alarm.set()
                    return
            except Exception as exc:
                self.logger.debug("log stream of %s broke: %r; re-attaching", self.pod, exc)
            await asyncio.sleep(pacing.LOG_RETRY_SECONDS)

    async def read_result(self) -> bool:
        """Read the result container's whole log once (it has terminated); False when it could not be read."""
        try:
            text = await self.ctx.kube.read_log(self.namespace, self.pod, container=m.result_container(self.container))
        except KubeError as exc:
            self.logger.debug("reading the result log of %s failed: %r", self.pod, exc)
            return False
        keep = self.ctx.settings.recent_events
        got = fold_log(text, keep_events=keep)
        # The operator recomputes what it can: the patch's sha256 and size from its data.
        conflict = await asyncio.to_thread(verify_patch, got.result.patch) if got.result is not None else ""
        whole = self.container in m.RESULT_CONTAINERS
        self.live = with_result_log(self.live, got, whole_log=whole, conflict=conflict, keep_events=keep)
        self.result_read = True
        self.ended = True
        self.task.cancel()
        return True

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
