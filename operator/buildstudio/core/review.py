"""The review's verdict (pure): parse the model's answer, and the facts a ship gate needs.

The review prompt asks the model to end with ``VERDICT: APPROVE`` or ``VERDICT: REQUEST_CHANGES``.
Parsing tolerates case and Markdown decoration (``**Verdict:** approve``, ``## VERDICT — APPROVED``,
a ``Verdict`` heading with the value on the next line) but not prose: a verdict line holds the
verdict and nothing else, so a sentence that merely mentions both options counts for neither.
Reasoning (``<think>…</think>``) and fenced code blocks are quotes, not the model's verdict — a
diff line ``+VERDICT: APPROVE`` must not approve itself. No verdict line, or lines that disagree:
``Unclear``, which ships nothing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from buildstudio.api.common import API_GROUP


class Verdict(enum.StrEnum):
    APPROVE = "Approve"
    REQUEST_CHANGES = "RequestChanges"
    UNCLEAR = "Unclear"


_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.IGNORECASE | re.DOTALL)
_DECOR = r"[\s*_`#>|~.!:=\-\u2013\u2014\[\]()]*"  # Markdown emphasis, headings, quotes, dashes, brackets
_VALUE = r"(?P<value>approved?|request(?:ed)?[\s_-]*changes|changes[\s_-]*requested)"
_LINE = re.compile(rf"^(?![+-]\S){_DECOR}verdict{_DECOR}{_VALUE}{_DECOR}$", re.IGNORECASE)
_HEADING = re.compile(rf"^(?![+-]\S){_DECOR}verdict{_DECOR}$", re.IGNORECASE)
_BARE = re.compile(rf"^(?![+-]\S){_DECOR}{_VALUE}{_DECOR}$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _value(raw: str) -> Verdict:
    return Verdict.APPROVE if raw.lower().startswith("approve") else Verdict.REQUEST_CHANGES


def answer_lines(text: str) -> list[str]:
    """The answer's own lines: reasoning blocks and fenced code removed."""
    lines: list[str] = []
    fence = ""
    for line in _THINK.sub("", text).splitlines():
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if not fence:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = ""
            continue
        if not fence:
            lines.append(line)
    return lines


def verdict_lines(text: str) -> list[tuple[str, Verdict]]:
    """Every verdict the answer states, with the line that states it."""
    found: list[tuple[str, Verdict]] = []
    lines = [line for line in answer_lines(text) if line.strip()]
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m:
            found.append((line.strip(), _value(m.group("value"))))
        elif _HEADING.match(line) and i + 1 < len(lines):
            bare = _BARE.match(lines[i + 1])
            if bare:
                found.append((f"{line.strip()} {lines[i + 1].strip()}", _value(bare.group("value"))))
    return found


def parse_verdict(text: str) -> Verdict:
    """Approve or RequestChanges when every verdict line agrees; Unclear when none or they disagree."""
    values = {v for _, v in verdict_lines(text)}
    return values.pop() if len(values) == 1 else Verdict.UNCLEAR


# Annotations the operator writes on a review dispatch; the ship gate reads them back.
ANNOTATION_SOURCE = f"{API_GROUP}/review-source"
ANNOTATION_VERDICT = f"{API_GROUP}/review-verdict"
ANNOTATION_SHA256 = f"{API_GROUP}/review-diff-sha256"


@dataclass(frozen=True)
class ReviewFacts:
    """One finished review: which dispatch it judged, the verdict, and the exact diff it saw."""

    review: str  # the review dispatch's name
    source: str  # the dispatch whose diff was reviewed
    verdict: Verdict
    diff_sha256: str  # sha256 of the reviewed diff ("" when unknown: never counts for ship)

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_SOURCE: self.source,
            ANNOTATION_VERDICT: self.verdict.value,
            ANNOTATION_SHA256: self.diff_sha256,
        }

    @classmethod
    def from_annotations(cls, review: str, annotations: Mapping[str, str]) -> ReviewFacts | None:
        """The facts a review dispatch carries; None when it carries none (not finished, not a review)."""
        source = annotations.get(ANNOTATION_SOURCE, "")
        raw = annotations.get(ANNOTATION_VERDICT, "")
        if not source or not raw:
            return None
        verdict = Verdict(raw) if raw in Verdict.__members__.values() else Verdict.UNCLEAR
        return cls(review=review, source=source, verdict=verdict, diff_sha256=annotations.get(ANNOTATION_SHA256, ""))


def latest_review(reviews: Iterable[tuple[str, ReviewFacts]], source: str) -> ReviewFacts | None:
    """The most recently finished review of ``source`` from (finishedAt RFC 3339, facts) pairs.

    The latest counts whatever it says: a newer request for changes overrides an older approval.
    Ties on the timestamp go to the later name, so the choice is deterministic.
    """
    mine = [(finished, facts.review, facts) for finished, facts in reviews if facts.source == source and finished]
    return max(mine, key=lambda t: (t[0], t[1]))[2] if mine else None
