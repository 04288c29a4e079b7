"""The text phases' chat messages: system prompts, the prompt verbatim, the review's bounded diff."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re

import pytest

from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.core.prompts import (
    CHARS_PER_TOKEN,
    DEFAULT_CONTEXT,
    SYSTEM_PROMPTS,
    budget_for,
    fence_for,
    messages_for,
    text_phase,
)
from buildstudio.core.source import ReviewSource, decode_patch, from_status
from buildstudio.protocol.records import DiffStat

PROMPT = "Add a `subtract` function.\n\tKeep \"quotes\", 'these', $(not a shell) and ünïcødé ✓  \n"


def make_diff(files: int) -> str:
    return "".join(
        f"diff --git a/f{i}.py b/f{i}.py\n--- a/f{i}.py\n+++ b/f{i}.py\n@@ -1 +1,2 @@\n x = {i}\n+y = {i} + 1\n"
        for i in range(files)
    )


def source(diff: str, **kw: object) -> ReviewSource:
    return ReviewSource(dispatch="build-1", diff=diff, diff_stat=DiffStat(files=3, additions=5, deletions=2),
                        final_text="I added subtract.", **kw)  # type: ignore[arg-type]


def user_text(phase: str, prompt: str, context: int | None, src: ReviewSource | None = None) -> str:
    msgs = messages_for(text_phase(phase), prompt, budget=budget_for(context), source=src)
    assert [m["role"] for m in msgs] == ["system", "user"]
    return msgs[1]["content"]


def test_budget_takes_a_quarter_for_the_answer_within_bounds() -> None:
    b = budget_for(32768)
    assert (b.context, b.max_output_tokens) == (32768, 4096)
    assert b.input_chars == (32768 - 4096 - 256) * CHARS_PER_TOKEN
    small = budget_for(2048)
    assert small.max_output_tokens == 512 and small.input_chars == (2048 - 512 - 256) * CHARS_PER_TOKEN
    assert budget_for(None).context == DEFAULT_CONTEXT == budget_for(0).context
    assert budget_for(300).input_chars == 0  # tinier than the reserves: nothing but the prompt


@pytest.mark.parametrize("phase", ["ideate", "plan"])
def test_ideate_and_plan_send_the_prompt_verbatim(phase: str) -> None:
    msgs = messages_for(text_phase(phase), PROMPT, budget=budget_for(8192))
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPTS[phase]}  # type: ignore[index]
    assert msgs[1] == {"role": "user", "content": PROMPT}


@pytest.mark.parametrize("phase", ["build", "ship", "review "])
def test_only_text_phases_have_messages(phase: str) -> None:
    with pytest.raises(ValueError, match="not a text phase"):
        text_phase(phase)


def test_review_needs_a_source() -> None:
    with pytest.raises(ValueError, match="source"):
        messages_for("review", PROMPT, budget=budget_for(8192))


def test_review_asks_for_a_closing_verdict_line() -> None:
    system = SYSTEM_PROMPTS["review"]
    assert "VERDICT: APPROVE" in system and "VERDICT: REQUEST_CHANGES" in system
    assert system.rstrip().endswith("write nothing after it.")


def test_review_carries_stat_final_answer_whole_diff_and_prompt_last() -> None:
    diff = make_diff(3)
    text = user_text("review", PROMPT, 32768, source(diff))
    assert "dispatch build-1" in text
    digest = hashlib.sha256(diff.encode()).hexdigest()
    assert f"3 files changed, +5/-2; whole diff {len(diff)} bytes, sha256 {digest}" in text
    assert "## The agent's final answer\nI added subtract.\n" in text
    assert f"```diff\n{diff}```\n" in text
    assert "[diff truncated" not in text
    assert text.endswith("## Review request\n" + PROMPT)  # verbatim, last


def test_budget_truncation_keeps_the_head_of_the_diff_and_says_so() -> None:
    diff = make_diff(400)  # ≈ 32 KB
    context = 4096
    msgs = messages_for("review", PROMPT, budget=budget_for(context), source=source(diff))
    text = msgs[1]["content"]
    shown = text.split("```diff\n", 1)[1].split("```\n", 1)[0]
    assert 0 < len(shown) < len(diff)
    assert diff.startswith(shown) and shown.endswith("\n")  # the head, cut at a line
    m = re.search(r"\[diff truncated: the first (\d+) of (\d+) bytes are shown \((\d+) lines\)", text)
    assert m is not None, text[-400:]
    assert (int(m[1]), int(m[2]), int(m[3])) == (len(shown.encode()), len(diff.encode()), shown.count("\n"))
    assert sum(len(x["content"]) for x in msgs) <= budget_for(context).input_chars
    assert text.endswith(PROMPT)


def test_a_source_diff_already_cut_is_marked_even_when_it_fits() -> None:
    diff = make_diff(2)
    text = user_text("review", PROMPT, 32768, source(diff, diff_truncated=True, diff_bytes=90_000))
    assert f"```diff\n{diff}```\n" in text
    assert f"[diff truncated: the first {len(diff)} of 90000 bytes are shown" in text
    assert "sha256" not in text  # a prefix's digest would name another diff


def test_the_prompt_is_never_cut_the_diff_gives_way() -> None:
    huge = "explain " * 10_000  # 80 KB, far beyond an 8k context
    text = user_text("review", huge, 8192, source(make_diff(50)))
    assert text.endswith("## Review request\n" + huge)
    assert "[diff truncated: the first 0 of" in text


def test_final_answer_is_bounded_and_marked() -> None:
    src = ReviewSource(dispatch="b", diff=make_diff(1), final_text="word " * 20_000)
    text = user_text("review", "ok?", 8192, src)
    final = text.split("## The agent's final answer\n", 1)[1].split("\n\n## The diff", 1)[0]
    assert final.endswith("[final answer truncated]") and len(final) <= 4096


def test_no_diff_says_so() -> None:
    text = user_text("review", "ok?", 8192, ReviewSource(dispatch="b", diff=""))
    assert "(the source dispatch produced no diff)" in text and "```" not in text


def test_fence_outgrows_backticks_in_the_diff() -> None:
    diff = "+```python\n+x = 1\n+```\n+````\n"
    assert fence_for(diff) == "`````"
    assert "`````diff\n" in user_text("review", "ok?", 8192, ReviewSource(dispatch="b", diff=diff))


def test_decode_patch_roundtrip_and_bounds() -> None:
    patch = make_diff(20)
    b64 = base64.b64encode(gzip.compress(patch.encode())).decode()
    assert decode_patch(b64) == (patch, False)
    assert decode_patch(b64, max_bytes=100) == (patch[:100], True)
    cut = base64.b64encode(gzip.compress(patch.encode())[:-20]).decode()  # trailer lost: a capped patch
    text, was_cut = decode_patch(cut)
    assert was_cut and patch.startswith(text)
    assert decode_patch("") == ("", False)
    with pytest.raises(ValueError, match="base64"):
        decode_patch("not base64!")
    with pytest.raises(ValueError, match="gzip"):
        decode_patch(base64.b64encode(b"plain text").decode())


def test_from_status_prefers_the_whole_patch() -> None:
    status = BuildDispatchStatus.model_validate({
        "phase": "Succeeded", "diff": "excerpt\n", "diffBytes": 5000, "diffTruncated": True,
        "diffStat": {"files": 2, "additions": 7, "deletions": 1}, "patchConfigMap": "b-patch", "finalText": "done",
    })
    from_excerpt = from_status("b", status)
    assert (from_excerpt.diff, from_excerpt.diff_truncated, from_excerpt.digest) == ("excerpt\n", True, "")
    assert from_excerpt.diff_stat.additions == 7 and from_excerpt.final_text == "done"
    whole = from_status("b", status, patch="whole\n", patch_sha256="ab" * 32)
    assert (whole.diff, whole.diff_truncated, whole.digest, whole.total_bytes) == ("whole\n", False, "ab" * 32, 5000)
    capped = from_status("b", status, patch="whole\n", patch_sha256="cd" * 32, patch_truncated=True)
    assert capped.diff_truncated
