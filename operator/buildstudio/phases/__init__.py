"""The text phases (ideate, plan, review) and the governed ship gate.

Ideate and plan are plain text generation by the strong-tier local model through the model
service's OpenAI-compatible ``/v1/chat/completions`` (no tool loop, no sandbox). Review is the
same call over the source dispatch's diff, ending in a parsed verdict. Ship is a pure gate: a
diff is never applied without a review of that very diff and a human approval.

Pure: ``prompts``, ``review``, ``ship``. IO: ``textgen`` (one chat completion) and ``run``.
"""

from buildstudio.phases.prompts import Budget, budget_for, messages_for
from buildstudio.phases.review import ReviewFacts, Verdict, latest_review, parse_verdict
from buildstudio.phases.run import PhaseRun, run_phase, run_text_phase
from buildstudio.phases.ship import ShipDecision, ShipReason, SourceFacts, decide_ship, ship_record
from buildstudio.phases.source import ReviewSource, decode_patch, from_status

__all__ = [
    "Budget",
    "PhaseRun",
    "ReviewFacts",
    "ReviewSource",
    "ShipDecision",
    "ShipReason",
    "SourceFacts",
    "Verdict",
    "budget_for",
    "decide_ship",
    "decode_patch",
    "from_status",
    "latest_review",
    "messages_for",
    "parse_verdict",
    "run_phase",
    "run_text_phase",
    "ship_record",
]
