"""ideate / plan / review inside the sandbox: one chat completion, no repository, no opencode.

The operator runs every phase in the same sandbox pod and result channel, so a text phase
gets the same isolation (egress only to the model service), timeouts, restart safety and
record protocol as a build; only the work differs.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

from buildstudio.protocol import records
from buildstudio.protocol.spec import RunnerSpec
from buildstudio.sandbox.runner.output import RecordWriter

if TYPE_CHECKING:
    from buildstudio.core.source import ReviewSource


def review_source(spec: RunnerSpec) -> ReviewSource | None:
    from buildstudio.core.source import ReviewSource

    r = spec.review
    if r is None:
        return None
    return ReviewSource(
        dispatch=r.source,
        diff=r.diff,
        diff_stat=records.DiffStat(files=r.files, additions=r.additions, deletions=r.deletions),
        diff_bytes=r.diff_bytes,
        diff_truncated=r.diff_truncated,
        final_text=r.final_text,
        sha256=r.sha256,
    )


async def run_text(spec: RunnerSpec, writer: RecordWriter) -> records.ResultRecord:
    """Run the phase; print its events and the one result record. SIGTERM cancels (Cancelled)."""
    from buildstudio.adapters.modelservice.textrun import run_phase

    loop = asyncio.get_running_loop()
    now = loop.time()
    writer.progress(
        records.ProgressRecord(stage="running", message=f"{spec.phase}: asking {spec.model}"), now, force=True
    )
    api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    task = asyncio.ensure_future(
        run_phase(
            spec.phase,
            spec.prompt,
            base_url=spec.base_url,
            model=spec.model,
            context=spec.context_limit,
            api_key=api_key,
            source=review_source(spec),
            timeout=spec.timeouts.run_seconds,
            idle_timeout=spec.timeouts.idle_seconds,
            review_name="",
        )
    )
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        run = await task
    except asyncio.CancelledError:
        result = records.ResultRecord(
            outcome=records.Outcome.CANCELLED, message=f"{spec.phase} cancelled", phase=spec.phase, replay=spec.replay
        )
        writer.result(result)
        return result
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    for ev in run.events:
        writer.event(ev)
    review = None
    if run.review is not None:
        review = records.ReviewRecord(
            source=run.review.source, verdict=run.review.verdict.value, diff_sha256=run.review.diff_sha256
        )
    result = run.record.model_copy(update={"phase": spec.phase, "review": review, "replay": spec.replay})
    writer.result(result)
    return result
