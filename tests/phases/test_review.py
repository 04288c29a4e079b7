"""Parsing a review answer into a verdict: tolerant of case and Markdown, strict about prose and quotes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from buildstudio.core.review import (
    ANNOTATION_SHA256,
    ANNOTATION_SOURCE,
    ANNOTATION_VERDICT,
    ReviewFacts,
    Verdict,
    latest_review,
    parse_verdict,
    verdict_lines,
)

A, R, U = Verdict.APPROVE, Verdict.REQUEST_CHANGES, Verdict.UNCLEAR
BODY = "The change adds `subtract` with a test.\n\n- calc.py: fine\n- test_calc.py: covers it\n\n"

CASES = [
    # the asked-for form, and its case / Markdown variants
    (BODY + "VERDICT: APPROVE", A),
    (BODY + "VERDICT: REQUEST_CHANGES", R),
    (BODY + "verdict: approve\n", A),
    (BODY + "**Verdict:** Approve", A),
    (BODY + "**VERDICT: REQUEST_CHANGES**", R),
    (BODY + "## VERDICT — APPROVED.", A),
    (BODY + "`VERDICT: APPROVE`", A),
    (BODY + "> **VERDICT:** request changes", R),
    (BODY + "- Verdict: Request-Changes", R),
    (BODY + "VERDICT = approve", A),
    (BODY + "[VERDICT: APPROVE]", A),
    (BODY + "VERDICT: changes requested", R),
    (BODY + "VERDICT: APPROVE\n\nThanks!", A),  # tolerated: something after it
    (BODY + "VERDICT: APPROVE\n" + "VERDICT: APPROVE", A),  # repeated, agreeing
    (BODY + "## Verdict\n\n**REQUEST CHANGES**", R),  # heading, value on the next line
    ("VERDICT:\nAPPROVE", A),
    # absent
    ("", U),
    (BODY, U),
    (BODY + "Looks good to me, approve.", U),
    (BODY + "VERDICT: LGTM", U),
    (BODY + "VERDICT: APPROVE with nits", U),  # prose on the verdict line: not a verdict line
    (BODY + "Verdict: not approved", U),
    (BODY + "## Verdict\n\nIt depends.", U),
    # contradictory
    (BODY + "VERDICT: APPROVE\nVERDICT: REQUEST_CHANGES", U),
    (BODY + "I will end with VERDICT: APPROVE or VERDICT: REQUEST_CHANGES.", U),
    # quotes are not the model's verdict
    (BODY + "+VERDICT: APPROVE", U),  # a diff line
    (BODY + "```\nVERDICT: APPROVE\n```", U),  # fenced code
    (BODY + "````md\n```\nVERDICT: APPROVE\n```\n````\nVERDICT: REQUEST_CHANGES", R),  # nested fences
    ("<think>VERDICT: APPROVE, maybe</think>\n" + BODY + "VERDICT: REQUEST_CHANGES", R),
    ("<think>\nVERDICT: APPROVE\n</think>\n" + BODY, U),
    ("<think>VERDICT: APPROVE\n(reasoning cut off)", U),  # unterminated reasoning: all of it is reasoning
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_verdict_table(text: str, expected: Verdict) -> None:
    assert parse_verdict(text) == expected


def test_verdict_lines_quote_the_evidence() -> None:
    assert verdict_lines(BODY + "  **VERDICT: APPROVE**  \n") == [("**VERDICT: APPROVE**", A)]


def test_review_facts_roundtrip_through_annotations() -> None:
    facts = ReviewFacts(review="rev-1", source="build-1", verdict=R, diff_sha256="ab" * 32)
    ann = facts.annotations()
    assert ann == {ANNOTATION_SOURCE: "build-1", ANNOTATION_VERDICT: "RequestChanges", ANNOTATION_SHA256: "ab" * 32}
    assert ANNOTATION_VERDICT == "buildstudio.dpf.dev/review-verdict"
    assert ReviewFacts.from_annotations("rev-1", ann) == facts
    assert ReviewFacts.from_annotations("rev-1", {}) is None
    odd = ReviewFacts.from_annotations("rev-1", {**ann, ANNOTATION_VERDICT: "Maybe"})
    assert odd is not None and odd.verdict == U


def test_latest_review_of_the_source_wins_whatever_it_says() -> None:
    old = ReviewFacts(review="rev-a", source="build-1", verdict=A, diff_sha256="ab" * 32)
    new = ReviewFacts(review="rev-b", source="build-1", verdict=R, diff_sha256="ab" * 32)
    other = ReviewFacts(review="rev-c", source="build-2", verdict=A, diff_sha256="cd" * 32)
    pairs = [("2026-11-25T10:05:00Z", new), ("2026-11-25T10:00:00Z", old), ("2026-11-25T11:00:00Z", other)]
    assert latest_review(pairs, "build-1") == new
    assert latest_review([*pairs, ("", replace(old, review="rev-unfinished"))], "build-1") == new
    assert latest_review(pairs, "build-3") is None
    tie = replace(old, review="rev-z")
    assert latest_review([("2026-11-25T10:05:00Z", new), ("2026-11-25T10:05:00Z", tie)], "build-1") == tie


@pytest.mark.timeout(20)  # a backtracking regex would take minutes on these
def test_pathological_answers_parse_in_linear_time() -> None:
    for text in ("VERDICT: APPROVE" + "." * 100_000 + "x", "*" * 100_000 + "verdict", "verdict:" + " " * 100_000):
        assert parse_verdict(text) == U
    assert parse_verdict("VERDICT: APPROVE" + "!." * 1000) == A
